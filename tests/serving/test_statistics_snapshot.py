"""Statistics are one snapshot (issue 21): any ModelStatistics read satisfies Triton's rules.

Triton's perf_analyzer takes two ModelStatistics reads around each measurement window and
aborts ("Server side statistics compute counts must be the same") unless, between them,
the success, queue and three compute counts moved together. The server once counted
``compute_infer`` when a batch ran but the rest when the answer was encoded: a read taken
in between disagreed. Here: a property test interleaves requests of every outcome with
reads in process, and the real perf_analyzer drives a real server (one process and
``--workers 2``) at concurrency 1, 64 and 256, sync and async.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from inprocess_support import FEATURES, HeldModel, add_version
from prometheus_client import CollectorRegistry
from required_tools import require_tool

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc
from serving.config import BatchingOverrides
from serving.core.admission import Admission
from serving.core.batcher import BatchingPolicy
from serving.core.corridor import Corridor
from serving.core.inference import InferenceRequest, InputTensor
from serving.core.repository import Repository
from serving.errors import ServingError
from serving.metrics import ServingMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import peers

COUNTED = ("success", "queue", "compute_input", "compute_infer", "compute_output")


def assert_one_snapshot(stats: pb.ModelStatistics) -> None:
    """Triton's invariants of one read."""
    inference = stats.inference_stats
    counts = {name: getattr(inference, name).count for name in COUNTED}
    assert len(set(counts.values())) == 1, counts
    for name in COUNTED:
        duration = getattr(inference, name)
        assert duration.ns >= 0 and (duration.count > 0 or duration.ns == 0), (name, duration)


def read(corridor: Corridor) -> pb.ModelStatistics:
    message = pb.ModelStatistics()
    corridor.repository.models["m"].versions[1].statistics.into(message)
    return message


def rows(count: int) -> InferenceRequest:
    array = np.ones((count, FEATURES), np.float32)
    return InferenceRequest("m", 0, [InputTensor("input", "FP32", array.shape, array.tobytes())])


BAD = InferenceRequest("m", 0, [InputTensor("input", "FP64", (1, FEATURES), bytes(8 * FEATURES))])


def encode(result) -> int:
    return result.outputs[0].shape[0]


def encode_fails(result) -> int:
    raise RuntimeError("a bug while encoding")


class Flaky(HeldModel):
    """Doubles its input; every third execution raises (a failing batch)."""

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("execution failed")
        return [batch[0] * 2]


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("ok"), st.integers(1, 8)),
        st.tuples(st.just("bad"), st.just(0)),
        st.tuples(st.just("cancel"), st.just(0)),
        st.tuples(st.just("encode_fails"), st.just(0)),
        st.tuples(st.just("yield"), st.integers(1, 5)),
        st.tuples(st.just("sleep"), st.just(0)),
        st.tuples(st.just("read"), st.just(0)),
    ),
    min_size=1,
    max_size=40,
)


@given(OPERATIONS)
def test_every_read_is_one_snapshot_whatever_the_outcomes_and_their_order(operations) -> None:
    async def body() -> None:
        metrics = ServingMetrics(CollectorRegistry())
        repository = Repository(Path("."), None, BatchingOverrides(), metrics)  # type: ignore[arg-type]
        policy = BatchingPolicy(max_batch_size=64, max_queue_delay_microseconds=200)
        add_version(repository, "m", Flaky(), policy)
        corridor = Corridor(repository, Admission(10_000))
        tasks: list[asyncio.Task] = []
        refused = 0
        for kind, amount in operations:
            if kind == "ok":
                tasks.append(asyncio.ensure_future(corridor.infer("kserve", rows(amount), encode)))
            elif kind == "bad":
                with pytest.raises(ServingError):
                    corridor.begin("kserve", BAD, None)
                refused += 1
            elif kind == "cancel":
                task = asyncio.ensure_future(corridor.infer("kserve", rows(1), encode))
                await asyncio.sleep(0)
                task.cancel()
                tasks.append(task)
            elif kind == "encode_fails":
                tasks.append(asyncio.ensure_future(corridor.infer("kserve", rows(1), encode_fails)))
            elif kind == "yield":
                for _ in range(amount):
                    await asyncio.sleep(0)
            elif kind == "sleep":
                await asyncio.sleep(0.002)  # let a batch run in its thread and come back
            assert_one_snapshot(read(corridor))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        answered = [r for r in results if isinstance(r, int)]
        final = read(corridor)
        assert_one_snapshot(final)
        inference = final.inference_stats
        assert inference.success.count == len(answered)
        assert final.inference_count == sum(answered)  # rows of the successful requests only
        assert inference.fail.count == len(results) - len(answered) + refused
        await repository.models["m"].versions[1].batcher.close()

    asyncio.run(body())


# -- Triton's perf_analyzer against the real server ------------------------------------


def perf_analyzer(target: str, concurrency: int, asynchronous: bool) -> subprocess.CompletedProcess:
    binary = peers.perf_analyzer()
    if binary is None:
        require_tool("perf_analyzer", peers.INSTALL_HINT)
    command = [
        str(binary), "-m", "mlp", "-u", target, "-i", "grpc", "-b", "1",
        "--concurrency-range", str(concurrency),
        "--measurement-interval", "400", "--stability-percentage", "100", "--max-trials", "3",
    ]  # fmt: skip
    if asynchronous:
        command.append("--async")
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=peers.perf_analyzer_env()
    )


def statistics_reader(target: str, stop: threading.Event, reads: list[pb.ModelStatistics]):
    """Read ModelStatistics as fast as possible while the load runs (another client)."""
    with grpc.insecure_channel(target) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            response = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=10)
            reads.extend(response.model_stats)
            time.sleep(0.005)


@pytest.fixture(scope="module")
def measured_server(model_repository, tmp_path_factory):
    """One server for the perf_analyzer runs; its budget admits a closed loop of 256."""
    from serving_support import ServerProcess

    process = ServerProcess(model_repository, ["--max-concurrent-rpcs", "1024"])
    process.start(tmp_path_factory.mktemp("perf-analyzer"))
    yield process
    assert process.stop() == 0, process.log()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("concurrency", [1, 64, 256])
def test_perf_analyzer_measures_the_server_at_any_concurrency(
    measured_server, concurrency, asynchronous
) -> None:
    stop = threading.Event()
    reads: list[pb.ModelStatistics] = []
    reader = threading.Thread(target=statistics_reader, args=(measured_server.target, stop, reads))
    reader.start()
    try:
        result = perf_analyzer(measured_server.target, concurrency, asynchronous)
    finally:
        stop.set()
        reader.join(30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Throughput:" in output
    assert "compute counts must be the same" not in output
    assert reads, "no statistics were read during the load"
    for stats in reads:
        assert_one_snapshot(stats)


def test_perf_analyzer_reads_consistent_statistics_across_two_workers(
    model_repository, start_server
) -> None:
    server = start_server(model_repository, "--workers", "2", "--max-concurrent-rpcs", "1024")
    stop = threading.Event()
    reads: list[pb.ModelStatistics] = []
    reader = threading.Thread(target=statistics_reader, args=(server.target, stop, reads))
    reader.start()
    try:
        result = perf_analyzer(server.target, 64, asynchronous=True)
    finally:
        stop.set()
        reader.join(30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert reads
    for stats in reads:  # the merged view of both workers
        assert_one_snapshot(stats)
