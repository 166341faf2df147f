from __future__ import annotations

import pytest
import torch

from training import data
from training.models import ModelSettings
from training.train import FitSettings, train


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.digits()


@pytest.mark.parametrize("impl", ["concise", "scratch"])
def test_cpu_runs_with_the_same_seed_are_identical(digits: data.Dataset, impl: str) -> None:
    settings = ModelSettings("mlp", impl, hidden=(32,), dropout=0.1)  # dropout draws too
    runs = [train(settings, FitSettings(2, 0.1, 64, "cpu", seed=7), digits) for _ in range(2)]
    first, second = (run.model.state_dict() for run in runs)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    strip = [[{k: v for k, v in e.items() if k != "seconds"} for e in r.history] for r in runs]
    assert strip[0] == strip[1]


def test_a_different_seed_gives_a_different_model(digits: data.Dataset) -> None:
    settings = ModelSettings("softmax", "concise")
    a, b = (train(settings, FitSettings(1, 0.1, 64, "cpu", seed=s), digits) for s in (1, 2))
    assert not torch.equal(a.model.state_dict()["1.weight"], b.model.state_dict()["1.weight"])
