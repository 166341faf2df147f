"""The exporter's defaults, served: several versions, the version policies, preferred sizes.

The rest of the suite exports with small settings (one version, no preferred sizes); here
three versions of ``mlp`` go through training.export with ``ExportSettings()`` exactly as
``python -m training`` writes them, and real servers load them under each version policy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from serving_support import export_mlp

from model_repository import layout
from model_repository.config import format_config, read_config
from protos import predict_pb2
from serving.client import Client
from training.export import ExportSettings

DEFAULTS = ExportSettings()
ROWS = np.random.default_rng(7).random((3, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1, 2 and 3 of mlp (different weights), with the exporter's config.pbtxt."""
    repository = tmp_path_factory.mktemp("defaults") / "models"
    for seed in (1, 2, 3):
        export_mlp(repository, seed=seed, settings=DEFAULTS)
    return repository


def with_policy(source: Path, target: Path, policy: str | None) -> Path:
    """A copy of ``source`` whose mlp config.pbtxt has ``policy`` (None: as exported)."""
    shutil.copytree(source, target)
    if policy is not None:
        path = layout.config_path(target, "mlp")
        config = read_config(path)
        config.version_policy.Clear()
        if policy == "all":
            config.version_policy.all.SetInParent()
        elif policy == "specific":
            config.version_policy.specific.versions.extend([1, 3])
        else:
            config.version_policy.latest.num_versions = int(policy)
        path.write_text(format_config(config), encoding="utf-8")
    return target


def expected(repository: Path, version: int) -> np.ndarray:
    path = layout.version_dir(repository, "mlp", version) / layout.MODEL_FILENAME
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"input": ROWS})[0]


def served(client: Client) -> dict[int, int]:
    return {v.version: v.state for v in client.get_model("mlp").versions}


def test_the_exported_config_is_the_documented_default(exported):
    config = read_config(layout.config_path(exported, "mlp"))
    assert config.version_policy.latest.num_versions == DEFAULTS.num_versions == 2
    assert list(config.dynamic_batching.preferred_batch_size) == [64, 128]
    assert config.max_batch_size == 256
    assert sorted(p.name for p in (exported / "mlp").iterdir() if p.is_dir()) == ["1", "2", "3"]


def test_server_serves_the_latest_two_versions_with_the_exported_batching(
    exported, start_server, tmp_path
):
    repository = with_policy(exported, tmp_path / "models", None)
    server = start_server(repository)
    with Client(server.target, timeout=20) as client:
        info = client.get_model("mlp")
        assert info.version == 3  # the newest is the default
        assert served(client) == {2: predict_pb2.READY, 3: predict_pb2.READY}
        batching = info.batching
        assert batching.enabled and batching.max_batch_size == 256
        assert list(batching.preferred_batch_sizes) == [64, 128]
        assert batching.max_queue_delay_microseconds == 500
        assert batching.max_queue_size == 1024 and batching.instances == 1
        for version in (2, 3):  # each version answers with its own weights
            result = client.predict("mlp", ROWS, version=version)
            assert result.version == version
            np.testing.assert_allclose(
                result.probabilities, expected(repository, version), rtol=1e-5, atol=1e-6
            )
        assert client.predict("mlp", ROWS).version == 3
        with pytest.raises(grpc.RpcError) as old:
            client.predict("mlp", ROWS, version=1)
        assert old.value.code() == grpc.StatusCode.NOT_FOUND
        assert "has no version 1" in old.value.details()


@pytest.mark.parametrize(
    ("policy", "versions"),
    [("all", {1, 2, 3}), ("specific", {1, 3}), ("1", {3}), ("3", {1, 2, 3})],
)
def test_version_policies_choose_the_served_versions(
    exported, start_server, tmp_path, policy, versions
):
    repository = with_policy(exported, tmp_path / "models", policy)
    server = start_server(repository)
    with Client(server.target, timeout=20) as client:
        assert served(client) == dict.fromkeys(versions, predict_pb2.READY)
        assert client.get_model("mlp").version == max(versions)
        for version in sorted(versions):
            result = client.predict("mlp", ROWS, version=version)
            np.testing.assert_allclose(
                result.probabilities, expected(repository, version), rtol=1e-5, atol=1e-6
            )
