"""Server-wide admission control: a bound on inference requests admitted at once.

Under overload the excess does not wait in a batcher queue, where ``max_queue_size``
would refuse it: it waits in front of the handlers, as RPC tasks competing for the one
event loop, where neither the queue limit nor the request-duration histogram sees it
(issue 12: offered 10x capacity, every call admitted, p99 1.26 s while the queue held 2).
So every inference request (a unary Predict or ModelInfer call, each message of a
ModelStreamInfer) takes a slot here before any decoding; with ``limit`` slots taken it is
refused at once with RESOURCE_EXHAUSTED and a retry hint, which costs the server a small
fraction of serving it (measured in BENCHMARKS.md), like TGI's ``max_concurrent_requests``.

Only the event loop touches an ``Admission``: plain ints, no locks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from time import perf_counter
from typing import Protocol

from serving.batcher import BatchingPolicy

LOGGER = logging.getLogger(__name__)

# Trailing metadata of a refusal: milliseconds after which a retry is likely admitted.
RETRY_AFTER_KEY = "retry-after-ms"
# The hint is the recent mean time a request held its slot, within these bounds.
MIN_RETRY_AFTER_MS = 1
MAX_RETRY_AFTER_MS = 1000
_SMOOTHING = 0.05  # weight of one request in the mean slot time (about the last 20)


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
    """Counts admitted requests; ``try_acquire`` refuses past ``limit``.

    ``limit`` may be changed while serving (the server recomputes the default when models
    come and go); requests already admitted are never cut off.
    """

    __slots__ = ("_mean_seconds", "_refused", "admitted", "limit")

    def __init__(self, limit: int, refused: RefusalCounter | None = None) -> None:
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.limit = limit
        self.admitted = 0
        self._mean_seconds = 0.005
        self._refused = refused

    def try_acquire(self, api: str) -> float | None:
        """The admission time (``perf_counter``) to pass to ``release``; None: refused."""
        if self.admitted >= self.limit:
            if self._refused is not None:
                self._refused.refused(api, "concurrency_limit")
            return None
        self.admitted += 1
        return perf_counter()

    def release(self, admitted_at: float) -> None:
        """A request admitted at ``admitted_at`` was answered (or failed): free its slot."""
        self.admitted -= 1
        self._mean_seconds += _SMOOTHING * (perf_counter() - admitted_at - self._mean_seconds)

    @property
    def retry_after_ms(self) -> int:
        """About when a slot frees up: the recent mean time a request held one."""
        ms = math.ceil(self._mean_seconds * 1000)
        return min(max(ms, MIN_RETRY_AFTER_MS), MAX_RETRY_AFTER_MS)

    def refusal(self) -> str:
        """The message a refused request gets."""
        return (
            f"server overloaded: {self.admitted} requests are in progress, the limit "
            f"(--max-concurrent-rpcs) is {self.limit}; retry after about "
            f"{self.retry_after_ms} ms"
        )
