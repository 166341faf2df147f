"""The three d2l networks, each in a concise (``nn`` layers) and a scratch implementation.

Scratch networks hold explicit ``nn.Parameter`` tensors and a hand-written forward made of
plain tensor ops, so they train with the hand-written loss/SGD and still export to ONNX.

Initialization (both implementations, so they reach the same quality):

* ``linear`` and ``softmax``: weights ~ N(0, 0.01^2), biases 0 (as in d2l).
* ``mlp``: Xavier/Glorot-uniform weights, biases 0. d2l's N(0, 0.01^2) trains a sigmoid MLP
  very slowly; Xavier keeps activations and gradients at a useful scale for all three
  activations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from training.errors import ConfigError

KINDS = ("linear", "softmax", "mlp")
IMPLS = ("concise", "scratch")
ACTIVATIONS = ("relu", "sigmoid", "tanh")
NUM_CLASSES = 10
LINEAR_INIT_STD = 0.01

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> []


@dataclass(frozen=True)
class ModelSettings:
    """Which network to build."""

    kind: str
    impl: str = "concise"
    hidden: tuple[int, ...] = (256,)  # mlp only
    activation: str = "relu"  # mlp only
    dropout: float = 0.0  # mlp only; probability of zeroing a hidden unit while training

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown model {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.impl not in IMPLS:
            raise ConfigError(f"unknown --impl {self.impl!r}; expected one of {', '.join(IMPLS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown --activation {self.activation!r}; expected one of "
                f"{', '.join(ACTIVATIONS)}"
            )
        if not self.hidden or any(size < 1 for size in self.hidden):
            raise ConfigError(f"--hidden needs one or more sizes >= 1; got {list(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1); got {self.dropout}")


def build(settings: ModelSettings, input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    """A freshly initialized network mapping [B, *input_shape] to [B, outputs]."""
    features = math.prod(input_shape)
    if settings.impl == "scratch":
        if settings.kind == "mlp":
            return ScratchMLP(features, settings.hidden, outputs, settings)
        return ScratchAffine(features, outputs)
    if settings.kind == "mlp":
        return concise_mlp(features, settings.hidden, outputs, settings)
    net = nn.Sequential(nn.Flatten(), nn.Linear(features, outputs))
    nn.init.normal_(net[1].weight, std=LINEAR_INIT_STD)
    nn.init.zeros_(net[1].bias)
    return net


def concise_mlp(
    features: int, hidden: tuple[int, ...], outputs: int, settings: ModelSettings
) -> nn.Sequential:
    activation = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[settings.activation]
    layers: list[nn.Module] = [nn.Flatten()]
    width = features
    for size in hidden:
        layers += [nn.Linear(width, size), activation()]
        if settings.dropout > 0:
            layers.append(nn.Dropout(settings.dropout))
        width = size
    layers.append(nn.Linear(width, outputs))
    net = nn.Sequential(*layers)
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


class ScratchAffine(nn.Module):
    """``flatten(X) @ W + b``: d2l's scratch linear regression and softmax regression."""

    def __init__(self, features: int, outputs: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(features, outputs) * LINEAR_INIT_STD)  # (d, q)
        self.b = nn.Parameter(torch.zeros(outputs))  # (q,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1) @ self.W + self.b  # (B, d) @ (d, q) -> (B, q)


class ScratchMLP(nn.Module):
    """d2l's scratch MLP with any number of hidden layers and hand-written activations."""

    def __init__(
        self, features: int, hidden: tuple[int, ...], outputs: int, settings: ModelSettings
    ) -> None:
        super().__init__()
        widths = (features, *hidden, outputs)
        self.weights = nn.ParameterList(
            nn.Parameter(_xavier_uniform(fan_in, fan_out))
            for fan_in, fan_out in itertools.pairwise(widths)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(width)) for width in widths[1:])
        self.activation = settings.activation
        self.dropout = settings.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(x, 1)  # (B, d)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                h = activate(h, self.activation)
                if self.training and self.dropout > 0:
                    h = dropout(h, self.dropout)
        return h  # (B, q) logits


def _xavier_uniform(fan_in: int, fan_out: int) -> torch.Tensor:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(fan_in, fan_out) * 2.0 - 1.0) * bound


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    """Hand-written activations from plain tensor ops (all export to ONNX)."""
    if name == "relu":
        return torch.maximum(x, torch.zeros_like(x))
    if name == "sigmoid":
        return sigmoid(x)
    return 2.0 * sigmoid(2.0 * x) - 1.0  # tanh(x) = 2 sigmoid(2x) - 1


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    # exp(-|x|) <= 1 never overflows; fold the sign back in afterwards.
    z = torch.exp(-torch.abs(x))
    return torch.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: zero each unit with probability p, scale the rest by 1/(1-p)."""
    keep = (torch.rand_like(x) >= p).to(x.dtype)
    return x * keep / (1.0 - p)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax with the row max subtracted first, so exp never overflows."""
    shifted = logits - logits.max(dim=1, keepdim=True).values  # (B, q), every row max is 0
    return shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Numerically stable softmax over the class dimension."""
    shifted = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return shifted / shifted.sum(dim=1, keepdim=True)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[i, y_i], via log-sum-exp (no softmax then log)."""
    picked = log_softmax(logits)[torch.arange(len(labels), device=labels.device), labels]
    return -picked.mean()


def squared_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1/2 (y_hat - y)^2, d2l's squared loss."""
    return ((predictions - targets.reshape(predictions.shape)) ** 2 / 2).mean()


def concise_squared_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The built-in MSE halved, so both implementations minimise 1/2 (y_hat - y)^2."""
    return F.mse_loss(predictions, targets.reshape(predictions.shape)) / 2


def loss_function(settings: ModelSettings) -> LossFunction:
    """The training loss for a model: built-in for concise, hand-written for scratch."""
    if settings.kind == "linear":
        return squared_loss if settings.impl == "scratch" else concise_squared_loss
    return cross_entropy if settings.impl == "scratch" else F.cross_entropy
