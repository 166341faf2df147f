"""Errors of the inference service, and the one place they become gRPC status codes.

Hierarchy::

    ServingError                 root; never raised itself
    ├── SettingsError            bad server settings (the CLI exits 2 with its message)
    ├── ModelNotFoundError       NOT_FOUND: unknown model or version
    ├── InvalidInputError        INVALID_ARGUMENT: dtype, shape, byte length, rows, NaN/Inf, ...
    ├── QueueFullError           RESOURCE_EXHAUSTED: the batch queue is at max_queue_size
    ├── ModelUnavailableError    UNAVAILABLE: loading, failed, or being unloaded
    ├── DeadlineExpiredError     DEADLINE_EXCEEDED: the caller's deadline passed while queued
    ├── ModelLoadError           INVALID_ARGUMENT: RepositoryModelLoad found a model it cannot serve
    └── NotAllowedError          FAILED_PRECONDITION: model control outside explicit mode

Messages name what was received and what was expected, because they travel to the
caller verbatim as the gRPC status details.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Root of every error this package raises on purpose."""


class SettingsError(ServingError):
    """Server settings that cannot work together (bad flag, missing file, ...)."""


class ModelNotFoundError(ServingError):
    """The requested model or version is not in the repository."""


class InvalidInputError(ServingError):
    """A request whose tensors or parameters the model cannot accept."""


class QueueFullError(ServingError):
    """The model's batch queue is full: refused at admission instead of growing memory."""


class ModelUnavailableError(ServingError):
    """The model exists but cannot serve right now (loading, failed or unloading)."""


class DeadlineExpiredError(ServingError):
    """The caller's deadline expired before its request reached an execution."""


class ModelLoadError(ServingError):
    """A model that an explicit load request asked for could not be loaded."""


class NotAllowedError(ServingError):
    """A request the server's mode does not allow (model control while polling)."""


_STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    NotAllowedError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code a caller receives for ``error`` (INTERNAL when unexpected)."""
    return _STATUS_CODES.get(type(error), grpc.StatusCode.INTERNAL)
