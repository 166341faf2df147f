"""The batching policy, with a fake model function instead of ONNX Runtime."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from serving.batcher import Batcher, BatchingPolicy
from serving.errors import (
    DeadlineExpiredError,
    ModelUnavailableError,
    QueueFullError,
    SettingsError,
)


class RecordingMetrics:
    def __init__(self) -> None:
        self.dropped_reasons: list[str] = []
        self.rejections = 0
        self.batch_rows: list[int] = []
        self.inflight_now = 0
        self.inflight_peak = 0
        self.waits: list[float] = []
        self.execution_seconds: list[float] = []

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def execution(self, rows: int, seconds: float) -> None:
        self.batch_rows.append(rows)
        self.execution_seconds.append(seconds)

    def queue_depth(self, depth: int) -> None:
        assert depth >= 0

    def rejected_queue_full(self) -> None:
        self.rejections += 1

    def dropped(self, reason: str) -> None:
        self.dropped_reasons.append(reason)

    def inflight(self, delta: int) -> None:
        self.inflight_now += delta
        self.inflight_peak = max(self.inflight_peak, self.inflight_now)
        assert self.inflight_now >= 0


class FakeModel:
    """Doubles its input; records batch sizes; can be held to keep an instance busy."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.running = threading.Event()

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self.running.set()
        assert self.release.wait(10)
        self.batches.append(batch.shape[0])
        return [batch * 2, batch.sum(axis=1, keepdims=True)]


def rows(*values: float) -> np.ndarray:
    return np.array([[v, v] for v in values], dtype=np.float32)


def run(test: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def make(
    policy: BatchingPolicy, model: FakeModel | None = None
) -> tuple[Batcher, FakeModel, RecordingMetrics]:
    model = model or FakeModel()
    metrics = RecordingMetrics()
    batcher = Batcher(model, policy, name="model 'fake' v1", metrics=metrics)
    batcher.start()
    return batcher, model, metrics


async def wait_running(model: FakeModel) -> None:
    while not model.running.is_set():
        await asyncio.sleep(0.001)


def test_concurrent_requests_run_as_one_batch_and_each_caller_gets_its_rows() -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1000)
        )
        futures = [batcher.submit(rows(i, i + 0.5)) for i in range(10)]
        results = await asyncio.gather(*futures)
        assert model.batches == [20]
        assert metrics.batch_rows == [20]
        for i, (doubled, summed) in enumerate(results):
            np.testing.assert_array_equal(doubled, rows(i, i + 0.5) * 2)
            np.testing.assert_array_equal(summed, [[2 * i], [2 * i + 1]])
        assert (
            batcher.statistics.requests,
            batcher.statistics.inference_count,
            batcher.statistics.execution_count,
        ) == (10, 20, 1)
        assert (metrics.inflight_peak, metrics.inflight_now) == (10, 0)  # gauge per batch
        assert len(metrics.waits) == 10 and all(0 <= w < 5 for w in metrics.waits)
        assert len(metrics.execution_seconds) == 1 and 0 < metrics.execution_seconds[0] < 5
        await batcher.close()

    run(body)


def test_lone_request_does_not_wait_for_the_queue_delay() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=2_000_000)
        )
        started = time.perf_counter()
        await batcher.submit(rows(1))
        assert time.perf_counter() - started < 0.5  # far below the 2 s delay
        assert model.batches == [1]
        assert (batcher.requests, batcher.rows, batcher.executions) == (1, 1, 1)
        await batcher.close()

    run(body)


def test_batches_never_exceed_max_batch_size() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=4, max_queue_delay_microseconds=1000)
        )
        await asyncio.gather(*(batcher.submit(rows(i)) for i in range(10)))
        assert model.batches == [4, 4, 2]
        await batcher.close()

    run(body)


async def _trickle_for(batcher: Batcher, seconds: float, futures: list) -> None:
    """One single-row request per event-loop pass for ``seconds``: arrivals never pause."""
    ends = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < ends:
        futures.append(batcher.submit(rows(i)))
        i += 1
        await asyncio.sleep(0)


def test_collection_stops_at_a_preferred_batch_size_while_arrivals_continue() -> None:
    """Arrivals keep coming, the delay is long: only the preferred size ends the batch."""

    async def body() -> None:
        policy = BatchingPolicy(
            max_batch_size=64, preferred_batch_sizes=(3,), max_queue_delay_microseconds=5_000_000
        )
        batcher, model, _ = make(policy)
        futures: list = []
        producer = asyncio.create_task(_trickle_for(batcher, 10.0, futures))
        while not futures:
            await asyncio.sleep(0)
        first = await futures[0]
        producer.cancel()
        # Without the preferred size the batch would keep collecting for the 5 s delay
        # (or up to 64 rows) while requests keep arriving.
        assert model.batches[0] == 3
        np.testing.assert_array_equal(first[0], rows(0) * 2)
        await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()

    run(body)


def test_collection_stops_after_max_queue_delay_while_arrivals_continue() -> None:
    """The first batch runs about max_queue_delay after its first request, not later.

    Requests keep arriving for 10 s; with a 50 ms delay the first result must come within
    1 s (20x margin for a loaded 2-core machine), and not before the delay has passed.
    """

    async def body() -> None:
        delay = 0.05
        policy = BatchingPolicy(
            max_batch_size=100_000, max_queue_delay_microseconds=int(delay * 1e6)
        )
        batcher, model, _ = make(policy)
        futures: list = []
        started = time.perf_counter()
        producer = asyncio.create_task(_trickle_for(batcher, 10.0, futures))
        while not futures:
            await asyncio.sleep(0)
        first = await futures[0]
        waited = time.perf_counter() - started
        producer.cancel()
        assert first[0].shape == (1, 2)
        assert delay <= waited < 1.0
        # It collected while arrivals continued, and the delay (not the size) ended it.
        assert 1 < model.batches[0] < min(len(futures), policy.max_batch_size)
        await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()

    run(body)


def test_requests_queue_while_the_instance_is_busy_and_form_the_next_batch() -> None:
    async def body() -> None:
        batcher, model, _ = make(BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=0))
        model.release.clear()
        first = batcher.submit(rows(0))
        await wait_running(model)
        later = [batcher.submit(rows(i)) for i in range(1, 6)]
        model.release.set()
        await asyncio.gather(first, *later)
        assert model.batches == [1, 5]
        await batcher.close()

    run(body)


def test_full_queue_refuses_at_admission() -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=1, max_queue_delay_microseconds=0, max_queue_size=2)
        )
        model.release.clear()
        running = batcher.submit(rows(0))
        await wait_running(model)
        queued = [batcher.submit(rows(1)), batcher.submit(rows(2))]
        with pytest.raises(
            QueueFullError,
            match=r"^model 'fake' v1 is overloaded: 2 requests are waiting, max_queue_size is 2",
        ):
            batcher.submit(rows(3))
        assert metrics.rejections == 1
        model.release.set()
        await asyncio.gather(running, *queued)
        await batcher.submit(rows(4))  # serving again once the queue drained
        await batcher.close()

    run(body)


def test_cancelled_and_expired_requests_are_dropped_before_execution() -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=0)
        )
        model.release.clear()
        running = batcher.submit(rows(0))
        await wait_running(model)
        cancelled = batcher.submit(rows(1))
        expired = batcher.submit(rows(2), deadline=time.perf_counter() + 0.01)
        alive = batcher.submit(rows(3), deadline=time.perf_counter() + 30)
        cancelled.cancel()
        await asyncio.sleep(0.05)
        model.release.set()
        await running
        np.testing.assert_array_equal((await alive)[0], rows(3) * 2)
        with pytest.raises(
            DeadlineExpiredError,
            match=r"^deadline expired after 0\.\d{3} s in the queue of model 'fake' v1, "
            "before execution$",
        ):
            await expired
        assert model.batches == [1, 1]
        assert sorted(metrics.dropped_reasons) == ["cancelled", "deadline"]
        assert metrics.inflight_now == 0
        await batcher.close()

    run(body)


def test_a_request_cancelled_after_its_deadline_passed_counts_as_a_deadline_drop() -> None:
    """gRPC cancels a call when its deadline passes; the drop's reason is the deadline."""

    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=0)
        )
        model.release.clear()
        running = batcher.submit(rows(0))
        await wait_running(model)
        expired = batcher.submit(rows(1), deadline=time.perf_counter() + 0.01)
        await asyncio.sleep(0.05)
        expired.cancel()  # what the gRPC server does when the deadline passes
        model.release.set()
        await running
        await batcher.submit(rows(2))
        assert model.batches == [1, 1]
        assert metrics.dropped_reasons == ["deadline"]
        assert metrics.inflight_now == 0
        await batcher.close()

    run(body)


def test_expired_requests_in_the_middle_of_the_queue_do_not_split_the_batch() -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1_000_000)
        )
        model.release.clear()
        running = batcher.submit(rows(0))
        await wait_running(model)
        first = batcher.submit(rows(1))
        soon = time.perf_counter() + 0.01
        expired = [batcher.submit(rows(2), deadline=soon), batcher.submit(rows(3), deadline=soon)]
        last = batcher.submit(rows(4))
        await asyncio.sleep(0.05)
        model.release.set()
        await asyncio.gather(running, first, last)
        assert model.batches == [1, 2]  # 1 and 4 together; the two expired ones skipped
        assert metrics.dropped_reasons == ["deadline", "deadline"]
        for future in expired:
            with pytest.raises(DeadlineExpiredError):
                await future
        await batcher.close()

    run(body)


def test_instances_execute_in_parallel() -> None:
    async def body() -> None:
        barrier = threading.Barrier(2, timeout=5)

        class Parallel(FakeModel):
            def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
                barrier.wait()  # both executions must be running at the same time
                return super().__call__(batch)

        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=1, max_queue_delay_microseconds=0, instances=2),
            Parallel(),
        )
        await asyncio.gather(batcher.submit(rows(0)), batcher.submit(rows(1)))
        assert model.batches == [1, 1]
        await batcher.close()

    run(body)


def test_disabled_batching_runs_every_request_alone() -> None:
    async def body() -> None:
        batcher, model, _ = make(BatchingPolicy(enabled=False, max_batch_size=64))
        await asyncio.gather(*(batcher.submit(rows(i, i)) for i in range(5)))
        assert model.batches == [2, 2, 2, 2, 2]
        await batcher.close()

    run(body)


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    async def body() -> None:
        batcher, _, _ = make(BatchingPolicy(max_batch_size=2, max_queue_delay_microseconds=0))
        futures = [batcher.submit(rows(i)) for i in range(6)]
        await batcher.close()
        assert all(f.done() and f.exception() is None for f in futures)
        with pytest.raises(
            ModelUnavailableError, match=r"^model 'fake' v1 is unloading; retry on another version$"
        ):
            batcher.submit(rows(9))

    run(body)


def test_close_stops_the_worker_threads_of_every_instance() -> None:
    async def body() -> None:
        before = {t.ident for t in threading.enumerate()}
        batcher, _, _ = make(BatchingPolicy(max_batch_size=2, instances=3))
        await batcher.submit(rows(1))
        workers = [t for t in threading.enumerate() if t.ident not in before]
        assert sorted(t.name for t in workers) == [f"infer-model 'fake' v1-{i}" for i in range(3)]
        assert all(t.daemon for t in workers)  # a stuck session.run must not keep the process
        assert "batcher model 'fake' v1" in {t.get_name() for t in asyncio.all_tasks()}
        await batcher.close()
        for worker in workers:  # an unloaded version must not leave threads behind
            await asyncio.to_thread(worker.join, 5)
            assert not worker.is_alive()

    run(body)


def test_a_failing_execution_fails_its_callers_and_the_batcher_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        calls = []

        def flaky(batch: np.ndarray) -> list[np.ndarray]:
            calls.append(batch.shape[0])
            if len(calls) == 1:
                raise RuntimeError("boom")
            return [batch]

        batcher = Batcher(flaky, BatchingPolicy(max_queue_delay_microseconds=0), name="flaky")
        batcher.start()
        with (
            caplog.at_level("ERROR", logger="serving.batcher"),
            pytest.raises(RuntimeError, match="boom"),
        ):
            await batcher.submit(rows(1))
        assert caplog.messages == [
            "event=execution_failed batcher='flaky' rows=1 error=RuntimeError('boom')"
        ]
        np.testing.assert_array_equal((await batcher.submit(rows(2)))[0], rows(2))
        await batcher.close()

    run(body)


def test_outputs_with_the_wrong_number_of_rows_are_an_error() -> None:
    async def body() -> None:
        batcher = Batcher(lambda b: [b[:1]], BatchingPolicy(), name="model 'bad' v1")
        batcher.start()
        futures = [batcher.submit(rows(1)), batcher.submit(rows(2))]
        for future in futures:
            with pytest.raises(RuntimeError, match="returned 1 rows for a batch of 2"):
                await future
        await batcher.close()

    run(body)


def test_a_request_that_does_not_fit_ends_the_batch_and_starts_the_next() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=4, max_queue_delay_microseconds=1_000_000)
        )
        three, two = batcher.submit(rows(1, 2, 3)), batcher.submit(rows(4, 5))
        _, second = await asyncio.gather(three, two)
        assert model.batches == [3, 2]  # 3 + 2 rows would exceed max_batch_size 4
        np.testing.assert_array_equal(second[0], rows(4, 5) * 2)
        await batcher.close()

    run(body)


def test_submit_before_start_and_close_without_start_are_handled() -> None:
    async def body() -> None:
        batcher = Batcher(FakeModel(), BatchingPolicy(), name="model 'idle' v1")
        with pytest.raises(ModelUnavailableError, match="model 'idle' v1 is unloading"):
            batcher.submit(rows(1))
        await batcher.close()  # nothing started: nothing to wait for

    run(body)


def test_close_gives_up_after_its_timeout_and_fails_what_is_still_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=1, max_queue_delay_microseconds=0)
        )
        model.release.clear()  # the running execution never finishes during close
        running = batcher.submit(rows(0))
        await wait_running(model)
        queued = batcher.submit(rows(1))
        started = time.perf_counter()
        with caplog.at_level("WARNING", logger="serving.batcher"):
            await batcher.close(timeout=0.2)
        assert time.perf_counter() - started < 5
        assert metrics.inflight_now == 1  # the running one; the queued one is settled
        with pytest.raises(ModelUnavailableError, match=r"^model 'fake' v1 was unloaded$"):
            await queued
        assert caplog.messages == ["event=drain_timeout batcher=\"model 'fake' v1\" timeout_s=0.2"]
        model.release.set()
        await running

    run(body)


def test_a_bug_in_the_owning_task_fails_the_callers_and_closes_the_batcher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        batcher = Batcher(FakeModel(), BatchingPolicy(), name="model 'fake' v1")

        async def broken() -> tuple[list, int]:
            raise RuntimeError("bug")

        batcher._form_batch = broken  # type: ignore[method-assign]
        with caplog.at_level("ERROR", logger="serving.batcher"):
            batcher.start()
            waiting = batcher.submit(rows(1))
            with pytest.raises(
                ModelUnavailableError, match=r"^model 'fake' v1 failed: RuntimeError\('bug'\)$"
            ):
                await waiting
        assert caplog.messages == ["event=batcher_failed batcher=\"model 'fake' v1\""]
        with pytest.raises(ModelUnavailableError, match="unloading"):
            batcher.submit(rows(2))  # closed: it does not pretend to serve
        await batcher.close()

    run(body)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1 with batching on (>= 0 off), got 0"),
        (
            {"enabled": False, "max_batch_size": -1},
            "max_batch_size must be >= 1 with batching on (>= 0 off), got -1",
        ),
        ({"max_queue_size": 0}, "max_queue_size must be >= 1, got 0"),
        ({"instances": 0}, "instances must be >= 1, got 0"),
        (
            {"max_queue_delay_microseconds": -1},
            "max_queue_delay_microseconds must be >= 0, got -1",
        ),
        (
            {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
            "preferred batch size 8 is outside 1..max_batch_size (4)",
        ),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        BatchingPolicy(**kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"enabled": False, "max_batch_size": 0},  # no row limit, no merging
        {"max_queue_size": 1, "instances": 1, "max_queue_delay_microseconds": 0},
        {"max_batch_size": 1, "preferred_batch_sizes": (1,)},
    ],
)
def test_the_smallest_valid_policies_are_accepted(kwargs: dict) -> None:
    policy = BatchingPolicy(**kwargs)
    assert all(getattr(policy, key) == value for key, value in kwargs.items())
