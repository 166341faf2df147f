from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.result import TrainedModel

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "softmax", "--lr", "0"], "--lr must be a finite number > 0; got 0.0"),
        (["--model", "linear", "--csv", "bad.csv", "--target", "y"], "'oops' is not a number"),
    ],
    ids=["zero-lr", "non-numeric-csv"],
)
def test_cli_rejects_bad_input_with_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3,oops\n")
    result = run_cli(*args, "--out", "repo", cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m training: error:"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "repo").exists()  # nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cnn"], "argument --model: invalid choice: 'cnn'"),
        (["--model", "mlp", "--epochs", "0"], "--epochs must be >= 1; got 0"),
        (["--model", "mlp", "--lr", "-0.5"], "--lr must be a finite number > 0; got -0.5"),
        (["--model", "mlp", "--lr", "nan"], "--lr must be a finite number > 0; got nan"),
        (["--model", "mlp", "--batch-size", "0"], "--batch-size must be >= 1; got 0"),
        (["--model", "mlp", "--dataset", "imagenet"], "argument --dataset: invalid choice"),
        (["--model", "softmax", "--dataset", "synthetic"], "softmax is a classifier"),
        (["--model", "linear", "--dataset", "digits"], "linear regression trains on synthetic"),
        (["--model", "all", "--name", "x"], "--name names one model"),
        (["--model", "linear", "--csv", "a.csv"], "--csv and --target go together"),
        (["--model", "mlp", "--csv", "a.csv", "--target", "y"], "--csv is regression data"),
        (["--model", "mlp", "--dropout", "1.5"], "--dropout must be in [0, 1); got 1.5"),
        (["--model", "mlp", "--hidden", "0"], "--hidden needs one or more sizes >= 1"),
        (["--model", "mlp", "--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["--model", "mlp", "--dataset", "fashion-mnist", "--no-download"], "copy the four"),
    ],
)
def test_cli_argument_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [*args, "--out", str(tmp_path / "repo"), "--data-dir", str(tmp_path / "data")]
    with pytest.raises(SystemExit) as caught:
        raise SystemExit(main(args))
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,y\n1,2\n3,four\n", "line 3, column 'y': 'four' is not a number"),
        ("a,b\n1,2\n3,4\n", "no column 'y'; columns are a, b"),
        ("a,y\n1,2\n", "needs at least 2 data rows; got 1"),
        (None, "CSV file not found"),
    ],
    ids=["non-numeric", "missing-column", "one-row", "missing-file"],
)
def test_cli_bad_csv_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    code = main(["--model", "linear", "--csv", str(path), "--target", "y", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[TrainedModel, str]]:
    """Stand-in exporter recording what the CLI hands over (the real one is tested end to end
    below and in the export helper's tests)."""
    import training.export

    calls: list[tuple[TrainedModel, str]] = []

    def fake(trained: TrainedModel, repository: Path, name: str | None = None) -> Path:
        for path in trained.artifacts.values():
            assert path.is_file()  # the plots exist while the exporter copies them
        calls.append((trained, name or trained.kind))
        return repository / (name or trained.kind) / "1"

    monkeypatch.setattr(training.export, "export_trained_model", fake)
    return calls


def test_cli_falls_back_to_digits_with_a_visible_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exports
) -> None:
    args = ["--model", "all", "--epochs", "1", "--no-download", "--data-dir", str(tmp_path)]
    assert main([*args, "--out", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert out.count("falling back to the embedded 8x8 digits") == 1
    assert [(t.kind, t.dataset.name, name) for t, name in exports] == [
        ("linear", "synthetic", "linear"),
        ("softmax", "digits", "softmax"),
        ("mlp", "digits", "mlp"),
    ]
    assert set(exports[0][0].artifacts) == {"curves.png"}
    assert set(exports[1][0].artifacts) == {"curves.png", "predictions.png"}
    assert "linear parameter error vs true w, b" in out and "closed-form lstsq" in out
    assert "training summary" in out
    assert f"exported mlp -> {tmp_path / 'repo' / 'mlp' / '1'}" in out


def test_cli_uses_digits_defaults_that_meet_the_quality_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exports
) -> None:
    args = ["--model", "mlp", "--dataset", "digits", "--impl", "scratch", "--name", "digits-mlp"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    ((trained, name),) = exports
    assert name == "digits-mlp" and trained.hyperparameters["epochs"] == 20
    assert trained.metrics["test_acc"] >= 0.95


def test_cli_trains_on_fashion_mnist_files_and_exports_a_version(
    tmp_path: Path, fashion_files
) -> None:
    """End to end with the real exporter: tiny IDX files -> auto picks Fashion-MNIST.

    Uses the most involved scratch network (two hidden layers, hand-written tanh and
    dropout) to show its plain-tensor forward exports to ONNX and matches PyTorch there.
    """
    fashion_files(tmp_path / "data", train=64, test=40)
    result = run_cli(
        *("--model", "mlp", "--impl", "scratch", "--hidden", "32", "16"),
        *("--activation", "tanh", "--dropout", "0.2", "--epochs", "2", "--no-download"),
        *("--out", "repo"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "falling back" not in result.stdout
    assert "mlp (scratch) on fashion-mnist" in result.stdout
    version = tmp_path / "repo" / "mlp" / "1"
    for name in ("model.onnx", "metrics.json", "curves.png", "predictions.png"):
        assert (version / name).is_file(), name
    assert (tmp_path / "repo" / "mlp" / "config.pbtxt").is_file()
    assert "exported mlp -> repo/mlp/1" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_request_without_cuda_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--model", "mlp", "--device", "cuda", "--out", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "CUDA is not available" in err, err
    assert not (tmp_path / "repo").exists()
