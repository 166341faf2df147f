"""The batching policy, with a fake model function instead of ONNX Runtime."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from serving.core.batcher import Batcher, BatchingPolicy
from serving.errors import (
    DeadlineExpiredError,
    ModelUnavailableError,
    QueueFullError,
    QueueTimeoutError,
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

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.running.set()
        assert self.release.wait(10)
        (x,) = batch  # (rows, features): one model input
        self.batches.append(x.shape[0])
        return [x * 2, x.sum(axis=1, keepdims=True)]


def rows(*values: float) -> np.ndarray:
    return np.array([[v, v] for v in values], dtype=np.float32)


def submit(
    batcher: Batcher, array: np.ndarray, key: object = None, deadline: float | None = None
) -> asyncio.Future:
    """One single-input request of ``array``'s rows: its ticket's future."""
    return batcher.submit([array], array.shape[0], key=key, deadline=deadline).future


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
        futures = [submit(batcher, rows(i, i + 0.5)) for i in range(10)]
        results = await asyncio.gather(*futures)
        assert model.batches == [20]
        assert metrics.batch_rows == [20]
        for i, (doubled, summed) in enumerate(results):
            np.testing.assert_array_equal(doubled, rows(i, i + 0.5) * 2)
            np.testing.assert_array_equal(summed, [[2 * i], [2 * i + 1]])
        # The batcher reports executions; each request's figures (queue, compute) are
        # recorded by the request path with its outcome, in one step.
        statistics = batcher.statistics
        assert (statistics.execution_count, sorted(statistics.sizes)) == (1, [20])
        assert (statistics.queue.count, statistics.compute_infer.count) == (0, 0)
        assert (statistics.requests, statistics.inference_count) == (0, 0)
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
        await submit(batcher, rows(1))
        assert time.perf_counter() - started < 0.5  # far below the 2 s delay
        assert model.batches == [1]
        assert (batcher.statistics.execution_count, list(batcher.statistics.sizes)) == (1, [1])
        await batcher.close()

    run(body)


def test_batches_never_exceed_max_batch_size() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=4, max_queue_delay_microseconds=1000)
        )
        await asyncio.gather(*(submit(batcher, rows(i)) for i in range(10)))
        assert model.batches == [4, 4, 2]
        await batcher.close()

    run(body)


async def _trickle_for(batcher: Batcher, seconds: float, futures: list) -> None:
    """One single-row request per event-loop pass for ``seconds``: arrivals never pause."""
    ends = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < ends:
        futures.append(submit(batcher, rows(i)))
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
        first = submit(batcher, rows(0))
        await wait_running(model)
        later = [submit(batcher, rows(i)) for i in range(1, 6)]
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
        running = submit(batcher, rows(0))
        await wait_running(model)
        queued = [submit(batcher, rows(1)), submit(batcher, rows(2))]
        with pytest.raises(
            QueueFullError,
            match=r"^model 'fake' v1 is overloaded: 2 requests are waiting, max_queue_size is 2",
        ):
            submit(batcher, rows(3))
        assert metrics.rejections == 1
        model.release.set()
        await asyncio.gather(running, *queued)
        await submit(batcher, rows(4))  # serving again once the queue drained
        await batcher.close()

    run(body)


def test_cancelled_and_expired_requests_are_dropped_before_execution() -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=0)
        )
        model.release.clear()
        running = submit(batcher, rows(0))
        await wait_running(model)
        cancelled = submit(batcher, rows(1))
        expired = submit(batcher, rows(2), deadline=time.perf_counter() + 0.01)
        alive = submit(batcher, rows(3), deadline=time.perf_counter() + 30)
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
        running = submit(batcher, rows(0))
        await wait_running(model)
        expired = submit(batcher, rows(1), deadline=time.perf_counter() + 0.01)
        await asyncio.sleep(0.05)
        expired.cancel()  # what the gRPC server does when the deadline passes
        model.release.set()
        await running
        await submit(batcher, rows(2))
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
        running = submit(batcher, rows(0))
        await wait_running(model)
        first = submit(batcher, rows(1))
        soon = time.perf_counter() + 0.01
        expired = [submit(batcher, rows(2), deadline=soon), submit(batcher, rows(3), deadline=soon)]
        last = submit(batcher, rows(4))
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
            def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
                barrier.wait()  # both executions must be running at the same time
                return super().__call__(batch)

        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=1, max_queue_delay_microseconds=0, instances=2),
            Parallel(),
        )
        await asyncio.gather(submit(batcher, rows(0)), submit(batcher, rows(1)))
        assert model.batches == [1, 1]
        await batcher.close()

    run(body)


def test_disabled_batching_runs_every_request_alone() -> None:
    async def body() -> None:
        batcher, model, _ = make(BatchingPolicy(enabled=False, max_batch_size=64))
        await asyncio.gather(*(submit(batcher, rows(i, i)) for i in range(5)))
        assert model.batches == [2, 2, 2, 2, 2]
        await batcher.close()

    run(body)


def test_close_finishes_queued_requests_then_refuses_new_ones() -> None:
    async def body() -> None:
        batcher, _, _ = make(BatchingPolicy(max_batch_size=2, max_queue_delay_microseconds=0))
        futures = [submit(batcher, rows(i)) for i in range(6)]
        await batcher.close()
        assert all(f.done() and f.exception() is None for f in futures)
        with pytest.raises(
            ModelUnavailableError, match=r"^model 'fake' v1 is unloading; retry on another version$"
        ):
            submit(batcher, rows(9))

    run(body)


def test_close_stops_the_worker_threads_of_every_instance() -> None:
    async def body() -> None:
        # Thread objects, not idents: a worker of an earlier test that exits meanwhile can
        # hand its ident to one of these (seen once under load).
        before = set(threading.enumerate())
        batcher, _, _ = make(BatchingPolicy(max_batch_size=2, instances=3))
        await submit(batcher, rows(1))
        workers = [t for t in threading.enumerate() if t not in before]
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

        def flaky(batch: list[np.ndarray]) -> list[np.ndarray]:
            calls.append(batch[0].shape[0])
            if len(calls) == 1:
                raise RuntimeError("boom")
            return batch

        batcher = Batcher(flaky, BatchingPolicy(max_queue_delay_microseconds=0), name="flaky")
        batcher.start()
        with (
            caplog.at_level("ERROR", logger="serving.core.batcher"),
            pytest.raises(RuntimeError, match="boom"),
        ):
            await submit(batcher, rows(1))
        assert caplog.messages == [
            "event=execution_failed batcher='flaky' rows=1 error=RuntimeError('boom')"
        ]
        np.testing.assert_array_equal((await submit(batcher, rows(2)))[0], rows(2))
        await batcher.close()

    run(body)


def test_outputs_with_the_wrong_number_of_rows_are_an_error() -> None:
    async def body() -> None:
        batcher = Batcher(lambda b: [b[0], b[0][:1]], BatchingPolicy(), name="model 'bad' v1")
        batcher.start()
        futures = [submit(batcher, rows(1)), submit(batcher, rows(2))]
        for future in futures:
            with pytest.raises(
                RuntimeError,
                match=r"^model 'bad' v1 returned an output of shape \[1, 2\] for a batch of 2 "
                "rows$",
            ):
                await future
        assert batcher.statistics.execution_count == 0  # a failed execution is not counted
        await batcher.close()

    run(body)


def test_a_request_that_does_not_fit_ends_the_batch_and_starts_the_next() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=4, max_queue_delay_microseconds=1_000_000)
        )
        three, two = submit(batcher, rows(1, 2, 3)), submit(batcher, rows(4, 5))
        _, second = await asyncio.gather(three, two)
        assert model.batches == [3, 2]  # 3 + 2 rows would exceed max_batch_size 4
        np.testing.assert_array_equal(second[0], rows(4, 5) * 2)
        await batcher.close()

    run(body)


def test_submit_before_start_and_close_without_start_are_handled() -> None:
    async def body() -> None:
        batcher = Batcher(FakeModel(), BatchingPolicy(), name="model 'idle' v1")
        with pytest.raises(ModelUnavailableError, match="model 'idle' v1 is unloading"):
            submit(batcher, rows(1))
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
        running = submit(batcher, rows(0))
        await wait_running(model)
        queued = [submit(batcher, rows(1)), submit(batcher, rows(2))]
        started = time.perf_counter()
        with caplog.at_level("WARNING", logger="serving.core.batcher"):
            await batcher.close(timeout=0.2)
        assert time.perf_counter() - started < 5
        assert metrics.inflight_now == 1  # the running one; both queued ones are settled
        for future in queued:
            with pytest.raises(ModelUnavailableError, match=r"^model 'fake' v1 was unloaded$"):
                await future
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
        with caplog.at_level("ERROR", logger="serving.core.batcher"):
            batcher.start()
            waiting = submit(batcher, rows(1))
            with pytest.raises(
                ModelUnavailableError, match=r"^model 'fake' v1 failed: RuntimeError\('bug'\)$"
            ):
                await waiting
        assert caplog.messages == ["event=batcher_failed batcher=\"model 'fake' v1\""]
        with pytest.raises(ModelUnavailableError, match="unloading"):
            submit(batcher, rows(2))  # closed: it does not pretend to serve
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
        (
            {"max_batch_size": 4, "preferred_batch_sizes": (0,)},
            "preferred batch size 0 is outside 1..max_batch_size (4)",
        ),
        (
            {"queue_timeout_microseconds": -1},
            "queue_timeout_microseconds must be >= 0, got -1",
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
        {"max_batch_size": 4, "preferred_batch_sizes": (4,), "queue_timeout_microseconds": 0},
    ],
)
def test_the_smallest_valid_policies_are_accepted(kwargs: dict) -> None:
    policy = BatchingPolicy(**kwargs)
    assert all(getattr(policy, key) == value for key, value in kwargs.items())


def test_batched_follows_max_batch_size() -> None:
    assert BatchingPolicy(max_batch_size=1).batched is True
    assert BatchingPolicy(enabled=False, max_batch_size=0).batched is False
    assert BatchingPolicy(enabled=False, max_batch_size=8).batched is True


# -- several inputs, keys, models without a batch dimension -----------------------------


class TwoInputModel:
    """Inputs ``a`` (rows, 2) and ``b`` (rows, 3); outputs a + sum(b) and b * 10."""

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], ...]] = []
        self.release = threading.Event()
        self.release.set()
        self.running = threading.Event()

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.running.set()
        assert self.release.wait(10)
        a, b = batch
        self.batches.append((a.shape, b.shape))
        return [a + b.sum(axis=1, keepdims=True), b * 10]


def test_several_inputs_are_joined_input_by_input_and_split_back_per_caller() -> None:
    async def body() -> None:
        model = TwoInputModel()
        batcher = Batcher(
            model, BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1_000_000),
            name="model 'two' v1",
        )  # fmt: skip
        batcher.start()
        requests = []
        for i, n in enumerate((1, 3, 2)):
            a = np.full((n, 2), i, dtype=np.float32) + np.arange(n, dtype=np.float32)[:, None]
            b = np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 100 * i
            requests.append((a, b))
        futures = [batcher.submit([a, b], a.shape[0]).future for a, b in requests]
        results = await asyncio.gather(*futures)
        assert model.batches == [((6, 2), (6, 3))]  # one execution, each input joined
        for (a, b), (summed, scaled) in zip(requests, results, strict=True):
            np.testing.assert_array_equal(summed, a + b.sum(axis=1, keepdims=True))
            np.testing.assert_array_equal(scaled, b * 10)
        await batcher.close()

    run(body)


def test_requests_with_different_keys_never_share_an_execution() -> None:
    """Keys are the shapes after the batch dimension: merging them could not even concatenate.

    The queue is [w2, w2, w3, w2, w3]: collection stops at the first differing key, so the
    batches are [w2 w2], [w3], [w2], [w3] (the later w2 is not pulled past the w3).
    """

    async def body() -> None:
        model = FakeModel()
        widths: list[int] = []

        def width_model(batch: list[np.ndarray]) -> list[np.ndarray]:
            widths.append(batch[0].shape[1])
            return model(batch)

        batcher = Batcher(
            width_model, BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1_000_000),
            name="model 'fake' v1",
        )  # fmt: skip
        batcher.start()
        model.release.clear()
        running = submit(batcher, np.ones((1, 2), np.float32), key=(2,))
        await wait_running(model)
        arrays = [np.full((1, w), i, np.float32) for i, w in enumerate((2, 2, 3, 2, 3))]
        queued = [submit(batcher, a, key=(a.shape[1],)) for a in arrays]
        model.release.set()
        await running
        results = await asyncio.gather(*queued)
        assert (model.batches, widths) == ([1, 2, 1, 1, 1], [2, 2, 3, 2, 3])
        for array, (doubled, _) in zip(arrays, results, strict=True):
            np.testing.assert_array_equal(doubled, array * 2)
        await batcher.close()

    run(body)


def test_requests_with_the_same_key_share_an_execution() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1_000_000)
        )
        model.release.clear()
        running = submit(batcher, rows(0), key=("k", 2))
        await wait_running(model)
        queued = [submit(batcher, rows(i), key=("k", 2)) for i in range(1, 5)]
        model.release.set()
        await asyncio.gather(running, *queued)
        assert model.batches == [1, 4]
        await batcher.close()

    run(body)


def test_a_model_without_a_batch_dimension_runs_each_request_alone_with_outputs_whole() -> None:
    """max_batch_size 0: shapes are whole tensors; outputs need not have the request's rows."""

    async def body() -> None:
        seen: list[tuple[int, ...]] = []

        def whole(batch: list[np.ndarray]) -> list[np.ndarray]:
            (x,) = batch
            seen.append(x.shape)
            return [np.float32(x.sum()) * np.ones(()), np.arange(5) + x.size]

        policy = BatchingPolicy(enabled=False, max_batch_size=0)
        batcher = Batcher(whole, policy, name="model 'whole' v1")
        batcher.start()
        inputs = [np.ones((3, 4), np.float32), np.full((3, 4), 2, np.float32)]
        results = await asyncio.gather(*(batcher.submit([x], 1).future for x in inputs))
        assert seen == [(3, 4), (3, 4)]  # never joined
        assert [float(r[0]) for r in results] == [12.0, 24.0]
        assert all(r[0].shape == () for r in results)  # a scalar output: no row check
        for result in results:
            np.testing.assert_array_equal(result[1], np.arange(5) + 12)
        assert batcher.statistics.execution_count == 2
        assert sorted(batcher.statistics.sizes) == [1]
        await batcher.close()

    run(body)


def test_a_batched_output_without_a_batch_dimension_is_an_error() -> None:
    async def body() -> None:
        batcher = Batcher(
            lambda b: [np.float32(1.0) * np.ones(())], BatchingPolicy(), name="model 'bad' v1"
        )
        batcher.start()
        with pytest.raises(
            RuntimeError,
            match=r"^model 'bad' v1 returned an output of shape \[\] for a batch of 1 rows$",
        ):
            await submit(batcher, rows(1))
        await batcher.close()

    run(body)


def test_statistics_count_executions_per_batch_size_and_tickets_carry_each_requests_times() -> None:
    async def body() -> None:
        batcher, model, _ = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1_000_000)
        )
        statistics = batcher.statistics
        model.release.clear()
        running = batcher.submit([rows(0, 0)], 2)
        await wait_running(model)
        queued = [batcher.submit([rows(i)], 1) for i in range(1, 4)]
        model.release.set()
        await asyncio.gather(running.future, *(t.future for t in queued))
        await submit(batcher, rows(7, 8, 9))  # alone: another 3-row execution
        assert model.batches == [2, 3, 3]
        assert statistics.execution_count == 3
        for part in ("input", "infer", "output"):  # one duration per execution of each size
            counts = {size: getattr(batch, part).count for size, batch in statistics.sizes.items()}
            assert counts == {2: 1, 3: 2}, part
        # The queued ones waited for the first run; each ticket knows its execution's times.
        assert all(t.queue > running.queue for t in queued)
        assert all(t.infer > 0 and t.gather >= 0 and t.scatter >= 0 for t in queued)
        assert len({t.infer for t in queued}) == 1  # one execution, one infer time
        assert running.infer != queued[0].infer
        # Per-request counts are the request path's, recorded with each outcome.
        assert (statistics.queue.count, statistics.compute_infer.count) == (0, 0)
        assert statistics.last_inference_ms > 0
        await batcher.close()

    run(body)


def test_queued_requests_past_the_queue_timeout_are_refused_and_the_rest_run() -> None:
    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(
                max_batch_size=64,
                max_queue_delay_microseconds=0,
                queue_timeout_microseconds=200_000,
            )
        )
        model.release.clear()
        running = submit(batcher, rows(0))
        await wait_running(model)
        old = submit(batcher, rows(1))
        await asyncio.sleep(0.5)  # past the queue timeout; `fresh` has 200 ms to spare
        fresh = submit(batcher, rows(2))
        model.release.set()
        await running
        np.testing.assert_array_equal((await fresh)[0], rows(2) * 2)
        with pytest.raises(
            QueueTimeoutError,
            match=r"^model 'fake' v1 is overloaded: the request waited \d+\.\d{3} s in its queue, "
            r"the queue policy's default_timeout_microseconds is 200000; retry later$",
        ):
            await old
        assert model.batches == [1, 1]
        assert metrics.dropped_reasons == ["queue_timeout"]
        assert metrics.inflight_now == 0
        assert batcher.statistics.execution_count == 2  # the refused one never ran
        await batcher.close()

    run(body)


def test_a_cancelled_request_in_the_middle_of_the_queue_does_not_split_the_batch() -> None:
    """With no queue delay the batch is what one pass over the queue takes: past the hole."""

    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=0)
        )
        model.release.clear()
        running = submit(batcher, rows(0))
        await wait_running(model)
        first = submit(batcher, rows(1))
        cancelled = submit(batcher, rows(2))
        last = submit(batcher, rows(3))
        cancelled.cancel()
        model.release.set()
        await asyncio.gather(running, first, last)
        assert model.batches == [1, 2]
        assert metrics.dropped_reasons == ["cancelled"]
        await batcher.close()

    run(body)


def test_statistics_time_each_part_of_an_execution_in_plausible_bounds() -> None:
    async def body() -> None:
        batcher, _, _ = make(BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=0))
        tickets = [batcher.submit([rows(i)], 1) for i in range(3)]
        await asyncio.gather(*(t.future for t in tickets))
        statistics = batcher.statistics
        for batch in statistics.sizes.values():
            for part in (batch.input, batch.infer, batch.output):
                assert 0 <= part.ns < 5 * 1e9 * part.count  # seconds, not a clock reading
        for ticket in tickets:  # seconds, not clock readings
            assert 0 <= ticket.queue < 5 and 0 <= ticket.gather < 5 and 0 <= ticket.scatter < 5
            assert 0 < ticket.infer < 5
        await batcher.close()

    run(body)


def test_a_request_timing_out_while_a_batch_collects_does_not_end_the_batch() -> None:
    """The event loop is blocked past the queue timeout between two arrivals: the older
    one is refused, the younger one still joins the batch being collected."""

    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(
                max_batch_size=64,
                max_queue_delay_microseconds=5_000_000,
                queue_timeout_microseconds=200_000,
            )
        )
        first = submit(batcher, rows(1))
        await asyncio.sleep(0)  # the batcher takes it and starts collecting
        old = submit(batcher, rows(2))
        time.sleep(0.5)  # blocks the loop past the queue timeout; `young` has 200 ms to spare
        young = submit(batcher, rows(3))
        results = await asyncio.gather(first, young)
        with pytest.raises(QueueTimeoutError):
            await old
        assert model.batches == [2]
        np.testing.assert_array_equal(results[1][0], rows(3) * 2)
        assert metrics.dropped_reasons == ["queue_timeout"]
        await batcher.close()

    run(body)


def test_close_gives_up_on_a_running_execution_after_its_timeout_with_nothing_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owning task ends at once (empty queue); close still waits for the execution,
    but only for ``timeout``."""

    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=1, max_queue_delay_microseconds=0)
        )
        model.release.clear()
        running = submit(batcher, rows(0))
        await wait_running(model)
        started = time.perf_counter()
        with caplog.at_level("WARNING", logger="serving.core.batcher"):
            await batcher.close(timeout=0.2)
        assert 0.2 <= time.perf_counter() - started < 5
        assert caplog.messages == ["event=drain_timeout batcher=\"model 'fake' v1\" timeout_s=0.2"]
        assert metrics.inflight_now == 1
        model.release.set()
        np.testing.assert_array_equal((await running)[0], rows(0) * 2)

    run(body)


def test_a_queue_of_only_dropped_requests_forms_no_batch_and_the_batcher_keeps_serving() -> None:
    """With a queue delay, a pass that takes nothing (everything queued had expired) must not
    start collecting around a batch that does not exist."""

    async def body() -> None:
        batcher, model, metrics = make(
            BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=1000)
        )
        model.release.clear()
        running = submit(batcher, rows(0))
        await wait_running(model)
        expired = submit(batcher, rows(1), deadline=time.perf_counter() + 0.01)
        await asyncio.sleep(0.05)
        model.release.set()
        await running
        with pytest.raises(DeadlineExpiredError):
            await expired
        np.testing.assert_array_equal((await submit(batcher, rows(2)))[0], rows(2) * 2)
        assert model.batches == [1, 1]
        assert metrics.dropped_reasons == ["deadline"]
        await batcher.close()

    run(body)
