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
from collections import deque
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import TYPE_CHECKING

import grpc

from model_repository.signature import PLATFORM
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc
from serving import __version__
from serving.core.corridor import Call, Corridor
from serving.core.inference import InferenceRequest, InferenceResult, InputTensor, RequestedOutput
from serving.core.repository import READY
from serving.core.tensors import TensorSpec, to_bytes
from serving.errors import InvalidInputError, ServingError, clip, status_code
from serving.grpc_api.status import abort_with, deadline_of
from serving.versions import parse_version

if TYPE_CHECKING:
    from serving.control import WorkerControl

LOGGER = logging.getLogger(__name__)

SERVER_NAME = "d2lserve"
# Triton's names for the protocol extensions served here.
EXTENSIONS = ["classification", "model_repository", "model_configuration", "statistics"]
UNARY = "kserve"
STREAM = "stream"

# The InferTensorContents field that carries each datatype's typed values (Triton's
# mapping; FP16 has none and must travel as raw contents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _classification_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    """The ``classification`` parameter of a requested output (Triton's extension), or 0."""
    if "classification" not in output.parameters:
        return 0
    parameter = output.parameters["classification"]
    choice = parameter.WhichOneof("parameter_choice")
    if choice == "int64_param":
        count = parameter.int64_param
    elif choice == "uint64_param":
        count = parameter.uint64_param
    else:
        count = 0
    if count < 1:
        raise InvalidInputError(
            f"output '{clip(output.name)}' parameter 'classification' must be a positive "
            "integer (the number of classes to return)"
        )
    return count


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor) -> object:
    """A tensor's typed ``contents`` values for its datatype (None: it has no such field)."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    return None if field is None else getattr(tensor.contents, field)


def request_inputs(request: pb.ModelInferRequest) -> list[InputTensor]:
    """A ModelInferRequest's inputs as the corridor takes them (raw or typed contents)."""
    tensors = request.inputs
    raw = request.raw_input_contents
    if not raw:
        return [InputTensor(t.name, t.datatype, tuple(t.shape), _typed_values(t)) for t in tensors]
    if len(raw) != len(tensors):
        raise InvalidInputError(
            f"request has {len(raw)} raw_input_contents entries for {len(tensors)} "
            "inputs; send raw contents for every input or for none"
        )
    return [
        InputTensor(t.name, t.datatype, tuple(t.shape), data)
        for t, data in zip(tensors, raw, strict=True)
    ]


def inference_request(request: pb.ModelInferRequest) -> InferenceRequest:
    """The corridor's request for a ModelInferRequest (nothing is judged here but the form)."""
    return InferenceRequest(
        request.model_name,
        parse_version(request.model_version),
        request_inputs(request),
        [RequestedOutput(o.name, _classification_count(o)) for o in request.outputs],
        request.id,
    )


def fill_infer_response(response: pb.ModelInferResponse, result: InferenceResult) -> None:
    """Write the answer into ``response`` in place.

    A stream's response embeds its ModelInferResponse: filling it there avoids building
    one and copying it in.
    """
    version = result.version
    response.model_name = version.name
    response.model_version = version.version_text
    response.id = result.request_id
    tensors = response.outputs
    raw = response.raw_output_contents
    for name, datatype, array in result.tensors():
        tensors.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(to_bytes(array))


def infer_response(result: InferenceResult) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse()
    fill_infer_response(response, result)
    return response


def stream_response(result: InferenceResult) -> pb.ModelStreamInferResponse:
    response = pb.ModelStreamInferResponse()
    fill_infer_response(response.infer_response, result)
    return response


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


def _answer_when_done(stream: _Stream, call: Call) -> None:
    """Queue the response (or error) of a stream request once its batch is done."""

    def done(future: asyncio.Future) -> None:
        stream.running.discard(future)
        try:
            response = call.answer(stream_response)
        except asyncio.CancelledError:  # the stream ended first; nobody to answer
            return
        except ServingError as error:
            response = _stream_error(str(error), call.request.id)
        stream.respond(response)

    stream.running.add(call.future)
    call.future.add_done_callback(done)


def _stream_error(message: str, request_id: str) -> pb.ModelStreamInferResponse:
    """An error answer that still names the request it belongs to."""
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(id=request_id)
    )


class InferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 service over the same repository and batchers as Predict."""

    def __init__(
        self,
        corridor: Corridor,
        ready: Callable[[], bool],
        control: WorkerControl | None = None,
    ) -> None:
        self._corridor = corridor
        self._repository = corridor.repository
        self._ready = ready
        self._control = control  # --workers N: statistics and model control over all workers

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
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            version = self._repository.resolve(request.name, parse_version(request.version))
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        model = self._repository.models[request.name]
        ready = sorted(n for n, v in model.versions.items() if v.state == READY)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(n) for n in ready],
            platform=PLATFORM,
            inputs=[_tensor_metadata(spec) for spec in version.inputs],
            outputs=[_tensor_metadata(spec) for spec in version.outputs],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        started = perf_counter()
        corridor = self._corridor
        try:
            inference = inference_request(request)
        except ServingError as error:
            return await abort_with(context, corridor.refused(UNARY, request.model_name, error))
        try:
            return await corridor.infer(
                UNARY, inference, infer_response, deadline_of(context, started), started
            )
        except ServingError as error:
            return await abort_with(context, error)

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
        corridor = self._corridor
        admission = corridor.admission
        if not admission.try_acquire(STREAM):
            stream.respond(_stream_error(admission.refusal(), request.id))
            return
        try:
            try:
                inference = inference_request(request)
            except ServingError as error:
                raise corridor.refused(STREAM, request.model_name, error) from None
            call = corridor.begin(STREAM, inference, None)
        except ServingError as error:
            admission.release()
            stream.respond(_stream_error(str(error), request.id))
            return
        except Exception as error:  # a bug here must not hang the stream
            admission.release()
            LOGGER.error("event=stream_admit_failed error=%r", error, exc_info=error)
            stream.respond(_stream_error(f"internal error: {error!r}", request.id))
            return
        call.future.add_done_callback(lambda _: admission.release())
        _answer_when_done(stream, call)

    # -- Triton's extensions ---------------------------------------------------------

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        try:
            version = self._repository.described(request.name, parse_version(request.version))
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        config = version.config or self._repository.models[request.name].config
        if config is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{version.description} failed before its config was read: {version.reason}",
            )
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        repository = self._repository
        response = pb.ModelStatisticsResponse()
        try:
            number = parse_version(request.version)
            if request.name:
                models = [repository.model(request.name)]
            else:
                models = [repository.models[name] for name in sorted(repository.models)]
            for model in models:
                if number:
                    versions = [repository.version(model.name, number)]
                else:
                    versions = [model.versions[n] for n in sorted(model.versions)]
                for version in versions:
                    if version.state != READY:
                        continue
                    entry = response.model_stats.add(name=model.name, version=str(version.version))
                    version.statistics.into(entry)
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        if self._control is not None:
            await self._control.add_peer_statistics(response)
        return response

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for name, version, state, reason in self._repository.index():
            if request.ready and state != "READY":
                continue
            response.models.add(name=name, version=version, state=state, reason=reason)
        return response

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        try:
            if request.parameters:
                raise InvalidInputError(
                    f"load parameters {sorted(clip(k) for k in request.parameters)} are not "
                    "supported; put the config in the repository"
                )
            if self._control is not None:
                await self._control.load_model(request.model_name)
            else:
                await self._repository.load_model(request.model_name)
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            if self._control is not None:
                await self._control.unload_model(request.model_name)
            else:
                await self._repository.unload_model(request.model_name)
        except ServingError as error:
            await context.abort(status_code(error), str(error))
        return pb.RepositoryModelUnloadResponse()
