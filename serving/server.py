"""Assembly of the grpc.aio server: services, health, reflection, TLS, auth, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import grpc_service_pb2, grpc_service_pb2_grpc, predict_pb2, predict_pb2_grpc
from serving.config import ServerSettings
from serving.control import WorkerContext, WorkerControl
from serving.core.admission import Admission, default_limit, sample_core_calls
from serving.core.corridor import Corridor
from serving.core.repository import Repository
from serving.core.runtime import Runtime
from serving.errors import SettingsError
from serving.grpc_api.guard import Guard
from serving.grpc_api.kserve import InferenceService
from serving.grpc_api.predict import PredictionService
from serving.loop_monitor import LoopMonitor
from serving.metrics import ServingMetrics

LOGGER = logging.getLogger(__name__)

PREDICT_SERVICE = predict_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
KSERVE_SERVICE = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Inference calls that take an admission slot, with their metrics ``api`` label (each
# message of ModelStreamInfer takes one inside the service).
ADMITTED_METHODS = {
    f"/{PREDICT_SERVICE}/Predict": "predict",
    f"/{KSERVE_SERVICE}/ModelInfer": "kserve",
}
SERVICE_APIS = {PREDICT_SERVICE: "predict", KSERVE_SERVICE: "kserve"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED unless ``authorization: Bearer <token>``; health stays open."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return handler
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                # RFC 6750: the scheme is case-insensitive ("bearer" is "Bearer").
                scheme, _, token = given.strip().partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(
                    token.strip(), self._expected
                ):
                    return handler
                return _refuse(handler, "the bearer token in 'authorization' is not valid")
        return _refuse(handler, "missing 'authorization: Bearer <token>' metadata")


def _refuse(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def deny(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class Server:
    """One serving process: call ``run()`` and it returns once shut down gracefully."""

    def __init__(self, settings: ServerSettings, worker: WorkerContext | None = None) -> None:
        self.settings = settings
        self.worker = worker  # one of --workers N processes; None: the whole server
        self.runtime = Runtime.create(settings.runtime)
        self.metrics = ServingMetrics(enabled=settings.metrics_enabled)
        self.metrics.set_runtime_info(self.runtime.provider, self.runtime.version)
        self.health = health.aio.HealthServicer()
        self.repository = Repository(
            settings.model_repository,
            self.runtime,
            settings.batching,
            self.metrics,
            on_change=self._model_health,
            control_mode=settings.model_control_mode,
            startup_models=settings.load_models,
        )
        self.admission = Admission(
            settings.max_concurrent_rpcs or default_limit(()), refused=self.metrics
        )
        self.metrics.watch_admission(self.admission.in_server, lambda: self.admission.limit)
        self.corridor = Corridor(self.repository, self.admission)
        self.loop_monitor = LoopMonitor(self.metrics.loop_lag)
        self._ready = False
        self.control = (
            WorkerControl(worker, self.repository, self._locally_ready, self._set_health)
            if worker is not None
            else None
        )
        self._stopping = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = 0

    def _model_health(self, name: str, serving: bool) -> None:
        self._update_admission_limit()
        task = asyncio.get_running_loop().create_task(
            self.health.set(name, SERVING if serving else NOT_SERVING)
        )
        task.add_done_callback(lambda t: t.exception())

    def _update_admission_limit(self) -> None:
        """Without --max-concurrent-rpcs, admit what the loaded versions' batchers hold."""
        if self.settings.max_concurrent_rpcs is not None:
            return
        policies = [
            version.policy
            for model in self.repository.models.values()
            for version in model.versions.values()
        ]
        limit = default_limit(policies)
        if limit != self.admission.limit:
            LOGGER.debug("event=admission_limit limit=%d", limit)
            self.admission.limit = limit

    def _locally_ready(self) -> bool:
        return self._ready and not self._stopping.is_set()

    def is_ready(self) -> bool:
        """Ready to serve; with --workers N, only while every worker is."""
        return self._locally_ready() and (self.control is None or self.control.all_ready)

    async def _set_health(self, serving: bool) -> None:
        for name in ("", PREDICT_SERVICE, KSERVE_SERVICE):
            await self.health.set(name, SERVING if serving else NOT_SERVING)

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            LOGGER.info("event=shutdown_requested grace_s=%s", self.settings.grace_seconds)
            self._stopping.set()

    def _build(self) -> grpc.aio.Server:
        settings = self.settings
        interceptors = [BearerTokenInterceptor(settings.auth_token)] if settings.auth_token else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Refuse a port another process holds instead of silently sharing it;
                # the workers of one server share theirs (the supervisor holds it).
                ("grpc.so_reuseport", 0 if self.worker is None else 1),
                # Admission counts the calls in the core through channelz (on by default).
                ("grpc.enable_channelz", 1),
            ],
        )
        # Our services take raw bytes and decode (and admit) them in serving/grpc_api/guard.py.
        guarded = Guard(self.admission, ADMITTED_METHODS, SERVICE_APIS, self.metrics).registrar(
            server
        )
        predict_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.corridor, self.runtime.provider, self.control), guarded
        )
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(self.corridor, self.is_ready, self.control),
            guarded,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (PREDICT_SERVICE, KSERVE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        address = f"{settings.host}:{settings.grpc_port}"
        try:
            if settings.tls:
                assert settings.tls_cert is not None and settings.tls_key is not None
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
                )
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as error:  # grpc reports a failed bind this way
            raise SettingsError(f"cannot listen on {address}: {error}") from error
        return server

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or ``request_stop``), then drain and return 0."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        for name in ("", PREDICT_SERVICE, KSERVE_SERVICE):
            await self.health.set(name, NOT_SERVING)
        self._grpc = self._build()
        self.loop_monitor.start()
        core_calls = loop.create_task(sample_core_calls(self.admission), name="core calls")
        await self._grpc.start()
        LOGGER.info(
            "event=listening address=%s:%d tls=%s auth=%s max_message_bytes=%d "
            "max_concurrent_rpcs=%s",
            settings.host,
            self.port,
            settings.tls,
            settings.auth_token is not None,
            settings.max_message_bytes,
            settings.max_concurrent_rpcs or "auto",
        )
        if settings.metrics_enabled and self.worker is None:  # workers: the supervisor serves
            self.metrics_port = self.metrics.start_http_server(settings.host, settings.metrics_port)
            LOGGER.info("event=metrics_listening port=%d", self.metrics_port)
        watcher: asyncio.Task[None] | None = None
        try:
            if self.control is not None:
                await self.control.start()
                await self.control.catch_up()
            missing = self.repository.missing_startup_models()
            if missing:
                raise SettingsError(
                    f"--load-model {', '.join(missing)}: not a folder of "
                    f"{settings.model_repository}"
                )
            await self.repository.scan()
            self._update_admission_limit()
            self._ready = True
            if self.control is None:
                await self._set_health(True)
            else:
                self.control.watch_health()  # SERVING once every worker is ready
            LOGGER.info(
                "event=ready models=%s max_concurrent_rpcs=%d",
                ",".join(sorted(self.repository.models)),
                self.admission.limit,
            )
            if settings.polling:
                watcher = loop.create_task(
                    self.repository.watch(settings.poll_interval_seconds), name="repository watch"
                )
            await self._stopping.wait()
        finally:
            core_calls.cancel()
            await self._shutdown(watcher)
        return 0

    async def _shutdown(self, watcher: asyncio.Task[None] | None) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.health.enter_graceful_shutdown()
        if self.control is not None:
            await self.control.close()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self._grpc is not None:
            # New calls are refused; calls in flight (queued in batchers too) may finish.
            await self._grpc.stop(self.settings.grace_seconds)
        remaining = max(self.settings.grace_seconds - (loop.time() - started), 1.0)
        await self.repository.close(remaining)
        await self.loop_monitor.stop()
        self.metrics.stop_http_server()
        LOGGER.info("event=stopped seconds=%.3f", loop.time() - started)
