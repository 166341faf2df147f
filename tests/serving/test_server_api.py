"""The Predict and KServe APIs of a real server process give the ONNX file's numbers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serving_support import LABELS, scrape

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc, predict_pb2, predict_pb2_grpc
from serving.client import Client, predict_request
from serving.core.runtime import cuda_works


def reference(model_repository, name: str, array: np.ndarray, version: int = 1) -> dict:
    path = model_repository / name / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": array}), strict=True))


def images(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)


def test_predict_matches_onnx_runtime_on_the_file(server, model_repository):
    array = images(5)
    expected = reference(model_repository, "mlp", array)["probabilities"]
    with Client(server.target) as client:
        result = client.predict("mlp", array, top_k=3)
    assert (result.model, result.version) == ("mlp", 1)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-6)
    best = np.argsort(-expected, axis=1)[:, :3]
    assert result.indices == best.tolist()
    assert result.labels == [[LABELS[i] for i in row] for row in best]
    np.testing.assert_allclose(result.scores, np.take_along_axis(expected, best, 1), rtol=1e-5)
    assert result.predictions is None


def test_predict_regression_returns_predictions(server, model_repository):
    array = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    with Client(server.target) as client:
        result = client.predict("reg", array)
    np.testing.assert_allclose(
        result.predictions, reference(model_repository, "reg", array)["prediction"], rtol=1e-6
    )
    assert result.probabilities is None and result.labels == []


def infer_request(array: np.ndarray, *, raw: bool = True, outputs=()) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=array.shape)
    request = pb.ModelInferRequest(model_name="mlp", id="req-7", inputs=[tensor])
    request.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs)
    if raw:
        request.raw_input_contents.append(array.tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(array.ravel().tolist())
    return request


@pytest.mark.parametrize("raw", [True, False])
def test_model_infer_matches_onnx_runtime_on_the_file(server, model_repository, raw):
    array = images(4, seed=2)
    expected = reference(model_repository, "mlp", array)
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(infer_request(array, raw=raw), timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("mlp", "1", "req-7")
    assert [o.name for o in response.outputs] == ["logits", "probabilities"]
    for output, data in zip(response.outputs, response.raw_output_contents, strict=True):
        assert output.datatype == "FP32" and list(output.shape) == [4, 10]
        got = np.frombuffer(data, np.float32).reshape(4, 10)
        np.testing.assert_allclose(got, expected[output.name], rtol=1e-5, atol=1e-6)


def test_model_infer_returns_only_the_requested_outputs(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(infer_request(images(1), outputs=["logits"]), timeout=10)
    assert [o.name for o in response.outputs] == ["logits"]
    assert len(response.raw_output_contents) == 1


def test_stream_answers_every_request_by_id_and_reports_a_bad_one_without_closing(
    server, model_repository
):
    arrays = [images(1, seed=s) for s in range(6)]
    requests = [infer_request(a) for a in arrays]
    requests.insert(3, infer_request(np.zeros((1, 3), np.float32)))
    for number, request in enumerate(requests):
        request.id = f"req-{number}"
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        responses = list(stub.ModelStreamInfer(iter(requests), timeout=20))
    # Responses come back as their batches finish; each carries its request's id.
    by_id = {r.infer_response.id: r for r in responses}
    assert len(responses) == 7 and sorted(by_id) == sorted(r.id for r in requests)
    assert "has shape [1, 3]" in by_id["req-3"].error_message
    good = [by_id[r.id] for i, r in enumerate(requests) if i != 3]
    for array, response in zip(arrays, good, strict=True):
        assert not response.error_message
        assert response.infer_response.model_name == "mlp"
        index = [o.name for o in response.infer_response.outputs].index("probabilities")
        got = np.frombuffer(response.infer_response.raw_output_contents[index], np.float32)
        expected = reference(model_repository, "mlp", array)["probabilities"]
        np.testing.assert_allclose(got.reshape(1, 10), expected, rtol=1e-5, atol=1e-6)


def test_list_and_get_model_describe_signature_labels_and_batching(server):
    with Client(server.target) as client:
        names = [m.name for m in client.list_models()]
        info = client.get_model("mlp")
    assert names == ["mlp", "reg", "slow"]
    assert info.version == 1 and info.task == "classification"
    assert [(v.version, v.state) for v in info.versions] == [(1, predict_pb2.READY)]
    assert [(t.name, list(t.shape)) for t in info.inputs] == [("input", [-1, 1, 8, 8])]
    assert [t.name for t in info.outputs] == ["logits", "probabilities"]
    assert list(info.labels) == LABELS
    assert info.batching.enabled and info.batching.max_batch_size == 64
    assert info.batching.max_queue_delay_microseconds == 2000
    assert info.metadata["kind"] == "mlp"
    assert info.execution_provider == "CPUExecutionProvider"


def test_concurrent_single_row_requests_are_batched(server):
    count = 48
    with Client(server.target) as client:
        before = client.get_model("mlp").statistics
        request = predict_request("mlp", images(1))
        with ThreadPoolExecutor(8) as pool:  # fire all, then collect
            calls = [client.stub.Predict.future(request, timeout=20) for _ in range(count)]
            list(pool.map(lambda call: call.result(), calls))
        after = client.get_model("mlp").statistics
    assert after.requests - before.requests == count
    assert after.rows - before.rows == count
    executions = after.executions - before.executions
    assert 1 <= executions < count, f"{count} requests took {executions} executions"


def test_kserve_liveness_readiness_and_metadata(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="reg"), timeout=5).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="reg", version="1"), timeout=5).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(name="reg", version="9"), timeout=5).ready
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="reg"), timeout=5)
    assert list(metadata.versions) == ["1"] and metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("prediction", "FP32", [-1, 1])
    ]


def test_health_serves_the_server_its_services_and_each_model(server):
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "d2lserve.v1.PredictionService", "inference.GRPCInferenceService", "mlp"):
            check = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert check.status == serving, name
        with pytest.raises(grpc.RpcError) as error:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in response.list_services_response.service}
    assert {
        "d2lserve.v1.PredictionService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names


def test_predict_stub_without_the_client_helper(server):
    """The raw stub works too: little-endian bytes in, bytes out."""
    array = images(2)
    with grpc.insecure_channel(server.target) as channel:
        stub = predict_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(
            predict_pb2.PredictRequest(
                model="mlp",
                input=predict_pb2.Tensor(
                    shape=[2, 1, 8, 8], dtype=predict_pb2.FLOAT32, data=array.tobytes()
                ),
            ),
            timeout=10,
        )
    assert list(response.probabilities.shape) == [2, 10]
    assert len(response.top_k) == 2 and len(response.top_k[0].classes) == 1


# -- execution provider: the test servers force --device cpu; these two pick it by --device auto

CUDA_WORKS = cuda_works()


def provider_of(server) -> tuple[str, str]:
    """(GetModel's execution_provider, d2lserve_runtime_info's provider) of a live server."""
    with Client(server.target) as client:
        reported = client.get_model("mlp").execution_provider
    (info,) = [k for k in scrape(server.metrics_port) if k[0] == "d2lserve_runtime_info"]
    return reported, dict(info[1])["provider"]


@pytest.mark.skipif(not CUDA_WORKS, reason="needs a GPU where ONNX Runtime can open a CUDA session")
def test_device_auto_serves_on_cuda_where_cuda_works(model_repository, start_server):
    server = start_server(model_repository, "--device", "auto")
    assert provider_of(server) == ("CUDAExecutionProvider", "CUDAExecutionProvider")
    array = images(8, seed=3)
    expected = reference(model_repository, "mlp", array)["probabilities"]  # CPU session
    with Client(server.target) as client:
        got = client.predict("mlp", array).probabilities
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(CUDA_WORKS, reason="needs a machine where no CUDA session can be created")
def test_device_auto_falls_back_to_cpu_where_cuda_does_not_work(model_repository, start_server):
    server = start_server(model_repository, "--device", "auto")
    assert provider_of(server) == ("CPUExecutionProvider", "CPUExecutionProvider")


def test_device_cpu_is_honoured_on_any_host(model_repository, start_server):
    server = start_server(model_repository, "--device", "cpu")
    assert provider_of(server) == ("CPUExecutionProvider", "CPUExecutionProvider")
