"""Small TrainedModels and a shared exported repository for the export and verify tests.

Built directly from tiny nn.Modules, so these tests do not depend on the training loop.

torch.onnx.export(dynamo=True) costs about a second per call (it rebuilds its op registry
each time) plus several seconds the first time. Tests about repository writing do not
need a fresh graph each time, so ``cached_to_onnx`` memoizes the exporter's ModelProto per
network class and weights; everything after it (metadata, checker, the ONNX Runtime vs
PyTorch comparison, the writes) still runs for real on every export.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from training import export
from training.data import DIGIT_LABELS
from training.export import ExportModule, export_trained_model
from training.models import KINDS
from training.result import DatasetInfo, TrainedModel

FEATURE_MEAN = (5.0, -3.0)
FEATURE_STD = (2.0, 0.5)
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(64))  # content only has to round-trip

_built: dict[str, Path] = {}
_graphs: dict[str, onnx.ModelProto] = {}
_real_to_onnx = export.to_onnx


def cached_to_onnx(wrapper: ExportModule, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    key = hashlib.sha256(f"{type(wrapper.model).__qualname__}/{opset}".encode())
    for name, tensor in wrapper.state_dict().items():
        key.update(name.encode())
        key.update(tensor.numpy().tobytes())
    digest = key.hexdigest()
    if digest not in _graphs:
        _graphs[digest] = _real_to_onnx(wrapper, sample, opset)
    graph = onnx.ModelProto()
    graph.CopyFrom(_graphs[digest])  # the exporter edits metadata in place
    return graph


def image_info() -> DatasetInfo:
    return DatasetInfo(
        name="digits",
        task="classification",
        input_shape=(1, 8, 8),
        labels=DIGIT_LABELS,
        input_range=(0.0, 1.0),
    )


def csv_info() -> DatasetInfo:
    return DatasetInfo(
        name="csv",
        task="regression",
        input_shape=(2,),
        feature_names=("x1", "x2"),
        feature_mean=FEATURE_MEAN,
        feature_std=FEATURE_STD,
        input_layout="NF",
    )


def network(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(2, 1)
    if kind == "softmax":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def trained_model(
    kind: str,
    seed: int = 0,
    model: nn.Module | None = None,
    artifacts: dict[str, Path] | None = None,
) -> TrainedModel:
    """A TrainedModel as training.train would hand it over, with a random network."""
    torch.manual_seed(seed)
    net = (model or network(kind)).eval()
    with torch.no_grad():  # larger weights give logits of several units, like a trained net
        for param in net.parameters():
            param.mul_(4.0)
    if kind == "linear":
        info = csv_info()
        holdout = torch.randn(64, 2) * torch.tensor(FEATURE_STD) + torch.tensor(FEATURE_MEAN)
        metrics = {"train_loss": 0.01}
    else:
        info = image_info()
        holdout = torch.rand(64, 1, 8, 8)
        metrics = {"train_loss": 0.3, "train_acc": 0.9, "test_acc": 0.88}
    return TrainedModel(
        kind=kind,
        model=net,
        dataset=info,
        metrics=metrics,
        history=[dict(metrics)],
        hyperparameters={"epochs": 1, "lr": 0.1, "batch_size": 32},
        device="cpu",
        seconds=0.5,
        holdout=holdout,
        artifacts=artifacts or {},
    )


def exported_repository(scratch: Path) -> tuple[Path, dict[str, TrainedModel]]:
    """Version 1 of linear, softmax and mlp, exported once per test session (read-only)."""
    if "repository" not in _built:
        root = scratch / "exported"
        (root / "art").mkdir(parents=True)
        curves = root / "art" / "curves.png"
        curves.write_bytes(PNG_BYTES)
        repository = root / "models"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(export, "to_onnx", cached_to_onnx)
            for kind in KINDS:
                trained = trained_model(kind, artifacts={"curves.png": curves})
                export_trained_model(trained, repository)
        _built["repository"] = repository
    return _built["repository"], {kind: trained_model(kind) for kind in KINDS}


def copy_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
