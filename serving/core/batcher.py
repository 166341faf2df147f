"""Dynamic batching: one task per model version owns a bounded queue of requests.

Policy (what the tests in tests/serving/test_batcher.py pin down):

* A batch starts at the first waiting request, as soon as an instance is free.
* It takes every queued request that fits (up to ``max_batch_size`` rows) and has the
  same shapes after the batch dimension as the first one (a model with a dynamic
  non-batch axis runs requests of different lengths in different batches, as Triton
  does; it never pads), then keeps
  collecting only while more requests keep arriving: after each pass through the event
  loop that brought nothing new, it runs. So a lone caller never waits for the delay,
  while concurrent callers are merged.
* It runs at the latest when the rows reach ``max_batch_size`` or a preferred size, or
  when ``max_queue_delay_microseconds`` has passed since the first request was queued.
* While every instance is busy, requests simply accumulate and form the next batch.
* Up to ``instances`` executions run at once, each in one of ``instances`` long-lived
  worker threads fed by a queue, off the event loop; a finished execution comes back to
  the loop with one ``call_soon_threadsafe`` (no ``concurrent.futures`` objects: that
  handoff cost more CPU than the small models' ``session.run``). Outputs are split back
  by rows to each caller. A request's inputs are joined input by input (every input of a
  request has the same rows). A model without a batch dimension (``max_batch_size`` 0)
  runs each request alone and hands it the outputs whole.
* Admission is bounded: past ``max_queue_size`` waiting requests, ``submit`` raises
  QueueFullError at once. Requests whose caller cancelled or whose deadline passed
  while queued are dropped before execution, and so are those that waited longer than
  the queue policy's timeout (QueueTimeoutError).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import numpy as np

from serving.core.statistics import VersionStatistics
from serving.errors import (
    DeadlineExpiredError,
    ModelUnavailableError,
    QueueFullError,
    QueueTimeoutError,
    SettingsError,
)
from serving.metrics import NOOP_VERSION_METRICS

LOGGER = logging.getLogger(__name__)

# run(inputs) -> outputs: the batch's inputs in the model's input order; outputs in the
# model's output order, each with the batch's rows first when the model batches.
RunFn = Callable[[list[np.ndarray]], Sequence[np.ndarray]]
Outputs = Sequence[np.ndarray]


class BatchMetrics(Protocol):
    """The part of serving.metrics.VersionMetrics the batcher reports to."""

    def queue_wait(self, seconds: float) -> None: ...
    def execution(self, rows: int, seconds: float) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def rejected_queue_full(self) -> None: ...
    def dropped(self, reason: str) -> None: ...
    def inflight(self, delta: int) -> None: ...


@dataclass(frozen=True)
class BatchingPolicy:
    """Batching settings of one model version (config.pbtxt plus command-line overrides)."""

    enabled: bool = True
    max_batch_size: int = 64  # rows per execution and request (0: no batch dimension at all)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 500
    max_queue_size: int = 1024  # waiting requests
    instances: int = 1  # parallel executions
    # Triton's default_queue_policy.default_timeout_microseconds with timeout_action
    # REJECT: a request queued longer is refused (UNAVAILABLE) before execution. 0: none.
    queue_timeout_microseconds: int = 0

    def __post_init__(self) -> None:
        # 0 = the model has no batch dimension: requests run alone with their full shapes.
        if self.max_batch_size < 0 or (self.enabled and self.max_batch_size == 0):
            raise SettingsError(
                "max_batch_size must be >= 1 with batching on (>= 0 off), "
                f"got {self.max_batch_size}"
            )
        if self.max_queue_delay_microseconds < 0:
            raise SettingsError(
                "max_queue_delay_microseconds must be >= 0, "
                f"got {self.max_queue_delay_microseconds}"
            )
        if self.max_queue_size < 1:
            raise SettingsError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.instances < 1:
            raise SettingsError(f"instances must be >= 1, got {self.instances}")
        if self.queue_timeout_microseconds < 0:
            raise SettingsError(
                f"queue_timeout_microseconds must be >= 0, got {self.queue_timeout_microseconds}"
            )
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise SettingsError(
                    f"preferred batch size {size} is outside 1..max_batch_size "
                    f"({self.max_batch_size})"
                )

    @property
    def batched(self) -> bool:
        """Whether the first dimension of every tensor is the batch one."""
        return self.max_batch_size > 0


class Ticket:
    """One queued request: its inputs, its future, and what the batcher measured for it.

    The timings (seconds) are filled in before the future resolves: ``queue`` until its
    execution started, ``gather`` joining the batch's inputs, ``infer`` the batch's
    ``session.run``, ``scatter`` handing the rows back. The request path records them in
    the statistics together with the request's outcome, in one step.
    """

    __slots__ = (
        "deadline",
        "enqueued",
        "future",
        "gather",
        "infer",
        "inputs",
        "key",
        "queue",
        "rows",
        "scatter",
    )

    def __init__(
        self,
        inputs: list[np.ndarray],
        rows: int,
        key: object,
        deadline: float | None,
        future: asyncio.Future[Outputs],
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.enqueued = perf_counter()
        self.deadline = deadline
        self.future = future
        self.queue = self.gather = self.infer = self.scatter = 0.0


# (requests, rows, their inputs joined per model input, seconds spent joining them)
_Job = tuple[list[Ticket], int, list[np.ndarray], float]


class Batcher:
    """Collects concurrent requests of one model version into ``run`` calls."""

    def __init__(
        self,
        run: RunFn,
        policy: BatchingPolicy,
        *,
        name: str,
        metrics: BatchMetrics | None = None,
        statistics: VersionStatistics | None = None,
    ) -> None:
        self.policy = policy
        self.name = name  # "model 'mlp' v2", used in messages
        self._run_fn = run
        self._metrics: BatchMetrics = metrics or NOOP_VERSION_METRICS
        self.statistics = statistics or VersionStatistics()
        self._queue: deque[Ticket] = deque()
        self._free = policy.instances
        # Batches to run, with the seconds it took to gather their inputs (None: a
        # worker's signal to stop); only ever as many as there are free instances.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._instance_freed: asyncio.Future[None] | None = None
        self._idle: asyncio.Event | None = None
        self._closing = False
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._delay = policy.max_queue_delay_microseconds / 1e6
        self._queue_timeout = policy.queue_timeout_microseconds / 1e6
        # In-flight requests (queued or executing): counted here with plain ints and
        # reported to the gauge once per batch, not twice per request.
        self._admitted = 0
        self._settled = 0
        self._reported_inflight = 0

    def start(self) -> None:
        """Start the owning task on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = self._loop.create_task(self._serve(), name=f"batcher {self.name}")
        for number in range(self.policy.instances):
            # Daemon: a stuck session.run must not keep the process alive after close().
            worker = threading.Thread(
                target=self._work, name=f"infer-{self.name}-{number}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(
        self,
        inputs: list[np.ndarray],
        rows: int,
        key: object = None,
        deadline: float | None = None,
    ) -> Ticket:
        """Queue one request's validated inputs; the ticket's future gets its outputs.

        ``rows`` is the request's batch rows; requests with different ``key`` (their
        shapes after the batch dimension) never share an execution. ``deadline`` is a
        ``perf_counter()`` instant after which the request is dropped instead of executed.
        """
        if self._closing or self._loop is None:
            raise ModelUnavailableError(f"{self.name} is unloading; retry on another version")
        queue = self._queue
        if len(queue) >= self.policy.max_queue_size:
            self._metrics.rejected_queue_full()
            self._metrics.queue_depth(len(queue))
            raise QueueFullError(
                f"{self.name} is overloaded: {len(queue)} requests are waiting, "
                f"max_queue_size is {self.policy.max_queue_size}; retry later"
            )
        ticket = Ticket(inputs, rows, key, deadline, self._loop.create_future())
        queue.append(ticket)
        self._admitted += 1
        self._metrics.queue_depth(len(queue))
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        return ticket

    async def close(self, timeout: float = 30.0) -> None:
        """Stop admitting, let queued and running requests finish, then stop the task."""
        self._closing = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
                assert self._idle is not None
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                LOGGER.warning("event=drain_timeout batcher=%r timeout_s=%s", self.name, timeout)
                self._task.cancel()
            self._fail_queued(ModelUnavailableError(f"{self.name} was unloaded"))
        for _ in self._workers:
            self._jobs.put(None)

    # -- the owning task -------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            await self._serve_queue()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug here must not leave callers waiting forever
            LOGGER.exception("event=batcher_failed batcher=%r", self.name)
            self._closing = True
            self._fail_queued(ModelUnavailableError(f"{self.name} failed: {error!r}"))

    async def _serve_queue(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            if self._free == 0:
                self._instance_freed = loop.create_future()
                await self._instance_freed
                continue
            items, rows = await self._form_batch()
            if items:
                self._dispatch(items, rows)

    async def _form_batch(self) -> tuple[list[Ticket], int]:
        policy = self.policy
        items: list[Ticket] = []
        if not policy.enabled:
            rows = self._take(items, 0, 0)  # limit 0: exactly one live request
            return items, rows
        limit = policy.max_batch_size
        rows = self._take(items, 0, limit)
        if not items or self._delay <= 0:
            return items, rows
        started = items[0].enqueued
        while rows < limit and rows not in self._preferred:
            if self._queue:
                before = rows
                rows = self._take(items, rows, limit)
                if rows == before:  # the next request does not fit: run what we have
                    break
                continue
            if perf_counter() - started >= self._delay:
                break
            admitted = self._admitted
            await asyncio.sleep(0)
            if self._admitted == admitted:
                break  # nothing else is waiting: do not tax the callers we have
        return items, rows

    def _take(self, items: list[Ticket], rows: int, limit: int) -> int:
        """Move live requests from the queue into ``items`` while they fit in ``limit``."""
        queue = self._queue
        now = perf_counter()
        while queue:
            item = queue[0]
            # Deadline first: gRPC cancels a call whose deadline passed, so its future is
            # usually cancelled already; the reason it is dropped is still the deadline.
            if item.deadline is not None and now >= item.deadline:
                queue.popleft()
                self._settled += 1
                self._metrics.dropped("deadline")
                if not item.future.done():
                    item.future.set_exception(
                        DeadlineExpiredError(
                            f"deadline expired after {now - item.enqueued:.3f} s in the queue "
                            f"of {self.name}, before execution"
                        )
                    )
                continue
            if item.future.done():  # the caller cancelled (or gave up) while queued
                queue.popleft()
                self._settled += 1
                self._metrics.dropped("cancelled")
                continue
            if self._queue_timeout and now - item.enqueued >= self._queue_timeout:
                queue.popleft()
                self._settled += 1
                self._metrics.dropped("queue_timeout")
                item.future.set_exception(
                    QueueTimeoutError(
                        f"{self.name} is overloaded: the request waited {now - item.enqueued:.3f}"
                        f" s in its queue, the queue policy's default_timeout_microseconds is "
                        f"{self.policy.queue_timeout_microseconds}; retry later"
                    )
                )
                continue
            if limit == 0:
                queue.popleft()
                items.append(item)
                rows = item.rows
                break
            if items and (rows + item.rows > limit or item.key != items[0].key):
                break
            queue.popleft()
            items.append(item)
            rows += item.rows
            if rows >= limit:
                break
        self._metrics.queue_depth(len(queue))
        self._report_inflight()
        return rows

    def _report_inflight(self) -> None:
        current = self._admitted - self._settled
        if current != self._reported_inflight:
            self._metrics.inflight(current - self._reported_inflight)
            self._reported_inflight = current

    def _dispatch(self, items: list[Ticket], rows: int) -> None:
        self._free -= 1
        assert self._idle is not None and self._loop is not None
        self._idle.clear()
        now = perf_counter()
        for item in items:
            item.queue = waited = now - item.enqueued
            self._metrics.queue_wait(waited)
        if len(items) == 1:
            batch = items[0].inputs
        else:
            batch = [
                np.concatenate([item.inputs[i] for item in items])
                for i in range(len(items[0].inputs))
            ]
        self._jobs.put((items, rows, batch, perf_counter() - now))

    def _work(self) -> None:
        """A worker thread: run batches, hand each result back to the loop."""
        jobs = self._jobs
        run = self._run_fn
        loop = self._loop
        assert loop is not None
        complete = self._complete
        while (job := jobs.get()) is not None:
            items, rows, batch, gathered = job
            started = perf_counter()
            try:
                outputs, error = run(batch), None
            except BaseException as raised:  # reported to the callers, never lost
                outputs, error = (), raised
            seconds = perf_counter() - started
            try:
                loop.call_soon_threadsafe(
                    complete, items, rows, outputs, (gathered, seconds), error
                )
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _complete(
        self,
        items: list[Ticket],
        rows: int,
        outputs: Outputs,
        timings: tuple[float, float],
        failure: BaseException | None,
    ) -> None:
        """Back on the loop: free the instance, hand each caller its rows."""
        self._free += 1
        if self._free == self.policy.instances:
            assert self._idle is not None
            self._idle.set()
        freed = self._instance_freed
        if freed is not None and not freed.done():
            freed.set_result(None)
        self._settled += len(items)
        gathered, seconds = timings
        batched = self.policy.batched
        try:
            if failure is not None:
                raise failure
            for output in outputs if batched else ():
                if not output.shape or output.shape[0] != rows:
                    raise RuntimeError(
                        f"{self.name} returned an output of shape {list(output.shape)} for "
                        f"a batch of {rows} rows"
                    )
        except BaseException as error:
            LOGGER.error(
                "event=execution_failed batcher=%r rows=%d error=%r", self.name, rows, error
            )
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            self._report_inflight()
            return
        self._report_inflight()
        self._metrics.execution(rows, seconds)
        scattering = perf_counter()
        if len(items) == 1:
            parts = [outputs]
        else:
            parts = []
            start = 0
            for item in items:
                stop = start + item.rows
                parts.append([output[start:stop] for output in outputs])
                start = stop
        scattered = perf_counter() - scattering
        for item, part in zip(items, parts, strict=True):
            item.gather = gathered
            item.infer = seconds
            item.scatter = scattered
            if not item.future.done():
                item.future.set_result(part)
        self.statistics.executed(rows, gathered, seconds, scattered)

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            item = self._queue.popleft()
            self._settled += 1
            if not item.future.done():
                item.future.set_exception(error)
        self._report_inflight()
