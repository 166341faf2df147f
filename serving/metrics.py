"""Prometheus metrics of the inference server, defined once against an injected registry.

Naming follows Prometheus conventions: namespace ``d2lserve``, base units (``_seconds``), counters
end in ``_total``, labels are bounded (``model``/``version`` from the repository, ``api`` from a
fixed set, ``code`` a gRPC status name, ``reason``/``state`` from fixed sets).

The request path only touches :class:`VersionMetrics`, whose label children are resolved once per
(model, version) when it is created, so a request costs a few dict/attribute lookups and
``inc()``/``observe()`` calls, never ``labels()``. ``ServingMetrics(enabled=False)`` (the server's
``--no-metrics``) turns every method into a no-op, for the on/off comparison in the benchmark.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from serving.shared_metrics import multiprocess_enabled

LOGGER = logging.getLogger(__name__)

NAMESPACE = "d2lserve"
APIS = ("predict", "kserve", "stream")
MODEL_STATES = ("loading", "ready", "failed")
DROP_REASONS = ("deadline", "cancelled", "queue_timeout")
STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)
UNKNOWN_MODEL = "_unknown"
# Sub-millisecond (a small MLP on CPU) up to seconds (a big batch on a slow host).
LATENCY_BUCKETS_SECONDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Rows per session.run: powers of two up to the largest max_batch_size we expect.
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024

_MV = ("model", "version")
REFUSAL_REASONS = ("concurrency_limit", "undecodable")
# Event-loop lag: a healthy loop is late by well under a millisecond.
LOOP_LAG_BUCKETS_SECONDS = LATENCY_BUCKETS_SECONDS[2:-1]  # 0.5 ms .. 2.5 s


class MetricsError(ValueError):
    """A metric was given a label value outside its bounded set (a programming error)."""


def _check_member(what: str, value: str, allowed: tuple[str, ...] | frozenset[str]) -> None:
    if value not in allowed:
        raise MetricsError(f"{what} {value!r} is not one of {sorted(allowed)}")


class _Families:
    """Every metric family of the server, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        common: dict[str, Any] = {"namespace": NAMESPACE, "registry": registry}
        self.requests = Counter(
            "requests_total",
            "Finished inference requests by API and gRPC status code.",
            [*_MV, "api", "code"],
            **common,
        )
        self.request_duration = Histogram(
            "request_duration_seconds",
            "End-to-end server-side request duration (decode, queue, compute, encode).",
            [*_MV, "api"],
            buckets=LATENCY_BUCKETS_SECONDS,
            **common,
        )
        self.inferred_rows = Counter(
            "inferred_rows_total", "Rows (samples) answered by successful requests.", _MV, **common
        )
        self.queue_duration = Histogram(
            "queue_duration_seconds",
            "Time a request waited in the batch queue before its execution started.",
            _MV,
            buckets=LATENCY_BUCKETS_SECONDS,
            **common,
        )
        self.compute_duration = Histogram(
            "compute_duration_seconds",
            "Duration of one session.run (one batch).",
            _MV,
            buckets=LATENCY_BUCKETS_SECONDS,
            **common,
        )
        self.decode_duration = Histogram(
            "decode_duration_seconds",
            "Time to decode and validate a request's input tensor.",
            _MV,
            buckets=LATENCY_BUCKETS_SECONDS,
            **common,
        )
        self.encode_duration = Histogram(
            "encode_duration_seconds",
            "Time to encode a response's output tensors.",
            _MV,
            buckets=LATENCY_BUCKETS_SECONDS,
            **common,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Rows per execution (session.run) after dynamic batching.",
            _MV,
            buckets=BATCH_SIZE_BUCKETS,
            **common,
        )
        self.executions = Counter(
            "executions_total", "Executions (session.run calls).", _MV, **common
        )
        # multiprocess_mode: how --workers N aggregates a gauge (serving/shared_metrics.py).
        self.queue_depth = Gauge(
            "queue_depth",
            "Requests waiting in the batch queue.",
            _MV,
            multiprocess_mode="liveall",
            **common,
        )
        self.inflight = Gauge(
            "inflight_requests",
            "Requests accepted and not yet answered.",
            _MV,
            multiprocess_mode="livesum",
            **common,
        )
        self.queue_rejections = Counter(
            "queue_rejections_total",
            "Requests refused with RESOURCE_EXHAUSTED because the batch queue was full.",
            _MV,
            **common,
        )
        self.dropped = Counter(
            "dropped_requests_total",
            "Queued requests dropped before execution (deadline expired, client cancelled, or "
            "queued longer than the queue policy's timeout).",
            [*_MV, "reason"],
            **common,
        )
        self.model_state = Gauge(
            "model_state",
            "1 for the current state of a model version (loading, ready, failed), else 0.",
            [*_MV, "state"],
            multiprocess_mode="livemax",
            **common,
        )
        self.load_failures = Counter(
            "model_load_failures_total",
            "Model versions that failed to load or warm up.",
            ["model"],
            **common,
        )
        self.last_scan = Gauge(
            "repository_last_scan_timestamp_seconds",
            "Unix time of the last completed model-repository scan.",
            multiprocess_mode="livemin",
            **common,
        )
        self.runtime: Info | Gauge
        if multiprocess_enabled():  # Info does not work across processes; the same sample
            self.runtime = Gauge(
                "runtime_info",
                "ONNX Runtime execution provider and version.",
                ["provider", "onnxruntime_version"],
                multiprocess_mode="livemax",
                **common,
            )
        else:
            self.runtime = Info("runtime", "ONNX Runtime execution provider and version.", **common)
        # Overload, seen where it happens: in front of the handlers (serving/core/admission.py,
        # serving/grpc_api/guard.py) and on the event loop (serving/loop_monitor.py).
        self.calls_in_server = Gauge(
            "calls_in_server",
            "Calls inside the server as admission control counts them: received by gRPC "
            "(those not yet handed to a handler included) and not finished.",
            multiprocess_mode="livesum",
            **common,
        )
        self.admission_limit = Gauge(
            "admission_limit",
            "Most calls in the server before inference requests are refused "
            "(--max-concurrent-rpcs; summed over the workers).",
            multiprocess_mode="livesum",
            **common,
        )
        self.refused = Counter(
            "refused_requests_total",
            "Requests refused before reaching a model: over the admission limit "
            "(RESOURCE_EXHAUSTED) or undecodable (INVALID_ARGUMENT).",
            ["api", "reason"],
            **common,
        )
        self.loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late a timer on the server's event loop fires (sampled every "
            "0.1 s): time every callback waits before it runs.",
            buckets=LOOP_LAG_BUCKETS_SECONDS,
            **common,
        )


class VersionMetrics:
    """Metrics of one (model, version), with label children resolved up front.

    Created by :meth:`ServingMetrics.for_version`; every method is on the request path and cheap.
    """

    def __init__(self, families: _Families, model: str, version: int) -> None:
        self._families = families
        self.model = model
        self.version = str(version)
        mv = (model, self.version)
        # (api, code) -> counter child. "OK" pre-created per API so rate() works from the start;
        # other codes are added on first use (bounded by the gRPC status names).
        self._requests: dict[tuple[str, str], Any] = {
            (api, "OK"): families.requests.labels(*mv, api, "OK") for api in APIS
        }
        self._durations = {api: families.request_duration.labels(*mv, api) for api in APIS}
        self._rows = families.inferred_rows.labels(*mv)
        self._queue = families.queue_duration.labels(*mv)
        self._compute = families.compute_duration.labels(*mv)
        self._decode = families.decode_duration.labels(*mv)
        self._encode = families.encode_duration.labels(*mv)
        self._batch = families.batch_size.labels(*mv)
        self._executions = families.executions.labels(*mv)
        self._depth = families.queue_depth.labels(*mv)
        self._inflight = families.inflight.labels(*mv)
        self._rejections = families.queue_rejections.labels(*mv)
        self._dropped = {r: families.dropped.labels(*mv, r) for r in DROP_REASONS}
        self._lock = threading.Lock()

    def _request_child(self, api: str, code: str) -> Any:
        """Resolve (and cache) the counter child of a new (api, code); validates both."""
        _check_member("api", api, APIS)
        _check_member("code", code, STATUS_CODES)
        with self._lock:
            child = self._requests.get((api, code))
            if child is None:
                child = self._families.requests.labels(self.model, self.version, api, code)
                self._requests = {**self._requests, (api, code): child}
        return child

    def request_finished(self, api: str, code: str, seconds: float, rows: int) -> None:
        """Count a finished request; ``rows`` are counted only when ``code`` is "OK"."""
        child = self._requests.get((api, code))
        if child is None:
            child = self._request_child(api, code)
        child.inc()
        self._durations[api].observe(seconds)
        if code == "OK":
            self._rows.inc(rows)

    def queue_wait(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def execution(self, rows: int, seconds: float) -> None:
        """One session.run over ``rows`` rows that took ``seconds``."""
        self._batch.observe(rows)
        self._executions.inc()
        self._compute.observe(seconds)

    def decode(self, seconds: float) -> None:
        self._decode.observe(seconds)

    def encode(self, seconds: float) -> None:
        self._encode.observe(seconds)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def inflight(self, delta: int) -> None:
        self._inflight.inc(delta)

    def rejected_queue_full(self) -> None:
        self._rejections.inc()

    def dropped(self, reason: str) -> None:
        """A queued request was skipped; ``reason`` is "deadline" or "cancelled"."""
        try:
            child = self._dropped[reason]
        except KeyError:
            _check_member("drop reason", reason, DROP_REASONS)
            raise
        child.inc()

    def label_sets(self) -> list[tuple[Any, tuple[str, ...]]]:
        """(family, label values) of every child this version created, for removal."""
        f = self._families
        mv = (self.model, self.version)
        sets: list[tuple[Any, tuple[str, ...]]] = [
            (f.requests, (*mv, api, code)) for api, code in self._requests
        ]
        sets += [(f.request_duration, (*mv, api)) for api in APIS]
        sets += [(f.dropped, (*mv, reason)) for reason in DROP_REASONS]
        sets += [
            (family, mv)
            for family in (
                f.inferred_rows,
                f.queue_duration,
                f.compute_duration,
                f.decode_duration,
                f.encode_duration,
                f.batch_size,
                f.executions,
                f.queue_depth,
                f.inflight,
                f.queue_rejections,
            )
        ]
        return sets


class _NoopVersionMetrics(VersionMetrics):
    """What ``--no-metrics`` hands out: same interface, does nothing."""

    def __init__(self) -> None:  # no families, no children
        self.model = ""
        self.version = ""

    def request_finished(self, api: str, code: str, seconds: float, rows: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def execution(self, rows: int, seconds: float) -> None:
        pass

    def decode(self, seconds: float) -> None:
        pass

    def encode(self, seconds: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def inflight(self, delta: int) -> None:
        pass

    def rejected_queue_full(self) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass

    def label_sets(self) -> list[tuple[Any, tuple[str, ...]]]:
        return []


# Shared by --no-metrics and by components created without metrics (unit tests).
NOOP_VERSION_METRICS = _NoopVersionMetrics()


def default_registry() -> CollectorRegistry:
    """A fresh registry with prometheus-client's process, platform and GC collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ServingMetrics:
    """All server metrics; the server creates one and passes it to the components that report."""

    def __init__(self, registry: CollectorRegistry | None = None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = registry if registry is not None else default_registry()
        self._families = _Families(self.registry) if enabled else None
        self._versions: dict[tuple[str, int], VersionMetrics] = {}
        self._unresolved: dict[tuple[str, str, str], Any] = {}
        self._refused: dict[tuple[str, str], Any] = {}
        if self._families is not None:  # every refusal series exists from the start
            for api in APIS:
                for reason in REFUSAL_REASONS:
                    self._families.refused.labels(api, reason)
        self._lock = threading.Lock()
        self._httpd: Any = None

    def for_version(self, model: str, version: int) -> VersionMetrics:
        """The (cached) metrics of one model version; creates its label sets on first call."""
        if self._families is None:
            return NOOP_VERSION_METRICS
        key = (model, version)
        metrics = self._versions.get(key)
        if metrics is None:
            with self._lock:
                metrics = self._versions.get(key)
                if metrics is None:
                    metrics = VersionMetrics(self._families, model, version)
                    self._families.load_failures.labels(model)
                    self._versions[key] = metrics
        return metrics

    def forget_version(self, model: str, version: int) -> None:
        """Remove every label set of an unloaded version so it stops being exported."""
        if self._families is None:
            return
        with self._lock:
            metrics = self._versions.pop((model, version), None)
        if metrics is not None:
            for family, labels in metrics.label_sets():
                family.remove(*labels)
        for state in MODEL_STATES:
            self._families.model_state.remove(model, str(version), state)

    def set_model_state(self, model: str, version: int, state: str) -> None:
        """Set ``d2lserve_model_state`` to 1 for ``state`` and 0 for the other states."""
        if self._families is None:
            return
        _check_member("model state", state, MODEL_STATES)
        for name in MODEL_STATES:
            self._families.model_state.labels(model, str(version), name).set(
                1 if name == state else 0
            )
        self._families.load_failures.labels(model)

    def load_failed(self, model: str) -> None:
        if self._families is None:
            return
        self._families.load_failures.labels(model).inc()

    def repository_scanned(self, when: float | None = None) -> None:
        """Record a completed repository scan at ``when`` (Unix seconds; now when omitted)."""
        if self._families is None:
            return
        self._families.last_scan.set(time.time() if when is None else when)

    def set_runtime_info(self, provider: str, onnxruntime_version: str) -> None:
        if self._families is None:
            return
        runtime = self._families.runtime
        if isinstance(runtime, Info):
            runtime.info({"provider": provider, "onnxruntime_version": onnxruntime_version})
        else:
            runtime.labels(provider, onnxruntime_version).set(1)

    def request_unresolved(self, api: str, code: str, model: str = UNKNOWN_MODEL) -> None:
        """Count a request that failed before a version was resolved (``version=""``).

        Pass ``model`` only when it names a model the server knows, so labels stay bounded.
        """
        if self._families is None:
            return
        key = (api, code, model)
        child = self._unresolved.get(key)
        if child is None:
            _check_member("api", api, APIS)
            _check_member("code", code, STATUS_CODES)
            child = self._families.requests.labels(model, "", api, code)
            with self._lock:
                self._unresolved[key] = child
        child.inc()

    def start_http_server(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on host:port from a daemon thread; returns the bound port.

        ``port`` 0 picks a free port (tests). With metrics disabled nothing is served and 0 is
        returned.
        """
        if not self.enabled:
            LOGGER.info("metrics disabled; not serving /metrics")
            return 0
        if self._httpd is not None:
            raise MetricsError(
                f"metrics HTTP server already running on port {self._httpd.server_port}"
            )
        self._httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._httpd.server_port)
        LOGGER.info("serving metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http_server(self) -> None:
        """Stop the ``/metrics`` server if it runs (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    # -- overload (admission, undecodable requests, event-loop lag) ------------------------

    def watch_admission(self, in_server: Callable[[], float], limit: Callable[[], float]) -> None:
        """Export the calls in the server and the limit, read at scrape time (no request cost)."""
        if self._families is None:
            return
        self._families.calls_in_server.set_function(in_server)
        self._families.admission_limit.set_function(limit)

    def refused(self, api: str, reason: str) -> None:
        """Count a request refused before reaching a model (``reason`` in REFUSAL_REASONS)."""
        if self._families is None:
            return
        key = (api, reason)
        child = self._refused.get(key)
        if child is None:
            _check_member("api", api, APIS)
            _check_member("refusal reason", reason, REFUSAL_REASONS)
            child = self._families.refused.labels(api, reason)
            with self._lock:
                self._refused = {**self._refused, key: child}
        child.inc()

    def loop_lag(self, seconds: float) -> None:
        if self._families is None:
            return
        self._families.loop_lag.observe(seconds)
