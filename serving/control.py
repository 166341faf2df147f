"""The control plane between the worker processes of one server (``--workers N``).

Every worker listens on a unix socket in the server's private run directory
(``worker-<index>.sock``). One request is one JSON line answered by one JSON line, then the
connection closes. The worker that receives an RPC which must describe or change the whole
server asks its peers here:

* ``ready``: is this worker's own server ready (models scanned, not draining)? The
  supervisor asks every worker each second and tells them, in the same request
  (``all_ready``), whether all of them were ready: a worker reports SERVING on its health
  service only while the supervisor says so. (Workers asking each other would cost N x (N-1)
  asks per round: 4,000 a second for 32 workers polling four times a second.)
* ``statistics``: the peer's ModelStatisticsResponse for every ready version (base64 of the
  serialized message); ModelStatistics, GetModel and ListModels add them to their own.
* ``index``: the peer's RepositoryIndex entries (tests and operators use it to look at one
  worker).
* ``wanted``: explicit mode, the models the peer serves (a restarted worker loads the same).
* ``load`` / ``unload``: explicit model control, applied by the peer before it answers.

Peers that cannot be reached (one being restarted) are skipped and logged: a restarted
worker catches up on its own (it scans in poll mode and asks ``wanted`` in explicit mode).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos import grpc_service_pb2 as pb
from protos.predict_pb2 import READY
from serving.errors import ModelLoadError, ModelUnavailableError, ServingError, status_code

if TYPE_CHECKING:
    from serving.core.repository import Repository

LOGGER = logging.getLogger(__name__)

PEER_TIMEOUT_SECONDS = 5.0
# Model loads open ONNX Runtime sessions and warm them up: give peers time.
LOAD_TIMEOUT_SECONDS = 120.0
HEALTH_INTERVAL_SECONDS = 0.25
_LINE_LIMIT = 64 * 1024 * 1024  # a statistics answer of many models and batch sizes


def socket_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.sock"


def metrics_dir(run_dir: Path) -> Path:
    """Where the workers' prometheus-client multiprocess files live."""
    return run_dir / "metrics"


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False  # refused: the file of a worker that was killed
    return True


def clean_up_orphaned_run_dir(run_dir: Path) -> None:
    """The last worker out removes what its dead supervisor would have removed.

    Only what the server writes there goes (worker sockets, metric files), the directories
    by ``rmdir``: a directory that holds anything else is left as it is. A worker whose peer
    still listens leaves it all to that peer, the last one out.
    """
    sockets = list(run_dir.glob("worker-*.sock"))
    if any(_listening(path) for path in sockets):
        return
    for path in [*sockets, *metrics_dir(run_dir).glob("*.db")]:
        path.unlink(missing_ok=True)
    for directory in (metrics_dir(run_dir), run_dir):
        with contextlib.suppress(OSError):
            directory.rmdir()


@dataclass(frozen=True)
class WorkerContext:
    """Which worker this process is, of how many, and where their sockets live."""

    index: int
    count: int
    run_dir: Path

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.count) if i != self.index)


class PeerUnreachable(Exception):
    """A peer's socket did not answer (it is restarting, or gone)."""


# -- asking ----------------------------------------------------------------------------


async def ask(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request to the worker listening on ``path``; its answer."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=_LINE_LIMIT)
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as error:
        raise PeerUnreachable(f"{path.name}: {error!r}") from error
    if not line:
        raise PeerUnreachable(f"{path.name}: closed without answering")
    return json.loads(line)


def ask_blocking(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`ask` for callers without an event loop (the supervisor, tests, operators)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            chunks = []
            while not chunks or not chunks[-1].endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as error:
            raise PeerUnreachable(f"{path.name}: {error!r}") from error
    if not chunks:
        raise PeerUnreachable(f"{path.name}: closed without answering")
    return json.loads(b"".join(chunks))


def statistics_of(answer: dict[str, Any]) -> pb.ModelStatisticsResponse:
    """The ModelStatisticsResponse in a ``statistics`` answer."""
    return pb.ModelStatisticsResponse.FromString(base64.b64decode(answer["statistics"]))


# -- merging statistics ------------------------------------------------------------------

_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
_BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


def merge_statistics(into: pb.ModelStatistics, other: pb.ModelStatistics) -> None:
    """Add ``other`` (the same model version on another worker) to ``into``."""
    into.last_inference = max(into.last_inference, other.last_inference)
    into.inference_count += other.inference_count
    into.execution_count += other.execution_count
    for name in _DURATIONS:
        mine = getattr(into.inference_stats, name)
        theirs = getattr(other.inference_stats, name)
        mine.count += theirs.count
        mine.ns += theirs.ns
    sizes = {entry.batch_size: entry for entry in into.batch_stats}
    for entry in other.batch_stats:
        mine = sizes.get(entry.batch_size)
        if mine is None:
            into.batch_stats.add().CopyFrom(entry)
            continue
        for name in _BATCH_DURATIONS:
            getattr(mine, name).count += getattr(entry, name).count
            getattr(mine, name).ns += getattr(entry, name).ns
    ordered = [
        pb.InferBatchStatistics.FromString(entry.SerializeToString())
        for entry in sorted(into.batch_stats, key=lambda entry: entry.batch_size)
    ]
    del into.batch_stats[:]
    into.batch_stats.extend(ordered)


# -- serving -----------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    """The worker side of the socket: answers its peers with ``handlers`` (op name -> coroutine)."""

    def __init__(self, context: WorkerContext, handlers: dict[str, Handler]) -> None:
        self.context = context
        self.path = socket_path(context.run_dir, context.index)
        self._handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by this worker's predecessor
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=_LINE_LIMIT
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            request = json.loads(line)
            handler = self._handlers.get(request.get("op", ""))
            if handler is None:
                answer: dict[str, Any] = {"error": f"unknown op {request.get('op')!r}"}
            else:
                try:
                    answer = await handler(request)
                except ServingError as error:
                    answer = {"error": str(error), "code": status_code(error).name}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except Exception:  # a broken peer connection must never take the worker down
            LOGGER.exception("event=control_request_failed")
        finally:
            writer.close()


class Peers:
    """The other workers of this server, as this worker asks them."""

    def __init__(self, context: WorkerContext) -> None:
        self.context = context

    async def ask_all(
        self, request: dict[str, Any], timeout: float = PEER_TIMEOUT_SECONDS
    ) -> dict[int, dict[str, Any]]:
        """Every reachable peer's answer, by worker index; unreachable peers are skipped."""
        indexes = self.context.peers
        answers = await asyncio.gather(
            *(ask(socket_path(self.context.run_dir, i), request, timeout) for i in indexes),
            return_exceptions=True,
        )
        reached: dict[int, dict[str, Any]] = {}
        for index, answer in zip(indexes, answers, strict=True):
            if isinstance(answer, PeerUnreachable):
                LOGGER.warning("event=peer_unreachable worker=%d op=%s", index, request["op"])
            elif isinstance(answer, BaseException):
                raise answer
            else:
                reached[index] = answer
        return reached

    async def statistics(self) -> list[pb.ModelStatisticsResponse]:
        answers = await self.ask_all({"op": "statistics"})
        return [statistics_of(answer) for answer in answers.values()]

    async def wanted(self) -> list[str] | None:
        """The models a peer serves in explicit mode; None when no peer answers."""
        for index in self.context.peers:
            path = socket_path(self.context.run_dir, index)
            try:
                answer = await ask(path, {"op": "wanted"}, PEER_TIMEOUT_SECONDS)
            except PeerUnreachable:
                continue
            if "models" in answer:
                return list(answer["models"])
        return None

    async def control(self, op: str, name: str) -> list[str]:
        """Apply ``load``/``unload`` of ``name`` on every peer; the failures, per worker."""
        answers = await self.ask_all({"op": op, "name": name}, LOAD_TIMEOUT_SECONDS)
        failures = []
        for index, answer in sorted(answers.items()):
            if "error" in answer:
                if op == "unload" and answer.get("code") == "NOT_FOUND":
                    continue  # already gone there
                failures.append(f"worker {index}: {answer['error']}")
        return failures


def control_failure(op: str, name: str, failures: list[str]) -> ServingError:
    """The error a load/unload that failed on some worker returns to the caller."""
    text = "; ".join(failures)
    if op == "unload":
        return ModelUnavailableError(f"unloading model '{name}' failed on {text}")
    return ModelLoadError(f"loading model '{name}' failed on {text}; unloaded everywhere")


# -- one worker's side -------------------------------------------------------------------


def local_statistics(repository: Repository) -> pb.ModelStatisticsResponse:
    """The statistics of every ready version in this worker (what ModelStatistics shows alone)."""
    response = pb.ModelStatisticsResponse()
    for name in sorted(repository.models):
        for number, version in sorted(repository.models[name].versions.items()):
            if version.state == READY:
                version.statistics.into(response.model_stats.add(name=name, version=str(number)))
    return response


class WorkerControl:
    """What one worker does for the whole server: answer peers, ask them, gate health.

    ``on_health(serving)`` is called when "every worker is ready" changes.
    """

    def __init__(
        self,
        context: WorkerContext,
        repository: Repository,
        locally_ready: Callable[[], bool],
        on_health: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.context = context
        self.peers = Peers(context)
        self._repository = repository
        self._locally_ready = locally_ready
        self._on_health = on_health
        self.all_ready = False  # what this worker's health service says (SERVING or not)
        self._server_ready = False  # the supervisor's last word: every worker is ready
        self._server = ControlServer(
            context,
            {
                "ready": self._ready,
                "statistics": self._statistics,
                "index": self._index,
                "wanted": self._wanted,
                "load": self._load,
                "unload": self._unload,
            },
        )
        self._watch: asyncio.Task[None] | None = None
        self._orphaned = False  # the supervisor died: nobody else will clean up

    async def start(self) -> None:
        """Listen for peers (before loading models, so peers see us as not ready)."""
        await self._server.start()

    async def catch_up(self) -> None:
        """Explicit mode: serve the models the running workers serve (after a restart)."""
        if self._repository.control_mode != "explicit":
            return
        wanted = await self.peers.wanted()
        if wanted is not None:
            self._repository.want(wanted)
            LOGGER.info("event=models_from_peers models=%s", ",".join(sorted(wanted)))

    def watch_health(self) -> None:
        self._watch = asyncio.get_running_loop().create_task(
            self._watch_health(), name="peer health"
        )

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._server.close()
        if self._orphaned:
            clean_up_orphaned_run_dir(self.context.run_dir)

    async def _watch_health(self) -> None:
        parent = os.getppid()
        while True:
            if not self._orphaned and os.getppid() != parent:  # supervisor gone: drain, exit
                LOGGER.error("event=supervisor_gone")
                self._orphaned = True
                os.kill(os.getpid(), signal.SIGTERM)
            await self._update_health()
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)

    async def _update_health(self) -> None:
        """SERVING while this worker is ready and the supervisor says every worker is."""
        ready = self._locally_ready() and self._server_ready
        if ready != self.all_ready:
            self.all_ready = ready
            LOGGER.info("event=server_health serving=%s", ready)
            await self._on_health(ready)

    # -- RPCs that describe or change the whole server ----------------------------------

    async def add_peer_statistics(self, response: pb.ModelStatisticsResponse) -> None:
        """Add the peers' figures to each (model, version) entry of this worker's response."""
        entries = {(e.name, e.version): e for e in response.model_stats}
        for theirs in await self.peers.statistics():
            for entry in theirs.model_stats:
                mine = entries.get((entry.name, entry.version))
                if mine is not None:
                    merge_statistics(mine, entry)

    async def peer_totals(self) -> dict[tuple[str, int], tuple[int, int, int]]:
        """(model, version) -> (requests, rows, executions) summed over the peers."""
        totals: dict[tuple[str, int], tuple[int, int, int]] = {}
        for theirs in await self.peers.statistics():
            for e in theirs.model_stats:
                key = (e.name, int(e.version))
                requests, rows, executions = totals.get(key, (0, 0, 0))
                totals[key] = (
                    requests + e.inference_stats.success.count,
                    rows + e.inference_count,
                    executions + e.execution_count,
                )
        return totals

    async def load_model(self, name: str) -> None:
        """Load ``name`` here, then in every peer; a failure anywhere unloads it everywhere."""
        await self._repository.load_model(name)
        failures = await self.peers.control("load", name)
        if failures:
            with contextlib.suppress(ServingError):
                await self._repository.unload_model(name)
            await self.peers.control("unload", name)
            raise control_failure("load", name, failures)

    async def unload_model(self, name: str) -> None:
        await self._repository.unload_model(name)
        failures = await self.peers.control("unload", name)
        if failures:
            raise control_failure("unload", name, failures)

    # -- answers to peers -------------------------------------------------------------

    async def _ready(self, request: dict[str, Any]) -> dict[str, Any]:
        told = request.get("all_ready")
        if isinstance(told, bool) and told != self._server_ready:  # from the supervisor
            self._server_ready = told
            if self._watch is not None:  # once serving: apply it now, not at the next tick
                await self._update_health()
        return {"ready": self._locally_ready(), "pid": os.getpid()}

    async def _statistics(self, request: dict[str, Any]) -> dict[str, Any]:
        data = local_statistics(self._repository).SerializeToString()
        return {"statistics": base64.b64encode(data).decode()}

    async def _index(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"index": [list(entry) for entry in self._repository.index()]}

    async def _wanted(self, request: dict[str, Any]) -> dict[str, Any]:
        wanted = self._repository.wanted_models
        return {} if wanted is None else {"models": sorted(wanted)}

    async def _load(self, request: dict[str, Any]) -> dict[str, Any]:
        await self._repository.load_model(str(request.get("name", "")))
        return {"ok": True}

    async def _unload(self, request: dict[str, Any]) -> dict[str, Any]:
        await self._repository.unload_model(str(request.get("name", "")))
        return {"ok": True}
