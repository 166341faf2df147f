"""`python -m training.verify` re-checks a repository and names every broken path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from export_support import cached_to_onnx, copy_repository, exported_repository

from model_repository import layout
from model_repository.config import format_config, read_config
from training import export
from training.verify import verify_repository

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def repository(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A private copy of linear/softmax/mlp version 1, free to damage."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "to_onnx", cached_to_onnx)
        source, _ = exported_repository(tmp_path_factory.getbasetemp())
    return copy_repository(source, tmp_path / "models")


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.verify", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def line_for(output: str, path: Path) -> str:
    (line,) = [
        line for line in output.splitlines() if line.split(maxsplit=1)[-1].startswith(f"{path}:")
    ]
    return line


def set_dims(path: Path, tensor: str, dims: list[int]) -> None:
    config = read_config(path)
    (entry,) = [e for e in [*config.input, *config.output] if e.name == tensor]
    del entry.dims[:]
    entry.dims.extend(dims)
    path.write_text(format_config(config))


def test_verify_passes_a_fresh_repository_with_one_line_per_version(repository: Path) -> None:
    result = run_verify(str(repository))
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("linear", "softmax", "mlp"):
        assert line_for(result.stdout, layout.version_dir(repository, kind, 1)).startswith("OK")


def test_verify_reports_a_truncated_model_by_path_without_a_traceback(repository: Path) -> None:
    model_file = layout.model_path(repository, "mlp", 1)
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    result = run_verify(str(repository))
    assert result.returncode == 1
    line = line_for(result.stdout, layout.version_dir(repository, "mlp", 1))
    assert line.startswith("FAIL") and str(model_file) in line and "truncated" in line
    assert "Traceback" not in result.stdout + result.stderr
    assert line_for(result.stdout, layout.version_dir(repository, "softmax", 1)).startswith("OK")


def test_verify_reports_config_dims_that_disagree_with_the_graph(repository: Path) -> None:
    config_file = layout.config_path(repository, "softmax")
    set_dims(config_file, "input", [1, 28, 28])
    result = run_verify(str(repository))
    assert result.returncode == 1
    line = line_for(result.stdout, layout.version_dir(repository, "softmax", 1))
    assert line.startswith("FAIL") and str(config_file) in line
    assert "[1, 28, 28]" in line and "[1, 8, 8]" in line


def test_verify_without_a_repository_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run_verify(str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"python -m training.verify: error: {tmp_path / 'missing'} is not a directory; "
        "expected a model repository"
    ]


def test_verify_of_an_empty_repository_fails(tmp_path: Path) -> None:
    result = run_verify(str(tmp_path))
    assert result.returncode == 1 and "no models found" in result.stdout


def findings_by_path(repository: Path) -> dict[Path, tuple[bool, str]]:
    return {f.path: (f.ok, f.message) for f in verify_repository(repository)}


def test_max_batch_size_zero_makes_dims_the_full_shape(repository: Path) -> None:
    config_file = layout.config_path(repository, "linear")
    config = read_config(config_file)
    config.max_batch_size = 0
    config_file.write_text(format_config(config))
    ok, message = findings_by_path(repository)[layout.version_dir(repository, "linear", 1)]
    # Triton's rule: without batching, dims are the whole shape, batch dimension included.
    assert not ok and "config input 'input' dims are [2]; the graph has [-1, 2]" in message


def test_missing_metadata_and_bad_outputs_are_reported(repository: Path) -> None:
    model_file = layout.model_path(repository, "softmax", 1)
    model = onnx.load(str(model_file))
    kept = [e for e in model.metadata_props if e.key != "labels"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(model_file))
    set_dims(layout.config_path(repository, "mlp"), "logits", [11])
    findings = findings_by_path(repository)
    ok, message = findings[layout.version_dir(repository, "softmax", 1)]
    assert not ok and "lack ['labels']" in message
    ok, message = findings[layout.version_dir(repository, "mlp", 1)]
    assert not ok and "config output 'logits' dims are [11]; the graph has [10]" in message
    assert findings[layout.version_dir(repository, "linear", 1)][0]


def test_missing_model_file_and_empty_model_dir_are_reported_and_config_is_optional(
    repository: Path,
) -> None:
    layout.config_path(repository, "linear").unlink()
    layout.model_path(repository, "mlp", 1).unlink()
    (repository / "empty").mkdir()
    (repository / "softmax" / f"{layout.STAGING_PREFIX}abc").mkdir()  # ignored, like a server would
    findings = findings_by_path(repository)
    assert set(findings) == {
        layout.version_dir(repository, "linear", 1),
        layout.version_dir(repository, "mlp", 1),
        layout.version_dir(repository, "softmax", 1),
        repository / "empty",
    }
    ok, message = findings[layout.version_dir(repository, "linear", 1)]
    assert ok and "no config.pbtxt: completed from the graph" in message
    assert "model.onnx: cannot read" in findings[layout.version_dir(repository, "mlp", 1)][1]
    assert findings[repository / "empty"] == (False, "no version directories")
    assert findings[layout.version_dir(repository, "softmax", 1)][0]
