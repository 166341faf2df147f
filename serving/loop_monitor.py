"""Event-loop lag: how late a timer fires, sampled on a timer.

Every RPC of the server is a task on one event loop. When more work arrives than the
loop can run, callbacks wait in its ready queue before they run, and that wait is in no
request's duration (it happens before the handler starts, or between its steps). A timer
set ``interval`` seconds ahead that fires ``lag`` seconds late shows exactly that wait;
``d2lserve_event_loop_lag_seconds`` is its histogram.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

LOOP_LAG_INTERVAL_SECONDS = 0.1


class LoopMonitor:
    """A task that sleeps ``interval`` seconds at a time and reports how late it woke."""

    def __init__(
        self, observe: Callable[[float], None], interval: float = LOOP_LAG_INTERVAL_SECONDS
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self._observe = observe
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._interval
        observe = self._observe
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            observe(max(loop.time() - due, 0.0))
