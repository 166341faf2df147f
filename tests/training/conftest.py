"""Fixtures for the training tests: tiny Fashion-MNIST files in the real IDX layout."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def idx_images(images: np.ndarray) -> bytes:
    count, rows, cols = images.shape
    return struct.pack(">IIII", IMAGE_MAGIC, count, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", LABEL_MAGIC, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fashion_mnist(
    root: Path, train: int = 64, test: int = 40, compress: bool = False, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Write the four files torchvision's FashionMNIST reads, under root/FashionMNIST/raw/.

    Returns the test images and labels written, to compare with what the loader gives back.
    """
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    result = None
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        for name, payload in (
            (f"{prefix}-images-idx3-ubyte", idx_images(images)),
            (f"{prefix}-labels-idx1-ubyte", idx_labels(labels)),
        ):
            if compress:
                (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (raw / name).write_bytes(payload)
        result = (images, labels)
    assert result is not None
    return result


@pytest.fixture
def fashion_files() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return write_fashion_mnist
