"""Errors of the inference service, and the one place they become gRPC status codes.

Hierarchy::

    ServingError                 root; never raised itself
    ├── SettingsError            bad server settings (the CLI exits 2 with its message)
    ├── ModelNotFoundError       NOT_FOUND: unknown model or version
    ├── InvalidInputError        INVALID_ARGUMENT: dtype, shape, byte length, rows, NaN/Inf, ...
    ├── QueueFullError           RESOURCE_EXHAUSTED: the batch queue is at max_queue_size
    ├── QueueTimeoutError        UNAVAILABLE: queued longer than the queue policy's timeout
    ├── ModelUnavailableError    UNAVAILABLE: loading, failed, or being unloaded
    ├── DeadlineExpiredError     DEADLINE_EXCEEDED: the caller's deadline passed while queued
    ├── ModelLoadError           INVALID_ARGUMENT: RepositoryModelLoad found a model it cannot serve
    ├── NotAllowedError          FAILED_PRECONDITION: model control outside explicit mode
    └── InternalServingError     INTERNAL: a bug of ours met while serving (logged in full)

Messages name what was received and what was expected, because they travel to the
caller as the gRPC status details. Strings a client sent are echoed through ``clip`` and a
whole message is capped at ``MAX_MESSAGE_CHARS``: status details travel in trailing
metadata, and a 20 KB model name echoed verbatim would exceed gRPC's metadata limit and
reach the client as RESOURCE_EXHAUSTED instead of its real status.
"""

from __future__ import annotations

import grpc

# Longest client string echoed in a message, and longest message.
MAX_ECHO_CHARS = 200
MAX_MESSAGE_CHARS = 1000


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more characters)"


class ServingError(Exception):
    """Root of every error this package raises on purpose."""

    def __str__(self) -> str:
        # Keeps head and tail, so both what was received and what was expected survive.
        text = super().__str__()
        if len(text) <= MAX_MESSAGE_CHARS:
            return text
        head = MAX_MESSAGE_CHARS * 3 // 4
        tail = MAX_MESSAGE_CHARS // 5
        return f"{text[:head]}...({len(text) - head - tail} characters cut)...{text[-tail:]}"


class SettingsError(ServingError):
    """Server settings that cannot work together (bad flag, missing file, ...)."""


class ModelNotFoundError(ServingError):
    """The requested model or version is not in the repository."""


class InvalidInputError(ServingError):
    """A request whose tensors or parameters the model cannot accept."""


class QueueFullError(ServingError):
    """The model's batch queue is full: refused at admission instead of growing memory."""


class QueueTimeoutError(ServingError):
    """A request waited in the batch queue longer than the model's queue policy allows."""


class ModelUnavailableError(ServingError):
    """The model exists but cannot serve right now (loading, failed or unloading)."""


class DeadlineExpiredError(ServingError):
    """The caller's deadline expired before its request reached an execution."""


class ModelLoadError(ServingError):
    """A model that an explicit load request asked for could not be loaded."""


class NotAllowedError(ServingError):
    """A request the server's mode does not allow (model control while polling)."""


class InternalServingError(ServingError):
    """Something of ours failed while serving a request: never the client's mistake."""


_STATUS_CODES: dict[type[ServingError], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ModelUnavailableError: grpc.StatusCode.UNAVAILABLE,
    QueueTimeoutError: grpc.StatusCode.UNAVAILABLE,  # as Triton: "Request timeout expired"
    DeadlineExpiredError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    NotAllowedError: grpc.StatusCode.FAILED_PRECONDITION,
    InternalServingError: grpc.StatusCode.INTERNAL,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status code a caller receives for ``error`` (INTERNAL when unexpected)."""
    return _STATUS_CODES.get(type(error), grpc.StatusCode.INTERNAL)
