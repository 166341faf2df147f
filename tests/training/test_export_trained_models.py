"""The real networks, trained for one epoch through training.train, export and verify cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_repository import layout
from training import data as datasets
from training.export import export_trained_model
from training.models import ModelSettings
from training.train import FitSettings, train
from training.verify import verify_repository


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    return datasets.digits()


def house_prices_csv(path: Path) -> Path:
    """Raw features far from 0 and targets in the hundreds of thousands, like a real table."""
    rng = np.random.default_rng(0)
    area = rng.uniform(40, 250, 60)
    year = rng.integers(1950, 2024, 60)
    price = 3000 * area + 500 * (year - 1950) + rng.normal(0, 5000, 60)
    rows = [
        "area,year,price",
        *(f"{a:.1f},{y},{p:.0f}" for a, y, p in zip(area, year, price, strict=True)),
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def ort_outputs(version_dir: Path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(
        str(version_dir / layout.MODEL_FILENAME), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": x.numpy()})


@pytest.mark.parametrize(("kind", "impl"), [("softmax", "concise"), ("mlp", "scratch")])
def test_trained_classifier_exports_with_the_accuracy_it_trained_to(
    tmp_path: Path, digits: datasets.Dataset, kind: str, impl: str
) -> None:
    trained = train(ModelSettings(kind, impl=impl), FitSettings(1, 0.5, 64, "cpu"), digits)
    version_dir = export_trained_model(trained, tmp_path / "models")
    assert version_dir == tmp_path / "models" / kind / "1"
    logits, probabilities = ort_outputs(version_dir, digits.x_test)
    accuracy = float((logits.argmax(1) == digits.y_test.numpy()).mean())
    assert accuracy == pytest.approx(trained.metrics["test_acc"], abs=1e-9)
    assert accuracy > 0.5  # it did learn something in one epoch
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert metrics["hyperparameters"]["impl"] == impl
    assert max(metrics["export"]["ort_vs_torch"]["max_abs_diff"].values()) <= 1e-5
    assert [f.ok for f in verify_repository(tmp_path / "models")] == [True]


def test_trained_linear_on_synthetic_data_exports(tmp_path: Path) -> None:
    data = datasets.synthetic(datasets.SyntheticSettings())
    trained = train(ModelSettings("linear"), FitSettings(3, 0.03, 10, "cpu"), data)
    version_dir = export_trained_model(trained, tmp_path / "models")
    (prediction,) = ort_outputs(version_dir, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_allclose(prediction[:, 0], [2.0 - 3.4 + 4.2, 4.2], atol=0.05)
    assert [f.ok for f in verify_repository(tmp_path / "models")] == [True]


def test_trained_linear_on_a_raw_csv_takes_raw_values(tmp_path: Path) -> None:
    data = datasets.csv_regression(house_prices_csv(tmp_path / "prices.csv"), "price")
    trained = train(ModelSettings("linear", impl="scratch"), FitSettings(1, 0.03, 10, "cpu"), data)
    version_dir = export_trained_model(trained, tmp_path / "models", name="prices")
    (prediction,) = ort_outputs(version_dir, data.holdout)
    with torch.no_grad():
        expected = trained.model(data.x_test).numpy()  # standardized by the data module
    rows = len(data.x_test)
    np.testing.assert_allclose(prediction[:rows], expected, rtol=1e-6)
    assert [f.ok for f in verify_repository(tmp_path / "models")] == [True]
