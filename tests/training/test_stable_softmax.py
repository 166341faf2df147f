from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from training import models

EXTREME = torch.tensor([[1000.0, -1000.0, 0.0, 999.0], [-1000.0, -1000.0, -999.0, -1000.0]])


def test_softmax_of_huge_logits_is_finite_and_matches_torch() -> None:
    ours = models.softmax(EXTREME)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, torch.softmax(EXTREME, dim=1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.sum(dim=1), torch.ones(2))


def test_log_softmax_and_cross_entropy_of_huge_logits_match_torch() -> None:
    labels = torch.tensor([1, 2])  # the -1000 logit: a naive log(softmax) would give -inf
    ours = models.cross_entropy(EXTREME, labels)
    assert torch.isfinite(ours)
    torch.testing.assert_close(models.log_softmax(EXTREME), F.log_softmax(EXTREME, dim=1))
    torch.testing.assert_close(ours, F.cross_entropy(EXTREME, labels))
    # Worked by hand: row 0 loses 1000 + log(1 + e^-1) + 1000, row 1 loses log(1 + 3 e^-1).
    expected = (2000.0 + math.log1p(math.exp(-1.0)) + math.log1p(3 * math.exp(-1.0))) / 2
    assert float(ours) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_gradient_matches_torch_on_random_logits() -> None:
    logits = (torch.randn(32, 10, generator=torch.Generator().manual_seed(0)) * 50).requires_grad_()
    labels = torch.arange(32) % 10
    models.cross_entropy(logits, labels).backward()
    ours = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, labels).backward()
    torch.testing.assert_close(ours, logits.grad)


@pytest.mark.parametrize(
    ("name", "reference"), [("relu", torch.relu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh)]
)
def test_hand_written_activations_match_torch_without_overflow(name, reference) -> None:
    x = torch.tensor([-1000.0, -20.0, -1.0, 0.0, 0.5, 20.0, 1000.0])
    ours = models.activate(x, name)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference(x), rtol=1e-6, atol=1e-6)


def test_squared_loss_is_half_the_mean_squared_error_in_both_impls() -> None:
    predictions, targets = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert float(models.squared_loss(predictions, targets)) == pytest.approx(2.5)
    assert float(models.concise_squared_loss(predictions, targets)) == pytest.approx(2.5)
