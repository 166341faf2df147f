"""Regenerate the Python stubs beside the .proto files.

Run ``python -m protos.generate`` after editing a .proto; ``tests/test_protos_fresh.py``
fails while the committed stubs disagree with their sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Compile every .proto in this folder into ``out_dir/protos``; return the protos."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {[p.name for p in protos]}")
    return protos


if __name__ == "__main__":
    generate()
    sys.exit(0)
