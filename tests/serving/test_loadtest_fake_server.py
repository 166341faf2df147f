"""The load loop against an in-process fake server whose behaviour each test sets.

A fake server makes the runner's own properties testable exactly: request counts, id matching on
an out-of-order stream, errors by code, the hard time bound and open-loop timing from the
schedule. The live-server tests in test_loadtest_live.py cover the real service.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from model_repository import metadata as meta
from protos import grpc_service_pb2, predict_pb2
from serving.loadtest import cli
from serving.loadtest.session import run_loadtest
from serving.loadtest.settings import ConnectionSettings, LoadPlan, LoadTestSettings, Workload

PROBABILITIES = np.full((1, 10), 0.1, dtype=np.float32)


@dataclass
class Behaviour:
    """What the fake server does; tests change it before sending load."""

    delay_seconds: float = 0.0
    fail_every: int = 0  # every n-th Predict fails with RESOURCE_EXHAUSTED
    stall_from: float = -1.0  # monotonic time from which responses wait until stall_until
    stall_until: float = -1.0
    token: str | None = None
    stream_error: str | None = None  # when set, the stream answers every request with it
    seen: Counter[str] = field(default_factory=Counter)


class FakeServer:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))

    def __enter__(self) -> FakeServer:
        self._thread.start()
        assert self._ready.wait(10), "fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _wait_like_a_server(self) -> None:
        b = self.behaviour
        if b.delay_seconds:
            await asyncio.sleep(b.delay_seconds)
        now = time.monotonic()
        if b.stall_from <= now < b.stall_until:
            await asyncio.sleep(b.stall_until - now)

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.behaviour.token is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get("authorization") != f"Bearer {self.behaviour.token}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    async def get_model(
        self, request: predict_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.ModelInfo:
        await self._authorize(context)
        if request.name != "mlp":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.name!r}")
        return predict_pb2.ModelInfo(
            name="mlp",
            version=1,
            task="classification",
            inputs=[
                predict_pb2.TensorSpec(name="input", dtype=predict_pb2.FLOAT32, shape=[-1, 1, 8, 8])
            ],
            metadata={meta.INPUT_RANGE: "[0.0, 1.0]"},
            batching=predict_pb2.BatchingSettings(max_batch_size=64),
        )

    async def predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        await self._authorize(context)
        b = self.behaviour
        b.seen["predict"] += 1
        await self._wait_like_a_server()
        if b.fail_every and b.seen["predict"] % b.fail_every == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (fake)")
        rows = request.input.shape[0]
        return predict_pb2.PredictResponse(
            model="mlp",
            version=1,
            probabilities=predict_pb2.Tensor(
                shape=[rows, 10],
                dtype=predict_pb2.FLOAT32,
                data=np.repeat(PROBABILITIES, rows, 0).tobytes(),
            ),
        )

    async def stream(self, requests, context: grpc.aio.ServicerContext):
        """Answers each request after a random delay, so responses come out of order."""
        b = self.behaviour
        rng = random.Random(0)
        out: asyncio.Queue[grpc_service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()

        async def answer(request: grpc_service_pb2.ModelInferRequest) -> None:
            await asyncio.sleep(rng.uniform(0, 0.004))
            if b.stream_error is not None:
                error = grpc_service_pb2.ModelStreamInferResponse(
                    error_message=b.stream_error,
                    infer_response=grpc_service_pb2.ModelInferResponse(id=request.id),
                )
                await out.put(error)
                return
            response = grpc_service_pb2.ModelInferResponse(
                model_name="mlp", model_version="1", id=request.id
            )
            await out.put(grpc_service_pb2.ModelStreamInferResponse(infer_response=response))

        async def pump() -> None:
            tasks = []
            async for request in requests:
                b.seen["stream"] += 1
                tasks.append(asyncio.ensure_future(answer(request)))
            await asyncio.gather(*tasks)
            await out.put(None)

        pumping = asyncio.ensure_future(pump())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            pumping.cancel()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = grpc.aio.server()
        handlers = {
            "GetModel": grpc.unary_unary_rpc_method_handler(
                self.get_model,
                predict_pb2.GetModelRequest.FromString,
                predict_pb2.ModelInfo.SerializeToString,
            ),
            "Predict": grpc.unary_unary_rpc_method_handler(
                self.predict,
                predict_pb2.PredictRequest.FromString,
                predict_pb2.PredictResponse.SerializeToString,
            ),
        }
        kserve = {
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.stream,
                grpc_service_pb2.ModelInferRequest.FromString,
                grpc_service_pb2.ModelStreamInferResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("d2lserve.v1.PredictionService", handlers),
                grpc.method_handlers_generic_handler("inference.GRPCInferenceService", kserve),
            )
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._ready.set()
        await self._stop.wait()
        await server.stop(0)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def settings_for(
    fake: FakeServer, *, api: str = "predict", model: str = "mlp", **plan: object
) -> LoadTestSettings:
    return LoadTestSettings(
        connection=ConnectionSettings(target=f"127.0.0.1:{fake.port}", connect_timeout_seconds=5.0),
        workload=Workload(model=model, api=api, pool_size=8),
        plan=LoadPlan(**plan),  # type: ignore[arg-type]
        metrics_url=None,
    )


def test_closed_loop_sends_exactly_the_requested_number(fake: FakeServer) -> None:
    settings = settings_for(fake, concurrency=8, requests=300, timeout_seconds=5.0)
    result = asyncio.run(run_loadtest(settings))
    report = result.report
    assert report.ok == 300 and report.requests == 300 and report.errors == {}
    assert fake.behaviour.seen["predict"] == 300
    assert report.latency.count == 300
    assert 0 < report.latency.p50_ms <= report.latency.p99_ms <= report.latency.max_ms < 5000
    assert report.requests_per_second > 0 and report.rows_per_second == report.requests_per_second
    assert 0.0 < report.client_cpu_ratio < 1.5
    assert report.passed


def test_warmup_requests_are_run_but_excluded(fake: FakeServer) -> None:
    fake.behaviour.delay_seconds = 0.002
    duration, warmup = 0.3, 0.6
    settings = settings_for(fake, concurrency=2, duration_seconds=duration, warmup_seconds=warmup)
    report = asyncio.run(run_loadtest(settings)).report
    assert report.warmup_requests > 0
    assert fake.behaviour.seen["predict"] == report.requests + report.warmup_requests
    # The measured window starts when the warm-up ends and runs to the last measured
    # completion: at least the whole duration (closed-loop workers send until it ends),
    # and short of warm-up + duration, which it would reach if the warm-up were counted.
    # No tighter upper bound: on a loaded machine the last answer can come 100 ms late
    # (0.50 s was once measured for a 0.4 s run against a 0.4 +- 0.1 s window).
    assert duration - 0.01 <= report.measured_seconds < duration + warmup


def test_errors_are_counted_by_status_code(fake: FakeServer) -> None:
    fake.behaviour.fail_every = 4
    settings = settings_for(fake, concurrency=4, requests=200)
    report = asyncio.run(run_loadtest(settings)).report
    assert report.errors == {"RESOURCE_EXHAUSTED": 50}
    assert report.ok == 150
    assert report.error_messages["RESOURCE_EXHAUSTED"] == "queue full (fake)"
    assert report.error_ratio == pytest.approx(0.25)
    assert not report.passed


def test_stream_matches_out_of_order_responses_by_id_and_counts_stream_errors(
    fake: FakeServer,
) -> None:
    settings = settings_for(fake, api="stream", concurrency=16, requests=400, streams=2)
    report = asyncio.run(run_loadtest(settings)).report
    assert report.ok == 400 and report.errors == {}
    assert fake.behaviour.seen["stream"] == 400
    # Error responses on the stream are counted by the code their message names.
    fake.behaviour.stream_error = "NOT_FOUND: unknown model 'mlp' version 9"
    report = asyncio.run(
        run_loadtest(settings_for(fake, api="stream", concurrency=4, requests=40))
    ).report
    assert report.errors == {"NOT_FOUND": 40} and report.ok == 0, report
    assert report.error_messages["NOT_FOUND"].startswith("NOT_FOUND: unknown model")


def test_the_hard_time_bound_cuts_a_hanging_server(fake: FakeServer) -> None:
    fake.behaviour.delay_seconds = 30.0
    settings = settings_for(
        fake, concurrency=5, duration_seconds=10.0, max_seconds=1.0, timeout_seconds=20.0
    )
    started = time.perf_counter()
    report = asyncio.run(run_loadtest(settings)).report
    assert time.perf_counter() - started < 3.0
    assert report.cut_by_time_bound and report.unfinished == 5 and report.ok == 0
    assert not report.passed


def test_open_loop_keeps_its_rate_and_times_requests_from_the_schedule(fake: FakeServer) -> None:
    settings = settings_for(
        fake, rate_per_second=200.0, duration_seconds=1.5, arrival="poisson", seed=1
    )
    report = asyncio.run(run_loadtest(settings)).report
    assert report.ok == pytest.approx(300, rel=0.2)
    assert report.requests_per_second == pytest.approx(200, rel=0.2)
    assert report.send_lag is not None and report.send_lag.p50_ms < 5.0

    # A server that stalls for 0.4 s: every arrival during the stall waits for its end, and an
    # open loop must charge that wait to each of them (a closed loop with one caller would see
    # a single slow request).
    start = time.monotonic()
    fake.behaviour.stall_from, fake.behaviour.stall_until = start + 0.3, start + 0.7
    settings = settings_for(fake, rate_per_second=100.0, duration_seconds=1.0, arrival="constant")
    result = asyncio.run(run_loadtest(settings))
    slow = sum(count for lower, _, count in result.outcome.latency.buckets() if lower > 0.1)
    assert slow >= 25


def test_open_loop_never_sends_before_the_schedule_on_uvloop(fake: FakeServer) -> None:
    # uvloop's timers round to milliseconds and can wake early; a request sent early would
    # be timed from its (later) schedule and look faster than the server answered it.
    import uvloop

    fake.behaviour.delay_seconds = 0.003
    settings = settings_for(fake, rate_per_second=300.0, duration_seconds=1.0, seed=2)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        report = runner.run(run_loadtest(settings)).report
    assert report.ok > 200
    assert report.latency.min_ms >= 3.0
    assert report.send_lag is not None and report.send_lag.min_ms >= 0.0


def test_cli_writes_json_and_plot_and_exits_by_the_error_gate(
    fake: FakeServer, tmp_path: Path
) -> None:
    base = [
        "--target",
        f"127.0.0.1:{fake.port}",
        "--model",
        "mlp",
        "--requests",
        "60",
        "--warmup",
        "0",
        "--concurrency",
        "3",
        "--no-server-metrics",
        "--quiet",
    ]
    json_path, plot_path = tmp_path / "r.json", tmp_path / "r.png"
    assert cli.main([*base, "--json", str(json_path), "--plot", str(plot_path)]) == 0
    data = json.loads(json_path.read_text())
    assert data["ok"] == 60 and data["passed"] is True and data["latency"]["p99_ms"] > 0
    assert plot_path.stat().st_size > 10_000
    fake.behaviour.fail_every = 10
    assert cli.main(base) == 1
    assert cli.main([*base, "--max-error-ratio", "0.2"]) == 0


def test_cli_token_and_unreachable_target(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.behaviour.token = "s3cret"
    base = [
        "--target",
        f"127.0.0.1:{fake.port}",
        "--model",
        "mlp",
        "--requests",
        "10",
        "--warmup",
        "0",
        "--no-server-metrics",
        "--quiet",
        "--connect-timeout",
        "2",
    ]
    assert cli.main(base) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main([*base, "--token", "s3cret"]) == 0
    assert (
        cli.main(
            [
                "--target",
                "127.0.0.1:1",
                "--model",
                "mlp",
                "--requests",
                "1",
                "--connect-timeout",
                "0.5",
                "--quiet",
            ]
        )
        == 1
    )
    assert "cannot connect" in capsys.readouterr().err
