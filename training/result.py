"""What a finished training run hands to the exporter.

This is the contract between ``training.train`` (which fills it) and
``training.export`` (which turns it into a verified ONNX version in the repository).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from model_repository import metadata as meta


@dataclass(frozen=True)
class DatasetInfo:
    """What a model was trained on, as the exported graph and its metadata need it."""

    name: str  # "fashion-mnist" | "digits" | "synthetic" | "csv"
    task: str  # "classification" | "regression"
    input_shape: tuple[int, ...]  # one sample, no batch dim: (1, 28, 28), (1, 8, 8), (d,)
    labels: tuple[str, ...] = ()  # class names in output order; () for regression
    feature_names: tuple[str, ...] = ()  # tabular inputs only
    # Standardization applied to raw tabular inputs before the network; the exporter
    # puts it inside the graph so callers send raw values. None when there is none.
    feature_mean: tuple[float, ...] | None = None
    feature_std: tuple[float, ...] | None = None
    input_range: tuple[float, float] | None = None  # raw value range, (0.0, 1.0) for images
    input_layout: str = meta.LAYOUT_NCHW  # LAYOUT_NCHW for images, LAYOUT_NF for tables


@dataclass
class TrainedModel:
    """A trained network and everything measured about it."""

    kind: str  # "linear" | "softmax" | "mlp"
    # On the CPU, in eval mode. forward(x) maps standardized inputs [B, *input_shape]
    # to logits [B, classes] (classifiers) or predictions [B, 1] (regression).
    model: nn.Module
    dataset: DatasetInfo
    metrics: dict[str, float]  # final figures: train_loss, train_acc, test_acc, ...
    history: list[dict[str, float]]  # one entry per epoch, same keys as metrics
    hyperparameters: dict[str, object]  # lr, batch_size, epochs, impl, hidden, ...
    device: str  # where it trained: "cpu" or "cuda:0"
    seconds: float  # wall time of the fit
    # Raw (un-standardized) held-out inputs [N, *input_shape], float32, CPU, for the
    # exporter's ONNX-vs-PyTorch check. At least 37 rows.
    holdout: torch.Tensor
    # Extra files to place in the version directory (e.g. curves.png), name -> path.
    artifacts: dict[str, Path] = field(default_factory=dict)
