"""Export to verified ONNX: graph, metadata, config.pbtxt, versions and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_support import (
    FEATURE_MEAN,
    FEATURE_STD,
    KINDS,
    PNG_BYTES,
    cached_to_onnx,
    copy_repository,
    exported_repository,
    trained_model,
)
from google.protobuf import text_format
from torch import nn

from model_repository import layout
from model_repository import metadata as meta
from model_repository.config import format_config, read_config
from model_repository.signature import config_mismatches, signature_from_session
from protos import model_config_pb2
from training import export, publish
from training.export import ExportError, ExportSettings, export_trained_model
from training.result import TrainedModel

ALL_METADATA_KEYS = (
    meta.KIND,
    meta.TASK,
    meta.LABELS,
    meta.DATASET,
    meta.INPUT_LAYOUT,
    meta.INPUT_RANGE,
    meta.FEATURE_NAMES,
    meta.TRAINING_METRICS,
    meta.LIBRARY_VERSIONS,
    meta.CREATED_AT,
    meta.GIT_COMMIT,
)


@pytest.fixture(autouse=True)
def reuse_exported_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "to_onnx", cached_to_onnx)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, TrainedModel]]:
    return exported_repository(tmp_path_factory.getbasetemp())


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def reference(trained: TrainedModel, raw: torch.Tensor) -> list[np.ndarray]:
    """What the graph must compute, written out independently of training.export."""
    x = raw
    if trained.dataset.feature_mean is not None:
        x = (raw - torch.tensor(FEATURE_MEAN)) / torch.tensor(FEATURE_STD)
    with torch.no_grad():
        out = trained.model(x)
    if trained.dataset.task == meta.TASK_CLASSIFICATION:
        return [out.numpy(), torch.softmax(out, dim=1).numpy()]
    return [out.numpy()]


def entries(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_matches_pytorch_on_fresh_inputs(exported, kind: str) -> None:
    repository, models = exported
    trained = models[kind]
    path = layout.model_path(repository, kind, 1)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)
    rng = np.random.default_rng(1)
    for rows in (1, 5, 300):  # 300 > the holdout the exporter saw
        if kind == "linear":
            raw = rng.normal(FEATURE_MEAN, FEATURE_STD, size=(rows, 2))
        else:
            raw = rng.uniform(0, 1, size=(rows, 1, 8, 8))
        raw = torch.from_numpy(raw.astype(np.float32))
        got = session(path).run(None, {meta.INPUT_NAME: raw.numpy()})
        want = reference(trained, raw)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
        if kind != "linear":
            assert (got[0].argmax(1) == want[0].argmax(1)).all()
            np.testing.assert_allclose(got[1].sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_graph_has_named_tensors_with_a_dynamic_batch_dimension(exported, kind: str) -> None:
    repository, _ = exported
    graph = onnx.load(str(layout.model_path(repository, kind, 1))).graph
    outputs = ["prediction"] if kind == "linear" else ["logits", "probabilities"]
    assert [value.name for value in graph.input] == ["input"]
    assert [value.name for value in graph.output] == outputs
    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_props_carry_every_contract_key(exported, kind: str) -> None:
    repository, _ = exported
    model = onnx.load(str(layout.model_path(repository, kind, 1)))
    props = {entry.key: entry.value for entry in model.metadata_props}
    assert set(ALL_METADATA_KEYS) <= set(props)
    assert props[meta.KIND] == kind
    assert json.loads(props[meta.LIBRARY_VERSIONS])["torch"] == torch.__version__
    assert "T" in props[meta.CREATED_AT]
    if kind == "linear":
        assert props[meta.TASK] == meta.TASK_REGRESSION
        assert json.loads(props[meta.LABELS]) == []
        assert json.loads(props[meta.FEATURE_NAMES]) == ["x1", "x2"]
        assert props[meta.INPUT_LAYOUT] == "NF"
        assert json.loads(props[meta.INPUT_RANGE]) is None
    else:
        assert json.loads(props[meta.LABELS]) == [str(d) for d in range(10)]
        assert props[meta.DATASET] == "digits"
        assert json.loads(props[meta.INPUT_RANGE]) == [0.0, 1.0]
        assert json.loads(props[meta.TRAINING_METRICS])["test_acc"] == pytest.approx(0.88)


def test_csv_standardization_happens_inside_the_graph(exported) -> None:
    repository, models = exported
    trained = models["linear"]
    raw = torch.tensor([[5.0, -3.0], [9.0, -2.0], [-1.0, -4.5]])
    (got,) = session(layout.model_path(repository, "linear", 1)).run(None, {"input": raw.numpy()})
    standardized = (raw - torch.tensor(FEATURE_MEAN)) / torch.tensor(FEATURE_STD)
    with torch.no_grad():
        np.testing.assert_allclose(got, trained.model(standardized).numpy(), atol=1e-5, rtol=0)
        # Guard the guard: without standardization the answer would be visibly different.
        assert np.abs(got - trained.model(raw).numpy()).max() > 0.1


def test_config_pbtxt_parses_with_text_format_into_model_config(exported) -> None:
    repository, _ = exported
    text = layout.config_path(repository, "mlp").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == "mlp" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    (entry,) = config.input
    assert (entry.name, entry.data_type, list(entry.dims)) == (
        "input",
        model_config_pb2.TYPE_FP32,
        [1, 8, 8],
    )
    assert entry.format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [10]),
        ("probabilities", [10]),
    ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert config.version_policy.latest.num_versions == 2
    assert config.instance_group[0].count == 1
    linear = read_config(layout.config_path(repository, "linear"))
    assert linear.input[0].format == model_config_pb2.ModelInput.FORMAT_NONE
    assert list(linear.input[0].dims) == [2] and list(linear.output[0].dims) == [1]
    graph = ort.InferenceSession(str(layout.model_path(repository, "mlp", 1)))
    assert config_mismatches(config, signature_from_session(graph), "mlp") == []


def test_version_dir_holds_metrics_and_artifacts(exported) -> None:
    repository, _ = exported
    version_dir = layout.version_dir(repository, "softmax", 1)
    assert entries(version_dir) == ["curves.png", "metrics.json", "model.onnx"]
    assert (version_dir / "curves.png").read_bytes() == PNG_BYTES
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "digits" and metrics["epochs"] == 1
    assert metrics["final"]["test_acc"] == pytest.approx(0.88)
    assert metrics["history"] == [metrics["final"]]
    assert metrics["device"] == "cpu" and metrics["hyperparameters"]["lr"] == 0.1
    assert set(metrics["timings_seconds"]) == {"train", "export", "verify"}
    diffs = metrics["export"]["ort_vs_torch"]["max_abs_diff"]
    assert set(diffs) == {"logits", "probabilities"} and max(diffs.values()) <= 1e-5
    assert entries(repository / "softmax") == ["1", "config.pbtxt"]  # no staging left over


def test_second_export_is_version_2_and_version_1_is_untouched(exported, tmp_path: Path) -> None:
    repository = copy_repository(exported[0], tmp_path / "models")
    first = layout.model_path(repository, "mlp", 1).read_bytes()
    target = export_trained_model(trained_model("mlp"), repository)
    assert target == layout.version_dir(repository, "mlp", 2)
    assert layout.versions(repository / "mlp") == [1, 2]
    assert layout.model_path(repository, "mlp", 1).read_bytes() == first
    assert entries(target) == ["metrics.json", "model.onnx"]
    assert entries(repository / "mlp") == ["1", "2", "config.pbtxt"]


class ExportsDifferently(nn.Module):
    """Behaves one way in eager PyTorch and another way once exported."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # same weights every time, so the exported graph is reused
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if torch.compiler.is_exporting():
            return logits + 1e-3
        return logits


def test_failed_verification_aborts_and_leaves_nothing(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    trained = trained_model("mlp", model=ExportsDifferently())
    with pytest.raises(ExportError, match=r"'logits' differs from PyTorch by up to 0.001"):
        export_trained_model(trained, repository)
    assert entries(repository) == []


def test_failed_verification_adds_no_version_to_an_existing_model(exported, tmp_path: Path) -> None:
    repository = copy_repository(exported[0], tmp_path / "models")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_trained_model(
            trained_model("mlp", model=ExportsDifferently()), repository, "softmax"
        )
    assert entries(repository / "softmax") == ["1", "config.pbtxt"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_write_leaves_no_version_no_staging_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    written = []
    real = publish.write_synced

    def fail_on_second_file(path: Path, data: bytes) -> None:
        if written:
            raise failure
        real(path, data)
        written.append(path)

    monkeypatch.setattr(publish, "write_synced", fail_on_second_file)
    repository = tmp_path / "models"
    expected = ExportError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        export_trained_model(trained_model("softmax"), repository)
    assert written, "the failure should strike after the first staged file"
    assert entries(repository) == []


def test_existing_tuned_config_is_kept(exported, tmp_path: Path) -> None:
    repository = copy_repository(exported[0], tmp_path / "models")
    path = layout.config_path(repository, "mlp")
    config = read_config(path)
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    config.instance_group[0].count = 3
    path.write_text(format_config(config))
    before = path.read_text()
    export_trained_model(trained_model("mlp"), repository)
    assert path.read_text() == before
    assert layout.versions(repository / "mlp") == [1, 2]


def test_existing_config_that_disagrees_with_the_graph_refuses_the_export(
    exported, tmp_path: Path
) -> None:
    repository = copy_repository(exported[0], tmp_path / "models")
    path = layout.config_path(repository, "mlp")
    config = read_config(path)
    del config.input[0].dims[:]
    config.input[0].dims.extend([1, 28, 28])
    path.write_text(format_config(config))
    with pytest.raises(ExportError) as caught:
        export_trained_model(trained_model("mlp"), repository)
    message = str(caught.value)
    assert str(path) in message and "[1, 28, 28]" in message and "[1, 8, 8]" in message
    assert entries(repository / "mlp") == ["1", "config.pbtxt"]


def test_bad_holdout_is_refused_before_any_work(tmp_path: Path) -> None:
    trained = trained_model("softmax")
    trained.holdout = torch.rand(10, 1, 28, 28)
    with pytest.raises(ExportError, match=r"holdout has shape \[10, 1, 28, 28\]; expected"):
        export_trained_model(trained, tmp_path / "models")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("name", ["../escape", ".hidden", "12", ""])
def test_unusable_model_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ExportError, match="not usable as a repository directory"):
        export_trained_model(trained_model("linear"), tmp_path / "models", name=name or "/")


@pytest.mark.parametrize(
    ("field", "value"),
    [("opset", 16), ("max_batch_size", 0), ("preferred_batch_sizes", (512,)), ("atol", 0.0)],
)
def test_export_settings_reject_values_that_cannot_work(field: str, value: object) -> None:
    with pytest.raises(ExportError, match=field.split("_")[0]):
        ExportSettings(**{field: value})
