"""The container health probe against a tiny grpc.aio server with the standard health servicer."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from serving import healthcheck
from serving.healthcheck import EXIT_NOT_SERVING, EXIT_SERVING, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HangingHealth(health_pb2_grpc.HealthServicer):
    """Never answers Check, so only the probe's deadline can end the call."""

    async def Check(self, request, context):
        await asyncio.sleep(60)
        return health_pb2.HealthCheckResponse(status=SERVING)


class AioHealthServer:
    """A grpc.aio server with one health servicer, on its own event-loop thread."""

    def __init__(self, servicer: health_pb2_grpc.HealthServicer, tls: tuple[bytes, bytes] | None):
        self.servicer = servicer
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started: Future[int] = Future()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))

    async def _run(self) -> None:
        try:
            self._stop = asyncio.Event()
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
            if self._tls is None:
                port = server.add_insecure_port("127.0.0.1:0")
            else:
                credentials = grpc.ssl_server_credentials([self._tls])
                port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
        except BaseException as error:
            self._started.set_exception(error)
            raise
        self._started.set_result(port)
        await self._stop.wait()
        await server.stop(grace=None)

    def start(self) -> int:
        self._thread.start()
        return self._started.result(timeout=10)

    def set_status(self, service: str, status: int) -> None:
        asyncio.run_coroutine_threadsafe(self.servicer.set(service, status), self._loop).result(5)

    def stop(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._loop.close()


def _serve(servicer, tls=None) -> Iterator[tuple[AioHealthServer, str]]:
    server = AioHealthServer(servicer, tls)
    port = server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def health_server() -> Iterator[tuple[AioHealthServer, str]]:
    yield from _serve(health_aio.HealthServicer())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serving_server_exits_zero_with_one_line(health_server, capsys):
    _, target = health_server
    assert healthcheck.main(["--target", target]) == EXIT_SERVING
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"SERVING {target}")


def test_not_serving_server_exits_one(health_server, capsys):
    server, target = health_server
    server.set_status("", NOT_SERVING)
    assert healthcheck.main(["--target", target]) == EXIT_NOT_SERVING
    assert capsys.readouterr().err.startswith(f"NOT_SERVING {target}")


def test_per_model_service_is_checked_separately(health_server):
    server, target = health_server
    server.set_status("", NOT_SERVING)
    server.set_status("mlp", SERVING)
    result = healthcheck.probe(healthcheck.ProbeSettings(target=target, service="mlp"))
    assert result.serving and result.status == "SERVING"
    overall = healthcheck.probe(healthcheck.ProbeSettings(target=target))
    assert not overall.serving and overall.status == "NOT_SERVING"


def test_unknown_service_is_not_healthy(health_server, capsys):
    _, target = health_server
    code = healthcheck.main(["--target", target, "--service", "no-such-model"])
    assert code == EXIT_NOT_SERVING
    assert "SERVICE_UNKNOWN" in capsys.readouterr().err


def test_unreachable_server_fails_fast():
    settings = healthcheck.ProbeSettings(target=f"127.0.0.1:{_free_port()}", timeout_seconds=5)
    start = time.perf_counter()
    result = healthcheck.probe(settings)
    assert result.status == "UNAVAILABLE"
    assert not result.serving
    assert time.perf_counter() - start < 4


def test_server_that_never_answers_hits_the_deadline():
    for _, target in _serve(_HangingHealth()):
        start = time.perf_counter()
        result = healthcheck.probe(healthcheck.ProbeSettings(target=target, timeout_seconds=0.3))
        elapsed = time.perf_counter() - start
        assert result.status == "DEADLINE_EXCEEDED"
        assert 0.25 < elapsed < 3


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--timeout", "0"], "timeout must be a positive number"),
        (["--timeout", "nan"], "timeout must be a positive number"),
        (["--target", "localhost"], "target must be HOST:PORT"),
        (["--target", "localhost:99999"], "target must be HOST:PORT"),
        (["--tls-ca", "/no/such/ca.pem"], "does not exist"),
        (["--tls-server-name", "server"], "only applies with --tls-ca"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_two_with_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        healthcheck.main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert expected in err


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[Path, bytes, bytes]:
    """A self-signed certificate for 'localhost' (also the CA that verifies it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl binary not installed; cannot create a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key.read_bytes(), cert.read_bytes()


def test_tls_probe_verifies_the_server_certificate(self_signed, capsys):
    ca, key, cert = self_signed
    for _, target in _serve(health_aio.HealthServicer(), tls=(key, cert)):
        # The certificate names "localhost", not the IP we dial, hence the override.
        args = ["--target", target, "--tls-ca", str(ca), "--tls-server-name", "localhost"]
        assert healthcheck.main(args) == EXIT_SERVING
        wrong_name = ["--target", target, "--tls-ca", str(ca), "--tls-server-name", "other"]
        assert healthcheck.main([*wrong_name, "--timeout", "1"]) == EXIT_NOT_SERVING
        plaintext = ["--target", target, "--timeout", "1"]
        assert healthcheck.main(plaintext) == EXIT_NOT_SERVING
    capsys.readouterr()


def test_module_runs_as_a_command(health_server):
    """The exact command the compose healthcheck runs."""
    _, target = health_server
    completed = subprocess.run(
        [sys.executable, "-m", "serving.healthcheck", "--target", target],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == EXIT_SERVING, completed.stderr
    assert completed.stdout.startswith("SERVING ")


def test_real_server_reports_serving_for_itself_and_each_model(server, capsys):
    """Against `python -m serving` (the session server of tests/serving/conftest.py)."""
    assert healthcheck.main(["--target", server.target]) == EXIT_SERVING
    assert healthcheck.main(["--target", server.target, "--service", "mlp"]) == EXIT_SERVING
    assert healthcheck.main(["--target", server.target, "--service", "nope"]) == EXIT_NOT_SERVING
    assert "SERVICE_UNKNOWN" in capsys.readouterr().err
