"""The load loop: closed loop (N in flight) or open loop (scheduled arrivals), on one event loop.

Pure of I/O except through the ``caller`` it is given, so tests can drive it with a fake
caller. Requests sent before the warm-up ends are run but not measured; the whole run is cut at
the plan's hard bound, and requests still in flight then are counted as unfinished.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from serving.loadtest.calls import Caller, CallFailed
from serving.loadtest.histogram import LatencyHistogram
from serving.loadtest.schedule import arrival_offsets
from serving.loadtest.settings import LoadPlan

TIMELINE_LIMIT = 2_000_000  # (offset, latency) points kept for --plot; later points are dropped


@dataclass(frozen=True)
class Tick:
    """A live view of the run for a progress display."""

    elapsed_seconds: float
    warming_up: bool
    ok: int
    errors: int
    inflight: int
    recent_requests_per_second: float
    fraction_done: float  # 0..1 of the planned duration or request count


@dataclass
class RunOutcome:
    """What happened, measured part only unless the field says otherwise."""

    mode: str
    measured_seconds: float  # from the end of the warm-up to the last measured completion
    latency: LatencyHistogram
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_messages: dict[str, str] = field(default_factory=dict)  # first message per code
    unfinished: int = 0  # measured requests still in flight when the hard bound cut the run
    warmup_requests: int = 0  # finished during the warm-up (ok or not), excluded from figures
    cut_by_time_bound: bool = False
    send_lag: LatencyHistogram | None = None  # open loop: actual send - scheduled send
    timeline: array | None = None  # flat [offset, latency, offset, latency, ...], seconds
    timeline_errors: array | None = None  # flat [offset, ...] of failed requests
    samples: list[tuple[int, bytes]] = field(default_factory=list)  # (payload index, response)
    # CPU time of this process over the measured part / its wall time: near 1.0 means the load
    # generator saturated its core and the figures may be limited by the client, not the server.
    client_cpu_ratio: float = math.nan

    @property
    def finished(self) -> int:
        return self.ok + sum(self.errors.values())


class _Run:
    """Shared state of one run; the loops below update it."""

    def __init__(
        self,
        plan: LoadPlan,
        caller: Caller,
        pool_size: int,
        check_samples: int,
        keep_timeline: bool,
    ) -> None:
        self.plan = plan
        self.caller = caller
        self.pool_size = pool_size
        self.start = time.perf_counter()
        self.measure_start = self.start + plan.warmup_seconds
        self.stop_at = (
            self.measure_start + plan.duration_seconds
            if plan.duration_seconds is not None
            else math.inf
        )
        self.request_limit = plan.requests if plan.requests is not None else math.inf
        self.outcome = RunOutcome(
            mode=plan.mode,
            measured_seconds=0.0,
            latency=LatencyHistogram(),
            send_lag=LatencyHistogram() if plan.mode == "open" else None,
            timeline=array("d") if keep_timeline else None,
            timeline_errors=array("d") if keep_timeline else None,
        )
        self.issued_measured = 0
        self.inflight = 0
        self.measured_inflight = 0
        self.last_done = self.measure_start
        self.next_index = 0
        self.check_samples = check_samples
        self.seen_ok = 0
        self.rng = random.Random(plan.seed)
        self.cpu_at_measure_start = time.process_time()

    def may_issue(self, at: float) -> bool:
        return at < self.stop_at and self.issued_measured < self.request_limit

    async def one(self, scheduled: float, measured: bool) -> None:
        """Send one request scheduled at ``scheduled`` and record it."""
        index = self.next_index
        self.next_index = (index + 1) % self.pool_size
        self.inflight += 1
        if measured:
            self.measured_inflight += 1
        try:
            response = await self.caller(index)
        except CallFailed as failure:
            self._finished(scheduled, measured, failure=failure)
        else:
            self._finished(scheduled, measured, index=index, response=response)
        finally:
            self.inflight -= 1
            if measured:
                self.measured_inflight -= 1

    def _finished(
        self,
        scheduled: float,
        measured: bool,
        failure: CallFailed | None = None,
        index: int = 0,
        response: bytes = b"",
    ) -> None:
        done = time.perf_counter()
        outcome = self.outcome
        if not measured:
            outcome.warmup_requests += 1
            return
        self.last_done = done
        latency = done - scheduled
        if failure is not None:
            outcome.errors[failure.code] += 1
            outcome.error_messages.setdefault(failure.code, failure.details)
            if (
                outcome.timeline_errors is not None
                and len(outcome.timeline_errors) < TIMELINE_LIMIT
            ):
                outcome.timeline_errors.append(scheduled - self.measure_start)
            return
        outcome.ok += 1
        outcome.latency.record(latency)
        if outcome.timeline is not None and len(outcome.timeline) < 2 * TIMELINE_LIMIT:
            outcome.timeline.append(scheduled - self.measure_start)
            outcome.timeline.append(latency)
        if self.check_samples:
            self._sample(index, response)

    def _sample(self, index: int, response: bytes) -> None:
        """Reservoir sampling: a uniform sample of the successful measured responses."""
        self.seen_ok += 1
        samples = self.outcome.samples
        if len(samples) < self.check_samples:
            samples.append((index, response))
            return
        slot = self.rng.randrange(self.seen_ok)
        if slot < self.check_samples:
            samples[slot] = (index, response)

    def mark_measure_start(self) -> None:
        self.cpu_at_measure_start = time.process_time()

    async def closed_worker(self) -> None:
        while True:
            now = time.perf_counter()
            if not self.may_issue(now):
                return
            measured = now >= self.measure_start
            if measured:
                self.issued_measured += 1
            await self.one(now, measured)

    async def open_scheduler(self) -> None:
        plan = self.plan
        assert plan.rate_per_second is not None  # checked by LoadPlan (mode == "open")
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        slot_freed = asyncio.Event()
        lag = self.outcome.send_lag
        assert lag is not None

        def release(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slot_freed.set()

        try:
            for offset in arrival_offsets(plan.rate_per_second, plan.arrival, plan.seed):
                scheduled = self.start + offset
                if not self.may_issue(scheduled):
                    break
                while self.inflight >= plan.max_inflight:
                    slot_freed.clear()
                    await slot_freed.wait()
                # Never send early: uvloop's timers have millisecond resolution and may wake
                # before the schedule, which would make latencies look shorter than they are.
                while (delay := scheduled - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                measured = scheduled >= self.measure_start
                if measured:
                    self.issued_measured += 1
                    lag.record(time.perf_counter() - scheduled)
                task = loop.create_task(self.one(scheduled, measured))
                tasks.add(task)
                task.add_done_callback(release)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    def tick(self, previous_ok: int, seconds: float) -> Tick:
        now = time.perf_counter()
        plan = self.plan
        if plan.duration_seconds is not None:
            done = (now - self.start) / (plan.warmup_seconds + plan.duration_seconds)
        else:
            done = self.issued_measured / self.request_limit
        if plan.requests is not None and plan.duration_seconds is not None:
            done = max(done, self.issued_measured / plan.requests)
        return Tick(
            elapsed_seconds=now - self.start,
            warming_up=now < self.measure_start,
            ok=self.outcome.ok,
            errors=sum(self.outcome.errors.values()),
            inflight=self.inflight,
            recent_requests_per_second=(self.outcome.ok - previous_ok) / seconds
            if seconds > 0
            else 0.0,
            fraction_done=min(done, 1.0),
        )


async def run_load(
    caller: Caller,
    plan: LoadPlan,
    pool_size: int,
    *,
    check_samples: int = 0,
    keep_timeline: bool = False,
    on_tick: Callable[[Tick], None] | None = None,
    tick_seconds: float = 0.25,
    on_measure_start: Callable[[], Awaitable[None]] | None = None,
) -> RunOutcome:
    """Offer load by ``plan`` through ``caller`` and return what was measured.

    ``on_measure_start`` runs when the warm-up ends (before the first request when there is
    none), e.g. to read the server's counters; ``on_tick`` every ``tick_seconds``.
    """
    if on_measure_start is not None and plan.warmup_seconds == 0:
        await on_measure_start()
    run = _Run(plan, caller, pool_size, check_samples, keep_timeline)
    loop = asyncio.get_running_loop()
    if plan.mode == "closed":
        assert plan.concurrency is not None
        load = [loop.create_task(run.closed_worker()) for _ in range(plan.concurrency)]
    else:
        load = [loop.create_task(run.open_scheduler())]
    helpers: list[asyncio.Task[None]] = []
    if plan.warmup_seconds > 0:
        helpers.append(loop.create_task(_at(run.measure_start, run.mark_measure_start)))
    if on_measure_start is not None and plan.warmup_seconds > 0:
        helpers.append(loop.create_task(_at(run.measure_start, on_measure_start)))
    if on_tick is not None:
        helpers.append(loop.create_task(_ticker(run, on_tick, tick_seconds)))
    remaining = plan.hard_bound_seconds - (time.perf_counter() - run.start)
    try:
        done, pending = await asyncio.wait(load, timeout=max(remaining, 0.0))
        if pending:
            run.outcome.cut_by_time_bound = True
            run.outcome.unfinished = run.measured_inflight
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # re-raise a bug in the loop itself
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    end = run.last_done if not run.outcome.cut_by_time_bound else time.perf_counter()
    run.outcome.measured_seconds = max(end - run.measure_start, 0.0)
    wall = time.perf_counter() - run.measure_start
    if wall > 0:
        run.outcome.client_cpu_ratio = (time.process_time() - run.cpu_at_measure_start) / wall
    if on_tick is not None:
        on_tick(run.tick(run.outcome.ok, 0.0))
    return run.outcome


async def _at(when: float, action: Callable[[], Awaitable[None] | None]) -> None:
    await asyncio.sleep(max(when - time.perf_counter(), 0.0))
    result = action()
    if result is not None:
        await result


async def _ticker(run: _Run, on_tick: Callable[[Tick], None], seconds: float) -> None:
    previous_ok, previous_at = 0, time.perf_counter()
    while True:
        await asyncio.sleep(seconds)
        now = time.perf_counter()
        on_tick(run.tick(previous_ok, now - previous_at))
        previous_ok, previous_at = run.outcome.ok, now
