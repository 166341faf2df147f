"""A server under benchmark, as a process of its own: started, awaited until SERVING, stopped.

Shared by the benchmarks in this folder. The server is started on port 0 (gRPC and, where it
has one, metrics); the ports the kernel chose are read back from the server's log
(``event=listening`` / ``event=metrics_listening``, see ``serving.logs.bound_ports``), so no
other program can take a port between choosing and binding it.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


def pinned(cpus: int | str | None, command: list[str]) -> list[str]:
    """``command`` under ``taskset -c cpus`` (a core or a list such as "0-7"), or as is."""
    return command if cpus is None else ["taskset", "-c", str(cpus), *command]


@dataclass
class ServerProcess:
    """``command`` (which must listen on port 0 and log its ports) run from the repository root.

    ``metrics``: whether the server also serves /metrics (then its port is awaited too).
    """

    command: list[str]
    log_path: Path
    metrics: bool = True
    cpus: int | str | None = None
    port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def __enter__(self) -> ServerProcess:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        import grpc

        from serving.healthcheck import wait_until_serving
        from serving.logs import bound_ports

        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                pinned(self.cpus, self.command), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            grpc_port, metrics_port = bound_ports(self.log_path.read_text(errors="replace"))
            if grpc_port is not None and (metrics_port is not None or not self.metrics):
                self.port, self.metrics_port = grpc_port, metrics_port or 0
                break
            self._check_alive()
            time.sleep(0.05)
        with grpc.insecure_channel(self.target) as channel:
            left = max(0.0, deadline - time.monotonic())
            if wait_until_serving(channel, left, self._check_alive, interval=0.2):
                return
        raise RuntimeError(
            f"server not serving within {START_TIMEOUT_SECONDS:.0f} s: see {self.log_path}"
        )

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}: see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
