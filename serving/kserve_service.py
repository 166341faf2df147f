"""KServe v2 / Open Inference Protocol: ``inference.GRPCInferenceService``.

Inputs are accepted as ``raw_input_contents`` or typed ``contents``; outputs always go
back as ``raw_output_contents``. ``ModelStreamInfer`` reads requests while earlier ones
are still running, so one stream keeps the batcher fed; responses come back in request
order, a failed request as an ``error_message`` without closing the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from time import perf_counter

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc
from serving import __version__
from serving.errors import InvalidInputError, ServingError, status_code
from serving.predict_service import abort_unresolved
from serving.repository import PLATFORM, READY, ModelVersion, Repository
from serving.tensors import TensorSpec, decode_kserve

LOGGER = logging.getLogger(__name__)

SERVER_NAME = "d2lserve"
UNARY = "kserve"
STREAM = "stream"


def parse_version(text: str) -> int:
    """KServe versions are strings; "" means the default version."""
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise InvalidInputError(f"model_version is {text!r}; expected a positive integer or ''")
    return int(text)


def _requested_outputs(
    request: pb.ModelInferRequest, version: ModelVersion
) -> list[tuple[str, int, str]]:
    """(name, index, datatype) of the outputs to return: the requested ones, else all."""
    if not request.outputs:
        return version.kserve_outputs
    chosen = []
    for output in request.outputs:
        index = version.output_index.get(output.name)
        if index is None:
            raise InvalidInputError(
                f"requested output '{output.name}' does not exist; {version.description} has "
                f"{list(version.output_index)}"
            )
        if "classification" in output.parameters:
            raise InvalidInputError(
                "the 'classification' output parameter is not supported; use the Predict "
                "API's top_k for labels"
            )
        chosen.append(version.kserve_outputs[index])
    return chosen


def infer_response(
    version: ModelVersion,
    outputs: list[np.ndarray],
    chosen: list[tuple[str, int, str]],
    request_id: str,
) -> pb.ModelInferResponse:
    tensors = []
    raw = []
    for name, index, datatype in chosen:
        array = outputs[index]
        tensors.append(
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape)
        )
        raw.append(array.tobytes())
    return pb.ModelInferResponse(
        model_name=version.name,
        model_version=str(version.version),
        id=request_id,
        outputs=tensors,
        raw_output_contents=raw,
    )


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.kserve_dtype, shape=spec.shape
    )


class _Pending:
    """One stream request on its way: a future from the batcher, or an error already."""

    __slots__ = ("error", "future", "names", "request_id", "rows", "started", "version")

    def __init__(self, started: float, request_id: str) -> None:
        self.started = started
        self.request_id = request_id
        self.version: ModelVersion | None = None
        self.future: asyncio.Future | None = None
        self.error: ServingError | None = None
        self.names: list[tuple[str, int, str]] = []
        self.rows = 0


class InferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 service over the same repository and batchers as Predict."""

    def __init__(self, repository: Repository, ready: Callable[[], bool]) -> None:
        self._repository = repository
        self._ready = ready

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self._repository.resolve(request.name, parse_version(request.version))
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            version = self._repository.resolve(request.name, parse_version(request.version))
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        model = self._repository.models[request.name]
        ready = sorted(n for n, v in model.versions.items() if v.state == READY)
        assert version.input is not None
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(n) for n in ready],
            platform=PLATFORM,
            inputs=[_tensor_metadata(version.input)],
            outputs=[_tensor_metadata(o) for o in version.outputs],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = perf_counter()
        try:
            version = self._repository.resolve(
                request.model_name, parse_version(request.model_version)
            )
        except ServingError as error:
            await abort_unresolved(self._repository, UNARY, request.model_name, error, context)
        metrics = version.metrics
        code = "OK"
        rows = 0
        try:
            names = _requested_outputs(request, version)
            array = decode_kserve(request, version.input, version.description, version.max_rows)
            rows = array.shape[0]
            decoded = perf_counter()
            metrics.decode(decoded - started)
            remaining = context.time_remaining()
            deadline = None if remaining is None else decoded + remaining
            outputs = await version.batcher.submit(array, deadline)
            encoding = perf_counter()
            response = infer_response(version, outputs, names, request.id)
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
            LOGGER.exception("event=infer_failed model=%s", version.description)
            await context.abort(grpc.StatusCode.INTERNAL, f"{version.description}: {error}")
        finally:
            metrics.request_finished(UNARY, code, perf_counter() - started, rows)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        pending: deque[_Pending] = deque()
        loop = asyncio.get_running_loop()
        signal: list[asyncio.Future[None] | None] = [None]
        finished = [False]

        def wake() -> None:
            waiter = signal[0]
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    pending.append(self._admit(request))
                    wake()
            finally:
                finished[0] = True
                wake()

        reader = asyncio.create_task(read())
        try:
            while True:
                if not pending:
                    if finished[0]:
                        break
                    signal[0] = loop.create_future()
                    await signal[0]
                    continue
                yield await self._finish(pending.popleft())
            await reader  # surfaces a read error
        finally:
            reader.cancel()
            for entry in pending:
                if entry.future is not None:
                    entry.future.cancel()

    def _admit(self, request: pb.ModelInferRequest) -> _Pending:
        """Resolve, validate and queue one stream request without waiting for it."""
        entry = _Pending(perf_counter(), request.id)
        try:
            version = self._repository.resolve(
                request.model_name, parse_version(request.model_version)
            )
        except ServingError as error:
            entry.error = error
            label = (
                request.model_name
                if self._repository.known_model(request.model_name)
                else "_unknown"
            )
            self._repository.metrics.request_unresolved(STREAM, status_code(error).name, label)
            return entry
        entry.version = version
        try:
            entry.names = _requested_outputs(request, version)
            array = decode_kserve(request, version.input, version.description, version.max_rows)
            entry.rows = array.shape[0]
            version.metrics.decode(perf_counter() - entry.started)
            entry.future = version.batcher.submit(array, None)
        except ServingError as error:
            entry.error = error
        return entry

    async def _finish(self, entry: _Pending) -> pb.ModelStreamInferResponse:
        version = entry.version
        if version is None:  # never resolved; already counted
            return pb.ModelStreamInferResponse(error_message=str(entry.error))
        code = "OK"
        try:
            if entry.error is not None:
                raise entry.error
            assert entry.future is not None
            outputs = await entry.future
            encoding = perf_counter()
            response = infer_response(version, outputs, entry.names, entry.request_id)
            version.metrics.encode(perf_counter() - encoding)
            return pb.ModelStreamInferResponse(infer_response=response)
        except ServingError as error:
            code = status_code(error).name
            return pb.ModelStreamInferResponse(error_message=str(error))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as error:
            code = "INTERNAL"
            LOGGER.exception("event=stream_infer_failed model=%s", version.description)
            return pb.ModelStreamInferResponse(error_message=f"{version.description}: {error}")
        finally:
            version.metrics.request_finished(
                STREAM, code, perf_counter() - entry.started, entry.rows
            )
