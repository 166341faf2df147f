"""Our own API, ``d2lserve.v1.PredictionService``: Predict, ListModels, GetModel."""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter

import grpc

from model_repository import metadata as meta_keys
from protos import predict_pb2, predict_pb2_grpc
from serving.errors import InvalidInputError, ServingError, status_code
from serving.repository import PLATFORM, Model, ModelVersion, Repository
from serving.tensors import (
    PREDICT_DTYPE_OF,
    TensorSpec,
    add_top_k,
    decode_predict,
    predict_tensor,
)

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
        metrics = version.metrics
        code = "OK"
        rows = 0
        try:
            array = decode_predict(
                request.input, version.input, version.description, version.max_rows
            )
            rows = array.shape[0]
            top_k = request.top_k or 1
            if version.classifier and top_k > len(version.labels):
                raise InvalidInputError(
                    f"top_k is {top_k}; {version.description} has {len(version.labels)} classes"
                )
            decoded = perf_counter()
            metrics.decode(decoded - started)
            remaining = context.time_remaining()
            deadline = None if remaining is None else decoded + remaining
            outputs = await version.batcher.submit(array, deadline)
            encoding = perf_counter()
            response = predict_response(version, outputs, top_k)
            metrics.encode(perf_counter() - encoding)
            return response
        except ServingError as error:
            grpc_code = status_code(error)
            code = grpc_code.name
            await context.abort(grpc_code, str(error))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as error:
            code = "INTERNAL"
            LOGGER.exception("event=predict_failed model=%s", version.description)
            await context.abort(grpc.StatusCode.INTERNAL, f"{version.description}: {error}")
        finally:
            metrics.request_finished(API, code, perf_counter() - started, rows)

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
        model = self._repository.models.get(request.name)
        if model is None:
            known = ", ".join(sorted(self._repository.models)) or "none"
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model '{request.name}' not found; available models: {known}",
            )
        version = None
        if request.version:
            version = model.versions.get(request.version)
            if version is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"model '{request.name}' has no version {request.version}; "
                    f"versions: {sorted(model.versions)}",
                )
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
    if version.classifier:
        probabilities = outputs[version.output_index[meta_keys.PROBABILITIES_NAME]]
        response = predict_pb2.PredictResponse(
            model=version.name,
            version=version.version,
            probabilities=predict_tensor(probabilities),
        )
        add_top_k(response.top_k, probabilities, top_k, version.labels)
        return response
    predictions = outputs[version.output_index[meta_keys.PREDICTION_NAME]]
    return predict_pb2.PredictResponse(
        model=version.name, version=version.version, predictions=predict_tensor(predictions)
    )


async def abort_unresolved(
    repository: Repository,
    api: str,
    model: str,
    error: ServingError,
    context: grpc.aio.ServicerContext,
) -> None:
    """Count a request that never reached a version, then abort it with its status."""
    code = status_code(error)
    label = model if repository.known_model(model) else "_unknown"
    repository.metrics.request_unresolved(api, code.name, label)
    await context.abort(code, str(error))
