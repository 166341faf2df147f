"""Container health probe: ``python -m serving.healthcheck [--target HOST:PORT] [--service NAME]``.

Calls ``grpc.health.v1.Health/Check`` once, with a deadline, and exits 0 when the answer is
SERVING, 1 for anything else (NOT_SERVING, unknown service, unreachable, timed out) and 2 for
bad arguments. It prints one line either way, which is what ``docker inspect`` shows.

Why not a TCP port check: the gRPC port opens before the models are loaded and stays open
while the server drains on shutdown; only the health service knows whether requests will be
answered. Kubernetes probes the same service natively (``grpc: {port: 8001}``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.cli_args import EXIT_USAGE as EXIT_USAGE  # re-exported: the probe's exit codes
from serving.cli_args import OneLineParser
from serving.errors import SettingsError

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1

DEFAULT_TARGET = "127.0.0.1:8001"
DEFAULT_TIMEOUT_SECONDS = 3.0
SERVING = health_pb2.HealthCheckResponse.ServingStatus.Name(health_pb2.HealthCheckResponse.SERVING)


class HealthcheckError(SettingsError):
    """Invalid probe settings (bad target, timeout or TLS file)."""


@dataclass(frozen=True)
class ProbeSettings:
    """What to ask and where; ``service`` "" means the whole server."""

    target: str = DEFAULT_TARGET
    service: str = ""
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    tls_ca: Path | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        _check_target(self.target)
        if not math.isfinite(self.timeout_seconds) or self.timeout_seconds <= 0:
            raise HealthcheckError(
                f"timeout must be a positive number of seconds; received {self.timeout_seconds}"
            )
        if self.tls_ca is not None and not self.tls_ca.is_file():
            raise HealthcheckError(f"TLS CA file {str(self.tls_ca)!r} does not exist")
        if self.tls_server_name is not None and self.tls_ca is None:
            raise HealthcheckError("--tls-server-name only applies with --tls-ca")


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one Check call.

    ``status`` is the health status name (SERVING, NOT_SERVING, ...) when the server answered,
    otherwise the gRPC status code name of the failed call (UNAVAILABLE, DEADLINE_EXCEEDED, ...).
    """

    status: str
    detail: str
    elapsed_seconds: float

    @property
    def serving(self) -> bool:
        return self.status == SERVING


def _check_target(target: str) -> None:
    if target.startswith("unix:"):
        return
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise HealthcheckError(
            f"target must be HOST:PORT with a port in 1..65535 (or unix:PATH); received {target!r}"
        )


def _channel(settings: ProbeSettings) -> grpc.Channel:
    if settings.tls_ca is None:
        return grpc.insecure_channel(settings.target)
    credentials = grpc.ssl_channel_credentials(root_certificates=settings.tls_ca.read_bytes())
    options = []
    if settings.tls_server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls_server_name))
    return grpc.secure_channel(settings.target, credentials, options=options)


def probe(settings: ProbeSettings) -> ProbeResult:
    """Ask the server once; never raises for an unreachable or unhealthy server."""
    start = time.perf_counter()
    request = health_pb2.HealthCheckRequest(service=settings.service)
    with _channel(settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(request, timeout=settings.timeout_seconds)
        except grpc.RpcError as error:
            elapsed = time.perf_counter() - start
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                # The standard servicer answers NOT_FOUND for a service it does not know.
                return ProbeResult(
                    "SERVICE_UNKNOWN", f"service {settings.service!r} is not registered", elapsed
                )
            return ProbeResult(code.name, error.details() or "", elapsed)
    elapsed = time.perf_counter() - start
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return ProbeResult(status, "", elapsed)


def wait_until_serving(
    channel: grpc.Channel, timeout: float, check_alive: Callable[[], None], interval: float = 0.1
) -> bool:
    """Ask the whole server's health on ``channel`` until SERVING (True) or ``timeout`` (False).

    For launchers that start a server and wait for it (tests, benchmarks): ``check_alive`` is
    called before every try and raises when the server process has exited, so a server that
    dies at start fails at once instead of after the whole timeout.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check_alive()
        try:
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.RpcError:
            pass
        time.sleep(interval)
    return False


def format_result(settings: ProbeSettings, result: ProbeResult) -> str:
    """One line: status, where, which service, how long, and the error detail if any."""
    service = repr(settings.service) if settings.service else "'' (server)"
    line = (
        f"{result.status} {settings.target} service {service} "
        f"in {result.elapsed_seconds * 1e3:.1f} ms"
    )
    return f"{line}: {result.detail}" if result.detail else line


def parse_args(argv: list[str] | None = None) -> ProbeSettings:
    parser = OneLineParser(
        prog="python -m serving.healthcheck",
        description="Exit 0 when the gRPC health service answers SERVING, 1 otherwise.",
    )
    parser.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"HOST:PORT (default {DEFAULT_TARGET})"
    )
    parser.add_argument(
        "--service",
        default="",
        help="health service name, e.g. a model name (default '': the whole server)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"deadline of the call in seconds (default {DEFAULT_TIMEOUT_SECONDS})",
    )
    parser.add_argument(
        "--tls-ca", type=Path, default=None, help="PEM CA bundle: use TLS (default: plaintext)"
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="name to verify in the server certificate (default: the target host)",
    )
    args = parser.parse_args(argv)
    try:
        return ProbeSettings(
            target=args.target,
            service=args.service,
            timeout_seconds=args.timeout,
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
        )
    except HealthcheckError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    result = probe(settings)
    line = format_result(settings, result)
    if result.serving:
        print(line)
        return EXIT_SERVING
    print(line, file=sys.stderr)
    return EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
