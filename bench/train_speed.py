"""Training speed (issue 2): this project's tensor-sliced loop vs the d2l input pipeline.

Both sides train the same network (softmax regression, and the 784-256-10 ReLU MLP) with
the same loss, optimizer (SGD, lr 0.1) and batch size (256) for the same number of epochs,
on a random 60,000 x 1 x 28 x 28 data set written to a temporary directory in Fashion-MNIST's
IDX format, so both read it through torchvision's FashionMNIST class:

* ours: the files become one float tensor once (``training.data``); each epoch shuffles an
  index and slices mini-batches (``training.train.train_epoch``);
* d2l: ``FashionMNIST(transform=transforms.ToTensor())`` and
  ``DataLoader(batch_size=256, shuffle=True, num_workers=4)``, as in d2l's
  ``load_data_fashion_mnist`` (the per-epoch time includes starting the workers, as in d2l).
  This is the headline baseline: it is what the book does.
* the same DataLoader at its best on this machine, measured in the same run: no worker
  processes (``num_workers=0``), and two workers kept across epochs
  (``num_workers=2, persistent_workers=True``). The "vs best loader" column compares ours
  with the faster of the three, so the table does not rest on d2l's 4 workers on 2 cores.

Each figure is the fastest of ``--epochs`` epochs (the one least disturbed by other processes
on a shared machine). Only the training pass is timed (no test evaluation), and both sides
compute with the same intra-op thread count (``fit``'s policy,
``training.train.cpu_threads_for``), so the difference is the input pipeline. "compute only"
repeats the same number of steps on one fixed batch: the floor for any pipeline.

Also times d2l's "vectorization for speed" example: adding two 10,000-element vectors element
by element in a Python loop versus in one call.

    python bench/train_speed.py              # 3 epochs each, ~2-3 minutes on 2 idle cores
    python bench/train_speed.py --epochs 1
    python bench/train_speed.py --quick      # 6,000 images, for a smoke run
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import data as datasets  # noqa: E402
from training import models  # noqa: E402
from training.train import cpu_threads_for, train_epoch  # noqa: E402

LR = 0.1
VECTOR_LENGTH = 10_000


def write_idx(raw: Path, train: int, test: int, seed: int = 0) -> None:
    """Random images and labels in Fashion-MNIST's exact file layout (uncompressed IDX)."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, count) + labels.tobytes()
        )


def build(kind: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(models.ModelSettings(kind), (1, 28, 28), 10)


def ours(root: Path, kind: str, epochs: int, batch_size: int) -> tuple[float, float]:
    """(seconds to load the data set into tensors, seconds of the fastest training epoch)."""
    start = time.perf_counter()
    dataset = datasets.fashion_mnist(root)
    load_seconds = time.perf_counter() - start
    model = build(kind, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    times = []
    with cpu_threads_for(model, batch_size):
        for _ in range(epochs):
            start = time.perf_counter()
            train_epoch(
                model,
                F.cross_entropy,
                optimizer,
                dataset.x_train,
                dataset.y_train,
                batch_size,
                generator,
                classify=True,
            )
            times.append(time.perf_counter() - start)
    return load_seconds, min(times)


def compute_floor(kind: str, rows: int, epochs: int, batch_size: int) -> float:
    """Seconds per epoch of the same optimizer steps on one fixed batch: no data pipeline at
    all. Neither pipeline can beat this; for the MLP it is most of an epoch."""
    x = torch.rand(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    steps = -(-rows // batch_size)
    return fastest_epoch(build(kind, seed=0), [(x, y)] * steps, epochs, batch_size)


def d2l(
    root: Path, kind: str, epochs: int, batch_size: int, workers: int, persistent: bool = False
) -> float:
    """Seconds of the fastest training epoch through torchvision transforms and a DataLoader.

    ``persistent``: keep the worker processes across epochs (``persistent_workers=True``);
    d2l does not, so each of its epochs also starts its workers.
    """
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    # Silence "4 workers on a 2-core machine": that is d2l's setting, and what is measured.
    warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
    train_set = FashionMNIST(str(root), train=True, transform=transforms.ToTensor())
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
    )
    return fastest_epoch(build(kind, seed=0), loader, epochs, batch_size)


def fastest_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    batch_size: int,
) -> float:
    """Seconds of the fastest of ``epochs`` passes of d2l's SGD loop over ``batches``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    times = []
    with cpu_threads_for(model, batch_size):  # same compute threads as ours
        for _ in range(epochs):
            start = time.perf_counter()
            model.train()
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            times.append(time.perf_counter() - start)
    return min(times)


def warm_up(batch_size: int) -> None:
    """A few untimed steps so one-off costs (allocator, kernels) land on neither side."""
    for kind in ("softmax", "mlp"):
        model = build(kind, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        x, y = torch.rand(4 * batch_size, 1, 28, 28), torch.randint(0, 10, (4 * batch_size,))
        with cpu_threads_for(model, batch_size):
            train_epoch(
                model, F.cross_entropy, optimizer, x, y, batch_size, torch.Generator(), True
            )


def vector_add() -> tuple[float, float]:
    """d2l 3.1.2: c[i] = a[i] + b[i] in a Python loop vs d = a + b, in seconds.

    Best of 3 loops and of 30 single calls: on a shared machine one sample of a ~20 us call
    is mostly scheduling noise.
    """
    a, b = torch.ones(VECTOR_LENGTH), torch.ones(VECTOR_LENGTH)
    loops, calls = [], []
    for _ in range(3):
        c = torch.zeros(VECTOR_LENGTH)
        start = time.perf_counter()
        for i in range(VECTOR_LENGTH):
            c[i] = a[i] + b[i]
        loops.append(time.perf_counter() - start)
        for _ in range(10):
            start = time.perf_counter()
            d = a + b
            calls.append(time.perf_counter() - start)
        if not torch.equal(c, d):
            raise RuntimeError("loop and vectorized sums differ")
    return min(loops), min(calls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per side; the fastest counts (default: 3)"
    )
    parser.add_argument("--quick", action="store_true", help="6,000 training images")
    parser.add_argument("--batch-size", type=int, default=256, help="default: 256")
    parser.add_argument("--workers", type=int, default=4, help="d2l DataLoader workers (4)")
    args = parser.parse_args()
    if args.epochs < 1 or args.batch_size < 1 or args.workers < 0:
        parser.error("--epochs and --batch-size must be >= 1, --workers >= 0")
    train_rows, test_rows = (6_000, 1_000) if args.quick else (60_000, 10_000)
    console = Console()
    if not console.is_terminal:  # piped into a file or BENCHMARKS.md: no wrapping at 80
        console = Console(width=120)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{train_rows:,} training images, batch {args.batch_size}, {args.epochs} epoch(s)"
    )
    table = Table(
        title="seconds per training epoch; 'compute only' repeats one fixed batch (no input "
        "pipeline), 'best possible' = d2l / compute only"
    )
    columns = (
        "model",
        "ours",
        f"d2l DataLoader ({args.workers} workers)",
        "speed-up",
        "0 workers",
        "2 persistent workers",
        "vs best loader",
        "compute only",
        "best possible",
    )
    for column in columns:
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="train-speed-") as folder:
        root = Path(folder)
        write_idx(datasets.fashion_raw_dir(root), train_rows, test_rows)
        warm_up(args.batch_size)
        for kind in ("softmax", "mlp"):
            load_seconds, fast = ours(root, kind, args.epochs, args.batch_size)
            slow = d2l(root, kind, args.epochs, args.batch_size, args.workers)
            inline = d2l(root, kind, args.epochs, args.batch_size, 0)
            kept = d2l(root, kind, args.epochs, args.batch_size, 2, persistent=True)
            best_loader = min(slow, inline, kept)
            floor = compute_floor(kind, train_rows, args.epochs, args.batch_size)
            console.print(
                f"{kind}: ours {fast:.3f} s/epoch (+ {load_seconds:.2f} s once to load tensors), "
                f"d2l ({args.workers} workers) {slow:.3f}, 0 workers {inline:.3f}, "
                f"2 persistent workers {kept:.3f} s/epoch, compute alone {floor:.3f} s/epoch"
            )
            table.add_row(
                kind,
                f"{fast:.3f}",
                f"{slow:.3f}",
                f"{slow / fast:.1f}x",
                f"{inline:.3f}",
                f"{kept:.3f}",
                f"{best_loader / fast:.1f}x",
                f"{floor:.3f}",
                f"{slow / floor:.1f}x",
            )
    console.print(table)
    loop, vectorized = vector_add()
    console.print(
        f"d2l vectorization: {VECTOR_LENGTH:,}-element vector add, Python loop {loop:.4f} s, "
        f"one call {vectorized * 1e6:.1f} us ({loop / vectorized:,.0f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
