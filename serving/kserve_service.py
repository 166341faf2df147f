"""KServe v2 / Open Inference Protocol: ``inference.GRPCInferenceService``.

Inputs are accepted as ``raw_input_contents`` or typed ``contents``; outputs always go
back as ``raw_output_contents``. ``ModelStreamInfer`` reads requests while earlier ones
are still running, so one stream keeps the batcher fed, and writes each response as soon
as its batch finished (in completion order; the response carries the request's id), a
failed request as an ``error_message`` without closing the stream.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from time import perf_counter

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc
from serving import __version__
from serving.admission import Admission
from serving.batcher import Outputs
from serving.errors import InvalidInputError, ServingError, status_code
from serving.repository import PLATFORM, READY, ModelVersion, Repository
from serving.tensors import TensorSpec, decode_kserve
from serving.unary import abort_unresolved, count_unresolved, infer_unary
from serving.versions import parse_version

LOGGER = logging.getLogger(__name__)

SERVER_NAME = "d2lserve"
UNARY = "kserve"
STREAM = "stream"


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


def decode_infer_request(
    request: pb.ModelInferRequest, version: ModelVersion
) -> tuple[np.ndarray, list[tuple[str, int, str]]]:
    """The validated input rows of a ModelInferRequest and the outputs it asks for."""
    names = _requested_outputs(request, version)
    array = decode_kserve(request, version.input, version.description, version.max_rows)
    return array, names


def fill_infer_response(
    response: pb.ModelInferResponse,
    version: ModelVersion,
    outputs: list[np.ndarray],
    chosen: list[tuple[str, int, str]],
    request_id: str,
) -> None:
    """Write the outputs into ``response`` in place.

    A stream's response embeds its ModelInferResponse: filling it there avoids building
    one and copying it in.
    """
    response.model_name = version.name
    response.model_version = str(version.version)
    response.id = request_id
    tensors = response.outputs
    raw = response.raw_output_contents
    for name, index, datatype in chosen:
        array = outputs[index]
        tensors.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(array.tobytes())


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.kserve_dtype, shape=spec.shape
    )


# Requests one stream may have admitted and not yet answered; past it the stream's reader
# waits (gRPC flow control then holds the client back), so one client cannot queue
# unbounded work or responses.
MAX_STREAM_INFLIGHT = 256


class _Stream:
    """The state one ModelStreamInfer call shares between its reader and its writer.

    Responses are queued in ``ready`` in the order batches finish; the writer sends them
    as they come (requests carry their id, so the client matches them).
    """

    __slots__ = ("limit", "reading", "ready", "room", "running", "unanswered", "writer")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ready: deque[pb.ModelStreamInferResponse] = deque()
        self.running: set[asyncio.Future] = set()  # batcher futures, cancelled at the end
        self.unanswered = 0  # admitted, response not yet written
        self.reading = True
        self.writer: asyncio.Future[None] | None = None  # the writer waits for a response
        self.room: asyncio.Future[None] | None = None  # the reader waits for the window

    def respond(self, response: pb.ModelStreamInferResponse) -> None:
        self.ready.append(response)
        writer = self.writer
        if writer is not None and not writer.done():
            writer.set_result(None)

    def stop_reading(self) -> None:
        self.reading = False
        writer = self.writer
        if writer is not None and not writer.done():
            writer.set_result(None)

    def written(self) -> None:
        self.unanswered -= 1
        room = self.room
        if room is not None and not room.done():
            room.set_result(None)


class _Pending:
    """One stream request in the batcher; its response is made when its batch finishes."""

    __slots__ = ("names", "request_id", "rows", "started", "stream", "version")

    def __init__(
        self,
        stream: _Stream,
        version: ModelVersion,
        names: list[tuple[str, int, str]],
        request_id: str,
        rows: int,
        started: float,
    ) -> None:
        self.stream = stream
        self.version = version
        self.names = names
        self.request_id = request_id
        self.rows = rows
        self.started = started

    def finish(self, future: asyncio.Future) -> None:
        """Done callback of the batcher future: queue the response (or error) to write."""
        stream = self.stream
        stream.running.discard(future)
        version = self.version
        code = "OK"
        try:
            if future.cancelled():  # the stream ended first; nobody to answer
                code = "CANCELLED"
                return
            error = future.exception()
            if error is None:
                encoding = perf_counter()
                response = pb.ModelStreamInferResponse()
                fill_infer_response(
                    response.infer_response, version, future.result(), self.names, self.request_id
                )
                version.metrics.encode(perf_counter() - encoding)
                stream.respond(response)
            elif isinstance(error, ServingError):
                code = status_code(error).name
                stream.respond(_stream_error(str(error), self.request_id))
            else:
                raise error
        except Exception as error:  # never lose a response: the writer counts on it
            code = "INTERNAL"
            LOGGER.error(
                "event=stream_infer_failed model=%s error=%r",
                version.description,
                error,
                exc_info=error,
            )
            stream.respond(_stream_error(f"{version.description}: {error}", self.request_id))
        finally:
            version.metrics.request_finished(STREAM, code, perf_counter() - self.started, self.rows)


def _stream_error(message: str, request_id: str) -> pb.ModelStreamInferResponse:
    """An error answer that still names the request it belongs to."""
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id=request_id)
    )


class InferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 service over the same repository and batchers as Predict."""

    def __init__(
        self,
        repository: Repository,
        ready: Callable[[], bool],
        admission: Admission | None = None,
    ) -> None:
        self._repository = repository
        self._ready = ready
        # Stream messages take slots of the server-wide admission, like unary calls.
        self._admission = admission or Admission(sys.maxsize)

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

        def respond(outputs: Outputs, names: list[tuple[str, int, str]]) -> pb.ModelInferResponse:
            response = pb.ModelInferResponse()
            fill_infer_response(response, version, outputs, names, request.id)
            return response

        return await infer_unary(
            UNARY,
            version,
            context,
            started,
            lambda: decode_infer_request(request, version),
            respond,
        )

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        loop = asyncio.get_running_loop()
        stream = _Stream(MAX_STREAM_INFLIGHT)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    if stream.unanswered >= stream.limit:
                        stream.room = loop.create_future()
                        await stream.room
                    stream.unanswered += 1
                    self._admit(request, stream)
            finally:
                stream.stop_reading()

        reader = asyncio.create_task(read())
        ready = stream.ready
        try:
            while True:
                if ready:
                    yield ready.popleft()
                    stream.written()
                    continue
                if not stream.reading and stream.unanswered == 0:
                    break
                stream.writer = loop.create_future()
                await stream.writer
            await reader  # surfaces a read error
        finally:
            reader.cancel()
            for future in list(stream.running):
                future.cancel()

    def _admit(self, request: pb.ModelInferRequest, stream: _Stream) -> None:
        """Admit, resolve, validate and queue one stream request without waiting for it.

        Whatever goes wrong answers this request (its id kept) and the stream goes on: a
        request left unanswered would keep the writer waiting for ever.
        """
        admission = self._admission
        if not admission.try_acquire(STREAM):
            stream.respond(_stream_error(admission.refusal(), request.id))
            return
        try:
            future = self._queue(request, stream)
        except Exception as error:  # a bug here must not hang the stream
            LOGGER.error("event=stream_admit_failed error=%r", error, exc_info=error)
            stream.respond(_stream_error(f"internal error: {error!r}", request.id))
            future = None
        if future is None:
            admission.release()
        else:
            future.add_done_callback(lambda _: admission.release())

    def _queue(self, request: pb.ModelInferRequest, stream: _Stream) -> asyncio.Future | None:
        """Queue one stream request; None when it was answered with an error at once."""
        started = perf_counter()
        try:
            version = self._repository.resolve(
                request.model_name, parse_version(request.model_version)
            )
        except ServingError as error:
            count_unresolved(self._repository, STREAM, request.model_name, error)
            stream.respond(_stream_error(str(error), request.id))
            return None
        rows = 0
        try:
            array, names = decode_infer_request(request, version)
            rows = array.shape[0]
            version.metrics.decode(perf_counter() - started)
            future = version.batcher.submit(array, None)
        except ServingError as error:
            version.metrics.request_finished(
                STREAM, status_code(error).name, perf_counter() - started, rows
            )
            stream.respond(_stream_error(str(error), request.id))
            return None
        stream.running.add(future)
        future.add_done_callback(_Pending(stream, version, names, request.id, rows, started).finish)
        return future
