from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import data
from training.cli import Overrides
from training.errors import ConfigError
from training.models import ModelSettings
from training.train import FitSettings, train


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.digits()


def cli_defaults(kind: str, dataset: str) -> FitSettings:
    """The settings ``python -m training`` uses for this model and data set, on the CPU."""
    return Overrides(device="cpu").resolve(kind, dataset)


@pytest.mark.parametrize(("kind", "threshold"), [("softmax", 0.93), ("mlp", 0.95)])
def test_classifiers_reach_the_quality_targets_on_digits_in_both_impls(
    digits: data.Dataset, kind: str, threshold: float
) -> None:
    results = {
        impl: train(ModelSettings(kind, impl), cli_defaults(kind, "digits"), digits)
        for impl in ("concise", "scratch")
    }
    for impl, trained in results.items():
        assert trained.metrics["test_acc"] >= threshold, (impl, trained.metrics)
        history = trained.history
        assert len(history) == trained.hyperparameters["epochs"]
        assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Scratch and concise are the same maths: same quality within a point or two.
    gap = abs(results["concise"].metrics["test_acc"] - results["scratch"].metrics["test_acc"])
    assert gap <= 0.02, {impl: r.metrics for impl, r in results.items()}


@pytest.mark.parametrize("impl", ["concise", "scratch"])
def test_linear_regression_recovers_w_and_b_within_001_like_lstsq(impl: str) -> None:
    synthetic = data.synthetic(data.SyntheticSettings())
    trained = train(ModelSettings("linear", impl), cli_defaults("linear", "synthetic"), synthetic)
    m = trained.metrics
    assert m["w_error_max"] < 0.01 and m["b_error"] < 0.01, m
    assert m["lstsq_w_error_max"] < 0.01 and m["lstsq_b_error"] < 0.01, m
    assert m["train_loss"] < 1e-3  # noise variance / 2 is 5e-5
    assert trained.history[-1]["train_loss"] == m["train_loss"]


def test_linear_on_a_csv_learns_standardized_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(loc=[5.0, -100.0], scale=[2.0, 30.0], size=(200, 2))
    target = 3.0 * features[:, 0] - 0.1 * features[:, 1] + 1.0
    path = tmp_path / "table.csv"
    rows = "\n".join(f"{a},{b},{y}" for (a, b), y in zip(features, target, strict=True))
    path.write_text(f"a,b,y\n{rows}\n")
    table = data.csv_regression(path, "y")
    trained = train(ModelSettings("linear"), cli_defaults("linear", "csv"), table)
    assert trained.metrics["train_loss"] < 1e-3, trained.metrics
    assert trained.metrics["lstsq_train_loss"] < 1e-8
    # The model maps standardized rows; standardizing the raw holdout reproduces the target.
    mean = torch.tensor(table.info.feature_mean)
    std = torch.tensor(table.info.feature_std)
    raw = table.holdout[:5]
    predicted = trained.model((raw - mean) / std)[:, 0]
    expected = 3.0 * raw[:, 0] - 0.1 * raw[:, 1] + 1.0
    torch.testing.assert_close(predicted, expected, atol=0.05, rtol=0.0)


@pytest.mark.parametrize(
    ("activation", "lr", "threshold"), [("sigmoid", 1.0, 0.85), ("tanh", 0.5, 0.92)]
)
def test_mlp_variants_with_two_hidden_layers_and_dropout_learn(
    digits: data.Dataset, activation: str, lr: float, threshold: float
) -> None:
    settings = ModelSettings("mlp", "scratch", (64, 32), activation, dropout=0.2)
    trained = train(settings, FitSettings(10, lr, 32, "cpu"), digits)
    assert trained.metrics["test_acc"] >= threshold, trained.metrics  # chance is 0.1
    assert trained.hyperparameters["hidden"] == [64, 32]


def test_trained_model_fills_the_export_contract(digits: data.Dataset) -> None:
    trained = train(ModelSettings("softmax", "scratch"), FitSettings(1, 0.1, 256, "cpu"), digits)
    assert trained.kind == "softmax" and trained.device == "cpu"
    assert not trained.model.training
    assert all(p.device.type == "cpu" for p in trained.model.parameters())
    assert trained.dataset.labels == tuple("0123456789")
    assert trained.holdout.dtype == torch.float32 and trained.holdout.shape[1:] == (1, 8, 8)
    assert trained.holdout.shape[0] >= 37
    assert {"train_loss", "train_acc", "test_acc"} <= trained.metrics.keys()
    assert trained.seconds > 0 and trained.hyperparameters["impl"] == "scratch"
    assert trained.model(trained.holdout[:3]).shape == (3, 10)


def test_model_and_data_mismatch_and_bad_settings_are_config_errors(
    digits: data.Dataset,
) -> None:
    with pytest.raises(ConfigError, match=r"linear.*cannot train on 'digits'"):
        train(ModelSettings("linear"), FitSettings(1, 0.1, 32, "cpu"), digits)
    with pytest.raises(ConfigError, match="--lr must be a finite number > 0; got -1"):
        FitSettings(1, -1.0, 32)
    with pytest.raises(ConfigError, match="--batch-size must be >= 1; got 0"):
        FitSettings(1, 0.1, 0)
    with pytest.raises(ConfigError, match="--dropout must be in"):
        ModelSettings("mlp", dropout=1.0)
    with pytest.raises(ConfigError, match="unknown model 'cnn'"):
        ModelSettings("cnn")
