"""Admission control, the queue policy's timeout and the event-loop lag monitor, in process."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from protos import model_config_pb2 as mc
from serving.config import BatchingOverrides
from serving.core.admission import (
    MAX_RETRY_AFTER_MS,
    Admission,
    default_limit,
    grpc_core_calls,
    sample_core_calls,
)
from serving.core.batcher import Batcher, BatchingPolicy
from serving.core.repository import batching_policy
from serving.errors import QueueTimeoutError, SettingsError, status_code
from serving.loop_monitor import LoopMonitor
from serving.metrics import ServingMetrics


class Refusals:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def refused(self, api: str, reason: str) -> None:
        self.seen.append((api, reason))


def test_admission_refuses_past_the_limit_and_a_release_makes_room():
    refusals = Refusals()
    admission = Admission(2, refusals)
    assert admission.try_acquire("predict") and admission.try_acquire("kserve")
    assert not admission.try_acquire("stream")
    assert refusals.seen == [("stream", "concurrency_limit")]
    assert "the limit (--max-concurrent-rpcs) is 2" in admission.refusal()
    admission.release()
    assert admission.admitted == 1
    assert admission.try_acquire("predict")


def test_calls_waiting_in_the_grpc_core_count_against_the_limit():
    admission = Admission(10)
    admission.sample(core_calls=11, seconds=0.02)  # 11 received, none in a handler yet
    assert not admission.try_acquire("predict")  # refusing it makes room: 10 left
    assert admission.in_server() == 10
    assert admission.try_acquire("predict")  # 10 in the server, this one among them
    admission.release()
    assert admission.in_server() == 9


def serve_and_refuse(admission: Admission, served: int, refused: int) -> None:
    """One 20 ms sample period: ``served`` requests admitted and answered, then a backlog."""
    admission.core_calls = 0
    for _ in range(served):
        assert admission.try_acquire("predict")
        admission.release()
    admission.core_calls = 10_000  # a backlog in the core: what comes now is refused
    for _ in range(refused):
        assert not admission.try_acquire("predict")
    admission.sample(core_calls=0 if refused == 0 else 10_000, seconds=0.02)


def test_the_retry_hint_is_the_time_to_serve_the_limit():
    admission = Admission(100)
    assert admission.retry_after_ms == 1  # nothing served yet
    for _ in range(40):  # 50 requests served per 0.02 s sample: 2,500 requests/s
        serve_and_refuse(admission, 50, 0)
    assert 38 <= admission.retry_after_ms <= 42  # 100 requests at 2,500/s: 40 ms
    # Refusals outnumber half of what is served: the hint grows to push clients back.
    for _ in range(60):
        serve_and_refuse(admission, 50, 30)
    assert admission.retry_after_ms == MAX_RETRY_AFTER_MS
    for _ in range(200):  # no more refusals: back to the time to serve the limit
        serve_and_refuse(admission, 50, 0)
    assert admission.retry_after_ms < 45


def test_the_core_sampler_feeds_admission_and_stops_when_channelz_is_unreadable():
    async def body() -> None:
        admission = Admission(5)
        readings = iter([7, 3, None])
        await asyncio.wait_for(
            sample_core_calls(admission, interval=0.001, read=lambda: next(readings)), 5
        )
        assert admission.core_calls == 3

    asyncio.run(body())


def counting_sampler(
    admission: Admission, calls_in_core: int, interval: float
) -> tuple[asyncio.Task, list[int]]:
    """The core sampler as a task, reading a fixed count (30 s idle pace); and its reads."""
    reads: list[int] = []

    def read() -> int:
        reads.append(calls_in_core)
        return calls_in_core

    sampler = sample_core_calls(admission, interval=interval, read=read, idle_interval=30.0)
    return asyncio.create_task(sampler), reads


def test_an_idle_server_reads_the_core_seldom_and_the_first_call_wakes_the_sampler():
    async def body() -> None:
        admission = Admission(5)
        sampler, reads = counting_sampler(admission, 0, interval=0.001)  # nothing in the core
        await asyncio.sleep(0.2)
        assert len(reads) == 1  # fast once, then waiting up to 30 s
        assert admission.try_acquire("predict")  # a call arrives
        await asyncio.sleep(0.05)
        assert len(reads) >= 2  # read again at once, not after 30 s
        admission.release()
        await asyncio.sleep(0.2)
        idle_reads = len(reads)
        await asyncio.sleep(0.2)
        assert len(reads) == idle_reads  # idle again: no reads
        sampler.cancel()

    asyncio.run(body())


def test_a_busy_server_reads_the_core_at_the_fast_pace():
    async def body() -> None:
        sampler, reads = counting_sampler(Admission(5), 3, interval=0.005)  # calls in the core
        await asyncio.sleep(0.3)
        sampler.cancel()
        assert len(reads) >= 10

    asyncio.run(body())


def test_the_core_count_includes_calls_no_handler_has_seen_yet():
    async def body() -> int:
        seen = 0

        async def hog(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            nonlocal seen
            seen += 1
            time.sleep(0.02)  # a busy event loop: new calls wait in the core
            return b"ok"

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(hog)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Hog", {"Call": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        # The client runs on its own threads: all 40 calls reach the server at once.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.Hog/Call")
            calls = [call.future(b"x", timeout=20) for _ in range(40)]
            unseen = 0  # the most calls in the core that no handler had started on
            while not all(c.done() for c in calls):
                unseen = max(unseen, (grpc_core_calls() or 0) - seen)
                await asyncio.sleep(0.001)
        await server.stop(None)
        return unseen

    assert asyncio.run(asyncio.wait_for(body(), 30)) >= 20


def test_the_default_limit_is_what_the_batchers_can_hold():
    policies = [
        BatchingPolicy(max_batch_size=64, max_queue_size=1024, instances=2),
        BatchingPolicy(enabled=False, max_batch_size=0, max_queue_size=10),
    ]
    assert default_limit(policies) == 1024 + 2 * 64 + 10 + 1
    assert default_limit([]) == 64  # the floor, while nothing is loaded


class HeldModel:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = threading.Event()

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.running.set()
        assert self.release.wait(10)
        return batch


def test_a_request_queued_longer_than_the_queue_timeout_is_refused_before_execution():
    async def body() -> None:
        dropped: list[str] = []
        model = HeldModel()
        policy = BatchingPolicy(max_batch_size=1, queue_timeout_microseconds=50_000)
        metrics = ServingMetrics(CollectorRegistry()).for_version("fake", 1)
        metrics.dropped = dropped.append  # type: ignore[method-assign]
        batcher = Batcher(model, policy, name="model 'fake' v1", metrics=metrics)
        batcher.start()
        running = batcher.submit([np.ones((1, 2), np.float32)], 1).future
        while not model.running.is_set():
            await asyncio.sleep(0.001)
        waiting = batcher.submit([np.ones((1, 2), np.float32)], 1).future
        await asyncio.sleep(0.1)  # twice the queue timeout
        model.release.set()
        await running
        with pytest.raises(QueueTimeoutError, match="default_timeout_microseconds is 50000"):
            await waiting
        assert dropped == ["queue_timeout"]
        assert status_code(QueueTimeoutError("x")).name == "UNAVAILABLE"  # as Triton
        await batcher.close()

    asyncio.run(asyncio.wait_for(body(), 20))


def config_with_queue_policy(action: int | None, timeout_us: int = 3000) -> mc.ModelConfig:
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.dynamic_batching.max_queue_delay_microseconds = 100
    if action is not None:
        queue = config.dynamic_batching.default_queue_policy
        queue.timeout_action = action
        queue.default_timeout_microseconds = timeout_us
        queue.max_queue_size = 7
    return config


def test_the_queue_policy_comes_from_config_pbtxt():
    policy = batching_policy(
        config_with_queue_policy(mc.ModelQueuePolicy.REJECT), BatchingOverrides()
    )
    assert (policy.queue_timeout_microseconds, policy.max_queue_size) == (3000, 7)
    # DELAY keeps a timed-out request queued: our FIFO queue then serves it in turn.
    delayed = batching_policy(
        config_with_queue_policy(mc.ModelQueuePolicy.DELAY), BatchingOverrides()
    )
    assert delayed.queue_timeout_microseconds == 0
    assert (
        batching_policy(
            config_with_queue_policy(None), BatchingOverrides()
        ).queue_timeout_microseconds
        == 0
    )
    with pytest.raises(SettingsError, match="queue_timeout_microseconds"):
        BatchingPolicy(queue_timeout_microseconds=-1)


def test_the_loop_monitor_sees_a_blocked_event_loop():
    async def body() -> list[float]:
        lags: list[float] = []
        monitor = LoopMonitor(lags.append, interval=0.01)
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # a handler hogging the loop
        await asyncio.sleep(0.05)
        await monitor.stop()
        return lags

    lags = asyncio.run(body())
    assert max(lags) >= 0.2
    assert min(lags) < 0.1


def test_overload_metrics_are_exported_and_cost_nothing_when_disabled():
    metrics = ServingMetrics(CollectorRegistry())
    admission = Admission(3, metrics)
    metrics.watch_admission(admission.in_server, lambda: admission.limit)
    assert all(admission.try_acquire("predict") for _ in range(3))
    assert not admission.try_acquire("kserve")
    metrics.refused("stream", "undecodable")
    metrics.loop_lag(0.02)
    value = metrics.registry.get_sample_value
    assert value("d2lserve_calls_in_server") == 3
    assert value("d2lserve_admission_limit") == 3
    assert (
        value("d2lserve_refused_requests_total", {"api": "kserve", "reason": "concurrency_limit"})
        == 1
    )
    assert value("d2lserve_refused_requests_total", {"api": "stream", "reason": "undecodable"}) == 1
    assert (
        value("d2lserve_refused_requests_total", {"api": "predict", "reason": "undecodable"}) == 0
    )
    assert value("d2lserve_event_loop_lag_seconds_count") == 1
    for _ in range(3):
        admission.release()
    assert value("d2lserve_calls_in_server") == 0
    off = ServingMetrics(CollectorRegistry(), enabled=False)
    off.watch_admission(lambda: 1, lambda: 1)
    off.refused("predict", "concurrency_limit")
    off.loop_lag(1.0)
    assert off.registry.get_sample_value("d2lserve_calls_in_server") is None


def test_the_limit_flag_is_validated(tmp_path):
    from serving.__main__ import settings_from_args

    base = ["--model-repository", str(tmp_path)]
    assert settings_from_args(base).max_concurrent_rpcs is None  # the default: derived
    assert settings_from_args([*base, "--max-concurrent-rpcs", "32"]).max_concurrent_rpcs == 32
    with pytest.raises(SettingsError, match="max_concurrent_rpcs must be >= 1, got 0"):
        settings_from_args([*base, "--max-concurrent-rpcs", "0"])
