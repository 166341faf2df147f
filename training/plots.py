"""PNG figures of a run: d2l-style training curves and a gallery of test predictions.

Uses matplotlib's Agg backend (no display needed) and an explicit Figure, so nothing touches
pyplot's global state and plotting is safe in servers and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

matplotlib.use("Agg")  # no display; Figure objects below never touch pyplot's global state

LOGGER = logging.getLogger(__name__)

CURVE_STYLES = {  # history key -> (legend label, line style), as d2l's Animator draws them
    "train_loss": ("train loss", "-"),
    "train_acc": ("train acc", "m--"),
    "test_acc": ("test acc", "g-."),
}
GALLERY_IMAGES = 18
GALLERY_COLUMNS = 6


def training_curves(history: Sequence[dict[str, float]], title: str, path: Path) -> Path:
    """Loss, train accuracy and test accuracy per epoch on one axis, like d2l's Animator."""
    figure = Figure(figsize=(5.0, 3.5), dpi=100)
    axes = figure.add_subplot()
    epochs = [entry["epoch"] for entry in history]
    for key, (label, style) in CURVE_STYLES.items():
        if history and key in history[0]:
            axes.plot(epochs, [entry[key] for entry in history], style, label=label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set_xlim(0.5, max(epochs, default=1) + 0.5)
    axes.set_title(title)
    axes.grid(True)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    LOGGER.debug("wrote %s", path)
    return path


def prediction_gallery(
    images: torch.Tensor,
    true_labels: Sequence[str],
    predicted_labels: Sequence[str],
    path: Path,
) -> Path:
    """Test images [N, 1, H, W] titled ``true / predicted`` (like d2l's ``predict_ch3``)."""
    count = min(len(images), GALLERY_IMAGES)
    rows = max(1, -(-count // GALLERY_COLUMNS))
    figure = Figure(figsize=(1.5 * GALLERY_COLUMNS, 1.8 * rows), dpi=100)
    for i in range(count):
        axes = figure.add_subplot(rows, GALLERY_COLUMNS, i + 1)
        axes.imshow(images[i, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        wrong = true_labels[i] != predicted_labels[i]
        axes.set_title(
            f"{true_labels[i]}\n{predicted_labels[i]}", fontsize=8, color="red" if wrong else "k"
        )
        axes.axis("off")
    figure.suptitle("true / predicted (red: wrong)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, format="png")
    LOGGER.debug("wrote %s", path)
    return path
