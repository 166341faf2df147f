"""Data sets for the three d2l models, loaded once into tensors.

Four sources:

* ``synthetic``: d2l's linear data, y = Xw + b + noise (for ``linear``).
* ``csv``: a user's table for regression; features standardized, statistics kept for export.
* ``fashion-mnist``: read through torchvision from ``<data_dir>/FashionMNIST/raw/``.
* ``digits``: scikit-learn's bundled 8x8 digits, the offline fallback.

``auto`` picks Fashion-MNIST when its files are present (or downloadable) and digits otherwise.
Everything is returned as whole tensors: the training loop moves them to the device once and
slices mini-batches from a shuffled index, so no per-sample transform runs in the hot loop.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import shutil
import socket
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from model_repository import metadata as meta
from training.errors import ConfigError, DataError
from training.result import DatasetInfo

LOGGER = logging.getLogger(__name__)

AUTO = "auto"
FASHION_MNIST = "fashion-mnist"
DIGITS = "digits"
SYNTHETIC = "synthetic"
CSV = "csv"
IMAGE_DATASETS = (AUTO, FASHION_MNIST, DIGITS)
TABLE_DATASETS = (SYNTHETIC, CSV)
DATASETS = IMAGE_DATASETS + TABLE_DATASETS

FASHION_LABELS = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGIT_LABELS = tuple(str(d) for d in range(10))
# File names torchvision's MNIST loaders read (uncompressed) from <root>/FashionMNIST/raw/.
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DIGITS_SPLIT_SEED = 0  # fixed so every run, whatever --seed, sees the same 80/20 split
DIGITS_TEST_FRACTION = 0.2
HOLDOUT_MIN_ROWS = 37  # the exporter checks ONNX against PyTorch on up to 37 rows
SYNTHETIC_HOLDOUT_ROWS = 100
PROBE_TIMEOUT_SECONDS = 3.0
DOWNLOAD_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class SyntheticSettings:
    """d2l's ``synthetic_data(w, b, n)``: X ~ N(0, 1), y = Xw + b + N(0, noise^2)."""

    w: tuple[float, ...] = (2.0, -3.4)
    b: float = 4.2
    n: int = 1000
    noise: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.w:
            raise ConfigError("synthetic data needs at least one weight; got w=()")
        if self.n < 2:
            raise ConfigError(f"synthetic data needs n >= 2 rows; got n={self.n}")
        if not self.noise >= 0:
            raise ConfigError(f"synthetic noise must be >= 0; got {self.noise}")


@dataclass(frozen=True)
class DataSettings:
    """Which data set to load and from where."""

    dataset: str = AUTO
    data_dir: Path = Path("data")
    csv_path: Path | None = None
    target: str | None = None
    # Try torchvision's download when Fashion-MNIST files are missing (auto/fashion-mnist).
    download: bool = True
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown data set {self.dataset!r}; expected one of {', '.join(DATASETS)}"
            )
        if self.dataset == CSV and (self.csv_path is None or not self.target):
            raise ConfigError("--dataset csv needs --csv PATH and --target COLUMN")


@dataclass(frozen=True)
class Dataset:
    """A whole data set as tensors (CPU), plus what the exporter needs to know about it.

    ``x_*`` are the network's inputs: images in [0, 1] shaped [N, 1, H, W], or standardized
    table rows [N, d]. ``y_*`` are class indices (int64, [N]) or targets (float32, [N, 1]).
    ``holdout`` is raw (un-standardized) test inputs for the exporter's ONNX check.
    """

    info: DatasetInfo
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    holdout: torch.Tensor
    # Truth behind synthetic data, to report parameter errors; None for real data.
    true_w: torch.Tensor | None = None
    true_b: float | None = None
    # Lines worth showing the user (e.g. the fallback to digits); the CLI prints them.
    notices: tuple[str, ...] = ()


def load(settings: DataSettings) -> Dataset:
    """Load the data set ``settings`` names; raise DataError with a fix when it cannot."""
    if settings.dataset == SYNTHETIC:
        return synthetic(settings.synthetic)
    if settings.dataset == CSV:
        if settings.csv_path is None or not settings.target:
            raise ConfigError("--dataset csv needs --csv PATH and --target COLUMN")
        return csv_regression(settings.csv_path, settings.target)
    if settings.dataset == DIGITS:
        return digits()
    if settings.dataset == FASHION_MNIST:
        if not ensure_fashion_mnist(settings.data_dir, settings.download):
            raise DataError(
                f"Fashion-MNIST not found in {fashion_raw_dir(settings.data_dir)} and "
                "it could not be downloaded; copy the four files "
                f"({', '.join(FASHION_FILES)}, raw or .gz) there, or use --dataset digits"
            )
        return fashion_mnist(settings.data_dir)
    # auto
    if ensure_fashion_mnist(settings.data_dir, settings.download):
        return fashion_mnist(settings.data_dir)
    notice = (
        f"Fashion-MNIST is not in {fashion_raw_dir(settings.data_dir)} and cannot be "
        "downloaded; falling back to the embedded 8x8 digits data set"
    )
    LOGGER.info(notice)  # the caller shows Dataset.notices to the user
    data = digits()
    return replace(data, notices=(*data.notices, notice))


def synthetic(settings: SyntheticSettings) -> Dataset:
    """d2l's synthetic regression data, plus an independent holdout from the same law."""
    generator = torch.Generator().manual_seed(settings.seed)
    w = torch.tensor(settings.w, dtype=torch.float32)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, len(w), generator=generator)  # (n, d)
        y = x @ w + settings.b + settings.noise * torch.randn(n, generator=generator)
        return x, y.reshape(-1, 1)  # (n, d), (n, 1)

    x, y = draw(settings.n)
    x_holdout, y_holdout = draw(SYNTHETIC_HOLDOUT_ROWS)
    info = DatasetInfo(
        name=SYNTHETIC,
        task=meta.TASK_REGRESSION,
        input_shape=(len(w),),
        feature_names=tuple(f"x{i}" for i in range(len(w))),
        input_layout=meta.LAYOUT_NF,
    )
    return Dataset(
        info=info,
        x_train=x,
        y_train=y,
        x_test=x_holdout,
        y_test=y_holdout,
        holdout=x_holdout,
        true_w=w,
        true_b=float(settings.b),
    )


def csv_regression(path: Path, target: str) -> Dataset:
    """A user's CSV: ``target`` is the label, every other column a numeric feature.

    Features are standardized with the table's mean and standard deviation; the statistics go
    into DatasetInfo so the exported graph can apply them to raw inputs.
    """
    header, rows = _read_csv(path)
    if target not in header:
        raise DataError(f"{path}: no column {target!r}; columns are {', '.join(header)}")
    if len(header) < 2:
        raise DataError(f"{path}: needs at least one feature column besides {target!r}")
    if len(rows) < 2:
        raise DataError(f"{path}: needs at least 2 data rows; got {len(rows)}")
    values = torch.tensor(_parse_numbers(path, header, rows), dtype=torch.float64)
    target_index = header.index(target)
    feature_index = [i for i in range(len(header)) if i != target_index]
    raw_x = values[:, feature_index]  # (n, d)
    y = values[:, target_index : target_index + 1].float()  # (n, 1)
    mean = raw_x.mean(dim=0)
    std = raw_x.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant column: leave unscaled
    x = ((raw_x - mean) / std).float()
    raw_x = raw_x.float()
    info = DatasetInfo(
        name=CSV,
        task=meta.TASK_REGRESSION,
        input_shape=(len(feature_index),),
        feature_names=tuple(header[i] for i in feature_index),
        feature_mean=tuple(float(v) for v in mean),
        feature_std=tuple(float(v) for v in std),
        input_layout=meta.LAYOUT_NF,
    )
    # Small tables are tiled so the exporter always has >= 37 raw rows to check against.
    repeats = math.ceil(HOLDOUT_MIN_ROWS / len(raw_x))
    return Dataset(
        info=info, x_train=x, y_train=y, x_test=x, y_test=y, holdout=raw_x.repeat(repeats, 1)
    )


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            table = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise DataError(f"CSV file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV {path}: {error}") from None
    if not table:
        raise DataError(f"{path}: empty file; expected a header row and at least 2 data rows")
    header = [name.strip() for name in table[0]]
    return header, table[1:]


def _parse_numbers(path: Path, header: list[str], rows: list[list[str]]) -> list[list[float]]:
    parsed = []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {line}: {len(row)} cells; the header has {len(header)} columns"
            )
        numbers = []
        for column, cell in zip(header, row, strict=True):
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}, line {line}, column {column!r}: {cell!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise DataError(f"{path}, line {line}, column {column!r}: {cell!r} is not finite")
            numbers.append(value)
        parsed.append(numbers)
    return parsed


def digits() -> Dataset:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] in [0, 1], fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        list(range(len(labels))),
        test_size=DIGITS_TEST_FRACTION,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    info = DatasetInfo(
        name=DIGITS,
        task=meta.TASK_CLASSIFICATION,
        input_shape=(1, 8, 8),
        labels=DIGIT_LABELS,
        input_range=(0.0, 1.0),
        input_layout=meta.LAYOUT_NCHW,
    )
    return _images(info, images, labels, train_idx, test_idx)


def fashion_mnist(data_dir: Path) -> Dataset:
    """Fashion-MNIST through torchvision's own loader, converted to tensors in one go."""
    from torchvision.datasets import FashionMNIST

    try:
        train = FashionMNIST(str(data_dir), train=True, download=False)
        test = FashionMNIST(str(data_dir), train=False, download=False)
    except (RuntimeError, OSError, ValueError) as error:
        raise DataError(f"cannot read Fashion-MNIST from {data_dir}: {error}") from None
    # uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]: what ToTensor() does per image.
    x_train = train.data.unsqueeze(1).float() / 255.0
    x_test = test.data.unsqueeze(1).float() / 255.0
    if len(x_test) == 0 or len(x_train) == 0:
        raise DataError(f"Fashion-MNIST in {data_dir} has an empty train or test file")
    info = DatasetInfo(
        name=FASHION_MNIST,
        task=meta.TASK_CLASSIFICATION,
        input_shape=tuple(x_train.shape[1:]),
        labels=FASHION_LABELS,
        input_range=(0.0, 1.0),
        input_layout=meta.LAYOUT_NCHW,
    )
    images = torch.cat([x_train, x_test])
    labels = torch.cat([train.targets, test.targets]).to(torch.int64)
    train_idx = torch.arange(len(x_train))
    test_idx = torch.arange(len(x_train), len(images))
    return _images(info, images, labels, train_idx, test_idx)


def _images(
    info: DatasetInfo,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: torch.Tensor,
    test_idx: torch.Tensor,
) -> Dataset:
    x_test = images[test_idx]
    repeats = math.ceil(HOLDOUT_MIN_ROWS / len(x_test))
    return Dataset(
        info=info,
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_test=x_test,
        y_test=labels[test_idx],
        holdout=x_test[:256].repeat(repeats, 1, 1, 1),
    )


def fashion_raw_dir(data_dir: Path) -> Path:
    """Where torchvision's FashionMNIST looks for its files."""
    return data_dir / "FashionMNIST" / "raw"


def ensure_fashion_mnist(data_dir: Path, download: bool) -> bool:
    """True when the four Fashion-MNIST files are (or have just been made) available.

    Order: raw files present -> done; .gz files present -> decompress them; otherwise, when
    ``download`` is set and the mirror answers within a few seconds, let torchvision download.
    Offline, the probe fails fast instead of hanging on torchvision's timeout-less urlopen.
    """
    raw = fashion_raw_dir(data_dir)
    if all((raw / name).is_file() for name in FASHION_FILES):
        return True
    if all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in FASHION_FILES):
        for name in FASHION_FILES:
            if not (raw / name).is_file():
                _gunzip(raw / f"{name}.gz", raw / name)
        return True
    if not download:
        return False
    return _download_fashion_mnist(data_dir)


def _gunzip(source: Path, target: Path) -> None:
    staging = target.with_name(f".{target.name}.partial")
    try:
        with gzip.open(source, "rb") as packed, staging.open("wb") as unpacked:
            shutil.copyfileobj(packed, unpacked)
    except (OSError, EOFError) as error:
        staging.unlink(missing_ok=True)
        raise DataError(f"cannot decompress {source}: {error}") from None
    staging.replace(target)


def _download_fashion_mnist(data_dir: Path) -> bool:
    from torchvision.datasets import FashionMNIST

    host = FashionMNIST.mirrors[0].split("/")[2]
    if not _reachable(host, 443, PROBE_TIMEOUT_SECONDS):
        LOGGER.info("Fashion-MNIST mirror %s unreachable; not downloading", host)
        return False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # torchvision's urlopen has none
    try:
        LOGGER.info("downloading Fashion-MNIST into %s", data_dir)
        FashionMNIST(str(data_dir), train=True, download=True)
        return True
    except (RuntimeError, OSError) as error:
        LOGGER.warning("Fashion-MNIST download failed: %s", error)
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _reachable(host: str, port: int, timeout_seconds: float) -> bool:
    """Whether a TCP connection opens within the timeout (DNS included, hence the thread)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_seconds):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_seconds)
    return bool(outcome and outcome[0])
