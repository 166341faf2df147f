"""Our own API, ``d2lserve.v1.PredictionService``: Predict, ListModels, GetModel."""

from __future__ import annotations

import logging
from time import perf_counter

import grpc
import numpy as np

from model_repository import metadata as meta_keys
from protos import predict_pb2, predict_pb2_grpc
from serving.errors import InvalidInputError, ServingError, status_code
from serving.repository import PLATFORM, Model, ModelVersion, Repository
from serving.tensors import (
    PREDICT_DTYPE_OF,
    TensorSpec,
    add_top_k,
    decode_predict,
    fill_predict_tensor,
)
from serving.unary import abort_unresolved, infer_unary

LOGGER = logging.getLogger(__name__)

API = "predict"


class PredictionService(predict_pb2_grpc.PredictionServiceServicer):
    """Predict through the batcher; describe models from the repository's state."""

    def __init__(self, repository: Repository, execution_provider: str) -> None:
        self._repository = repository
        self._provider = execution_provider

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        started = perf_counter()
        try:
            version = self._repository.resolve(request.model, request.version)
        except ServingError as error:
            await abort_unresolved(self._repository, API, request.model, error, context)

        def prepare() -> tuple[np.ndarray, int]:
            array = decode_predict(
                request.input, version.input, version.description, version.max_rows
            )
            top_k = request.top_k or 1
            if version.classifier and top_k > len(version.labels):
                raise InvalidInputError(
                    f"top_k is {top_k}; {version.description} has {len(version.labels)} classes"
                )
            return array, top_k

        return await infer_unary(
            API,
            version,
            context,
            started,
            prepare,
            lambda outputs, top_k: predict_response(version, outputs, top_k),
        )

    async def ListModels(
        self, request: predict_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.ListModelsResponse:
        models = self._repository.models
        return predict_pb2.ListModelsResponse(
            models=[self._info(models[name], None) for name in sorted(models)]
        )

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
        return self._info(model, version)

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
        if version.input is not None:
            info.inputs.append(_tensor_spec(version.input))
        info.outputs.extend(_tensor_spec(o) for o in version.outputs)
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
        if version.batcher is not None:
            info.statistics.CopyFrom(
                predict_pb2.ModelStatistics(
                    requests=version.batcher.requests,
                    rows=version.batcher.rows,
                    executions=version.batcher.executions,
                )
            )
        info.metadata.update(version.properties)
        return info


def _tensor_spec(spec: TensorSpec) -> predict_pb2.TensorSpec:
    return predict_pb2.TensorSpec(
        name=spec.name, dtype=PREDICT_DTYPE_OF.get(spec.dtype, 0), shape=spec.shape
    )


def predict_response(
    version: ModelVersion, outputs: list, top_k: int
) -> predict_pb2.PredictResponse:
    """Probabilities and top-k labels for classifiers, predictions for regression."""
    response = predict_pb2.PredictResponse(model=version.name, version=version.version)
    if version.classifier:
        probabilities = outputs[version.output_index[meta_keys.PROBABILITIES_NAME]]
        fill_predict_tensor(response.probabilities, probabilities)
        add_top_k(response.top_k, probabilities, top_k, version.labels)
    else:
        predictions = outputs[version.output_index[meta_keys.PREDICTION_NAME]]
        fill_predict_tensor(response.predictions, predictions)
    return response
