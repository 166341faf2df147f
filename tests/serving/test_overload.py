"""Overload against a real server: the excess is refused fast, the admitted calls stay fast.

The server admits at most ``LIMIT`` inference requests at once; a closed-loop client with
many times that many callers offers far more than it can serve for a bounded time. The
margins are generous: the machine running the suite may be small and shared.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import grpc
import numpy as np
import pytest
from serving_support import ServerProcess
from test_metrics_server import scrape, value

from protos import grpc_service_pb2 as pb
from serving.core.admission import RETRY_AFTER_KEY

# Above the calls grpc.aio ever has in its handlers at once (fewer than 8 in the bench), so
# only counting the calls waiting in the gRPC core sheds anything.
LIMIT = 16
CALLERS = 160  # 10x the limit
STREAM_LIMIT = 2
SECONDS = 2.0
BUDGET_S = 5.0  # every call's deadline: admitted calls must finish well inside it
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


def limited_server(repository, limit: int, log_dir):
    process = ServerProcess(repository, ["--max-concurrent-rpcs", str(limit)])
    process.start(log_dir)
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()


@pytest.fixture
def limited(model_repository, tmp_path):
    yield from limited_server(model_repository, LIMIT, tmp_path)


@pytest.fixture
def stream_limited(model_repository, tmp_path):
    yield from limited_server(model_repository, STREAM_LIMIT, tmp_path)


def infer_request(model: str, array: np.ndarray, request_id: str = "") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=array.shape)
    return pb.ModelInferRequest(
        model_name=model, id=request_id, inputs=[tensor], raw_input_contents=[array.tobytes()]
    )


async def offer_load(target: str, body: bytes) -> list[tuple[grpc.StatusCode, float, str, str]]:
    """(code, seconds, details, retry-after trailer) of every call of CALLERS closed loops."""
    outcomes: list[tuple[grpc.StatusCode, float, str, str]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(MODEL_INFER)
        end = time.perf_counter() + SECONDS

        async def caller() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    await call(body, timeout=BUDGET_S)
                    outcome = (grpc.StatusCode.OK, "", "")
                except grpc.aio.AioRpcError as error:
                    trailers = dict(error.trailing_metadata() or ())
                    outcome = (
                        error.code(),
                        error.details() or "",
                        trailers.get(RETRY_AFTER_KEY, ""),
                    )
                code, details, retry = outcome
                outcomes.append((code, time.perf_counter() - started, details, retry))

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return outcomes


def test_overload_is_refused_fast_and_admitted_calls_finish_within_budget(limited):
    body = infer_request("mlp", np.full((1, 1, 8, 8), 0.5, np.float32)).SerializeToString()
    before = scrape(limited.metrics_port)
    outcomes = asyncio.run(offer_load(limited.target, body))
    codes = {code for code, *_ in outcomes}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    served = [seconds for code, seconds, *_ in outcomes if code == grpc.StatusCode.OK]
    refused = [o for o in outcomes if o[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert served and refused, (len(served), len(refused))
    # Refusals are quick and say when to come back.
    assert statistics.median(seconds for _, seconds, _, _ in refused) < 0.5
    _, _, details, retry_after = refused[0]
    assert f"the limit (--max-concurrent-rpcs) is {LIMIT}" in details
    assert int(retry_after) >= 1
    # Admitted calls never waited out their budget.
    assert max(served) < BUDGET_S / 2
    # Right after, a normal call succeeds and the server has let go of every slot.
    with limited.channel() as channel:
        assert channel.unary_unary(MODEL_INFER)(body, timeout=10)
    after = scrape(limited.metrics_port)
    labels = {"api": "kserve", "reason": "concurrency_limit"}
    counted = value(after, "d2lserve_refused_requests_total", **labels) - value(
        before, "d2lserve_refused_requests_total", **labels
    )
    assert counted == len(refused)
    assert value(after, "d2lserve_calls_in_server") <= 2  # this scrape, a health check
    assert value(after, "d2lserve_admission_limit") == LIMIT
    assert value(after, "d2lserve_event_loop_lag_seconds_count") > 0


def test_stream_messages_over_the_limit_are_answered_with_an_error_and_the_stream_goes_on(
    stream_limited,
):
    with stream_limited.channel() as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        # "slow" takes tens of milliseconds per execution: a burst overruns the limit.
        row = np.ones((1, 4), np.float32)
        requests = [infer_request("slow", row, str(i)) for i in range(20)]
        responses = list(call(iter(requests), timeout=30))
    assert sorted(int(r.infer_response.id) for r in responses) == list(range(20))
    errors = [r.error_message for r in responses if r.error_message]
    assert any("--max-concurrent-rpcs" in e for e in errors), errors
    assert len(errors) < 20  # the admitted ones were served
