"""The edge of every call of our two services: decode the request, admit it, then serve.

grpc.aio deserializes a request before the handler runs, and a deserializer that raises
(random bytes, a truncated message, invalid UTF-8 in a string field) ends the call with
``UNKNOWN: Unexpected <class 'DecodeError'>`` and an ERROR traceback in the log. So the
servicers' handlers are registered here with no deserializer (they receive the raw
bytes), and a wrapper decodes them itself:

* bytes that do not decode are INVALID_ARGUMENT with a short message, counted in
  ``d2lserve_refused_requests_total{reason="undecodable"}`` and logged as at most one
  WARNING per ``WARN_EVERY_SECONDS``, never with a traceback;
* an inference call (Predict, ModelInfer) first takes a slot of the server-wide
  ``Admission``, before decoding, so a refusal costs as little as possible; each message
  of a ModelStreamInfer is admitted by the service itself (it answers a refused message
  with an ``error_message`` and the stream goes on);
* in a stream, a message that does not decode carries no id to answer under: every
  message admitted before it is answered, then the stream ends with INVALID_ARGUMENT.

Health and reflection are registered as they are.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from time import monotonic
from typing import Any

import grpc

from serving.core.admission import RETRY_AFTER_KEY, Admission, RefusalCounter
from serving.errors import clip

LOGGER = logging.getLogger(__name__)

WARN_EVERY_SECONDS = 10.0
UNDECODABLE = "undecodable"


class _Undecodable(Exception):
    """A stream message that is not the expected protobuf (ends the stream)."""


class _Warnings:
    """At most one WARNING per ``every`` seconds; the ones held back are counted in it."""

    def __init__(self, every: float = WARN_EVERY_SECONDS) -> None:
        self._every = every
        self._next = 0.0
        self._held = 0

    def warn(self, method: str, error: str) -> None:
        now = monotonic()
        if now < self._next:
            self._held += 1
            return
        LOGGER.warning(
            "event=undecodable_request method=%s error=%r similar_since_last=%d",
            method,
            error,
            self._held,
        )
        self._held = 0
        self._next = now + self._every


def _type_name(deserializer: Callable[[bytes], Any] | None) -> str:
    """The full protobuf name a deserializer (``Message.FromString``) decodes."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request message")


class Guard:
    """Wraps method handlers: decoding errors become INVALID_ARGUMENT, inference is admitted.

    ``gated`` maps the full method names of the unary inference calls to their ``api``
    label (``predict``, ``kserve``); ``apis`` maps a service name to the ``api`` label its
    undecodable requests are counted under.
    """

    def __init__(
        self,
        admission: Admission,
        gated: Mapping[str, str],
        apis: Mapping[str, str],
        counter: RefusalCounter,
    ) -> None:
        self._admission = admission
        self._gated = dict(gated)
        self._apis = dict(apis)
        self._counter = counter
        self._warnings = _Warnings()

    def registrar(self, server: grpc.aio.Server) -> _Registrar:
        """A stand-in for ``server`` to pass to the generated ``add_..._to_server``."""
        return _Registrar(server, self)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The guarded version of the handler of ``method`` (``/package.Service/Method``)."""
        if handler.request_deserializer is None:
            return handler  # already takes bytes
        api = self._apis.get(method.split("/")[1], "")
        if not handler.request_streaming and not handler.response_streaming:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, api, handler),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, api, handler),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        return handler  # no such methods in our services

    def _undecodable(self, method: str, api: str, expected: str, error: Exception) -> str:
        """Count and (rate-limited) log a request that did not decode; its status message."""
        self._counter.refused(api, UNDECODABLE)
        reason = clip(str(error) or type(error).__name__)
        self._warnings.warn(method, reason)
        return f"the request is not a valid {expected} ({reason}); expected a serialized {expected}"

    def _unary(self, method: str, api: str, handler: grpc.RpcMethodHandler) -> Callable:
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer
        expected = _type_name(deserialize)
        admission = self._admission
        label = self._gated.get(method)

        async def refuse_undecodable(error: Exception, context: grpc.aio.ServicerContext) -> None:
            message = self._undecodable(method, api, expected, error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

        # Decoding is inlined in both handlers (no coroutine of its own): this runs for
        # every call, and each await of a fresh coroutine costs more than the decode.
        if label is None:

            async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    request = deserialize(raw)
                except Exception as error:
                    await refuse_undecodable(error, context)
                return await behavior(request, context)

            return unary

        async def admitted_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            if not admission.try_acquire(label):
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    admission.refusal(),
                    trailing_metadata=((RETRY_AFTER_KEY, str(admission.retry_after_ms)),),
                )
            try:
                try:
                    request = deserialize(raw)
                except Exception as error:
                    await refuse_undecodable(error, context)
                return await behavior(request, context)
            finally:
                admission.release()

        return admitted_unary

    def _stream(self, method: str, api: str, handler: grpc.RpcMethodHandler) -> Callable:
        behavior = handler.stream_stream
        deserialize = handler.request_deserializer
        expected = _type_name(deserialize)

        async def decoded(raw_messages: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            number = 0
            async for raw in raw_messages:
                number += 1
                try:
                    request = deserialize(raw)
                except Exception as error:
                    message = self._undecodable(method, api, expected, error)
                    raise _Undecodable(
                        f"message {number} of the stream: {message}; the messages before it "
                        "were answered"
                    ) from None
                yield request

        async def stream(
            raw_messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for response in behavior(decoded(raw_messages), context):
                    yield response
            except _Undecodable as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        return stream


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers are guarded (each wrapped once, cached)."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        try:
            return self._wrapped[method]
        except KeyError:
            pass
        handler = self._inner.service(details)
        wrapped = None if handler is None else self._guard.wrap(method, handler)
        if handler is not None:  # unknown names are not cached: clients choose them
            self._wrapped[method] = wrapped
        return wrapped


class _Registrar:
    """What the generated ``add_<Service>Servicer_to_server`` registers with, guarded."""

    def __init__(self, server: grpc.aio.Server, guard: Guard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        guarded = tuple(_GuardedGeneric(handler, self._guard) for handler in handlers)
        self._server.add_generic_rpc_handlers(guarded)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        guarded = {name: self._guard.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, guarded)
