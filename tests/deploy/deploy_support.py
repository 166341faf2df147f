"""What the deployment tests share: where the repository is, and where a module lives."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def module_source(module: str) -> Path | None:
    """The repo file ``python -m module`` runs (module.py or package/__main__.py), if any."""
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None
