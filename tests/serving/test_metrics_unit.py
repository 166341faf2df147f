"""Unit tests of serving/metrics.py against a fresh, injected registry."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from serving.metrics import APIS, MetricsError, ServingMetrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ServingMetrics:
    return ServingMetrics(registry)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


MV = {"model": "mlp", "version": "3"}


def test_first_use_of_a_version_preinitialises_ok_counters_for_every_api(metrics, registry):
    metrics.for_version("mlp", 3)
    for api in APIS:
        assert sample(registry, "d2lserve_requests_total", **MV, api=api, code="OK") == 0.0
        assert sample(registry, "d2lserve_request_duration_seconds_count", **MV, api=api) == 0.0
    assert sample(registry, "d2lserve_dropped_requests_total", **MV, reason="deadline") == 0.0
    assert sample(registry, "d2lserve_model_load_failures_total", model="mlp") == 0.0


def test_for_version_is_cached_per_model_and_version(metrics):
    assert metrics.for_version("mlp", 3) is metrics.for_version("mlp", 3)
    assert metrics.for_version("mlp", 3) is not metrics.for_version("mlp", 4)


def test_request_counters_move_by_expected_amounts(metrics, registry):
    vm = metrics.for_version("mlp", 3)
    for _ in range(5):
        vm.request_finished("predict", "OK", 0.002, rows=4)
    for _ in range(2):
        vm.request_finished("predict", "INVALID_ARGUMENT", 0.0001, rows=7)
    vm.request_finished("kserve", "OK", 0.3, rows=1)

    assert sample(registry, "d2lserve_requests_total", **MV, api="predict", code="OK") == 5
    assert (
        sample(registry, "d2lserve_requests_total", **MV, api="predict", code="INVALID_ARGUMENT")
        == 2
    )
    assert sample(registry, "d2lserve_requests_total", **MV, api="kserve", code="OK") == 1
    # Rows only of successful requests: 5 * 4 + 1.
    assert sample(registry, "d2lserve_inferred_rows_total", **MV) == 21
    assert sample(registry, "d2lserve_request_duration_seconds_count", **MV, api="predict") == 7
    assert sample(
        registry, "d2lserve_request_duration_seconds_sum", **MV, api="predict"
    ) == pytest.approx(5 * 0.002 + 2 * 0.0001)
    # 0.002 falls into le=0.0025, not le=0.001.
    assert (
        sample(
            registry, "d2lserve_request_duration_seconds_bucket", **MV, api="predict", le="0.001"
        )
        == 2
    )
    assert (
        sample(
            registry, "d2lserve_request_duration_seconds_bucket", **MV, api="predict", le="0.0025"
        )
        == 7
    )
    assert (
        sample(registry, "d2lserve_request_duration_seconds_bucket", **MV, api="kserve", le="0.25")
        == 0
    )


def test_batching_metrics(metrics, registry):
    vm = metrics.for_version("mlp", 3)
    vm.execution(rows=1, seconds=0.001)
    vm.execution(rows=8, seconds=0.004)
    vm.execution(rows=6, seconds=0.003)
    vm.queue_wait(0.0004)
    vm.decode(0.00005)
    vm.encode(0.00002)
    vm.queue_depth(7)
    vm.inflight(+3)
    vm.inflight(-1)
    vm.rejected_queue_full()
    vm.rejected_queue_full()
    vm.dropped("deadline")
    vm.dropped("cancelled")
    vm.dropped("cancelled")

    assert sample(registry, "d2lserve_executions_total", **MV) == 3
    assert sample(registry, "d2lserve_batch_size_count", **MV) == 3
    assert sample(registry, "d2lserve_batch_size_sum", **MV) == 15
    assert sample(registry, "d2lserve_batch_size_bucket", **MV, le="1.0") == 1
    assert sample(registry, "d2lserve_batch_size_bucket", **MV, le="4.0") == 1
    assert sample(registry, "d2lserve_batch_size_bucket", **MV, le="8.0") == 3
    assert sample(registry, "d2lserve_compute_duration_seconds_sum", **MV) == pytest.approx(0.008)
    assert sample(registry, "d2lserve_queue_duration_seconds_count", **MV) == 1
    assert sample(registry, "d2lserve_decode_duration_seconds_count", **MV) == 1
    assert sample(registry, "d2lserve_encode_duration_seconds_count", **MV) == 1
    assert sample(registry, "d2lserve_queue_depth", **MV) == 7
    assert sample(registry, "d2lserve_inflight_requests", **MV) == 2
    assert sample(registry, "d2lserve_queue_rejections_total", **MV) == 2
    assert sample(registry, "d2lserve_dropped_requests_total", **MV, reason="deadline") == 1
    assert sample(registry, "d2lserve_dropped_requests_total", **MV, reason="cancelled") == 2


def test_model_state_is_one_hot(metrics, registry):
    metrics.set_model_state("mlp", 3, "loading")
    metrics.set_model_state("mlp", 3, "ready")
    assert sample(registry, "d2lserve_model_state", **MV, state="ready") == 1
    assert sample(registry, "d2lserve_model_state", **MV, state="loading") == 0
    assert sample(registry, "d2lserve_model_state", **MV, state="failed") == 0
    with pytest.raises(MetricsError, match="'broken'"):
        metrics.set_model_state("mlp", 3, "broken")


def test_model_level_metrics(metrics, registry):
    metrics.load_failed("cnn")
    metrics.load_failed("cnn")
    metrics.repository_scanned(1234.5)
    metrics.set_runtime_info("CPUExecutionProvider", "1.31.1")
    assert sample(registry, "d2lserve_model_load_failures_total", model="cnn") == 2
    assert sample(registry, "d2lserve_repository_last_scan_timestamp_seconds") == 1234.5
    assert (
        sample(
            registry,
            "d2lserve_runtime_info",
            provider="CPUExecutionProvider",
            onnxruntime_version="1.31.1",
        )
        == 1
    )


def test_unresolved_requests_use_an_empty_version(metrics, registry):
    metrics.request_unresolved("predict", "NOT_FOUND")
    metrics.request_unresolved("predict", "NOT_FOUND")
    metrics.request_unresolved("kserve", "NOT_FOUND", model="mlp")
    labels = {"version": "", "code": "NOT_FOUND"}
    assert (
        sample(registry, "d2lserve_requests_total", model="_unknown", api="predict", **labels) == 2
    )
    assert sample(registry, "d2lserve_requests_total", model="mlp", api="kserve", **labels) == 1


def test_label_values_outside_their_bounded_sets_are_refused(metrics):
    vm = metrics.for_version("mlp", 3)
    with pytest.raises(MetricsError, match="api 'rest'"):
        vm.request_finished("rest", "OK", 0.1, rows=1)
    with pytest.raises(MetricsError, match="code 'BOOM'"):
        vm.request_finished("predict", "BOOM", 0.1, rows=1)
    with pytest.raises(MetricsError, match="drop reason 'timeout'"):
        vm.dropped("timeout")
    with pytest.raises(MetricsError, match="api 'http'"):
        metrics.request_unresolved("http", "NOT_FOUND")


def test_forget_version_removes_its_label_sets(metrics, registry):
    keep = metrics.for_version("mlp", 4)
    gone = metrics.for_version("mlp", 3)
    metrics.set_model_state("mlp", 3, "ready")
    gone.request_finished("predict", "INVALID_ARGUMENT", 0.001, rows=1)
    gone.execution(rows=2, seconds=0.001)
    keep.request_finished("predict", "OK", 0.001, rows=1)

    metrics.forget_version("mlp", 3)

    exported = [
        s.labels
        for family in registry.collect()
        for s in family.samples
        if s.labels.get("model") == "mlp" and s.labels.get("version") == "3"
    ]
    assert exported == []
    v4 = {"model": "mlp", "version": "4"}
    assert sample(registry, "d2lserve_requests_total", **v4, api="predict", code="OK") == 1
    # Seen again later (reloaded): starts from fresh children.
    again = metrics.for_version("mlp", 3)
    assert again is not gone
    assert sample(registry, "d2lserve_executions_total", **MV) == 0


def test_disabled_metrics_are_a_no_op(registry):
    metrics = ServingMetrics(registry, enabled=False)
    vm = metrics.for_version("mlp", 3)
    vm.request_finished("predict", "OK", 0.1, rows=1)
    vm.queue_wait(0.1)
    vm.execution(rows=4, seconds=0.1)
    vm.decode(0.1)
    vm.encode(0.1)
    vm.queue_depth(3)
    vm.inflight(1)
    vm.rejected_queue_full()
    vm.dropped("deadline")
    metrics.set_model_state("mlp", 3, "ready")
    metrics.load_failed("mlp")
    metrics.repository_scanned()
    metrics.set_runtime_info("CPUExecutionProvider", "1.31.1")
    metrics.request_unresolved("predict", "NOT_FOUND")
    metrics.forget_version("mlp", 3)
    assert metrics.start_http_server("127.0.0.1", 0) == 0
    assert list(registry.collect()) == []


def test_default_registry_has_process_and_python_collectors():
    metrics = ServingMetrics()
    names = {family.name for family in metrics.registry.collect()}
    assert "python_info" in names
    assert "python_gc_objects_collected" in names
    assert "process_cpu_seconds" in names or "process_resident_memory_bytes" in names
    assert "d2lserve_requests" in names


def test_http_endpoint_serves_the_text_format(metrics):
    metrics.for_version("mlp", 3).request_finished("predict", "OK", 0.001, rows=2)
    port = metrics.start_http_server("127.0.0.1", 0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = response.read().decode()
        assert (
            'd2lserve_requests_total{api="predict",code="OK",model="mlp",version="3"} 1.0' in body
        )
        assert "# TYPE d2lserve_request_duration_seconds histogram" in body
        with pytest.raises(MetricsError, match="already running"):
            metrics.start_http_server("127.0.0.1", 0)
    finally:
        metrics.stop_http_server()
    metrics.stop_http_server()  # idempotent
