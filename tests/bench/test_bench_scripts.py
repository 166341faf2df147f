"""Every benchmark script still starts: its imports resolve and its options parse.

The benchmarks are not run by the suite (they take minutes and measure speed), so a helper
renamed or moved elsewhere would otherwise break them unnoticed until someone needs a figure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(
    path.name for path in BENCH.glob("*.py") if "__main__" in path.read_text(encoding="utf-8")
)


def test_the_benchmark_scripts_are_found():
    assert {"serve_bench.py", "overload_bench.py", "train_speed.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_prints_its_help(script):
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
