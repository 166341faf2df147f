"""Any ONNX model, served the Triton way (issue 11), by a real server process.

The repository holds the models of model_zoo.py (resnet18, a plain MLP, multi-input and
multi-type graphs, strings, a dynamic non-batch axis, no config.pbtxt, max_batch_size 0, and
a config that disagrees with its graph). Every answer is compared bit for bit with a local
ONNX Runtime session on the same file with the server's thread settings (model_zoo.reference).

One server in the default (poll) mode serves the whole module; model control runs against a
second server started with ``--model-control-mode explicit`` on a copy of the repository.
Tests that count (statistics, metrics) compare readings taken before and after their own
traffic, so their order does not matter.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import kserve_wire as wire
import model_zoo
import numpy as np
import pytest
from model_zoo import ZooModel
from serving_support import Samples, ServerProcess, scrape, settle

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc, predict_pb2, predict_pb2_grpc

PROBE = Path(__file__).with_name("triton_generic_probe.py")
SERVED = tuple(n for n in model_zoo.BUILDERS if n != "mismatch")
TIMEOUT = 30.0  # seconds, every call (resnet on a shared 2-core machine)

# Triton's classification extension: "score:index:label", the score printed by
# std::to_string(float), i.e. printf's "%f" (triton-inference-server/server src/classification.cc).
CLASS_ENTRY = re.compile(r"^(-?\d+\.\d{6}):(\d+):(.*)$")

# Our Predict API's DataType names for each numpy dtype (protos/predict.proto).
PREDICT_DTYPES = {
    np.dtype(np.float32): "FLOAT32",
    np.dtype(np.float64): "FLOAT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.float16): "FLOAT16",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.object_): "BYTES",
}
PREDICT_TO_KSERVE = {PREDICT_DTYPES[d]: wire.DATATYPES[d] for d in PREDICT_DTYPES}


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ZooModel]:
    return model_zoo.build_zoo(tmp_path_factory.mktemp("generic") / "models")


@pytest.fixture(scope="module")
def repository(zoo: dict[str, ZooModel]) -> Path:
    return zoo["resnet"].directory.parent


@pytest.fixture(scope="module")
def generic_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The default model-control mode (poll), every zoo model."""
    process = ServerProcess(repository, ["--device", "cpu"])
    process.start(tmp_path_factory.mktemp("generic-logs"), timeout=120)
    yield process
    code = process.stop()
    assert code == 0, process.log()


@pytest.fixture(scope="module")
def kserve(
    generic_server: ServerProcess,
) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    with generic_server.channel() as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def predict(generic_server: ServerProcess) -> Iterator[predict_pb2_grpc.PredictionServiceStub]:
    with generic_server.channel() as channel:
        yield predict_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def explicit(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    """``--model-control-mode explicit --load-model two_inputs`` on a copy of the repository.

    The copy (without resnet) is ``<base>/models``; beside it, ``<base>/half_bool`` is a
    valid model *outside* the repository that no load request may reach. Yields the server
    and ``<base>``.
    """
    base = tmp_path_factory.mktemp("explicit")
    shutil.copytree(repository, base / "models", ignore=shutil.ignore_patterns("resnet"))
    model_zoo.half_bool(base)
    process = ServerProcess(
        base / "models",
        ["--device", "cpu", "--model-control-mode", "explicit", "--load-model", "two_inputs"],
    )
    process.start(tmp_path_factory.mktemp("explicit-logs"), timeout=120)
    yield process, base
    code = process.stop()
    assert code == 0, process.log()


@pytest.fixture(scope="module")
def explicit_kserve(
    explicit: tuple[ServerProcess, Path],
) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    with explicit[0].channel() as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


# -- helpers --------------------------------------------------------------------------


def rows_for(name: str) -> int:
    return 2 if name == "resnet" else 3  # resnet18 on 2 shared cores: few images


def is_ready(stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, name: str) -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=TIMEOUT).ready


def ready_or_refused(stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, name: str) -> bool:
    """ModelReady for a name that may be invalid: False when the call itself is refused."""
    try:
        return is_ready(stub, name)
    except grpc.RpcError:
        return False


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def metric_delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """Change of the sum of every sample of ``name`` whose labels include ``labels``."""

    def total(samples: Samples) -> float:
        wanted = set(labels.items())
        return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)

    return total(after) - total(before)


def enum_name(message: object, field: str) -> str:
    """The enum value name of ``message.field`` (TYPE_FP32, ...), whatever the proto package."""
    descriptor = message.DESCRIPTOR.fields_by_name[field]  # type: ignore[attr-defined]
    return descriptor.enum_type.values_by_number[getattr(message, field)].name


def config_tensors(tensors) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (enum_name(t, "data_type"), list(t.dims)) for t in tensors}


def predict_tensor(array: np.ndarray) -> predict_pb2.Tensor:
    return predict_pb2.Tensor(
        shape=array.shape,
        dtype=predict_pb2.DataType.Value(PREDICT_DTYPES[array.dtype]),
        data=wire.raw(array),
    )


def tensor_array(tensor: predict_pb2.Tensor) -> np.ndarray:
    kserve_name = PREDICT_TO_KSERVE[predict_pb2.DataType.Name(tensor.dtype)]
    return wire.from_raw(tensor.data, kserve_name, list(tensor.shape))


def check_classification(entries: np.ndarray, logits: np.ndarray, k: int) -> None:
    """Triton's ``classification: k``: per row the k best as BYTES "score:index:label"."""
    assert entries.shape == (logits.shape[0], k)
    for row, strings in zip(logits, entries, strict=True):
        best = np.argsort(-row, kind="stable")[:k]
        for entry, index in zip(strings, best, strict=True):
            text = entry.decode() if isinstance(entry, bytes) else str(entry)
            match = CLASS_ENTRY.match(text)
            assert match, f"{text!r} is not 'score:index:label'"
            score, got_index, label = match.groups()
            assert (int(got_index), label) == (int(index), model_zoo.RESNET_LABELS[index])
            assert abs(float(score) - float(row[index])) <= 1e-6
            assert score == f"{float(row[index]):f}"  # std::to_string(float)


def statistics(stub, name: str):
    response = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name, version=""), timeout=10)
    assert [(s.name, s.version) for s in response.model_stats] == [(name, "1")]
    return response.model_stats[0]


# -- KServe v2 ModelInfer -------------------------------------------------------------


@pytest.mark.parametrize("name", SERVED)
def test_model_infer_equals_onnx_runtime_bit_for_bit(kserve, zoo, name):
    model = zoo[name]
    inputs = model.sample(rows_for(name), seed=11)
    expected = model_zoo.reference(model.onnx_path, inputs)
    request = wire.infer_request(name, inputs, request_id=f"zoo-{name}")
    response = kserve.ModelInfer(request, timeout=TIMEOUT)
    assert (response.model_name, response.model_version, response.id) == (name, "1", f"zoo-{name}")
    assert {o.name: o.datatype for o in response.outputs} == {
        n: wire.datatype(a) for n, a in expected.items()
    }
    wire.assert_bit_equal(wire.response_arrays(response), expected)


@pytest.mark.parametrize("name", ["two_inputs", "all_ints", "strings"])
def test_model_infer_accepts_typed_contents(kserve, zoo, name):
    model = zoo[name]
    inputs = model.sample(2, seed=12)
    request = wire.infer_request(name, inputs, typed=True)
    response = kserve.ModelInfer(request, timeout=TIMEOUT)
    wire.assert_bit_equal(
        wire.response_arrays(response), model_zoo.reference(model.onnx_path, inputs)
    )


def test_model_infer_returns_only_the_requested_outputs(kserve, zoo):
    inputs = zoo["two_inputs"].sample(2, seed=13)
    response = kserve.ModelInfer(
        wire.infer_request("two_inputs", inputs, outputs=("total",)), timeout=TIMEOUT
    )
    expected = model_zoo.reference(zoo["two_inputs"].onnx_path, inputs)
    wire.assert_bit_equal(wire.response_arrays(response), {"total": expected["total"]})


def test_model_infer_classification_parameter_returns_tritons_strings(kserve, zoo):
    inputs = zoo["resnet"].sample(2, seed=14)
    logits = model_zoo.reference(zoo["resnet"].onnx_path, inputs)["logits"]
    request = wire.infer_request("resnet", inputs)
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    response = kserve.ModelInfer(request, timeout=TIMEOUT)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "BYTES", [2, 3])
    ]
    check_classification(wire.response_arrays(response)["logits"], logits, k=3)


def test_model_metadata_describes_any_signature(kserve):
    def described(name: str) -> tuple[list, list]:
        meta = kserve.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=TIMEOUT)
        assert (meta.name, list(meta.versions), meta.platform) == (name, ["1"], "onnxruntime_onnx")
        return (
            [(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
            [(t.name, t.datatype, list(t.shape)) for t in meta.outputs],
        )

    assert described("two_inputs") == (
        [("x", "FP32", [-1, 4]), ("k", "INT64", [-1, 1])],
        [("scaled", "FP32", [-1, 4]), ("total", "FP64", [-1, 1])],
    )
    assert described("half_bool") == (
        [("h", "FP16", [-1, 3]), ("mask", "BOOL", [-1, 3])],
        [("masked", "FP16", [-1, 3]), ("flipped", "BOOL", [-1, 3])],
    )
    assert described("strings") == (
        [("text", "BYTES", [-1, 1])],
        [("same", "BYTES", [-1, 1]), ("is_hello", "BOOL", [-1, 1])],
    )
    assert described("ragged") == (
        [("seq", "FP32", [-1, -1])],
        [("sum", "FP32", [-1, 1]), ("doubled", "FP32", [-1, -1])],
    )
    assert described("unbatched") == ([("m", "FP32", [2, 3])], [("t", "FP32", [3, 2])])
    assert described("no_config") == (
        [("features", "FP32", [-1, 3]), ("counts", "INT32", [-1, 2])],
        [("negated", "FP32", [-1, 3]), ("twice", "INT32", [-1, 2])],
    )


# -- Predict --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["two_inputs", "half_bool", "all_ints", "strings"])
def test_predict_with_named_inputs_returns_every_output_bit_for_bit(predict, zoo, name):
    model = zoo[name]
    inputs = model.sample(3, seed=21)
    request = predict_pb2.PredictRequest(
        model=name, inputs={n: predict_tensor(a) for n, a in inputs.items()}
    )
    response = predict.Predict(request, timeout=TIMEOUT)
    assert (response.model, response.version) == (name, 1)
    got = {n: tensor_array(t) for n, t in response.outputs.items()}
    wire.assert_bit_equal(got, model_zoo.reference(model.onnx_path, inputs))


def test_predict_returns_exactly_the_named_outputs(predict, zoo):
    inputs = zoo["two_inputs"].sample(2, seed=22)
    request = predict_pb2.PredictRequest(
        model="two_inputs",
        inputs={n: predict_tensor(a) for n, a in inputs.items()},
        outputs=["total"],
    )
    response = predict.Predict(request, timeout=TIMEOUT)
    expected = model_zoo.reference(zoo["two_inputs"].onnx_path, inputs)
    got = {n: tensor_array(t) for n, t in response.outputs.items()}
    wire.assert_bit_equal(got, {"total": expected["total"]})


def test_predict_single_input_field_serves_a_plain_torch_export(predict, zoo):
    """The issue's first example: input 'input', output 'logits' only, no labels."""
    inputs = zoo["plain_mlp"].sample(3, seed=23)
    request = predict_pb2.PredictRequest(model="plain_mlp", input=predict_tensor(inputs["input"]))
    response = predict.Predict(request, timeout=TIMEOUT)
    got = {n: tensor_array(t) for n, t in response.outputs.items()}
    wire.assert_bit_equal(got, model_zoo.reference(zoo["plain_mlp"].onnx_path, inputs))


def test_predict_top_k_on_resnet_uses_its_label_file(predict, zoo):
    inputs = zoo["resnet"].sample(2, seed=24)
    logits = model_zoo.reference(zoo["resnet"].onnx_path, inputs)["logits"]
    request = predict_pb2.PredictRequest(
        model="resnet", input=predict_tensor(inputs["pixels"]), top_k=3
    )
    response = predict.Predict(request, timeout=TIMEOUT)
    assert len(response.top_k) == 2
    for row, ranked in zip(logits, response.top_k, strict=True):
        best = np.argsort(-row, kind="stable")[:3]
        assert [c.index for c in ranked.classes] == best.tolist()
        assert [c.label for c in ranked.classes] == [model_zoo.RESNET_LABELS[i] for i in best]
        assert [np.float32(c.score) for c in ranked.classes] == row[best].tolist()
    wire.assert_bit_equal(
        {"probabilities": tensor_array(response.probabilities)}, {"probabilities": logits}
    )


# -- dynamic batching -----------------------------------------------------------------


def test_concurrent_multi_input_requests_are_merged_and_split_back_bit_for_bit(
    generic_server, kserve, zoo
):
    model = zoo["two_inputs"]
    samples = [model.sample(1 + i % 3, seed=100 + i) for i in range(16)]
    labels = {"model": "two_inputs", "version": "1"}
    before = scrape(generic_server.metrics_port)
    calls = [
        kserve.ModelInfer.future(wire.infer_request("two_inputs", s), timeout=TIMEOUT)
        for s in samples
    ]
    assert settle(calls) == [(grpc.StatusCode.OK, "")] * len(calls)
    after = scrape(generic_server.metrics_port)
    for call, inputs in zip(calls, samples, strict=True):
        expected = model_zoo.reference(model.onnx_path, inputs)
        wire.assert_bit_equal(wire.response_arrays(call.result()), expected)
    executions = metric_delta(before, after, "d2lserve_batch_size_count", **labels)
    rows = sum(s["x"].shape[0] for s in samples)
    assert metric_delta(before, after, "d2lserve_batch_size_sum", **labels) == rows
    assert metric_delta(before, after, "d2lserve_executions_total", **labels) == executions
    # Fewer executions than requests: at least one execution carried several requests' rows.
    assert 1 <= executions < len(samples), f"{len(samples)} requests, {executions} executions"


def test_requests_with_different_non_batch_dims_are_not_merged_but_all_answered(
    generic_server, kserve, zoo
):
    model = zoo["ragged"]
    samples = [
        model_zoo.ragged_inputs(1 + i % 2, seed=200 + i, length=3 if i % 2 else 5)
        for i in range(12)
    ]
    labels = {"model": "ragged", "version": "1"}
    before = scrape(generic_server.metrics_port)
    calls = [
        kserve.ModelInfer.future(wire.infer_request("ragged", s), timeout=TIMEOUT) for s in samples
    ]
    assert settle(calls) == [(grpc.StatusCode.OK, "")] * len(calls)
    after = scrape(generic_server.metrics_port)
    for call, inputs in zip(calls, samples, strict=True):
        expected = model_zoo.reference(model.onnx_path, inputs)
        wire.assert_bit_equal(wire.response_arrays(call.result()), expected)
    rows = sum(s["seq"].shape[0] for s in samples)
    assert metric_delta(before, after, "d2lserve_batch_size_sum", **labels) == rows
    assert metric_delta(before, after, "d2lserve_batch_size_count", **labels) >= 2


def test_more_rows_than_the_auto_completed_max_batch_size_are_refused(kserve, zoo):
    inputs = zoo["no_config"].sample(model_zoo.NO_CONFIG_MAX_BATCH_SIZE + 1)
    code, details = code_of(
        lambda: kserve.ModelInfer(wire.infer_request("no_config", inputs), timeout=TIMEOUT)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(model_zoo.NO_CONFIG_MAX_BATCH_SIZE) in details


def test_unbatched_model_takes_its_full_shape_and_refuses_a_batch_axis(kserve, zoo):
    model = zoo["unbatched"]
    inputs = model.sample()
    response = kserve.ModelInfer(wire.infer_request("unbatched", inputs), timeout=TIMEOUT)
    wire.assert_bit_equal(
        wire.response_arrays(response), model_zoo.reference(model.onnx_path, inputs)
    )
    batched = {"m": inputs["m"][np.newaxis]}  # [1, 2, 3]
    code, details = code_of(
        lambda: kserve.ModelInfer(wire.infer_request("unbatched", batched), timeout=TIMEOUT)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "[2, 3]" in details and "[1, 2, 3]" in details, details


# -- a config that disagrees with its graph -------------------------------------------


def test_mismatched_config_is_refused_at_load_naming_field_and_both_values(kserve, predict, zoo):
    assert not is_ready(kserve, "mismatch")
    info = predict.GetModel(predict_pb2.GetModelRequest(name="mismatch"), timeout=TIMEOUT)
    assert [(v.version, v.state) for v in info.versions] == [(1, predict_pb2.FAILED)]
    reason = info.versions[0].reason
    assert "dims" in reason and "[5]" in reason, reason
    assert "[4]" in reason or "[-1, 4]" in reason, reason
    inputs = zoo["mismatch"].sample(1)
    code, _ = code_of(
        lambda: kserve.ModelInfer(wire.infer_request("mismatch", inputs), timeout=TIMEOUT)
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert all(is_ready(kserve, name) for name in SERVED)


# -- Triton's extensions: ModelConfig, ModelStatistics, RepositoryIndex ---------------


def test_model_config_returns_the_auto_completed_config_of_a_model_without_one(kserve):
    config = kserve.ModelConfig(pb.ModelConfigRequest(name="no_config"), timeout=TIMEOUT).config
    assert (config.name, config.platform) == ("no_config", "onnxruntime_onnx")
    assert config.max_batch_size == model_zoo.NO_CONFIG_MAX_BATCH_SIZE
    assert config_tensors(config.input) == {
        "features": ("TYPE_FP32", [3]),
        "counts": ("TYPE_INT32", [2]),
    }
    assert config_tensors(config.output) == {
        "negated": ("TYPE_FP32", [3]),
        "twice": ("TYPE_INT32", [2]),
    }
    assert config.HasField("dynamic_batching")


def test_model_config_returns_a_written_config_as_loaded(kserve):
    config = kserve.ModelConfig(pb.ModelConfigRequest(name="two_inputs"), timeout=TIMEOUT).config
    assert (config.name, config.platform, config.max_batch_size) == (
        "two_inputs",
        "onnxruntime_onnx",
        16,
    )
    assert config_tensors(config.input) == {"x": ("TYPE_FP32", [4]), "k": ("TYPE_INT64", [1])}
    assert config_tensors(config.output) == {
        "scaled": ("TYPE_FP32", [4]),
        "total": ("TYPE_FP64", [1]),
    }
    assert config.dynamic_batching.max_queue_delay_microseconds == model_zoo.BATCHING_DELAY_US
    resnet = kserve.ModelConfig(pb.ModelConfigRequest(name="resnet"), timeout=TIMEOUT).config
    assert [(o.name, o.label_filename) for o in resnet.output] == [
        ("logits", model_zoo.LABEL_FILENAME)
    ]
    unbatched = kserve.ModelConfig(pb.ModelConfigRequest(name="unbatched"), timeout=TIMEOUT)
    assert unbatched.config.max_batch_size == 0
    code, _ = code_of(lambda: kserve.ModelConfig(pb.ModelConfigRequest(name="nope"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND


def test_model_statistics_count_like_triton_and_agree_with_the_metrics(generic_server, kserve, zoo):
    model = zoo["plain_mlp"]
    labels = {"model": "plain_mlp", "version": "1"}
    concurrent = [model.sample(2, seed=300 + i) for i in range(4)]
    streamed = [model.sample(1, seed=310 + i) for i in range(2)]
    requests, rows = 6, 4 * 2 + 2 * 1
    stats_before = statistics(kserve, "plain_mlp")
    metrics_before = scrape(generic_server.metrics_port)
    started_ms = time.time() * 1000

    calls = [
        kserve.ModelInfer.future(wire.infer_request("plain_mlp", s), timeout=TIMEOUT)
        for s in concurrent
    ]
    assert settle(calls) == [(grpc.StatusCode.OK, "")] * len(calls)
    stream = kserve.ModelStreamInfer(
        iter(
            [wire.infer_request("plain_mlp", s, request_id=str(i)) for i, s in enumerate(streamed)]
        ),
        timeout=TIMEOUT,
    )
    assert [r.error_message for r in stream] == ["", ""]

    stats = statistics(kserve, "plain_mlp")
    metrics_after = scrape(generic_server.metrics_port)
    ended_ms = time.time() * 1000
    infer, infer_before = stats.inference_stats, stats_before.inference_stats

    assert infer.success.count - infer_before.success.count == requests
    assert infer.success.ns > infer_before.success.ns
    assert infer.fail.count == infer_before.fail.count
    for duration in ("queue", "compute_input", "compute_infer", "compute_output"):
        now, then = getattr(infer, duration), getattr(infer_before, duration)
        assert now.count - then.count == requests, duration  # per request, as Triton counts
    assert infer.compute_infer.ns > infer_before.compute_infer.ns
    assert stats.inference_count - stats_before.inference_count == rows
    executions = stats.execution_count - stats_before.execution_count
    assert 1 <= executions <= requests

    # batch_stats: executions per batch size (rows per execution).
    def by_size(model_stats) -> dict[int, int]:
        return {b.batch_size: b.compute_infer.count for b in model_stats.batch_stats}

    now, then = by_size(stats), by_size(stats_before)
    new = {size: now[size] - then.get(size, 0) for size in now}
    assert sum(new.values()) == executions
    assert sum(size * count for size, count in new.items()) == rows
    assert started_ms <= stats.last_inference <= ended_ms + 1000

    # The same traffic on /metrics.
    moved = functools.partial(metric_delta, metrics_before, metrics_after)
    assert moved("d2lserve_requests_total", code="OK", **labels) == requests  # summed over apis
    assert moved("d2lserve_executions_total", **labels) == executions
    assert moved("d2lserve_inferred_rows_total", **labels) == rows


def test_model_statistics_of_every_model_and_of_an_unknown_one(kserve):
    response = kserve.ModelStatistics(pb.ModelStatisticsRequest(), timeout=TIMEOUT)
    assert {s.name for s in response.model_stats} >= set(SERVED)
    code, _ = code_of(
        lambda: kserve.ModelStatistics(pb.ModelStatisticsRequest(name="nope"), timeout=10)
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_repository_index_lists_every_model_directory_with_its_state(kserve):
    index = kserve.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT)
    entries = {m.name: m for m in index.models}
    assert sorted(entries) == sorted(model_zoo.BUILDERS)
    assert {n: (m.version, m.state) for n, m in entries.items()} == {
        n: ("1", "UNAVAILABLE" if n == "mismatch" else "READY") for n in model_zoo.BUILDERS
    }
    assert "dims" in entries["mismatch"].reason  # Triton gives the failure's reason here too
    ready = kserve.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=TIMEOUT)
    assert sorted(m.name for m in ready.models) == sorted(SERVED)


# -- model control --------------------------------------------------------------------


def test_load_and_unload_are_refused_while_the_server_polls_the_repository(kserve):
    for code, _ in (
        code_of(
            lambda: kserve.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="two_inputs"), timeout=TIMEOUT
            )
        ),
        code_of(
            lambda: kserve.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="two_inputs"), timeout=TIMEOUT
            )
        ),
    ):
        # Triton: UNAVAILABLE "explicit model load / unload is not allowed if polling is enabled"
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
    assert is_ready(kserve, "two_inputs")


def test_explicit_mode_serves_only_the_models_named_at_start(explicit_kserve):
    assert is_ready(explicit_kserve, "two_inputs")
    assert not any(is_ready(explicit_kserve, n) for n in ("half_bool", "plain_mlp", "no_config"))
    index = explicit_kserve.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT)
    states = {m.name: m.state for m in index.models}
    assert states["two_inputs"] == "READY" and states.get("half_bool") != "READY"
    assert "half_bool" in states  # every folder is listed, loaded or not


def test_explicit_load_is_ready_on_return_and_unload_takes_it_away(explicit_kserve, zoo):
    load = pb.RepositoryModelLoadRequest(model_name="half_bool")
    explicit_kserve.RepositoryModelLoad(load, timeout=120)
    assert is_ready(explicit_kserve, "half_bool")
    inputs = zoo["half_bool"].sample(2, seed=400)
    response = explicit_kserve.ModelInfer(wire.infer_request("half_bool", inputs), timeout=TIMEOUT)
    expected = model_zoo.reference(zoo["half_bool"].onnx_path, inputs)
    wire.assert_bit_equal(wire.response_arrays(response), expected)

    unload = pb.RepositoryModelUnloadRequest(model_name="half_bool")
    explicit_kserve.RepositoryModelUnload(unload, timeout=120)
    assert not is_ready(explicit_kserve, "half_bool")
    code, _ = code_of(
        lambda: explicit_kserve.ModelInfer(wire.infer_request("half_bool", inputs), timeout=TIMEOUT)
    )
    assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
    assert is_ready(explicit_kserve, "two_inputs")


def tree(base: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``base`` with its size and modification time."""
    return {
        str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(base.rglob("*"))
    }


@pytest.mark.parametrize(
    ("name", "codes"),
    [
        ("../half_bool", {grpc.StatusCode.INVALID_ARGUMENT}),
        ("..", {grpc.StatusCode.INVALID_ARGUMENT}),
        ("two_inputs/../half_bool", {grpc.StatusCode.INVALID_ARGUMENT}),
        ("half_bool/1", {grpc.StatusCode.INVALID_ARGUMENT}),
        ("/etc", {grpc.StatusCode.INVALID_ARGUMENT}),
        ("no_such_model", {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}),
        (".", {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}),
        ("", {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}),
    ],
)
def test_explicit_load_and_unload_refuse_names_that_are_not_a_repository_folder(
    explicit, explicit_kserve, name, codes
):
    _, base = explicit
    before = tree(base)
    load = code_of(
        lambda: explicit_kserve.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=name), timeout=TIMEOUT
        )
    )
    unload = code_of(
        lambda: explicit_kserve.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name=name), timeout=TIMEOUT
        )
    )
    assert load[0] in codes, load
    assert unload[0] in codes, unload
    assert tree(base) == before  # nothing written, moved or created, inside or outside
    assert not ready_or_refused(explicit_kserve, name)
    index = explicit_kserve.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT)
    assert name not in {m.name for m in index.models}
    assert is_ready(explicit_kserve, "two_inputs")


# -- tritonclient, unchanged (in a subprocess) ----------------------------------------


def run_probe(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def step(seen: dict, key: str) -> object:
    """What the probe recorded for one step, failing with its error when it raised."""
    value = seen[key]
    assert not (isinstance(value, dict) and "error" in value), f"{key}: {value}"
    return value


def probed_array(seen: dict) -> np.ndarray:
    """An array the probe printed as dtype, shape and hex bytes."""
    return np.frombuffer(bytes.fromhex(seen["hex"]), np.dtype(seen["dtype"])).reshape(seen["shape"])


def test_tritonclient_config_statistics_index_and_infer(generic_server, kserve, zoo, tmp_path):
    inputs = {
        "two_inputs": zoo["two_inputs"].sample(3, seed=500),
        "half_bool": zoo["half_bool"].sample(3, seed=501),
        "resnet": zoo["resnet"].sample(2, seed=502),
    }
    arrays = {f"{model}.{n}": a for model, named in inputs.items() for n, a in named.items()}
    np.savez(tmp_path / "inputs.npz", **arrays)
    seen = run_probe("serve", generic_server.target, str(tmp_path / "inputs.npz"))

    config = step(seen, "config_two_inputs")["config"]
    assert (config["name"], config["max_batch_size"]) == ("two_inputs", 16)
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("x", "TYPE_FP32", ["4"]),
        ("k", "TYPE_INT64", ["1"]),
    ]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == str(
        model_zoo.BATCHING_DELAY_US
    )
    completed = step(seen, "config_no_config")["config"]
    assert completed["max_batch_size"] == model_zoo.NO_CONFIG_MAX_BATCH_SIZE
    assert "dynamic_batching" in completed
    assert [t["name"] for t in completed["input"]] == ["features", "counts"]

    for model in ("two_inputs", "half_bool"):
        expected = model_zoo.reference(zoo[model].onnx_path, inputs[model])
        got = step(seen, f"infer_{model}")
        assert {n: o["datatype"] for n, o in got.items()} == {
            n: wire.datatype(a) for n, a in expected.items()
        }
        wire.assert_bit_equal({n: probed_array(o) for n, o in got.items()}, expected)

    classes = step(seen, "classes_resnet")
    assert (classes["datatype"], classes["shape"]) == ("BYTES", [2, 3])
    logits = model_zoo.reference(zoo["resnet"].onnx_path, inputs["resnet"])["logits"]
    check_classification(np.array(classes["strings"], dtype=object), logits, k=3)

    stats = step(seen, "statistics_two_inputs")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("two_inputs", "1")]
    success = int(stats[0]["inference_stats"]["success"]["count"])
    assert success >= 1  # the probe's inference, made before it asked
    assert success == statistics(kserve, "two_inputs").inference_stats.success.count
    index = {m["name"]: m for m in step(seen, "index")["models"]}
    assert sorted(index) == sorted(model_zoo.BUILDERS)
    assert index["two_inputs"]["state"] == "READY"
    assert index["mismatch"]["state"] == "UNAVAILABLE"


def test_tritonclient_loads_and_unloads_in_explicit_mode(explicit):
    seen = run_probe("control", explicit[0].target)
    assert step(seen, "load") is None and step(seen, "ready_after_load") is True
    assert step(seen, "unload") is None and step(seen, "ready_after_unload") is False
    assert "error" in seen["load_outside"]  # "../half_bool" refused
    assert step(seen, "ready_two_inputs") is True
