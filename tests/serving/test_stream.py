"""ModelStreamInfer in process: completion order, per-message errors, a bounded window.

The service runs on a real Batcher and Repository with fake model functions that a test
can hold, so what is queued at any moment is known exactly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from inprocess_support import FEATURES, HeldModel, add_version
from prometheus_client import CollectorRegistry

from protos import grpc_service_pb2 as pb
from serving.config import BatchingOverrides
from serving.core.admission import Admission
from serving.core.corridor import Corridor
from serving.core.repository import Repository
from serving.grpc_api.kserve import MAX_STREAM_INFLIGHT, InferenceService
from serving.metrics import ServingMetrics


def request(model: str, request_id: str, rows: int = 1, features: int = FEATURES):
    array = np.full((rows, features), float(len(request_id)), np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=array.shape)
    return pb.ModelInferRequest(
        model_name=model, id=request_id, inputs=[tensor], raw_input_contents=[array.tobytes()]
    )


class Requests:
    """A client's request stream: counts what the server pulled; ends when told."""

    def __init__(self, requests: list[pb.ModelInferRequest]) -> None:
        self.queue: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()
        for item in requests:
            self.queue.put_nowait(item)
        self.pulled = 0

    def end(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[pb.ModelInferRequest]:
        while (item := await self.queue.get()) is not None:
            self.pulled += 1
            yield item


def service(tmp_path: Path) -> tuple[InferenceService, Repository, ServingMetrics]:
    metrics = ServingMetrics(CollectorRegistry())
    repository = Repository(tmp_path, None, BatchingOverrides(), metrics)  # type: ignore[arg-type]
    corridor = Corridor(repository, Admission(sys.maxsize))
    return InferenceService(corridor, lambda: True), repository, metrics


def requests_total(metrics: ServingMetrics, model: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "d2lserve_requests_total", {"model": model, "version": "1", "api": "stream", "code": code}
    )
    return value or 0.0


async def wait_for(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_a_fast_response_is_not_held_behind_a_slow_one_and_errors_keep_their_id(tmp_path):
    async def scenario() -> None:
        inference, repository, metrics = service(tmp_path)
        slow, fast = HeldModel(), HeldModel()
        add_version(repository, "slow", slow)
        add_version(repository, "fast", fast)
        slow.release.clear()
        requests = Requests(
            [
                request("slow", "s1"),
                request("fast", "f1"),
                request("fast", "bad", features=3),
                request("nope", "unknown"),
                request("fast", "f2", rows=2),
            ]
        )
        responses = inference.ModelStreamInfer(requests, None)  # type: ignore[arg-type]
        first = [await anext(responses) for _ in range(4)]
        # s1 is still held in its worker thread (which may not have started it yet)
        await wait_for(lambda: slow.calls == 1)
        assert not slow.release.is_set()
        by_id = {r.infer_response.id: r for r in first}
        assert sorted(by_id) == ["bad", "f1", "f2", "unknown"]
        assert "has shape [1, 3]" in by_id["bad"].error_message
        assert "model 'nope' not found" in by_id["unknown"].error_message
        f2 = by_id["f2"].infer_response
        assert not by_id["f2"].error_message and list(f2.outputs[0].shape) == [2, FEATURES]
        np.testing.assert_array_equal(
            np.frombuffer(f2.raw_output_contents[0], np.float32), np.full(2 * FEATURES, 4.0)
        )
        slow.release.set()
        last = await anext(responses)
        assert last.infer_response.id == "s1" and not last.error_message
        requests.end()
        assert [r async for r in responses] == []  # the stream closes once all are answered
        assert requests_total(metrics, "fast", "OK") == 2
        assert requests_total(metrics, "fast", "INVALID_ARGUMENT") == 1
        assert requests_total(metrics, "slow", "OK") == 1

    asyncio.run(scenario())


def test_one_stream_admits_at_most_the_window_then_waits_for_answers(tmp_path):
    async def scenario() -> None:
        inference, repository, _ = service(tmp_path)
        model = HeldModel()
        version = add_version(repository, "m", model)
        model.release.clear()
        total = MAX_STREAM_INFLIGHT + 100
        requests = Requests([request("m", f"r{i}") for i in range(total)])
        requests.end()
        responses = inference.ModelStreamInfer(requests, None)  # type: ignore[arg-type]
        first = asyncio.ensure_future(anext(responses))
        # The reader stops after the window: one request executing, the rest queued, and
        # the next one pulled from the client but not admitted.
        await wait_for(lambda: requests.pulled == MAX_STREAM_INFLIGHT + 1)
        await asyncio.sleep(0.05)
        assert requests.pulled == MAX_STREAM_INFLIGHT + 1
        assert version.batcher.depth == MAX_STREAM_INFLIGHT - 1
        assert not first.done()
        model.release.set()
        ids = [(await first).infer_response.id] + [r.infer_response.id async for r in responses]
        assert sorted(ids) == sorted(f"r{i}" for i in range(total))
        assert version.batcher.statistics.execution_count == total

    asyncio.run(scenario())


def test_requests_still_queued_when_the_stream_ends_are_cancelled(tmp_path):
    async def scenario() -> None:
        inference, repository, metrics = service(tmp_path)
        model = HeldModel()
        version = add_version(repository, "m", model)
        model.release.clear()
        requests = Requests([request("m", f"r{i}") for i in range(3)])
        responses = inference.ModelStreamInfer(requests, None)  # type: ignore[arg-type]
        first = asyncio.ensure_future(anext(responses))
        await wait_for(lambda: version.batcher.depth == 2)
        first.cancel()  # the client went away: the handler is cancelled mid-stream
        await asyncio.gather(first, return_exceptions=True)
        await responses.aclose()
        model.release.set()
        await wait_for(lambda: requests_total(metrics, "m", "CANCELLED") == 3)
        await version.batcher.close(5)
        assert (
            version.batcher.statistics.execution_count == 1
        )  # the queued two were dropped, not run

    asyncio.run(scenario())
