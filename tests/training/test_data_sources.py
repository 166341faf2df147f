from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from training import data
from training.errors import ConfigError, DataError


def test_synthetic_data_follows_d2l_defaults_and_is_seeded() -> None:
    first = data.synthetic(data.SyntheticSettings())
    again = data.synthetic(data.SyntheticSettings())
    assert first.x_train.shape == (1000, 2) and first.y_train.shape == (1000, 1)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_train, again.y_train)
    residual = first.y_train[:, 0] - (first.x_train @ torch.tensor([2.0, -3.4]) + 4.2)
    assert 0.005 < residual.std() < 0.02  # noise ~ N(0, 0.01^2)
    assert first.holdout.shape[0] >= data.HOLDOUT_MIN_ROWS
    other = data.synthetic(data.SyntheticSettings(w=(1.0, 2.0, 3.0), b=-1.0, n=50, seed=3))
    assert other.x_train.shape == (50, 3) and other.info.input_shape == (3,)


def test_digits_split_is_fixed_stratified_and_scaled_to_unit_range() -> None:
    first, again = data.digits(), data.digits()
    assert first.x_train.shape == (1437, 1, 8, 8) and first.x_test.shape == (360, 1, 8, 8)
    assert torch.equal(first.x_test, again.x_test) and torch.equal(first.y_test, again.y_test)
    assert float(first.x_train.min()) == 0.0 and float(first.x_train.max()) == 1.0
    counts = torch.bincount(first.y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # ~36 of each class
    assert first.info.labels == tuple("0123456789")
    assert first.holdout.shape[0] >= data.HOLDOUT_MIN_ROWS


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_auto_uses_fashion_mnist_when_idx_files_are_present(
    tmp_path: Path, fashion_files, compress: bool
) -> None:
    test_images, test_labels = fashion_files(tmp_path, compress=compress)
    loaded = data.load(data.DataSettings(dataset="auto", data_dir=tmp_path, download=False))
    assert loaded.info.name == "fashion-mnist" and loaded.notices == ()
    assert loaded.info.input_shape == (1, 28, 28)
    assert loaded.info.labels[0] == "t-shirt" and loaded.info.labels[9] == "ankle boot"
    assert loaded.x_train.shape == (64, 1, 28, 28) and loaded.x_test.shape == (40, 1, 28, 28)
    expected = torch.from_numpy(test_images).float().unsqueeze(1) / 255.0
    assert torch.equal(loaded.x_test, expected)  # same pixels as ToTensor() would give
    assert torch.equal(loaded.y_test, torch.from_numpy(test_labels).long())
    assert loaded.holdout.shape[0] >= data.HOLDOUT_MIN_ROWS


def test_auto_falls_back_to_digits_with_a_visible_notice(tmp_path: Path) -> None:
    loaded = data.load(data.DataSettings(dataset="auto", data_dir=tmp_path, download=False))
    assert loaded.info.name == "digits"
    assert len(loaded.notices) == 1 and "falling back" in loaded.notices[0]
    assert str(tmp_path) in loaded.notices[0]


def test_explicit_fashion_mnist_without_files_says_how_to_provide_them(tmp_path: Path) -> None:
    settings = data.DataSettings(dataset="fashion-mnist", data_dir=tmp_path, download=False)
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as caught:
        data.load(settings)
    assert "FashionMNIST" in str(caught.value) and "--dataset digits" in str(caught.value)


def test_download_probe_fails_fast_when_nothing_answers() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    assert not data._reachable("127.0.0.1", port, 2.0)
    assert time.perf_counter() - start < 2.5


def test_csv_features_are_standardized_and_stats_recorded(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("a,price,b\n1,10,100\n2,20,300\n3,30,500\n")
    loaded = data.csv_regression(path, "price")
    assert loaded.info.feature_names == ("a", "b")
    assert loaded.info.feature_mean == pytest.approx((2.0, 300.0))
    assert loaded.info.feature_std == pytest.approx((0.8164966, 163.29932), rel=1e-6)
    assert torch.allclose(loaded.x_train.mean(dim=0), torch.zeros(2), atol=1e-6)
    assert loaded.y_train[:, 0].tolist() == [10.0, 20.0, 30.0]
    # The holdout is raw inputs (the exporter puts the standardization in the graph).
    assert loaded.holdout.shape == (39, 2) and loaded.holdout[0].tolist() == [1.0, 100.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("a,b\n1,2\n3,4\n", "no column 'y'"),
        ("a,y\n1,2\n3,oops\n", "line 3, column 'y': 'oops' is not a number"),
        ("a,y\n1,2\n", "at least 2 data rows; got 1"),
        ("y\n1\n2\n", "at least one feature column"),
        ("a,y\n1,2\n3\n", "1 cells; the header has 2 columns"),
        ("", "empty file"),
    ],
    ids=[
        "missing-file",
        "missing-column",
        "non-numeric",
        "one-row",
        "no-features",
        "ragged",
        "empty",
    ],
)
def test_bad_csv_raises_a_clear_data_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        data.csv_regression(path, "y")


def test_settings_reject_unknown_dataset_and_bad_synthetic_values() -> None:
    with pytest.raises(ConfigError, match="unknown data set 'mnist'"):
        data.DataSettings(dataset="mnist")
    with pytest.raises(ConfigError, match="n >= 2"):
        data.SyntheticSettings(n=1)
    with pytest.raises(ConfigError, match="needs --csv"):
        data.DataSettings(dataset="csv")
