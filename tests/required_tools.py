"""External programs some tests need (prometheus, promtool, docker-compose).

On a developer machine a missing program skips the test that needs it. With ``CI=true``
(``.ci/run`` installs them all) a missing program is a test failure: a skip there would
hide that the test never ran.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_tool(name: str, install_hint: str) -> str:
    """The path of ``name`` on PATH or beside this Python (a venv's scripts); otherwise skip
    the test, or fail it under CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    beside = Path(sys.executable).with_name(name)
    if beside.is_file():
        return str(beside)
    message = f"'{name}' not on PATH ({install_hint})"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing tool fails instead of skipping", False)
    pytest.skip(message)
