"""Every error the issue lists gets its status code and a message that names the problem.

After each one the same server keeps answering (``assert_still_serving``).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serving_support import SLOW_ROW, drops_of, expire_one_while_queued, settle

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc, predict_pb2
from serving.client import Client, predict_request

GOOD = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, timeout=20) as client:
        yield client


def assert_still_serving(client: Client) -> None:
    assert client.predict("mlp", GOOD).labels


def call_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def raw_predict(client: Client, **tensor) -> grpc.RpcError:
    request = predict_pb2.PredictRequest(model="mlp", input=predict_pb2.Tensor(**tensor))
    return call_error(lambda: client.stub.Predict(request, timeout=10))


@pytest.mark.parametrize(
    ("model", "version", "message"),
    [
        ("nope", None, "model 'nope' not found; available models: mlp, reg, slow"),
        ("mlp", 7, "model 'mlp' has no version 7; versions: 1 (ready)"),
    ],
)
def test_unknown_model_or_version_is_not_found(client, model, version, message):
    error = call_error(lambda: client.predict(model, GOOD, version=version))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert message in error.details()
    assert_still_serving(client)


f32 = predict_pb2.FLOAT32


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            {"shape": [1, 1, 8, 8], "dtype": predict_pb2.FLOAT64, "data": bytes(512)},
            "datatype FP64; model 'mlp' v1 expects FP32",
        ),
        (
            {"shape": [1, 64], "dtype": f32, "data": bytes(256)},
            "has shape [1, 64]; model 'mlp' v1 expects [batch, 1, 8, 8]",
        ),
        ({"shape": [1, 1, 8, 7], "dtype": f32, "data": bytes(224)}, "has shape [1, 1, 8, 7]"),
        (
            {"shape": [2, 1, 8, 8], "dtype": f32, "data": bytes(256)},
            "has 256 bytes of data; shape [2, 1, 8, 8] of FP32 needs 512",
        ),
        ({"shape": [0, 1, 8, 8], "dtype": f32, "data": b""}, "empty batch"),
        (
            {"shape": [65, 1, 8, 8], "dtype": f32, "data": bytes(65 * 256)},
            "has 65 rows; model 'mlp' v1 accepts at most 64",
        ),
        (
            {
                "shape": [1, 1, 8, 8],
                "dtype": f32,
                "data": np.full((1, 1, 8, 8), np.nan, np.float32).tobytes(),
            },
            "64 NaN/Inf values",
        ),
        (
            {
                "shape": [1, 1, 8, 8],
                "dtype": f32,
                "data": np.full((1, 1, 8, 8), np.inf, np.float32).tobytes(),
            },
            "expects finite numbers",
        ),
    ],
)
def test_bad_predict_input_is_invalid_argument(client, tensor, message):
    error = raw_predict(client, **tensor)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()
    assert_still_serving(client)


def test_top_k_above_the_number_of_classes_is_invalid_argument(client):
    error = call_error(lambda: client.predict("mlp", GOOD, top_k=11))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k is 11; model 'mlp' v1 has 10 classes" in error.details()


def infer(server, request) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return call_error(lambda: stub.ModelInfer(request, timeout=10))


def kserve_request(**overrides) -> pb.ModelInferRequest:
    fields = {"model_name": "mlp", "model_version": "", "name": "input", "datatype": "FP32"}
    fields.update(overrides)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=fields["name"], datatype=fields["datatype"], shape=[1, 1, 8, 8]
    )
    return pb.ModelInferRequest(
        model_name=fields["model_name"],
        model_version=fields["model_version"],
        inputs=[tensor],
        raw_input_contents=[GOOD.tobytes()],
    )


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (kserve_request(model_name="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
        (kserve_request(model_version="3"), grpc.StatusCode.NOT_FOUND, "has no version 3"),
        (
            kserve_request(model_version="v1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "model_version is 'v1'",
        ),
        (
            kserve_request(name="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request has input 'x'; model 'mlp' v1 expects 'input'",
        ),
        (
            kserve_request(datatype="INT64"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "datatype INT64; model 'mlp' v1 expects FP32",
        ),
    ],
)
def test_bad_model_infer_requests(server, client, request_, code, message):
    error = infer(server, request_)
    assert error.code() == code
    assert message in error.details()
    assert_still_serving(client)


def test_unknown_requested_output_is_invalid_argument(server):
    request = kserve_request()
    request.outputs.add(name="scores")
    error = infer(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requested output 'scores' does not exist" in error.details()


def test_message_above_max_message_bytes_is_refused_by_grpc(client):
    huge = np.zeros((1100, 1, 32, 32), np.float32)  # ~4.5 MB > the 4 MiB default
    error = call_error(lambda: client.predict("mlp", huge))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
    assert_still_serving(client)


def test_full_queue_is_resource_exhausted(client):
    """'slow' has max_queue_size 2 and one instance: a burst overflows its queue."""
    request = predict_request("slow", SLOW_ROW)
    calls = [client.stub.Predict.future(request, timeout=30) for _ in range(12)]
    outcomes = settle(calls)
    codes = [code for code, _ in outcomes]
    for code, details in outcomes:
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert "max_queue_size is 2" in details
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert client.predict("slow", SLOW_ROW).predictions is not None
    assert_still_serving(client)


def test_a_deadline_passing_in_the_queue_is_dropped_by_the_server_never_executed(server, client):
    """The server, not only the client, gives up: counted as a deadline drop, not executed.

    A short client deadline fails on the client whatever the server does; what this test
    adds is the server's side: the request is dropped from the queue for its deadline
    (d2lserve_dropped_requests_total{reason="deadline"}) and only the two busy requests
    ran (d2lserve_executions_total).
    """
    slow = {"model": "slow", "version": "1"}
    for _ in range(3):  # on a loaded machine the deadline can pass before the request queues
        d = expire_one_while_queued(server, client)
        if drops_of(d):
            break
    assert d("d2lserve_dropped_requests_total", **slow, reason="deadline") == 1
    assert d("d2lserve_dropped_requests_total", **slow, reason="cancelled") == 0
    assert d("d2lserve_executions_total", **slow) == 2  # the busy ones; the expired never ran
    assert d("d2lserve_requests_total", **slow, api="predict", code="OK") == 2
    assert client.predict("slow", SLOW_ROW).predictions is not None
    assert_still_serving(client)
