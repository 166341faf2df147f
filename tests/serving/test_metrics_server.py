"""The live server's /metrics move by the expected amounts for known traffic.

The session ``server`` is shared with other tests, so every check compares a scrape taken
before this test's traffic with one taken after it (tests run one at a time).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from serving_support import (
    SLOW_ROW,
    delta,
    drops_of,
    expire_one_while_queued,
    scrape,
    settle,
    value,
)

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc
from serving.client import Client, predict_request

MLP_ROW = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)


def codes_of(calls: list[grpc.Future]) -> list[grpc.StatusCode]:
    return [code for code, _ in settle(calls)]


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, timeout=20) as client:
        yield client


def kserve_request(array: np.ndarray) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 8, 8])
        ],
        raw_input_contents=[array.tobytes()],
    )


def test_counters_move_by_expected_amounts_for_known_traffic(server, client):
    successes, invalid, unknown, kserve = 7, 4, 3, 2
    mlp = {"model": "mlp", "version": "1"}
    before = scrape(server.metrics_port)

    rows = np.repeat(MLP_ROW, 3, axis=0)  # 3 rows per request
    for _ in range(successes):
        assert len(client.predict("mlp", rows).labels) == 3
    for _ in range(invalid):
        with pytest.raises(grpc.RpcError) as caught:
            client.predict("mlp", np.zeros((2, 5), np.float32))  # wrong rank
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(unknown):
        with pytest.raises(grpc.RpcError) as caught:
            client.predict("no-such-model", MLP_ROW)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(kserve):
            assert stub.ModelInfer(kserve_request(MLP_ROW), timeout=10).outputs

    d = delta(before, scrape(server.metrics_port))
    assert d("d2lserve_requests_total", **mlp, api="predict", code="OK") == successes
    assert d("d2lserve_requests_total", **mlp, api="predict", code="INVALID_ARGUMENT") == invalid
    assert d("d2lserve_requests_total", **mlp, api="kserve", code="OK") == kserve
    # Unknown models share one bounded label value and an empty version.
    assert (
        d("d2lserve_requests_total", model="_unknown", version="", api="predict", code="NOT_FOUND")
        == unknown
    )
    assert d("d2lserve_inferred_rows_total", **mlp) == 3 * successes + kserve
    assert d("d2lserve_request_duration_seconds_count", **mlp, api="predict") == successes + invalid
    assert d("d2lserve_request_duration_seconds_count", **mlp, api="kserve") == kserve
    # Invalid input never reaches the queue or session.run.
    assert d("d2lserve_queue_duration_seconds_count", **mlp) == successes + kserve
    assert d("d2lserve_batch_size_sum", **mlp) == 3 * successes + kserve
    assert d("d2lserve_decode_duration_seconds_count", **mlp) == successes + kserve
    assert d("d2lserve_encode_duration_seconds_count", **mlp) == successes + kserve
    after = scrape(server.metrics_port)
    assert value(after, "d2lserve_inflight_requests", **mlp) == 0
    assert value(after, "d2lserve_queue_depth", **mlp) == 0


def test_stream_requests_are_counted_per_message(server):
    mlp = {"model": "mlp", "version": "1"}
    before = scrape(server.metrics_port)
    requests = [kserve_request(MLP_ROW) for _ in range(3)]
    requests.append(pb.ModelInferRequest(model_name="no-such-model"))
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        responses = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    # Responses may come back out of order (the error does not wait for the batch).
    assert sorted(bool(r.error_message) for r in responses) == [False, False, False, True]

    d = delta(before, scrape(server.metrics_port))
    assert d("d2lserve_requests_total", **mlp, api="stream", code="OK") == 3
    assert d("d2lserve_inferred_rows_total", **mlp) == 3
    assert (
        d("d2lserve_requests_total", model="_unknown", version="", api="stream", code="NOT_FOUND")
        == 1
    )


def test_batch_size_histogram_shows_batches_above_one_under_concurrent_load(server, client):
    count = 48
    mlp = {"model": "mlp", "version": "1"}
    before = scrape(server.metrics_port)
    request = predict_request("mlp", MLP_ROW)
    calls = [client.stub.Predict.future(request, timeout=20) for _ in range(count)]
    assert codes_of(calls) == [grpc.StatusCode.OK] * count

    d = delta(before, scrape(server.metrics_port))
    executions = d("d2lserve_executions_total", **mlp)
    assert d("d2lserve_batch_size_count", **mlp) == executions
    assert d("d2lserve_batch_size_sum", **mlp) == count
    assert 1 <= executions < count
    # Batches of more than one row: executions above the le="1.0" bucket.
    single = d("d2lserve_batch_size_bucket", **mlp, le="1.0")
    assert executions - single >= 1, f"{count} requests, {executions} executions, all of 1 row"
    assert d("d2lserve_compute_duration_seconds_count", **mlp) == executions
    assert d("d2lserve_queue_duration_seconds_count", **mlp) == count


def test_queue_full_rejections_are_counted(server, client):
    slow = {"model": "slow", "version": "1"}
    before = scrape(server.metrics_port)
    request = predict_request("slow", SLOW_ROW)
    codes = codes_of([client.stub.Predict.future(request, timeout=30) for _ in range(12)])
    rejected = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert rejected >= 1 and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}

    d = delta(before, scrape(server.metrics_port))
    assert d("d2lserve_queue_rejections_total", **slow) == rejected
    assert (
        d("d2lserve_requests_total", **slow, api="predict", code="RESOURCE_EXHAUSTED") == rejected
    )
    assert d("d2lserve_requests_total", **slow, api="predict", code="OK") == 12 - rejected


def test_requests_expiring_in_the_queue_are_counted_as_dropped(server, client):
    # On a loaded machine the short deadline can pass before the request reaches the queue
    # (then nothing is dropped, correctly): try a few times.
    for _ in range(3):
        d = expire_one_while_queued(server, client)
        if drops_of(d):
            break
    assert drops_of(d) == 1
    assert d("d2lserve_executions_total", model="slow", version="1") == 2  # only the busy ones


def test_model_and_process_metrics_are_exported(server):
    samples = scrape(server.metrics_port)
    for model in ("mlp", "reg", "slow"):
        labels = {"model": model, "version": "1"}
        assert value(samples, "d2lserve_model_state", **labels, state="ready") == 1
        assert value(samples, "d2lserve_model_state", **labels, state="failed") == 0
        assert ("d2lserve_model_load_failures_total", frozenset({("model", model)})) in samples
    info = [key for key in samples if key[0] == "d2lserve_runtime_info"]
    assert len(info) == 1
    assert dict(info[0][1])["provider"] == "CPUExecutionProvider"
    scanned = value(samples, "d2lserve_repository_last_scan_timestamp_seconds")
    assert time.time() - 60 < scanned <= time.time() + 1
    names = {name for name, _ in samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names


def test_no_metrics_switch_serves_no_metrics_endpoint(model_repository, start_server):
    server = start_server(model_repository, "--no-metrics")
    with Client(server.target, timeout=10) as client:
        assert client.predict("mlp", MLP_ROW).labels
    with pytest.raises(urllib.error.URLError):
        scrape(server.metrics_port)
