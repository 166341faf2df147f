"""Settings of the inference service: frozen, validated once, built at the CLI edge."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from serving.errors import SettingsError

AUTH_TOKEN_ENV = "D2LSERVE_AUTH_TOKEN"
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
# gRPC's own default receive limit; requests above it are refused by gRPC itself.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Used when config.pbtxt leaves max_queue_size at 0 (Triton's "unbounded"): we never
# let a queue grow without a bound.
DEFAULT_MAX_QUEUE_SIZE = 1024
# --workers N: a worker silent this long (hung, stopped) is killed and restarted.
DEFAULT_WORKER_TIMEOUT_SECONDS = 30.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
DEVICES = ("auto", "cpu", "cuda")
EVENT_LOOPS = ("uvloop", "asyncio")
CONTROL_MODES = ("none", "poll", "explicit")


def _port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise SettingsError(f"{name} must be in 0..65535, got {value}")


@dataclass(frozen=True)
class RuntimeSettings:
    """How ONNX Runtime sessions are created."""

    device: str = "auto"  # auto: CUDA when a CUDA session can actually be created, else CPU
    # One intra-op thread by default: the service batches requests, and on a small
    # machine extra spinning ORT threads compete with the event loop for the same cores.
    intra_op_threads: int = 1
    inter_op_threads: int = 1

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SettingsError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value < 0:
                raise SettingsError(f"{name} must be >= 0 (0 = ONNX Runtime default), got {value}")


@dataclass(frozen=True)
class BatchingOverrides:
    """Command-line overrides of the per-model batching settings in config.pbtxt."""

    enabled: bool = True  # False: every request runs alone (--no-batching)
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_delay_microseconds: int | None = None
    max_queue_size: int | None = None
    instances: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": (self.max_batch_size, 1),
            "max_queue_delay_microseconds": (self.max_queue_delay_microseconds, 0),
            "max_queue_size": (self.max_queue_size, 1),
            "instances": (self.instances, 1),
        }
        for name, (value, low) in checks.items():
            if value is not None and value < low:
                raise SettingsError(f"{name} must be >= {low}, got {value}")
        for size in self.preferred_batch_sizes or ():
            if size < 1:
                raise SettingsError(f"preferred batch sizes must be >= 1, got {size}")


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``python -m serving`` needs; see docs/serving.md for each flag."""

    model_repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_enabled: bool = True
    poll_interval_seconds: float = 2.0  # 0 disables watching the repository
    model_control_mode: str = "poll"  # Triton's --model-control-mode
    load_models: tuple[str, ...] = ()  # explicit mode: the models loaded at start
    grace_seconds: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Inference requests admitted at once; None: what the loaded batchers can hold
    # (serving.core.admission.default_limit), recomputed as models come and go.
    max_concurrent_rpcs: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = field(default=None, repr=False)
    log_level: str = "info"
    log_format: str = "text"
    event_loop: str = "uvloop"
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    batching: BatchingOverrides = field(default_factory=BatchingOverrides)

    def __post_init__(self) -> None:
        if not self.model_repository.is_dir():
            raise SettingsError(f"model repository {self.model_repository} is not a directory")
        _port("grpc_port", self.grpc_port)
        _port("metrics_port", self.metrics_port)
        if self.poll_interval_seconds < 0:
            raise SettingsError(
                f"poll_interval_seconds must be >= 0, got {self.poll_interval_seconds}"
            )
        if self.model_control_mode not in CONTROL_MODES:
            raise SettingsError(
                f"model control mode must be one of {', '.join(CONTROL_MODES)}, "
                f"got {self.model_control_mode!r}"
            )
        if self.load_models and self.model_control_mode != "explicit":
            raise SettingsError("--load-model needs --model-control-mode explicit")
        if self.grace_seconds < 0:
            raise SettingsError(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.max_message_bytes < 1024:
            raise SettingsError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 1:
            raise SettingsError(f"max_concurrent_rpcs must be >= 1, got {self.max_concurrent_rpcs}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("TLS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise SettingsError(f"TLS file {path} does not exist")
        if self.auth_token is not None and not self.auth_token.strip():
            raise SettingsError("auth token is empty")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"log format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def polling(self) -> bool:
        """Whether the repository is watched for new, changed and removed versions."""
        return self.model_control_mode == "poll" and self.poll_interval_seconds > 0


def token_from_environment() -> str | None:
    """The bearer token from $D2LSERVE_AUTH_TOKEN, or None when unset or empty."""
    return os.environ.get(AUTH_TOKEN_ENV) or None
