"""Serving benchmark (issue 6): the compute limit, then the service under load, in one run.

The server is pinned to one core and the load generator to another (``taskset``), so the
figures say what one server core does. Every case is a real ``python -m serving`` process
driven by ``python -m serving.loadtest`` (closed loop); the in-process ONNX Runtime baseline
runs pinned to the server's core with the server's thread settings (1 intra-op thread).

Models (random weights, exported through ``training.export`` like a trained model):
* ``mlp``  784 -> 256 -> 10 on 1x28x28 input (the issue's reference shape; no data set is
  needed, so this works offline);
* ``wide`` 784 -> H -> H -> 10 (H = --wide-hidden, 3072 by default): a compute-heavy variant
  whose single-row ``session.run`` takes about a millisecond.

    python bench/serve_bench.py            # ~3 minutes
    python bench/serve_bench.py --quick    # ~1 minute, shorter runs

``--scaling`` runs a different comparison instead (issue 13): ``--workers 1`` against
``--workers 2`` (``--workers-list`` for more) side by side, nothing pinned unless
``--server-cpus``/``--client-cpus`` give the server and the load generators (``--clients``
processes) CPU sets of their own, each load generator with ``--connections 8`` at concurrency 64
on ``mlp``; req/s, p99 and
server CPU per request (CPU seconds of every worker process, from /proc through the server's
/metrics, over the measured seconds, divided by the requests the server counted).

    python bench/serve_bench.py --scaling --repeat 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server_process import ROOT, ServerProcess, pinned

sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
SAMPLE_SHAPE = (1, 28, 28)  # of both models below


# -- models -------------------------------------------------------------------------------------


def build_repository(repository: Path, wide_hidden: int, seed: int = 0) -> None:
    """Export ``mlp`` and ``wide`` with random weights through the project's exporter."""
    import torch
    from torch import nn

    from training.export import export_trained_model
    from training.result import DatasetInfo, TrainedModel

    torch.manual_seed(seed)
    info = DatasetInfo(
        name="synthetic",
        task="classification",
        input_shape=SAMPLE_SHAPE,
        labels=tuple(f"class-{i}" for i in range(10)),
        input_range=(0.0, 1.0),
    )
    networks = {
        "mlp": nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)),
        "wide": nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, wide_hidden),
            nn.ReLU(),
            nn.Linear(wide_hidden, wide_hidden),
            nn.ReLU(),
            nn.Linear(wide_hidden, 10),
        ),
    }
    for name, network in networks.items():
        trained = TrainedModel(
            kind="mlp",
            model=network.eval(),
            dataset=info,
            metrics={},
            history=[],
            hyperparameters={"note": "random weights for the serving benchmark", "name": name},
            device="cpu",
            seconds=0.0,
            holdout=torch.rand(64, 1, 28, 28),
        )
        export_trained_model(trained, repository, name=name)


def ort_rows_per_second(model_path: Path, batches: list[int], seconds: float) -> dict[str, float]:
    """In-process ONNX Runtime, server thread settings: rows/s per batch size."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    out: dict[str, float] = {}
    for batch in batches:
        x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
        for _ in range(20):
            session.run(None, {"input": x})
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            session.run(None, {"input": x})
            runs += 1
        out[str(batch)] = runs * batch / elapsed
    return out


# -- the gRPC floor -----------------------------------------------------------------------------


async def null_server(port: int) -> None:
    """grpc.aio on uvloop answering Predict with a fixed, pre-serialized response.

    No parsing, no batching, no model, no metrics: what one core does for a unary grpc.aio
    call and nothing else, the ceiling for any Python grpc.aio handler on this machine.
    """
    import grpc

    from protos import grpc_service_pb2, predict_pb2

    info = model_info("mlp")
    answer = predict_pb2.PredictResponse(
        model="mlp",
        version=1,
        probabilities=predict_pb2.Tensor(shape=[1, 10], dtype=predict_pb2.FLOAT32, data=bytes(40)),
    ).SerializeToString()

    async def get_model(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return info

    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    parse = grpc_service_pb2.ModelInferRequest.FromString
    stream_answer = grpc_service_pb2.ModelStreamInferResponse

    async def stream(requests, context: grpc.aio.ServicerContext):
        async for request in requests:  # answered in order; only the id is read
            yield stream_answer(
                infer_response=grpc_service_pb2.ModelInferResponse(
                    model_name="mlp", model_version="1", id=parse(request).id
                )
            ).SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "d2lserve.v1.PredictionService",
                {
                    "GetModel": grpc.unary_unary_rpc_method_handler(get_model),
                    "Predict": grpc.unary_unary_rpc_method_handler(predict),
                },
            ),
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream)},
            ),
        )
    )
    await serve_until_terminated(server, port)


async def serve_until_terminated(server, port: int) -> None:
    """Add health, bind (port 0: the kernel picks), log the port as serving does, serve."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"event=listening address=127.0.0.1:{bound}", flush=True)  # serving.logs.bound_ports
    await server.wait_for_termination()


def model_info(name: str) -> bytes:
    """GetModel's answer for ``name`` (both models take 1x28x28 in [0, 1]): what the load
    tester reads to build its requests."""
    from model_repository import metadata as meta
    from protos import predict_pb2

    return predict_pb2.ModelInfo(
        name=name,
        version=1,
        task="classification",
        inputs=[
            predict_pb2.TensorSpec(name="input", dtype=predict_pb2.FLOAT32, shape=[-1, 1, 28, 28])
        ],
        metadata={meta.INPUT_RANGE: "[0.0, 1.0]"},
    ).SerializeToString()


async def direct_server(port: int, repository: Path) -> None:
    """grpc.aio on uvloop whose Predict calls ``session.run`` itself: no batcher at all.

    Each request is parsed, validated (``RequestSchema.decode``, as the server does) and
    run alone in one
    worker thread with the server's session settings (1 intra-op thread), and its
    probabilities are returned; no queue, no merging, no metrics. This is the "no batching"
    side of a batching-vs-none claim; ``--no-batching`` is still the batcher (its queue,
    worker thread and bookkeeping) with merging turned off.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import onnxruntime as ort

    from model_repository.datatypes import BY_WIRE
    from protos import predict_pb2
    from serving.core.tensors import RequestSchema, TensorSpec
    from serving.errors import InvalidInputError
    from serving.grpc_api.predict import inference_request
    from serving.grpc_api.predict_tensors import fill_predict_tensor

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {
        path.parent.parent.name: ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        for path in sorted(repository.glob("*/1/model.onnx"))
    }
    fp32 = BY_WIRE["FP32"]
    schemas = {
        name: RequestSchema(
            model=f"model '{name}' v1",
            inputs=(TensorSpec("input", fp32, (-1, *SAMPLE_SHAPE)),),
            batched=True,
            max_rows=256,
            finite=True,
        )
        for name in sessions
    }
    infos = {name: model_info(name) for name in sessions}
    executor = ThreadPoolExecutor(1, thread_name_prefix="direct")
    loop = asyncio.get_running_loop()

    async def get_model(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name = predict_pb2.GetModelRequest.FromString(request).name
        if name not in infos:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} not found")
        return infos[name]

    async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        message = predict_pb2.PredictRequest.FromString(request)
        session = sessions.get(message.model)
        if session is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {message.model!r} not found")
        try:
            array = schemas[message.model].decode(inference_request(message).inputs).arrays[0]
        except InvalidInputError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        outputs = await loop.run_in_executor(executor, session.run, None, {"input": array})
        response = predict_pb2.PredictResponse(model=message.model, version=1)
        fill_predict_tensor(response.probabilities, outputs[-1], fp32)
        return response.SerializeToString()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "d2lserve.v1.PredictionService",
                {
                    "GetModel": grpc.unary_unary_rpc_method_handler(get_model),
                    "Predict": grpc.unary_unary_rpc_method_handler(predict),
                },
            ),
        )
    )
    await serve_until_terminated(server, port)


# -- processes ----------------------------------------------------------------------------------


def bench_server(
    repository: Path, flags: list[str], cpus: int | str | None, log_dir: Path
) -> ServerProcess:
    """``python -m serving`` with ``flags`` (or a baseline server), on ports the kernel picks."""
    this = str(Path(__file__).resolve())
    if flags == [NULL_SERVER]:
        command = [PYTHON, this, NULL_SERVER, "0"]
    elif flags == [DIRECT_SERVER]:
        command = [PYTHON, this, DIRECT_SERVER, str(repository)]
    else:  # info level: the listening lines carry the ports (lifecycle events only)
        command = [PYTHON, "-m", "serving", "--model-repository", str(repository),
                   "--grpc-port", "0", "--metrics-port", "0",
                   "--poll-interval", "0", "--log-level", "info", *flags]  # fmt: skip
    name = "-".join(f.strip("-") for f in flags) or "batching"
    metrics = not flags or flags[0] not in (NULL_SERVER, DIRECT_SERVER, "--no-metrics")
    return ServerProcess(command, log_dir / f"server-{name}.log", metrics=metrics, cpus=cpus)


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # key of SERVERS
    model: str = "mlp"
    api: str = "predict"
    concurrency: int = 1
    rows: int = 1
    streams: int = 1


NULL_SERVER = "--null-server"
DIRECT_SERVER = "--direct-server"
# "merging off" is `python -m serving --no-batching`: every request still goes through the
# batcher's queue and worker thread, alone. "direct" has no batcher at all (direct_server).
SERVERS = {
    "batching": [],
    "merging-off": ["--no-batching"],
    "direct": [DIRECT_SERVER],
    "no-metrics": ["--no-metrics"],
    "asyncio-loop": ["--event-loop", "asyncio"],
    "null": [NULL_SERVER],
}
CASES = [
    Case("batching c1", "batching", concurrency=1),
    Case("batching c16", "batching", concurrency=16),
    Case("batching c64", "batching", concurrency=64),
    Case("batching 64 rows c16", "batching", concurrency=16, rows=64),
    Case("batching kserve c64", "batching", api="kserve", concurrency=64),
    Case("batching stream c64", "batching", api="stream", concurrency=64),
    Case("batching stream c64, 4 streams", "batching", api="stream", concurrency=64, streams=4),
    Case("batching wide c64", "batching", model="wide", concurrency=64),
    Case("merging off c1", "merging-off", concurrency=1),
    Case("merging off c16", "merging-off", concurrency=16),
    Case("merging off c64", "merging-off", concurrency=64),
    Case("merging off 64 rows c16", "merging-off", concurrency=16, rows=64),
    Case("merging off wide c64", "merging-off", model="wide", concurrency=64),
    Case("direct session.run c1", "direct", concurrency=1),
    Case("direct session.run c64", "direct", concurrency=64),
    Case("direct session.run 64 rows c16", "direct", concurrency=16, rows=64),
    Case("direct session.run wide c64", "direct", model="wide", concurrency=64),
    Case("no-metrics c64", "no-metrics", concurrency=64),
    Case("asyncio loop c64", "asyncio-loop", concurrency=64),
    Case("null grpc.aio c1", "null", concurrency=1),
    Case("null grpc.aio c64", "null", concurrency=64),
    Case("null grpc.aio stream c64", "null", api="stream", concurrency=64),
]


def select_cases(only: str) -> list[Case]:
    """The cases named in a comma-separated list (a name may itself hold a comma)."""
    parts = [part.strip() for part in only.split(",")]
    names = sorted(
        ([part.strip() for part in case.name.split(",")] for case in CASES), key=len, reverse=True
    )
    wanted = set()
    i = 0
    while i < len(parts):  # the longest case name that starts here wins
        name = next((n for n in names if parts[i : i + len(n)] == n), None)
        if name is None:
            i += 1
            continue
        wanted.add(", ".join(name))
        i += len(name)
    return [case for case in CASES if case.name in wanted]


def run_case(case: Case, server: ServerProcess, args: argparse.Namespace, out_dir: Path) -> dict:
    report_path = out_dir / f"{case.name.replace(' ', '_')}.json"
    metrics = (
        ["--no-server-metrics"]
        if case.server in ("no-metrics", "null", "direct")
        else ["--metrics-url", f"http://127.0.0.1:{server.metrics_port}/metrics"]
    )
    command = pinned(
        args.client_core,
        [PYTHON, "-m", "serving.loadtest", "--target", server.target, "--model", case.model,
         "--api", case.api, "--concurrency", str(case.concurrency), "--rows", str(case.rows),
         "--streams", str(case.streams),
         "--duration", str(args.duration), "--warmup", str(args.warmup), "--json", str(report_path),
         "--quiet", "--max-error-ratio", "0.001", "--event-loop", args.client_loop, *metrics],
    )  # fmt: skip
    runs = []
    for _ in range(args.repeat):
        report_path.unlink(missing_ok=True)
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if not report_path.exists():
            raise RuntimeError(f"{case.name}: load tester failed: {done.stderr.strip()}")
        print(f"  {case.name:<26} {done.stdout.strip()}", flush=True)
        runs.append(json.loads(report_path.read_text()))
    # The run of median throughput stands for the case (the machine is shared and noisy).
    runs.sort(key=lambda r: r["requests_per_second"] or 0.0)
    chosen = runs[len(runs) // 2]
    chosen["repeats_requests_per_second"] = [r["requests_per_second"] for r in runs]
    return chosen


# -- report -------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def print_results(
    ort: dict, reports: dict[str, dict], ort_wide: dict
) -> list[tuple[str, bool | None, str]]:
    print("\n### In-process ONNX Runtime (1 intra-op thread, pinned to the server core)\n")
    print("| model | batch 1 rows/s | batch 64 rows/s | batch 256 rows/s |")
    print("|---|---:|---:|---:|")
    for name, figures in (("mlp", ort), ("wide", ort_wide)):
        print(f"| {name} | {fmt(figures['1'])} | {fmt(figures['64'])} | {fmt(figures['256'])} |")
    wide_ms = 1e3 / ort_wide["1"]
    print(f"\nwide single-row session.run: {wide_ms:.2f} ms")

    print("\n### Service (server on one core, load generator on the other)\n")
    print(
        "| case | req/s (median) | req/s runs | rows/s | p50 ms | p99 ms | errors | server CPU "
        "| client CPU | batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in reports.items():
        server = r.get("server") or {}
        mean_batch = ratio(server.get("rows"), server.get("executions"))
        print(
            f"| {name} | {fmt(r['requests_per_second'])} | "
            f"{' / '.join(fmt(v) for v in r.get('repeats_requests_per_second', []))} | "
            f"{fmt(r['rows_per_second'])} | "
            f"{fmt(r['latency']['p50_ms'], 2)} | {fmt(r['latency']['p99_ms'], 2)} | "
            f"{r['requests'] - r['ok']} | {fmt(r['server_cpu_ratio'], 2)} | "
            f"{fmt(r['client_cpu_ratio'], 2)} | {fmt(mean_batch, 1)} |"
        )

    def rps(name: str) -> float | None:
        return reports[name]["requests_per_second"] if name in reports else None

    def rows(name: str) -> float | None:
        return reports[name]["rows_per_second"] if name in reports else None

    def lat(name: str, key: str) -> float | None:
        return reports[name]["latency"][key] if name in reports else None

    print("\n### Ratios\n")
    lines = [
        ("batching / batcher with merging off, c1",
         ratio(rps("batching c1"), rps("merging off c1"))),
        ("batching / batcher with merging off, c16",
         ratio(rps("batching c16"), rps("merging off c16"))),
        ("batching / batcher with merging off, c64",
         ratio(rps("batching c64"), rps("merging off c64"))),
        ("batching / batcher with merging off, 64 rows c16",
         ratio(rows("batching 64 rows c16"), rows("merging off 64 rows c16"))),
        ("batching / direct session.run (no batcher), c1",
         ratio(rps("batching c1"), rps("direct session.run c1"))),
        ("batching / direct session.run (no batcher), c64",
         ratio(rps("batching c64"), rps("direct session.run c64"))),
        ("batching / direct session.run (no batcher), 64 rows c16",
         ratio(rows("batching 64 rows c16"), rows("direct session.run 64 rows c16"))),
        ("wide: batching / direct session.run (no batcher), c64",
         ratio(rps("batching wide c64"), rps("direct session.run wide c64"))),
        ("stream / unary kserve, c64",
         ratio(rps("batching stream c64"), rps("batching kserve c64"))),
        ("stream / unary predict, c64", ratio(rps("batching stream c64"), rps("batching c64"))),
        ("4 streams / unary kserve, c64",
         ratio(rps("batching stream c64, 4 streams"), rps("batching kserve c64"))),
        ("metrics on / off, c64", ratio(rps("batching c64"), rps("no-metrics c64"))),
        ("uvloop / asyncio loop, c64", ratio(rps("batching c64"), rps("asyncio loop c64"))),
        ("service c64 / null grpc.aio server c64",
         ratio(rps("batching c64"), rps("null grpc.aio c64"))),
        ("null server: stream / unary, c64",
         ratio(rps("null grpc.aio stream c64"), rps("null grpc.aio c64"))),
        ("wide: batching / batcher with merging off, c64",
         ratio(rps("batching wide c64"), rps("merging off wide c64"))),
        ("service c64 req/s / in-process ORT batch-1 calls/s",
         ratio(rps("batching c64"), ort["1"])),
        ("service 64-row rows/s / in-process ORT batch-64 rows/s",
         ratio(rows("batching 64 rows c16"), ort["64"])),
    ]  # fmt: skip
    for label, value in lines:
        print(f"- {label}: {fmt(value, 2)}")

    c64, c64_p99 = rps("batching c64"), lat("batching c64", "p99_ms")
    c1_p50 = lat("batching c1", "p50_ms")
    rows64 = rows("batching 64 rows c16")
    stream = ratio(rps("batching stream c64"), rps("batching kserve c64"))
    streams4 = ratio(rps("batching stream c64, 4 streams"), rps("batching kserve c64"))
    wide = ratio(rps("batching wide c64"), rps("merging off wide c64"))
    wide_direct = ratio(rps("batching wide c64"), rps("direct session.run wide c64"))
    targets: list[tuple[str, bool | None, str]] = [
        ("(a) c64 >= 3,500 req/s, p99 < 25 ms",
         None if c64 is None else c64 >= 3500 and (c64_p99 or 1e9) < 25,
         f"{fmt(c64)} req/s, p99 {fmt(c64_p99, 2)} ms"),
        ("(b) c1 p50 < 1 ms", None if c1_p50 is None else c1_p50 < 1.0,
         f"p50 {fmt(c1_p50, 3)} ms"),
        ("(c) 64-row c16 >= 80,000 rows/s", None if rows64 is None else rows64 >= 80_000,
         f"{fmt(rows64)} rows/s"),
        ("(d) stream c64 >= 2x unary c64 (1 stream)", None if stream is None else stream >= 2.0,
         f"{fmt(stream, 2)}x kserve unary"),
        ("(d) stream c64 >= 2x unary c64 (4 streams)",
         None if streams4 is None else streams4 >= 2.0, f"{fmt(streams4, 2)}x kserve unary"),
        ("(e) wide: batching >= 3x the batcher with merging off (--no-batching) at c64",
         None if wide is None else wide >= 3.0, f"{fmt(wide, 2)}x"),
        ("(e') wide: batching >= 3x direct session.run (no batcher) at c64",
         None if wide_direct is None else wide_direct >= 3.0, f"{fmt(wide_direct, 2)}x"),
    ]  # fmt: skip
    print("\n### Targets\n")
    for label, met, value in targets:
        verdict = "not run" if met is None else "MET" if met else "MISSED"
        print(f"- {verdict}: {label}: {value}")
    return targets


# -- scaling over worker processes (--scaling) ---------------------------------------------------

SCALING_CONCURRENCY = 64


def run_scaling(args: argparse.Namespace, repository: Path, work: Path) -> dict:
    """Each worker count in turn, ``--repeat`` rounds (interleaved); median req/s kept."""
    counts = [int(n) for n in args.workers_list.split(",")]
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for round_index in range(args.repeat):
        for n in counts:
            with bench_server(repository, ["--workers", str(n)], args.server_cpus, work) as server:
                if args.load_generator == "h2load":
                    report = h2load_round(server, args, work)
                    print(
                        f"  --workers {n} round {round_index + 1}: h2load "
                        f"{report['requests_per_second']:,.1f} req/s, "
                        f"p50 {report['latency']['p50_ms']:.3f} ms, "
                        f"p99 {report['latency']['p99_ms']:.3f} ms, "
                        f"errors {report['requests'] - report['ok']}",
                        flush=True,
                    )
                    runs[n].append(report)
                else:
                    runs[n].append(loadtest_round(server, n, round_index, args, work))
    chosen = {}
    for n, reports in runs.items():
        reports.sort(key=lambda r: r["requests_per_second"] or 0.0)
        median = reports[len(reports) // 2]
        median["repeats_requests_per_second"] = [r["requests_per_second"] for r in reports]
        chosen[n] = median
    return chosen


def loadtest_round(
    server: ServerProcess, n: int, round_index: int, args: argparse.Namespace, work: Path
) -> dict:
    """One round of ``--clients`` load tester processes against ``server``; their reports summed."""
    paths = [work / f"scaling-{n}-{round_index}-{c}.json" for c in range(args.clients)]
    clients = []
    for path in paths:
        command = [
            PYTHON, "-m", "serving.loadtest", "--target", server.target,
            "--model", "mlp", "--concurrency", str(SCALING_CONCURRENCY),
            "--connections", str(args.connections),
            "--duration", str(args.duration), "--warmup", str(args.warmup),
            "--json", str(path), "--quiet", "--max-error-ratio", "0",
            "--event-loop", args.client_loop,
            "--metrics-url", f"http://127.0.0.1:{server.metrics_port}/metrics",
        ]  # fmt: skip
        clients.append(
            subprocess.Popen(
                pinned(args.client_cpus, command),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for client in clients:
        out, _ = client.communicate()
        print(f"  --workers {n} round {round_index + 1}: {out.strip()}", flush=True)
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise RuntimeError(f"--workers {n}: a load tester failed ({missing[0]})")
    return combined([json.loads(path.read_text()) for path in paths])


def h2load_round(server: ServerProcess, args: argparse.Namespace, work: Path) -> dict:
    """One round of h2load (``--clients`` threads, the same calls open) against ``server``."""
    import h2load_load

    return h2load_load.run(
        target=server.target,
        metrics_url=f"http://127.0.0.1:{server.metrics_port}/metrics",
        model="mlp",
        sample_shape=SAMPLE_SHAPE,
        connections=args.clients * args.connections,
        streams=max(1, SCALING_CONCURRENCY // args.connections),
        threads=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        work=work,
        cpus=args.client_cpus,
    )


def combined(reports: list[dict]) -> dict:
    """Several load generators' reports as one: rates summed, the worst p50/p99 kept.

    The server figures (CPU and requests over the measured seconds) are the first client's:
    they describe the whole server during that window, every client's traffic included.
    """
    first = reports[0]
    if len(reports) == 1:
        return first
    return {
        **first,
        "requests": sum(r["requests"] for r in reports),
        "ok": sum(r["ok"] for r in reports),
        "requests_per_second": sum(r["requests_per_second"] for r in reports),
        "client_cpu_ratio": sum(r["client_cpu_ratio"] for r in reports),
        "latency": {key: max(r["latency"][key] for r in reports) for key in ("p50_ms", "p99_ms")},
    }


def cpu_us_per_request(report: dict) -> float | None:
    server = report.get("server") or {}
    cpu, requests = server.get("cpu_seconds"), server.get("requests")
    return 1e6 * cpu / requests if cpu is not None and requests else None


def print_scaling(
    reports: dict[int, dict], args: argparse.Namespace
) -> list[tuple[str, bool | None, str]]:
    pinning = (
        f"server on CPUs {args.server_cpus or 'any'}, "
        f"load generators on {args.client_cpus or 'any'}"
        if args.server_cpus or args.client_cpus
        else "nothing pinned"
    )
    print(
        f"\n### Worker processes (mlp, predict, {args.load_generator}, {args.clients} "
        f"load generator(s) or threads x concurrency "
        f"{SCALING_CONCURRENCY} x {args.connections} connections, {pinning}, "
        f"{os.cpu_count()} cores)\n"
    )
    print(
        "| workers | req/s (median) | req/s runs | x 1 worker | p50 ms | p99 ms | errors "
        "| server CPU | server CPU µs/req | x 1 worker | client CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one = reports.get(1)
    for n, r in reports.items():
        speedup = ratio(r["requests_per_second"], one["requests_per_second"]) if one else None
        cost = cpu_us_per_request(r)
        print(
            f"| {n} | {fmt(r['requests_per_second'])} | "
            f"{' / '.join(fmt(v) for v in r['repeats_requests_per_second'])} | "
            f"{fmt(speedup, 2)} | {fmt(r['latency']['p50_ms'], 2)} | "
            f"{fmt(r['latency']['p99_ms'], 2)} | {r['requests'] - r['ok']} | "
            f"{fmt(r['server_cpu_ratio'], 2)} | {fmt(cost)} | "
            f"{fmt(ratio(cost, cpu_us_per_request(one)) if one else None, 2)} | "
            f"{fmt(r['client_cpu_ratio'], 2)} |"
        )
    # The targets: 2 workers >= 1.3x with a lower p99 (a 2-core machine, where the load
    # generator needs part of a core); N >= 0.8 N x on a machine with N + 2 cores or more;
    # server CPU per request within 10 % of one worker's.
    targets: list[tuple[str, bool | None, str]] = []
    for n, r in reports.items():
        if n == 1 or one is None:
            continue
        speedup = ratio(r["requests_per_second"], one["requests_per_second"])
        p99_one, p99_n = one["latency"]["p99_ms"], r["latency"]["p99_ms"]
        if n == 2:
            label = "2 workers >= 1.3x the req/s of 1, with a lower p99"
            met = None if speedup is None else speedup >= 1.3 and p99_n < p99_one
        else:
            label = f"{n} workers >= {0.8 * n:.1f}x the req/s of 1 (0.8 N)"
            met = None if speedup is None else speedup >= 0.8 * n
        targets.append(
            (label, met, f"{fmt(speedup, 2)}x, p99 {fmt(p99_n, 2)} ms vs {fmt(p99_one, 2)} ms")
        )
        cost = ratio(cpu_us_per_request(r), cpu_us_per_request(one))
        targets.append(
            (f"{n} workers: server CPU per request within 10% of 1 worker's",
             None if cost is None else cost <= 1.10, f"{fmt(cost, 2)}x")
        )  # fmt: skip
    print("\n### Targets\n")
    for label, met, value in targets:
        verdict = "not run" if met is None else "MET" if met else "MISSED"
        print(f"- {verdict}: {label}: {value}")
    return targets


# -- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (warm-up 0.5 s, 2 s each)")
    parser.add_argument("--duration", type=float, help="measured seconds per case (default 5)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per case (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case, median kept (1)")
    parser.add_argument("--server-core", type=int, default=0, help="(default 0)")
    parser.add_argument(
        "--client-loop", choices=("uvloop", "asyncio"), default="uvloop", help="(default uvloop)"
    )
    parser.add_argument("--client-core", type=int, default=1, help="(default 1)")
    parser.add_argument("--wide-hidden", type=int, default=3072, help="wide model width (3072)")
    parser.add_argument("--only", help="comma-separated case names to run (default all)")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="only compare --workers counts (--workers-list), 8 connections, concurrency 64",
    )
    parser.add_argument(
        "--workers-list", default="1,2", help="worker counts for --scaling (default 1,2)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="--scaling: load generator processes, each at concurrency 64 (default 1)",
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="--scaling: connections per load generator (8)"
    )
    parser.add_argument(
        "--server-cpus",
        help="--scaling: taskset CPU list for the server and its workers, e.g. 0-7 "
        "(default: unpinned)",
    )
    parser.add_argument(
        "--client-cpus",
        help="--scaling: taskset CPU list for the load generators, e.g. 8-15 (default: unpinned)",
    )
    parser.add_argument(
        "--load-generator",
        choices=("loadtest", "h2load"),
        default="loadtest",
        help="--scaling: python -m serving.loadtest, or h2load (Debian's nghttp2-client; C, "
        "about an eighth of the CPU per call) with --clients threads (default loadtest)",
    )
    parser.add_argument("--json", type=Path, help="write every figure as JSON")
    parser.add_argument("--keep", type=Path, help="keep the repository and reports here")
    parser.add_argument("--ort-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(NULL_SERVER, type=int, help=argparse.SUPPRESS)
    parser.add_argument(DIRECT_SERVER, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ort-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_server is not None:  # internal: the gRPC floor
        import uvloop

        uvloop.run(null_server(args.null_server))
        return 0
    if args.direct_server is not None:  # internal: Predict without a batcher
        import uvloop

        uvloop.run(direct_server(0, args.direct_server))
        return 0
    if args.ort_worker is not None:  # internal: the pinned in-process baseline
        print(json.dumps(ort_rows_per_second(args.ort_worker, [1, 64, 256], args.ort_seconds)))
        return 0
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("taskset or a second core is missing: running unpinned (figures not comparable)")
        args.server_core = args.client_core = None
    if args.load_generator == "h2load" and shutil.which("h2load") is None:
        parser.error("--load-generator h2load needs h2load: apt-get install nghttp2-client")
    cases = CASES
    if args.only:
        cases = select_cases(args.only)
        if not cases:
            parser.error(f"--only {args.only!r} names no case; cases: {[c.name for c in CASES]}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    repository = work / "models"
    print(f"building models in {repository} (random weights, via training.export)", flush=True)
    if not (repository / "wide").exists():
        build_repository(repository, args.wide_hidden)

    def ort(model: str) -> dict:
        command = pinned(
            args.server_core,
            [PYTHON, str(Path(__file__).resolve()), "--ort-worker",
             str(repository / model / "1" / "model.onnx"),
             "--ort-seconds", str(0.5 if args.quick else 1.5)],
        )  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    if args.scaling:
        scaling = run_scaling(args, repository, work)
        targets = print_scaling(scaling, args)
        if args.json is not None:
            document = {
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "cores": os.cpu_count(),
                "clients": args.clients,
                "connections": args.connections,
                "load_generator": args.load_generator,
                "server_cpus": args.server_cpus,
                "client_cpus": args.client_cpus,
                "duration_seconds": args.duration,
                "repeat": args.repeat,
                "warmup_seconds": args.warmup,
                "workers": {str(n): report for n, report in scaling.items()},
                "targets": [{"target": t, "met": met, "value": v} for t, met, v in targets],
            }
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    print("in-process ONNX Runtime baseline", flush=True)
    ort_mlp, ort_wide = ort("mlp"), ort("wide")
    reports: dict[str, dict] = {}
    for server_name, flags in SERVERS.items():
        selected = [case for case in cases if case.server == server_name]
        if not selected:
            continue
        print(f"server: {server_name} {' '.join(flags)}", flush=True)
        with bench_server(repository, flags, args.server_core, work) as server:
            for case in selected:
                reports[case.name] = run_case(case, server, args, work)
    targets = print_results(ort_mlp, reports, ort_wide)
    if args.json is not None:
        document = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "pinning": {"server_core": args.server_core, "client_core": args.client_core},
            "duration_seconds": args.duration,
            "repeat": args.repeat,
            "warmup_seconds": args.warmup,
            "ort_rows_per_second": {"mlp": ort_mlp, "wide": ort_wide},
            "cases": reports,
            "targets": [{"target": t, "met": met, "value": v} for t, met, v in targets],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
