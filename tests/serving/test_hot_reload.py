"""The server follows its repository: new versions, corrupt versions, loading, removal."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from serving_support import (
    add_model,
    export_mlp,
    model_config,
    slow_model,
)

from model_repository import layout
from model_repository.config import format_config, read_config
from protos import predict_pb2
from serving.client import Client, predict_request

ROW = np.full((1, 1, 8, 8), 0.25, dtype=np.float32)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def states(client: Client, name: str) -> dict[int, int]:
    return {v.version: v.state for v in client.get_model(name).versions}


@pytest.fixture(scope="module")
def watched(model_repository, tmp_path_factory):
    """A dedicated server over a copy of the repository, which this module changes."""
    from serving_support import ServerProcess

    repository = tmp_path_factory.mktemp("hot") / "models"
    shutil.copytree(model_repository, repository)
    process = ServerProcess(repository)
    process.start(tmp_path_factory.mktemp("hot-logs"))
    with Client(process.target, timeout=20) as client:
        yield process, repository, client
    assert process.stop() == 0, process.log()


def test_new_version_becomes_default_after_loading_and_the_old_one_is_unloaded(watched):
    process, repository, client = watched
    v1 = client.predict("mlp", ROW).probabilities
    path = export_mlp(repository, seed=5)  # the exporter publishes it as version 2
    assert path.name == "2"
    wait_for(lambda: client.get_model("mlp").version == 2, what="v2 as default")
    expected = ort.InferenceSession(
        str(path / "model.onnx"), providers=["CPUExecutionProvider"]
    ).run(["probabilities"], {"input": ROW})[0]
    result = client.predict("mlp", ROW)
    assert result.version == 2
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(result.probabilities, v1)
    # version_policy defaults to latest 1: v1 is drained and unloaded
    wait_for(lambda: states(client, "mlp") == {2: predict_pb2.READY}, what="v1 unloaded")
    with pytest.raises(grpc.RpcError) as error:
        client.predict("mlp", ROW, version=1)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "event=model_unloaded model=mlp version=1" in process.log()


def test_corrupt_version_is_logged_and_skipped_while_the_previous_keeps_serving(watched):
    process, repository, client = watched
    before = client.get_model("mlp").version
    staging = repository / f"{layout.STAGING_PREFIX}corrupt"
    staging.mkdir()
    (staging / layout.MODEL_FILENAME).write_bytes(b"this is not an ONNX file")
    staging.rename(repository / "mlp" / "9")
    failed = wait_for(lambda: states(client, "mlp").get(9) == predict_pb2.FAILED, what="v9 failed")
    assert failed
    info = client.get_model("mlp")
    assert info.version == before
    reason = next(v.reason for v in info.versions if v.version == 9)
    assert "ONNX Runtime cannot load" in reason
    assert client.predict("mlp", ROW).version == before
    with pytest.raises(grpc.RpcError) as error:
        client.predict("mlp", ROW, version=9)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "event=model_load_failed model=mlp version=9" in process.log()
    shutil.rmtree(repository / "mlp" / "9")
    wait_for(lambda: 9 not in states(client, "mlp"), what="v9 forgotten")


def test_config_that_disagrees_with_a_new_graph_fails_it_while_the_old_one_serves(watched):
    _, repository, client = watched
    before = client.get_model("mlp").version
    config_file = layout.config_path(repository, "mlp")
    original = config_file.read_text()
    config = read_config(config_file)
    del config.input[0].dims[:]
    config.input[0].dims.extend([1, 9, 9])
    config_file.write_text(format_config(config))
    staging = repository / f"{layout.STAGING_PREFIX}mismatch"
    staging.mkdir()
    shutil.copy(layout.model_path(repository, "mlp", before), staging / layout.MODEL_FILENAME)
    staging.rename(repository / "mlp" / "10")
    try:
        wait_for(lambda: states(client, "mlp").get(10) == predict_pb2.FAILED, what="v10 failed")
        info = client.get_model("mlp")
        reason = next(v.reason for v in info.versions if v.version == 10)
        assert "config input 'input' dims are [1, 9, 9]; the graph has [1, 8, 8]" in reason
        assert info.version == before
        assert client.predict("mlp", ROW).version == before
    finally:
        config_file.write_text(original)
        shutil.rmtree(repository / "mlp" / "10")
    wait_for(lambda: 10 not in states(client, "mlp"), what="v10 forgotten")


def test_model_is_unavailable_while_loading_then_ready(watched):
    _, repository, client = watched
    staging = repository / f"{layout.STAGING_PREFIX}slowload"
    add_model(
        staging,
        "slowload",
        slow_model(size=1024, steps=16),
        model_config("slowload", max_batch_size=1),
    )
    row = np.ones((1, 4), np.float32)

    def first_answer() -> grpc.StatusCode | None:
        try:
            client.predict("slowload", row, timeout=30)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            assert "has no ready version: 1 (loading)" in error.details()
            return error.code()
        return grpc.StatusCode.OK

    (staging / "slowload").rename(repository / "slowload")
    assert wait_for(first_answer, what="slowload to appear") == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: states(client, "slowload") == {1: predict_pb2.READY}, what="slowload ready")
    assert client.predict("slowload", row, timeout=30).predictions is not None
    shutil.rmtree(repository / "slowload")


def test_removed_model_is_unloaded_and_then_not_found(watched):
    _, repository, client = watched
    shutil.rmtree(repository / "reg")

    def gone() -> bool:
        try:
            client.predict("reg", np.ones((1, 4), np.float32))
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.NOT_FOUND
        return False

    wait_for(gone, what="reg removed")
    assert "reg" not in [m.name for m in client.list_models()]
    assert client.predict("mlp", ROW).labels


def test_removed_version_is_drained_before_unloading(watched):
    """Callers hammer 'slow' while its directory disappears: admitted requests all finish.

    Refusals at admission (queue full, unloading, gone) are fine; a request that was
    admitted and then failed (CANCELLED, INTERNAL, ...) would be a lost one.
    """
    _, repository, client = watched
    request = predict_request("slow", np.ones((1, 4), np.float32))
    refused = {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,
    }
    codes: list[grpc.StatusCode] = []

    def hammer() -> None:
        while grpc.StatusCode.NOT_FOUND not in codes:
            try:
                client.stub.Predict(request, timeout=30)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    assert "unloading" in error.details() or "no ready version" in error.details()

    with ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(hammer) for _ in range(3)]
        wait_for(lambda: codes.count(grpc.StatusCode.OK) >= 3, what="slow serving")
        shutil.rmtree(repository / "slow")
        for worker in workers:
            worker.result(timeout=60)
    assert set(codes) <= {grpc.StatusCode.OK, *refused}, codes
