"""One request to the server as an awaitable: unary Predict/ModelInfer, or a slot on a stream.

Every caller takes the index of a pre-serialized payload and returns the raw response bytes, or
raises :class:`CallFailed` with the gRPC status code name. Responses are not parsed on the hot
path (unary calls report errors through their status); the stream caller parses each response
only to match it to its request by id.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from protos import grpc_service_pb2
from serving.loadtest.payloads import (
    KSERVE_INFER_PATH,
    KSERVE_STREAM_PATH,
    PREDICT_PATH,
    with_request_id,
)
from serving.metrics import STATUS_CODES

LOGGER = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]
_CODE_PREFIX = re.compile(r"^\s*\[?([A-Z_]+)\]?[:\s]")
STREAM_ERROR = "STREAM_ERROR"  # an error response on a stream that names no status code
_SWEEP_INTERVAL_SECONDS = 0.05


class CallFailed(Exception):
    """A request that did not succeed; ``code`` is a grpc.StatusCode name (or STREAM_ERROR)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


Caller = Callable[[int], Awaitable[bytes]]


class UnaryCaller:
    """Predict or ModelInfer with identity (de)serializers: bytes in, bytes out.

    Calls go round-robin over ``channels`` (one connection each; a server with
    ``--workers N`` hands each connection to one worker).
    """

    def __init__(
        self,
        channels: Sequence[grpc.aio.Channel],
        api: str,
        payloads: list[bytes],
        metadata: Metadata,
        timeout_seconds: float,
    ) -> None:
        path = PREDICT_PATH if api == "predict" else KSERVE_INFER_PATH
        self._methods = [channel.unary_unary(path) for channel in channels]
        self._turn = 0
        self._payloads = payloads
        self._metadata = metadata or None
        self._timeout = timeout_seconds

    async def __call__(self, index: int) -> bytes:
        methods = self._methods
        self._turn = turn = (self._turn + 1) % len(methods)
        try:
            return await methods[turn](
                self._payloads[index], timeout=self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _failure_of(error) from None

    async def close(self) -> None:
        """Nothing to release: unary calls end with their response."""


def code_of_stream_error(message: str) -> str:
    """The status code an error message on a stream starts with, e.g. 'NOT_FOUND: ...'."""
    match = _CODE_PREFIX.match(message)
    if match and match.group(1) in STATUS_CODES:
        return match.group(1)
    return STREAM_ERROR


class _Lane:
    """One ModelStreamInfer stream: writes under a lock, one reader task resolving by id."""

    def __init__(self, call: grpc.aio.StreamStreamCall, timeout_seconds: float) -> None:
        self.call = call
        self.timeout = timeout_seconds
        # request id -> (future, send time); insertion order is send order (used by the sweeper).
        self.pending: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self.lock = asyncio.Lock()
        self.failure: CallFailed | None = None
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self.sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def send(self, payload: bytes, request_id: str) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = (future, time.perf_counter())
        try:
            async with self.lock:
                await self.call.write(with_request_id(payload, request_id))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            self.pending.pop(request_id, None)
            failure = self.failure or _failure_of(error)
            raise failure from None
        return await future

    async def _read(self) -> None:
        parse = grpc_service_pb2.ModelStreamInferResponse.FromString
        try:
            while True:
                raw = await self.call.read()
                if raw is grpc.aio.EOF:
                    break
                response = parse(raw)
                entry = self.pending.pop(response.infer_response.id, None)
                if entry is None and response.error_message and self.pending:
                    # An error response without the request's id: charge the oldest request.
                    entry = self.pending.pop(next(iter(self.pending)))
                if entry is None or entry[0].done():
                    continue
                if response.error_message:
                    code = code_of_stream_error(response.error_message)
                    entry[0].set_exception(CallFailed(code, response.error_message))
                else:
                    entry[0].set_result(raw)
            self._fail_all(CallFailed("UNAVAILABLE", "stream ended with requests unanswered"))
        except grpc.aio.AioRpcError as error:
            self._fail_all(_failure_of(error))
        except asyncio.CancelledError:
            self._fail_all(CallFailed("CANCELLED", "stream closed by the load tester"))
            raise

    async def _sweep(self) -> None:
        """Fail requests older than the deadline; the stream itself stays open."""
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL_SECONDS)
            cutoff = time.perf_counter() - self.timeout
            while self.pending:
                request_id, (future, sent) = next(iter(self.pending.items()))
                if sent > cutoff:
                    break
                del self.pending[request_id]
                if not future.done():
                    future.set_exception(
                        CallFailed("DEADLINE_EXCEEDED", "no response within the deadline")
                    )

    def _fail_all(self, failure: CallFailed) -> None:
        self.failure = failure
        pending, self.pending = self.pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(failure)

    @property
    def broken(self) -> bool:
        return self.failure is not None or self.reader.done()

    async def close(self) -> None:
        self.sweeper.cancel()
        if not self.reader.done():
            try:
                async with self.lock:
                    await self.call.done_writing()
                await asyncio.wait_for(asyncio.shield(self.reader), timeout=1.0)
            except (
                grpc.aio.AioRpcError,
                grpc.aio.UsageError,
                TimeoutError,
                asyncio.InvalidStateError,
            ):
                pass
        self.reader.cancel()
        self.call.cancel()
        await asyncio.gather(self.reader, self.sweeper, return_exceptions=True)


def _failure_of(error: BaseException) -> CallFailed:
    if isinstance(error, grpc.aio.AioRpcError):
        return CallFailed(error.code().name, error.details() or "")
    return CallFailed("UNAVAILABLE", f"stream unusable: {error}")


class StreamCaller:
    """ModelStreamInfer: requests spread round-robin over ``streams`` long-lived streams.

    Stream ``i`` opens on channel ``i % len(channels)``.

    A stream that breaks fails its pending requests with the stream's status code and is
    reopened by the next request.
    """

    def __init__(
        self,
        channels: Sequence[grpc.aio.Channel],
        payloads: list[bytes],
        metadata: Metadata,
        timeout_seconds: float,
        streams: int,
        stream_deadline_seconds: float,
    ) -> None:
        self._opens = [channel.stream_stream(KSERVE_STREAM_PATH) for channel in channels]
        self._payloads = payloads
        self._metadata = metadata or None
        self._timeout = timeout_seconds
        self._stream_deadline = stream_deadline_seconds
        self._lanes: list[_Lane | None] = [None] * streams
        self._turn = 0
        self._next_id = 0

    def _lane(self) -> _Lane:
        self._turn = (self._turn + 1) % len(self._lanes)
        lane = self._lanes[self._turn]
        if lane is None or lane.broken:
            if lane is not None:
                asyncio.get_running_loop().create_task(lane.close())
            open_stream = self._opens[self._turn % len(self._opens)]
            call = open_stream(metadata=self._metadata, timeout=self._stream_deadline)
            lane = self._lanes[self._turn] = _Lane(call, self._timeout)
        return lane

    async def __call__(self, index: int) -> bytes:
        self._next_id += 1
        return await self._lane().send(self._payloads[index], str(self._next_id))

    async def close(self) -> None:
        lanes = [lane for lane in self._lanes if lane is not None]
        self._lanes = [None] * len(self._lanes)
        await asyncio.gather(*(lane.close() for lane in lanes), return_exceptions=True)
