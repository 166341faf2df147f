"""Our own API, ``d2lserve.v1.PredictionService``: Predict, ListModels, GetModel."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING

import grpc

from model_repository.signature import PLATFORM
from protos import predict_pb2, predict_pb2_grpc
from serving.core.corridor import Corridor
from serving.core.inference import InferenceRequest, InferenceResult, InputTensor, RequestedOutput
from serving.core.repository import Model, ModelVersion
from serving.core.tensors import TensorSpec
from serving.errors import InvalidInputError, ServingError, status_code
from serving.grpc_api.predict_tensors import (
    PREDICT_DTYPE_OF,
    add_top_k,
    fill_predict_tensor,
    wire_name,
)
from serving.grpc_api.status import abort_with, deadline_of

if TYPE_CHECKING:
    from serving.control import WorkerControl

LOGGER = logging.getLogger(__name__)

API = "predict"


class PredictionService(predict_pb2_grpc.PredictionServiceServicer):
    """Predict through the batcher; describe models from the repository's state."""

    def __init__(
        self,
        corridor: Corridor,
        execution_provider: str,
        control: WorkerControl | None = None,
    ) -> None:
        self._corridor = corridor
        self._repository = corridor.repository
        self._provider = execution_provider
        self._control = control  # --workers N: statistics summed over all workers

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        started = perf_counter()
        corridor = self._corridor
        try:
            inference = inference_request(request)
        except ServingError as error:
            return await abort_with(context, corridor.refused(API, request.model, error))
        try:
            return await corridor.infer(
                API, inference, predict_response, deadline_of(context, started), started
            )
        except ServingError as error:
            return await abort_with(context, error)

    async def ListModels(
        self, request: predict_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.ListModelsResponse:
        models = self._repository.models
        response = predict_pb2.ListModelsResponse(
            models=[self._info(models[name], None) for name in sorted(models)]
        )
        await self._add_peer_statistics(response.models)
        return response

    async def GetModel(
        self, request: predict_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.ModelInfo:
        try:
            model = self._repository.model(request.name)
            version = (
                self._repository.version(request.name, request.version) if request.version else None
            )
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        info = self._info(model, version)
        await self._add_peer_statistics([info])
        return info

    async def _add_peer_statistics(self, infos: Iterable[predict_pb2.ModelInfo]) -> None:
        """--workers N: add the other workers' figures of each described version."""
        if self._control is None:
            return
        totals = await self._control.peer_totals()
        for info in infos:
            if info.HasField("statistics"):
                requests, rows, executions = totals.get((info.name, info.version), (0, 0, 0))
                info.statistics.requests += requests
                info.statistics.rows += rows
                info.statistics.executions += executions

    def _info(self, model: Model, version: ModelVersion | None) -> predict_pb2.ModelInfo:
        """Describe ``version`` (default: the default version, else the newest known)."""
        if version is None:
            version = model.default or (
                model.versions[max(model.versions)] if model.versions else None
            )
        info = predict_pb2.ModelInfo(
            name=model.name,
            platform=PLATFORM,
            execution_provider=self._provider,
            versions=[
                predict_pb2.VersionStatus(version=number, state=v.state, reason=v.reason)
                for number, v in sorted(model.versions.items())
            ],
        )
        if version is None:
            return info
        info.version = version.version
        info.task = version.task
        info.inputs.extend(_tensor_spec(spec) for spec in version.inputs)
        info.outputs.extend(_tensor_spec(spec) for spec in version.outputs)
        info.labels.extend(version.labels)
        policy = version.policy
        info.batching.CopyFrom(
            predict_pb2.BatchingSettings(
                enabled=policy.enabled,
                max_batch_size=policy.max_batch_size,
                preferred_batch_sizes=policy.preferred_batch_sizes,
                max_queue_delay_microseconds=policy.max_queue_delay_microseconds,
                max_queue_size=policy.max_queue_size,
                instances=policy.instances,
            )
        )
        statistics = version.statistics
        info.statistics.CopyFrom(
            predict_pb2.ModelStatistics(
                requests=statistics.requests,
                rows=statistics.inference_count,
                executions=statistics.execution_count,
            )
        )
        info.metadata.update(version.properties)
        return info


def _tensor_spec(spec: TensorSpec) -> predict_pb2.TensorSpec:
    return predict_pb2.TensorSpec(
        name=spec.name, dtype=PREDICT_DTYPE_OF[spec.kserve_dtype], shape=spec.shape
    )


def _input(name: str | None, tensor: predict_pb2.Tensor) -> InputTensor:
    return InputTensor(name, wire_name(tensor.dtype), tuple(tensor.shape), tensor.data)


def request_inputs(request: predict_pb2.PredictRequest) -> list[InputTensor]:
    """A PredictRequest's inputs as the corridor takes them (``input``: the only one)."""
    if not request.inputs:
        return [_input(None, request.input)]
    if request.HasField("input"):
        raise InvalidInputError("request sets both 'input' and 'inputs'; use one")
    return [_input(name, tensor) for name, tensor in request.inputs.items()]


def inference_request(request: predict_pb2.PredictRequest) -> InferenceRequest:
    """The corridor's request for a PredictRequest."""
    return InferenceRequest(
        request.model,
        request.version,
        request_inputs(request),
        [RequestedOutput(name) for name in request.outputs],
        top_k=request.top_k or 1,
    )


def predict_response(result: InferenceResult) -> predict_pb2.PredictResponse:
    """The answer to a Predict call.

    The outputs asked for by name; else a classifier's scores and top-k labels, a
    regression's predictions, or every output of a model without a task.
    """
    version = result.version
    outputs = result.outputs
    response = predict_pb2.PredictResponse(model=version.name, version=version.version)
    specs = version.outputs
    if result.chosen is version.all_outputs:  # no output named
        if version.classifier:
            scores = outputs[version.scores_output]
            fill_predict_tensor(
                response.probabilities, scores, specs[version.scores_output].datatype
            )
            add_top_k(response.top_k, scores, result.top_k, version.labels)
            return response
        if version.prediction_output >= 0:
            index = version.prediction_output
            fill_predict_tensor(response.predictions, outputs[index], specs[index].datatype)
            return response
    for name, index, _, _ in result.chosen:
        fill_predict_tensor(response.outputs[name], outputs[index], specs[index].datatype)
    return response
