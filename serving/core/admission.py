"""Server-wide admission control: a bound on the inference calls inside the server.

Under overload the excess does not wait in a batcher queue, where ``max_queue_size``
would refuse it, nor in the handlers: grpc.aio accepts one new call per pass of its event
loop, so the calls a handler can see stay few (measured: fewer than 8 with 640 callers)
and the backlog waits inside the gRPC core, received but not yet requested by the
application, where neither the queue limit nor the request-duration histogram sees it
(issue 12: offered 10x capacity, every call admitted, p99 1.26 s while the queue held 2).

So the limit counts the calls the core holds (pending ones included), read from gRPC's
channelz counters (``calls_started - calls_succeeded - calls_failed``) on a short timer
and corrected between samples by the calls answered since. Every inference request (a
unary Predict or ModelInfer call, each message of a ModelStreamInfer) is checked when its
handler starts, before any decoding: past ``limit`` it is refused at once with
RESOURCE_EXHAUSTED and a retry hint, which costs the server a fraction of serving it
(measured in BENCHMARKS.md) and drains the backlog, like TGI's ``max_concurrent_requests``.
The calls in our handlers are capped at ``limit`` as well.

Only the event loop touches an ``Admission``: plain ints, no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Protocol

from grpc._cython import cygrpc

from serving.core.batcher import BatchingPolicy

LOGGER = logging.getLogger(__name__)

# Trailing metadata of a refusal: milliseconds after which a retry is likely admitted.
RETRY_AFTER_KEY = "retry-after-ms"
# The hint is the time the server needs to serve ``limit`` requests, within these bounds.
MIN_RETRY_AFTER_MS = 1
MAX_RETRY_AFTER_MS = 1000
_SMOOTHING = 0.2  # weight of one sample in the served rate (about the last 5)
# Refusals per served call above which the retry hint grows.
REFUSED_SHARE = 0.5
_CAPACITY_DECAY = 0.999  # per sample: the best rate fades by about 5 % a second
# How often the gRPC core's call count is read (one channelz read costs ~0.3 ms).
CORE_SAMPLE_INTERVAL_SECONDS = 0.02
# While the server holds no call at all, the count is read this seldom instead (1.5 % of a
# core per idle worker at 0.02 s, 0.1 % at 0.25 s); the first call admitted wakes the sampler.
IDLE_SAMPLE_INTERVAL_SECONDS = 0.25


def default_limit(policies: Iterable[BatchingPolicy], floor: int = 64) -> int:
    """The requests the batchers can hold: each version's queue plus its running batches.

    Admitting more than that cannot raise throughput: the excess would only wait in front
    of the handlers. At least ``floor``, so a server still loading its models admits some.
    """
    held = sum(p.max_queue_size + p.instances * max(p.max_batch_size, 1) for p in policies)
    return max(held, floor)


class RefusalCounter(Protocol):
    """What Admission reports a refusal to (serving.metrics.ServingMetrics implements it)."""

    def refused(self, api: str, reason: str) -> None: ...


class Admission:
    """Counts the calls in the server; ``try_acquire`` refuses past ``limit``.

    ``limit`` may be changed while serving (the server recomputes the default when models
    come and go); requests already admitted are never cut off.
    """

    __slots__ = (
        "_backoff_s",
        "_capacity",
        "_left",
        "_left_at_sample",
        "_rate",
        "_refusals",
        "_refusals_at_sample",
        "_refused",
        "_served",
        "_served_at_sample",
        "admitted",
        "core_calls",
        "limit",
        "wake",
    )

    def __init__(self, limit: int, refused: RefusalCounter | None = None) -> None:
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.limit = limit
        self.admitted = 0  # in our handlers now
        self.core_calls = 0  # in the gRPC core at the last sample (pending ones included)
        self._left = 0  # requests answered or refused, ever
        self._left_at_sample = 0
        self._served = 0  # requests admitted and answered, ever
        self._served_at_sample = 0
        self._rate = 0.0  # requests served per second, smoothed over the samples
        self._capacity = 0.0  # the best recent rate
        self._refusals = 0  # requests refused, ever
        self._refusals_at_sample = 0
        self._backoff_s = 0.0  # the retry hint's share that pushes refused clients back
        self._refused = refused
        self.wake: asyncio.Event | None = None  # set while the sampler idles: the first call

    def in_server(self) -> int:
        """Calls in the server now: the last sample less the calls that left since."""
        return max(self.core_calls - (self._left - self._left_at_sample), self.admitted)

    def try_acquire(self, api: str) -> bool:
        """Admit one request (then ``release`` it once answered), or refuse it (False)."""
        # The core's count includes the call being decided; ``admitted`` does not.
        if self.admitted >= self.limit or self.in_server() > self.limit:
            self._left += 1
            self._refusals += 1
            if self._refused is not None:
                self._refused.refused(api, "concurrency_limit")
            return False
        self.admitted += 1
        if self.wake is not None:  # the sampler idles: the server is busy again
            self.wake.set()
        return True

    def release(self) -> None:
        """An admitted request was answered (or failed): free its slot."""
        self.admitted -= 1
        self._left += 1
        self._served += 1

    def sample(self, core_calls: int, seconds: float) -> None:
        """A fresh count of the calls in the gRPC core, ``seconds`` after the last one."""
        self.core_calls = core_calls
        self._left_at_sample = self._left
        served = self._served - self._served_at_sample
        refused = self._refusals - self._refusals_at_sample
        self._served_at_sample = self._served
        self._refusals_at_sample = self._refusals
        if seconds > 0:
            self._rate += _SMOOTHING * (served / seconds - self._rate)
        # The best recent rate, not the current one: when refusals keep clients away and the
        # rate drops, a hint from the current rate would keep them away longer still.
        self._capacity = max(self._capacity * _CAPACITY_DECAY, self._rate)
        # A refusal costs the server more than half of serving a call: while refusals
        # outnumber REFUSED_SHARE of the calls served, the hint grows (clients that honour
        # it come back later, so fewer refusals steal time from serving); otherwise it
        # shrinks. Slowly: clients answer a change only after the hint they were given.
        if refused > REFUSED_SHARE * max(served, 1):
            self._backoff_s = min(max(self._backoff_s * 1.2, 0.005), MAX_RETRY_AFTER_MS / 1000)
        else:
            self._backoff_s *= 0.95

    @property
    def retry_after_ms(self) -> int:
        """When to come back: the time the server needs to serve ``limit`` requests.

        At its best recent rate; longer while refusals outnumber half of the calls served.
        """
        drain_s = self.limit / self._capacity if self._capacity > 0 else 0.0
        ms = math.ceil(1000 * max(drain_s, self._backoff_s))
        return min(max(ms, MIN_RETRY_AFTER_MS), MAX_RETRY_AFTER_MS)

    def refusal(self) -> str:
        """The message a refused request gets."""
        return (
            f"server overloaded: {self.in_server()} calls are in the server, the limit "
            f"(--max-concurrent-rpcs) is {self.limit}; retry after about "
            f"{self.retry_after_ms} ms"
        )


def grpc_core_calls() -> int | None:
    """Calls the gRPC core of this process holds (received, not finished), from channelz.

    Pending calls, not yet handed to the application, are included. None when channelz
    cannot be read.
    """
    try:
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        total = 0
        for server in servers:
            data = server.get("data", {})
            total += (
                int(data.get("callsStarted", 0))
                - int(data.get("callsSucceeded", 0))
                - int(data.get("callsFailed", 0))
            )
    except Exception:  # channelz is an internal of grpcio; never let it stop serving
        LOGGER.warning("event=channelz_unreadable admission_counts=handlers_only", exc_info=True)
        return None
    return total


async def sample_core_calls(
    admission: Admission,
    interval: float = CORE_SAMPLE_INTERVAL_SECONDS,
    read: Callable[[], int | None] = grpc_core_calls,
    idle_interval: float = IDLE_SAMPLE_INTERVAL_SECONDS,
) -> None:
    """Keep ``admission.core_calls`` fresh; a task the server runs while serving.

    Every ``interval`` while the server holds calls; every ``idle_interval`` while it holds
    none, until the first call admitted (``Admission.wake``) brings the fast pace back.
    """
    loop = asyncio.get_running_loop()
    last = loop.time()
    idle = False
    while True:
        if idle:
            admission.wake = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(admission.wake.wait(), idle_interval)
            admission.wake = None
        else:
            await asyncio.sleep(interval)
        calls = read()
        if calls is None:
            return  # admission then counts the calls in our handlers only
        now = loop.time()
        admission.sample(calls, now - last)
        last = now
        idle = calls == 0 and admission.admitted == 0
