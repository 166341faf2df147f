"""Settings of a load test, parsed once at the command line and validated here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from serving.config import DEFAULT_METRICS_PORT
from serving.loadtest.errors import SettingsError
from serving.loadtest.schedule import ARRIVALS
from serving.metrics import APIS

INPUT_SOURCES = ("random", "digits", "fashion-mnist")
# Slack past the planned end before the hard bound cuts the run (drain of in-flight requests).
_HARD_BOUND_SLACK_SECONDS = 5.0
_REQUESTS_ONLY_BOUND_SECONDS = 600.0


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"target must be HOST:PORT with a port in 1..65535; got {target!r}")
    return host, int(port)


def default_metrics_url(target: str) -> str:
    host, _ = split_target(target)
    return f"http://{host}:{DEFAULT_METRICS_PORT}/metrics"


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the server is and how to authenticate, matching the server's TLS/token options."""

    target: str
    tls_ca: Path | None = None  # PEM roots; None means plaintext
    tls_server_name: str | None = None  # overrides the name checked in the certificate
    token: str | None = None  # sent as "authorization: Bearer <token>"
    connect_timeout_seconds: float = 10.0
    # Channels (HTTP/2 connections) opened; calls go round-robin. A server run with
    # --workers N gives each connection to one worker, so use at least N.
    connections: int = 1

    def __post_init__(self) -> None:
        split_target(self.target)
        if self.connections < 1:
            raise SettingsError(f"--connections must be >= 1; got {self.connections}")
        if self.tls_ca is not None and not self.tls_ca.is_file():
            raise SettingsError(f"--tls-ca {self.tls_ca}: no such file")
        if self.tls_server_name is not None and self.tls_ca is None:
            raise SettingsError("--tls-server-name needs --tls-ca")
        if self.token is not None and not self.token.strip():
            raise SettingsError("--token is empty")
        if not self.connect_timeout_seconds > 0:
            raise SettingsError(
                f"connect timeout must be positive seconds; got {self.connect_timeout_seconds}"
            )


@dataclass(frozen=True)
class Workload:
    """What each request carries."""

    model: str
    version: int = 0  # 0: the server's default (latest) version
    api: str = "predict"
    rows: int = 1
    input_source: str = "random"
    data_dir: Path | None = None  # Fashion-MNIST files (t10k-images-idx3-ubyte[.gz]) under it
    top_k: int = 1
    pool_size: int = 64  # distinct pre-serialized requests, sent round-robin
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise SettingsError("--model is empty")
        if self.version < 0:
            raise SettingsError(f"--model-version must be >= 0 (0 = latest); got {self.version}")
        if self.api not in APIS:
            raise SettingsError(f"--api must be one of {', '.join(APIS)}; got {self.api!r}")
        if self.rows < 1:
            raise SettingsError(f"--rows must be >= 1; got {self.rows}")
        if self.input_source not in INPUT_SOURCES:
            raise SettingsError(
                f"--input must be one of {', '.join(INPUT_SOURCES)}; got {self.input_source!r}"
            )
        if self.input_source == "fashion-mnist" and self.data_dir is None:
            raise SettingsError("--input fashion-mnist needs --data-dir with the test images")
        if self.top_k < 1:
            raise SettingsError(f"--top-k must be >= 1; got {self.top_k}")
        if self.pool_size < 1:
            raise SettingsError(f"pool size must be >= 1; got {self.pool_size}")


@dataclass(frozen=True)
class LoadPlan:
    """How load is offered and for how long.

    Closed loop: ``concurrency`` requests always in flight. Open loop: ``rate_per_second``
    arrivals, each timed from its scheduled send. The run issues requests until
    ``duration_seconds`` (after the warm-up) or ``requests`` measured requests, whichever
    comes first, and never lasts more than ``hard_bound_seconds`` in all.
    """

    concurrency: int | None = None
    rate_per_second: float | None = None
    arrival: str = "poisson"
    duration_seconds: float | None = None
    requests: int | None = None
    warmup_seconds: float = 0.0
    max_seconds: float | None = None
    timeout_seconds: float = 10.0  # deadline of every request
    streams: int = 1  # bidirectional streams shared by the stream API's callers
    max_inflight: int = 10_000  # open loop: the schedule waits (still timed) past this
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate_per_second is None):
            raise SettingsError(
                "give exactly one of --concurrency (closed loop) or --rate (open loop)"
            )
        if self.concurrency is not None and self.concurrency < 1:
            raise SettingsError(f"--concurrency must be >= 1; got {self.concurrency}")
        if self.rate_per_second is not None and not (
            self.rate_per_second > 0 and math.isfinite(self.rate_per_second)
        ):
            raise SettingsError(
                f"--rate must be a positive number of requests/s; got {self.rate_per_second}"
            )
        if self.arrival not in ARRIVALS:
            raise SettingsError(
                f"--arrival must be one of {', '.join(ARRIVALS)}; got {self.arrival!r}"
            )
        if self.duration_seconds is None and self.requests is None:
            raise SettingsError("give --duration and/or --requests")
        if self.duration_seconds is not None and not self.duration_seconds > 0:
            raise SettingsError(f"--duration must be positive seconds; got {self.duration_seconds}")
        if self.requests is not None and self.requests < 1:
            raise SettingsError(f"--requests must be >= 1; got {self.requests}")
        if self.warmup_seconds < 0:
            raise SettingsError(f"--warmup must be >= 0 seconds; got {self.warmup_seconds}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise SettingsError(f"--max-seconds must be positive; got {self.max_seconds}")
        if not self.timeout_seconds > 0:
            raise SettingsError(f"--timeout must be positive seconds; got {self.timeout_seconds}")
        if self.streams < 1:
            raise SettingsError(f"--streams must be >= 1; got {self.streams}")
        if self.max_inflight < 1:
            raise SettingsError(f"--max-inflight must be >= 1; got {self.max_inflight}")

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def hard_bound_seconds(self) -> float:
        """Wall time after which the run is cut, in-flight requests counted as unfinished."""
        if self.max_seconds is not None:
            return self.max_seconds
        if self.duration_seconds is None:
            return _REQUESTS_ONLY_BOUND_SECONDS
        return (
            self.warmup_seconds
            + self.duration_seconds
            + self.timeout_seconds
            + _HARD_BOUND_SLACK_SECONDS
        )


@dataclass(frozen=True)
class LoadTestSettings:
    """Everything one run of ``python -m serving.loadtest`` needs."""

    connection: ConnectionSettings
    workload: Workload
    plan: LoadPlan
    metrics_url: str | None = None  # None: do not read the server's metrics
    check_samples: int = 0  # responses compared with a local ONNX Runtime run; 0 = no check
    model_repository: Path | None = None
    max_error_ratio: float = 0.0
    json_path: Path | None = None
    plot_path: Path | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.metrics_url is not None and not self.metrics_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError(f"--metrics-url must be an http(s) URL; got {self.metrics_url!r}")
        if self.check_samples < 0:
            raise SettingsError(f"--check-samples must be >= 0; got {self.check_samples}")
        if self.check_samples and self.model_repository is None:
            raise SettingsError("--check needs --model-repository DIR to find the model file")
        if self.model_repository is not None and not self.model_repository.is_dir():
            raise SettingsError(f"--model-repository {self.model_repository}: not a directory")
        if not 0.0 <= self.max_error_ratio <= 1.0:
            raise SettingsError(f"--max-error-ratio must be in [0, 1]; got {self.max_error_ratio}")
        for flag, path in (("--json", self.json_path), ("--plot", self.plot_path)):
            if path is not None and not path.parent.is_dir():
                raise SettingsError(f"{flag} {path}: directory {path.parent} does not exist")
        if self.plot_path is not None and self.plot_path.suffix.lower() != ".png":
            raise SettingsError(f"--plot must name a .png file; got {self.plot_path}")
