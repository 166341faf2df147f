"""gRPC inference service for the exported ONNX models (``python -m serving``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("d2l-serve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
