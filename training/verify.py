"""``python -m training.verify models/``: model_repository.verify plus the ONNX checker.

The repository checks live in ``model_repository.verify`` (the server's side of the
contract, free of the training stack); where the ``onnx`` package is installed, as it is
for training, every graph also goes through ``onnx.checker`` with ``full_check``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from model_repository import verify
from model_repository.verify import Finding, VerifyError


def onnx_checker(data: bytes) -> None:
    """Raise VerifyError unless ``data`` passes onnx.checker (full check)."""
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # ValidationError, InferenceError, DecodeError, ...
        raise VerifyError(f"fails the ONNX checker: {error}") from error


def verify_repository(repository: Path) -> list[Finding]:
    """``model_repository.verify.verify_repository`` with the ONNX checker."""
    return verify.verify_repository(repository, onnx_checker)


def main(argv: Sequence[str] | None = None) -> int:
    return verify.main(argv, prog="python -m training.verify", extra_check=onnx_checker)


if __name__ == "__main__":
    sys.exit(main())
