"""``--workers N``: N server processes behind one gRPC port, and the supervisor over them.

One grpc.aio process tops out at one core. The supervisor (this module, the process the user
started) runs N workers, each today's :class:`~serving.server.Server` with its own ONNX
Runtime sessions and batchers, listening on the same port with ``SO_REUSEPORT``: the kernel
hands each new connection to one of them. The supervisor

* holds the port with a bound, not listening, ``SO_REUSEPORT`` socket, so ``--grpc-port 0``
  picks one number for all workers and a port another program holds is refused up front;
* starts workers as fresh interpreters (``python -m serving ... --worker-index i``; nothing is
  forked from a process that has initialised gRPC or ONNX Runtime);
* logs ``event=ready workers=N rss=...`` once every worker is ready;
* restarts a worker that dies, with back-off, logged and counted in
  ``d2lserve_worker_restarts_total``; a worker that fails before the server was ever ready
  (bad model, bad flag) stops the whole server with its exit code instead;
* kills (SIGKILL) and so restarts a worker that stops answering: it asks each worker over
  its control socket every second, and one silent for ``--worker-timeout`` seconds (hung,
  deadlocked, stopped; a worker not yet started gets ``STARTUP_SECONDS`` if longer) is taken
  for dead, as gunicorn's ``--timeout`` does; its socket would otherwise keep taking
  connections that nobody serves;
* forwards SIGTERM/SIGINT to every worker, which drains exactly as a single process does,
  and exits 0 once all have drained;
* serves the one ``/metrics`` of the server (serving/shared_metrics.py).

The private run directory (``$TMPDIR/d2lserve-*``) holds the workers' control sockets
(serving/control.py) and the shared metric files; it is created empty and removed on exit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import DEFAULT_WORKER_TIMEOUT_SECONDS, ServerSettings
from serving.control import PeerUnreachable, ask_blocking, metrics_dir, socket_path
from serving.errors import SettingsError
from serving.shared_metrics import MULTIPROC_ENV, process_rss_bytes

LOGGER = logging.getLogger(__name__)

POLL_SECONDS = 0.1
HEARTBEAT_SECONDS = 1.0  # how often the supervisor asks each worker whether it is alive
HEARTBEAT_ANSWER_SECONDS = 0.5  # how long one ask waits for the answer
# A worker that has not answered yet is starting (interpreter, imports): it gets this long
# from its start, or --worker-timeout if that is longer, before it is taken for hung.
STARTUP_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
STABLE_SECONDS = 30.0  # a worker that lived this long restarts without back-off
# After the grace period the workers get this long to finish closing before SIGKILL.
KILL_AFTER_GRACE_SECONDS = 15.0
_MIB = 1024 * 1024


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on host:port; the workers share its port.

    A fixed port is first bound without SO_REUSEPORT, so a port another server (ours with
    --workers too) listens on is refused instead of silently shared.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise SettingsError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    if port != 0:
        _bind(family, kind, proto, address, reuse_port=False).close()  # the probe
    return _bind(family, kind, proto, address, reuse_port=True)


def _bind(family: int, kind: int, proto: int, address: tuple, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is fine
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        host, port = address[:2]
        raise SettingsError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    return sock


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0  # consecutive quick deaths, for the back-off
    restart_at: float | None = None
    exit_code: int | None = None
    answered: float | None = None  # when it last answered a heartbeat; None: not yet

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.exit_code is None


@dataclass
class Supervisor:
    """Runs ``count`` workers of ``argv`` (the server's own command line) until stopped."""

    settings: ServerSettings
    count: int
    argv: list[str]
    run_dir: Path
    port: int
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT_SECONDS
    workers: list[_Worker] = field(default_factory=list)
    _stop_signal: int | None = None
    _next_heartbeat: float = 0.0
    _told_ready: bool = False  # what the workers were last told: every worker is ready

    def __post_init__(self) -> None:
        self.workers = [_Worker(i) for i in range(self.count)]
        self.metrics_dir = metrics_dir(self.run_dir)
        self.metrics_dir.mkdir()
        self.metrics = None
        if self.settings.metrics_enabled:
            from serving.shared_metrics import SupervisorMetrics

            self.metrics = SupervisorMetrics(
                self.metrics_dir, self.live_pids, self.held_versions, self.count
            )

    def live_pids(self) -> dict[int, int]:
        return {w.pid: w.index for w in self.workers if w.alive}

    def held_versions(self) -> set[tuple[str, str]] | None:
        """(model, version) of every version a live worker holds (its RepositoryIndex).

        For /metrics, at scrape time; None when a live worker does not answer (then nothing
        is left out).
        """
        held: set[tuple[str, str]] = set()
        for worker in self.workers:
            if not worker.alive:
                continue
            try:
                answer = ask_blocking(
                    socket_path(self.run_dir, worker.index), {"op": "index"}, timeout=1.0
                )
            except PeerUnreachable:
                return None
            held.update((entry[0], entry[1]) for entry in answer.get("index", []) if entry[1])
        return held

    def _spawn(self, worker: _Worker) -> None:
        command = [
            sys.executable, "-m", "serving", *self.argv,
            "--workers", str(self.count),
            "--grpc-port", str(self.port),
            "--worker-index", str(worker.index),
            "--run-dir", str(self.run_dir),
        ]  # fmt: skip
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        # A session of its own: a terminal's Ctrl-C (or a group kill) reaches the supervisor
        # only, which forwards SIGTERM once; a second signal would race the worker's exit.
        worker.process = subprocess.Popen(command, env=env, start_new_session=True)
        worker.started = time.monotonic()
        worker.exit_code = None
        worker.restart_at = None
        worker.answered = None
        LOGGER.info("event=worker_started worker=%d pid=%d", worker.index, worker.pid)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        settings = self.settings
        if self.metrics is not None:
            bound = self.metrics.start_http_server(settings.host, settings.metrics_port)
            LOGGER.info("event=metrics_listening port=%d", bound)
        LOGGER.info(
            "event=listening address=%s:%d workers=%d run_dir=%s",
            settings.host,
            self.port,
            self.count,
            self.run_dir,
        )
        for worker in self.workers:
            self._spawn(worker)
        try:
            code = self._supervise()
        finally:
            for worker in self.workers:  # only after a failure: normally all have exited
                if worker.alive and worker.process is not None:
                    worker.process.kill()
                    worker.process.wait()
            if self.metrics is not None:
                self.metrics.stop_http_server()
        LOGGER.info("event=stopped workers=%d code=%d", self.count, code)
        return code

    def _supervise(self) -> int:
        ever_ready = False
        failed_start: int | None = None
        stop_deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._stop_signal is not None and stop_deadline is None:
                LOGGER.info("event=shutdown_requested workers=%d", self.count)
                stop_deadline = now + self.settings.grace_seconds + KILL_AFTER_GRACE_SECONDS
                self._signal_all(signal.SIGTERM)
            for worker in self.workers:
                if not worker.alive or worker.process is None:
                    continue
                code = worker.process.poll()
                if code is None:
                    continue
                worker.exit_code = code
                if self.metrics is not None:
                    self.metrics.worker_died(worker.pid)
                if self._told_ready:  # the others stop saying SERVING at once
                    self._tell_ready(False)
                if stop_deadline is not None:
                    LOGGER.info("event=worker_stopped worker=%d code=%d", worker.index, code)
                elif not ever_ready:
                    LOGGER.error(
                        "event=worker_failed_at_start worker=%d pid=%d code=%d",
                        worker.index,
                        worker.pid,
                        code,
                    )
                    failed_start = code or 1
                    self._stop_signal = signal.SIGTERM
                else:
                    self._schedule_restart(worker, code, now)
            if stop_deadline is not None:
                if not any(w.alive for w in self.workers):
                    break
                if now > stop_deadline:
                    LOGGER.error("event=workers_killed reason=grace_expired")
                    self._signal_all(signal.SIGKILL)
            else:
                for worker in self.workers:
                    if worker.restart_at is not None and now >= worker.restart_at:
                        self._spawn(worker)
                if not ever_ready or now >= self._next_heartbeat:  # at start: every poll
                    self._heartbeat()
                    self._next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
                if not ever_ready and self._told_ready:
                    ever_ready = True
                    self._log_ready()
            time.sleep(POLL_SECONDS)
        if failed_start is not None:
            return failed_start
        codes = [w.exit_code for w in self.workers]
        return 0 if all(code == 0 for code in codes) else 1

    def _schedule_restart(self, worker: _Worker, code: int, now: float) -> None:
        lived = now - worker.started
        worker.failures = 0 if lived > STABLE_SECONDS else worker.failures + 1
        delay = min(FIRST_BACKOFF_SECONDS * 2 ** max(worker.failures - 1, 0), MAX_BACKOFF_SECONDS)
        worker.restart_at = now + delay
        LOGGER.error(
            "event=worker_died worker=%d pid=%d code=%d lived_s=%.1f restart_in_s=%.1f",
            worker.index,
            worker.pid,
            code,
            lived,
            delay,
        )
        if self.metrics is not None:
            self.metrics.restarts.labels(str(worker.index)).inc()

    def _heartbeat(self) -> None:
        """Ask every worker whether it is ready, tell them all whether all are; kill the hung.

        Any answer counts as alive (a worker still loading or draining answers "not ready");
        one silent for too long is killed, which is then handled as any other death: logged,
        counted, restarted (or, before the server was ever ready, it stops the server as a
        failed start does). The request carries the last verdict; a new one is sent at once.
        """
        all_ready = True
        for worker in self.workers:
            if not worker.alive or worker.process is None:
                all_ready = False  # being restarted
                continue
            try:
                answer = ask_blocking(
                    socket_path(self.run_dir, worker.index),
                    {"op": "ready", "all_ready": self._told_ready},
                    timeout=HEARTBEAT_ANSWER_SECONDS,
                )
            except PeerUnreachable:
                all_ready = False
                silent = overdue(worker, time.monotonic(), self.worker_timeout)
                if silent is not None:
                    LOGGER.error(
                        "event=worker_unresponsive worker=%d pid=%d silent_s=%.1f "
                        "answered_before=%s worker_timeout_s=%.1f action=kill",
                        worker.index,
                        worker.pid,
                        silent,
                        worker.answered is not None,
                        self.worker_timeout,
                    )
                    worker.process.kill()
                continue
            worker.answered = time.monotonic()
            all_ready = all_ready and bool(answer.get("ready"))
        if all_ready != self._told_ready:
            self._tell_ready(all_ready)

    def _tell_ready(self, all_ready: bool) -> None:
        """Tell every live worker whether the whole server is ready (their health service)."""
        if all_ready != self._told_ready:
            LOGGER.info("event=server_health serving=%s", all_ready)
        self._told_ready = all_ready
        for worker in self.workers:
            if not worker.alive:
                continue
            with contextlib.suppress(PeerUnreachable):  # hung or dying: see the heartbeat
                ask_blocking(
                    socket_path(self.run_dir, worker.index),
                    {"op": "ready", "all_ready": all_ready},
                    timeout=HEARTBEAT_ANSWER_SECONDS,
                )

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.alive and worker.process is not None:
                worker.process.send_signal(signum)

    def _log_ready(self) -> None:
        sizes = []
        for worker in self.workers:
            try:
                sizes.append(process_rss_bytes(worker.pid))
            except OSError:
                sizes.append(0)
        LOGGER.info(
            "event=ready workers=%d rss=%.1fMiB worker_rss=%s supervisor_rss=%.1fMiB",
            self.count,
            sum(sizes) / _MIB,
            ",".join(f"{size / _MIB:.1f}MiB" for size in sizes),
            process_rss_bytes(os.getpid()) / _MIB,
        )


def overdue(worker: _Worker, now: float, timeout: float) -> float | None:
    """Seconds ``worker`` has been silent when that is too long to be alive, else None.

    Silence counts from its last answer, or, before its first, from its start, with the
    start-up allowance (``STARTUP_SECONDS``) when that is longer than ``timeout``.
    """
    if worker.answered is not None:
        silent, allowed = now - worker.answered, timeout
    else:
        silent, allowed = now - worker.started, max(timeout, STARTUP_SECONDS)
    return silent if silent > allowed else None


def supervise(
    settings: ServerSettings,
    count: int,
    argv: list[str],
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT_SECONDS,
) -> int:
    """Run the server as ``count`` workers; returns the exit code (0 after a clean drain)."""
    run_dir = Path(tempfile.mkdtemp(prefix="d2lserve-"))
    try:
        reservation = reserve_port(settings.host, settings.grpc_port)
        with reservation:
            port = reservation.getsockname()[1]
            supervisor = Supervisor(settings, count, argv, run_dir, port, worker_timeout)
            return supervisor.run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
