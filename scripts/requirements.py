"""Print pyproject.toml's pinned base dependencies plus those of the named extras, one a line.

The image builds install dependencies from this list before the source is copied in, so that
editing the code does not reinstall them:

    python scripts/requirements.py cpu          # serving image (CPU)
    python scripts/requirements.py train gpu    # training image
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(f"unknown extra {unknown}; pyproject.toml defines {sorted(optional)}")
    return project["dependencies"] + [dep for name in extras for dep in optional[name]]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
