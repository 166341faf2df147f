"""Paths and version numbering inside a model repository."""

from __future__ import annotations

import re
from pathlib import Path

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
METRICS_FILENAME = "metrics.json"
CURVES_FILENAME = "curves.png"
PREDICTIONS_FILENAME = "predictions.png"
# Writers stage a version here before renaming it into place; readers ignore it.
STAGING_PREFIX = ".staging-"


# Versions are Triton's int64: 1 .. 2**63 - 1.
MAX_VERSION = 2**63 - 1
# ASCII digits only ("²".isdigit() is true, and so are other scripts' digits), no leading
# zero, at most 19 digits.
_VERSION = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)


def parse_version(name: str) -> int | None:
    """Return the version a directory name (or request string) stands for, or None."""
    if _VERSION.fullmatch(name) is None:
        return None
    number = int(name)
    return number if number <= MAX_VERSION else None


def model_names(repository: Path) -> list[str]:
    """Names of the model directories in ``repository``, sorted, hidden entries skipped."""
    if not repository.is_dir():
        return []
    return sorted(
        entry.name
        for entry in repository.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    )


def versions(model_dir: Path) -> list[int]:
    """Complete version numbers present under ``model_dir``, ascending."""
    if not model_dir.is_dir():
        return []
    found = []
    for entry in model_dir.iterdir():
        version = parse_version(entry.name)
        if version is not None and entry.is_dir():
            found.append(version)
    return sorted(found)


def next_version(model_dir: Path) -> int:
    """The version number a new export of this model takes."""
    existing = versions(model_dir)
    return existing[-1] + 1 if existing else 1


def version_dir(repository: Path, name: str, version: int) -> Path:
    return repository / name / str(version)


def model_path(repository: Path, name: str, version: int) -> Path:
    return version_dir(repository, name, version) / MODEL_FILENAME


def config_path(repository: Path, name: str) -> Path:
    return repository / name / CONFIG_FILENAME
