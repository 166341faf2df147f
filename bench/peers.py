"""Where the peers installed by scripts/install-peer-tools.sh live (.venv-peers).

Triton's perf_analyzer and PyTriton are measured and tested against, never imported:
they run as programs of their own environment (numpy < 2, Debian's python3.11).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_VENV = Path(os.environ.get("PEERS_VENV", ROOT / ".venv-peers"))
INSTALL_HINT = "scripts/install-peer-tools.sh installs it into .venv-peers (make peer-tools)"


def peers_python() -> Path | None:
    """The Python of .venv-peers (it has PyTriton, tritonclient 2.51, onnxruntime), or None."""
    python = PEERS_VENV / "bin" / "python"
    return python if python.is_file() else None


def perf_analyzer() -> Path | None:
    """Triton's perf_analyzer binary, or None when not installed."""
    binary = PEERS_VENV / "bin" / "perf_analyzer"
    return binary if binary.is_file() else None


def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer runs in: libcudart.so.12 from the CUDA runtime wheel."""
    env = dict(os.environ)
    libs = sorted(PEERS_VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(libs[0]), *filter(None, [env.get("LD_LIBRARY_PATH")])]
        )
    return env
