"""The training loop: pure functions that take tensors and settings and return results.

The whole data set is moved to the device once; each epoch draws a shuffled index on that
device and slices mini-batches from it (no DataLoader, no per-sample transforms). Running
loss and accuracy stay on the device during an epoch, so a GPU is synchronised once per epoch.
Nothing here prints; progress goes to an optional callback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from model_repository import metadata as meta
from training import models
from training.data import Dataset
from training.errors import ConfigError
from training.models import LossFunction, ModelSettings
from training.result import TrainedModel

EVAL_CHUNK_ROWS = 8192  # rows per forward pass when evaluating a whole set
# Below this many multiply-adds per mini-batch a CPU fit runs on one intra-op thread. For
# d2l-sized models (up to the 784-256-10 MLP at batch 256, ~51M) a second thread buys little
# and, on a busy 2-core machine, spinning OpenMP workers made epochs 1.2-30x slower in our
# measurements (digits fits; Fashion-MNIST-sized softmax and MLP epochs).
SINGLE_THREAD_MACS_PER_BATCH = 64_000_000


@dataclass(frozen=True)
class FitSettings:
    """Optimisation settings for one run."""

    epochs: int
    lr: float
    batch_size: int
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1; got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0; got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.device != "auto" and not (
            self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")
        ):
            raise ConfigError(f"--device must be auto, cpu or cuda[:N]; got {self.device!r}")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch measured; handed to the progress callback."""

    epoch: int  # 1-based
    epochs: int
    values: dict[str, float]  # train_loss, and train_acc/test_acc for classifiers


@dataclass
class FitResult:
    """A trained network (still on its device) and its per-epoch history."""

    model: nn.Module
    history: list[dict[str, float]]
    seconds: float
    device: torch.device

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's figures, without its epoch number and duration."""
        return {k: v for k, v in self.history[-1].items() if k not in ("epoch", "seconds")}


class ScratchSGD:
    """d2l's hand-written mini-batch SGD: p <- p - lr * grad (the loss is a batch mean)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float) -> None:
        self.params = list(params)
        self.lr = lr

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for param in self.params:
            if param.grad is not None:
                param.sub_(self.lr * param.grad)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA request must be satisfiable."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but CUDA is not available here; use cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # reported as "cuda:0"
    return device


@contextmanager
def cpu_threads_for(model: nn.Module, batch_size: int) -> Iterator[None]:
    """Run small CPU workloads on one intra-op thread; restore the thread count afterwards."""
    device = next(model.parameters()).device
    macs = batch_size * sum(p.numel() for p in model.parameters())  # ~ per forward pass
    threads = torch.get_num_threads()
    if device.type == "cpu" and macs < SINGLE_THREAD_MACS_PER_BATCH:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_optimizer(model: nn.Module, impl: str, lr: float) -> torch.optim.SGD | ScratchSGD:
    if impl == "scratch":
        return ScratchSGD(model.parameters(), lr)
    return torch.optim.SGD(model.parameters(), lr=lr)


def fit(
    model: nn.Module,
    loss_fn: LossFunction,
    data: Dataset,
    settings: FitSettings,
    impl: str,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` with mini-batch SGD; return it with its history.

    Classifiers report d2l's running training loss/accuracy over the epoch and the test
    accuracy after it; regression reports the loss on the whole training set after each epoch.
    """
    device = resolve_device(settings.device)
    model.to(device)
    optimizer = make_optimizer(model, impl, settings.lr)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    start = time.perf_counter()
    with cpu_threads_for(model, settings.batch_size):
        history = _epochs(model, loss_fn, optimizer, data, settings, generator, on_epoch)
    seconds = time.perf_counter() - start
    return FitResult(model=model, history=history, seconds=seconds, device=device)


def _epochs(
    model: nn.Module,
    loss_fn: LossFunction,
    optimizer: torch.optim.SGD | ScratchSGD,
    data: Dataset,
    settings: FitSettings,
    generator: torch.Generator,
    on_epoch: Callable[[EpochStats], None] | None,
) -> list[dict[str, float]]:
    device = next(model.parameters()).device
    classify = data.info.task == meta.TASK_CLASSIFICATION
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    history: list[dict[str, float]] = []
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.perf_counter()
        running = train_epoch(
            model, loss_fn, optimizer, x_train, y_train, settings.batch_size, generator, classify
        )
        if classify:
            values = {
                "train_loss": running["loss"],
                "train_acc": running["accuracy"],
                "test_acc": evaluate(model, loss_fn, x_test, y_test, classify)["accuracy"],
            }
        else:
            values = {"train_loss": evaluate(model, loss_fn, x_train, y_train, classify)["loss"]}
        values["seconds"] = time.perf_counter() - epoch_start
        history.append({"epoch": float(epoch), **values})
        if on_epoch is not None:
            on_epoch(EpochStats(epoch=epoch, epochs=settings.epochs, values=values))
    return history


def train_epoch(
    model: nn.Module,
    loss_fn: LossFunction,
    optimizer: torch.optim.SGD | ScratchSGD,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    classify: bool,
) -> dict[str, float]:
    """One pass over (x, y) in shuffled mini-batches; running mean loss (and accuracy)."""
    model.train()
    n = len(x)
    order = torch.randperm(n, device=x.device, generator=generator)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for begin in range(0, n, batch_size):
        index = order[begin : begin + batch_size]
        # index_select is several times faster than x[index] for row gathers on CPU.
        xb, yb = x.index_select(0, index), y.index_select(0, index)  # (b, ...), (b,)/(b, 1)
        outputs = model(xb)
        loss = loss_fn(outputs, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        if classify:
            correct += (outputs.detach().argmax(dim=1) == yb).sum()
    result = {"loss": float(loss_sum) / n}  # one device sync per epoch
    if classify:
        result["accuracy"] = float(correct) / n
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module, loss_fn: LossFunction, x: torch.Tensor, y: torch.Tensor, classify: bool
) -> dict[str, float]:
    """Mean loss (and accuracy for classifiers) of ``model`` on a whole set, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for begin in range(0, len(x), EVAL_CHUNK_ROWS):
        xb, yb = x[begin : begin + EVAL_CHUNK_ROWS], y[begin : begin + EVAL_CHUNK_ROWS]
        outputs = model(xb)
        loss_sum += loss_fn(outputs, yb) * len(xb)
        if classify:
            correct += (outputs.argmax(dim=1) == yb).sum()
    result = {"loss": float(loss_sum) / len(x)}
    if classify:
        result["accuracy"] = float(correct) / len(x)
    return result


@torch.no_grad()
def affine_parameters(model: nn.Module, features: int) -> tuple[torch.Tensor, float]:
    """(w, b) of a single-output affine model, read by probing it (works for both impls)."""
    model.eval()
    device = next(model.parameters()).device
    probes = torch.cat([torch.zeros(1, features), torch.eye(features)]).to(device)  # (1+d, d)
    outputs = model(probes).reshape(-1).double().cpu()  # f(0) = b, f(e_i) = w_i + b
    bias = outputs[0]
    return outputs[1:] - bias, float(bias)


def least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Closed-form (w, b) minimising ||[x, 1] [w; b] - y||^2, via torch.linalg.lstsq."""
    design = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design.cpu(), y.double().reshape(-1, 1).cpu()).solution
    return solution[:-1, 0], float(solution[-1, 0])


def regression_report(model: nn.Module, data: Dataset) -> dict[str, float]:
    """SGD beside closed-form least squares, so the two can be compared.

    Parameter errors against the true w, b when they are known (synthetic data), and the
    training loss each solution reaches.
    """
    features = data.x_train.shape[1]
    sgd_w, sgd_b = affine_parameters(model, features)
    ls_w, ls_b = least_squares(data.x_train, data.y_train)
    design = data.x_train.double()
    targets = data.y_train.double().reshape(-1)
    report = {
        "lstsq_train_loss": float(((design @ ls_w + ls_b - targets) ** 2 / 2).mean()),
    }
    if data.true_w is not None and data.true_b is not None:
        true_w = data.true_w.double()
        report |= {
            "w_error_max": float((true_w - sgd_w).abs().max()),
            "b_error": abs(data.true_b - sgd_b),
            "lstsq_w_error_max": float((true_w - ls_w).abs().max()),
            "lstsq_b_error": abs(data.true_b - ls_b),
        }
    return report


def train(
    model_settings: ModelSettings,
    fit_settings: FitSettings,
    data: Dataset,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainedModel:
    """Build, seed and fit one model on ``data``; return the exporter's TrainedModel.

    ``artifacts`` is left empty: plots are files, written by the caller.
    """
    classify = data.info.task == meta.TASK_CLASSIFICATION
    if classify == (model_settings.kind == "linear"):
        raise ConfigError(
            f"model {model_settings.kind!r} cannot train on {data.info.name!r} data "
            f"({data.info.task}); linear takes synthetic/csv, softmax/mlp take image data sets"
        )
    torch.manual_seed(fit_settings.seed)  # model init and dropout masks
    outputs = len(data.info.labels) if classify else 1
    model = models.build(model_settings, data.info.input_shape, outputs)
    result = fit(
        model,
        models.loss_function(model_settings),
        data,
        fit_settings,
        model_settings.impl,
        on_epoch,
    )
    metrics = dict(result.final)
    if not classify:
        metrics |= regression_report(result.model, data)
    metrics["seconds_per_epoch"] = result.seconds / fit_settings.epochs
    hyperparameters: dict[str, object] = {
        "lr": fit_settings.lr,
        "batch_size": fit_settings.batch_size,
        "epochs": fit_settings.epochs,
        "seed": fit_settings.seed,
        "impl": model_settings.impl,
        "loss": "squared_loss/2" if model_settings.kind == "linear" else "cross_entropy",
        "optimizer": "minibatch SGD",
    }
    if model_settings.kind == "mlp":
        hyperparameters |= {
            "hidden": list(model_settings.hidden),
            "activation": model_settings.activation,
            "dropout": model_settings.dropout,
            "init": "xavier_uniform",
        }
    else:
        hyperparameters["init"] = f"normal(0, {models.LINEAR_INIT_STD})"
    return TrainedModel(
        kind=model_settings.kind,
        model=result.model.cpu().eval(),
        dataset=data.info,
        metrics=metrics,
        history=result.history,
        hyperparameters=hyperparameters,
        device=str(result.device),
        seconds=result.seconds,
        holdout=data.holdout.float().contiguous(),
    )
