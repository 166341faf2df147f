"""A C load generator for ``serve_bench.py --scaling``: h2load (Debian's nghttp2-client).

The project's load tester (``python -m serving.loadtest``) is a grpc.aio client and costs
about as much CPU per call as the server does (~270 µs), so on one machine it takes the
cores that more workers would need: it caps any scaling figure at the cores left to it.
h2load speaks HTTP/2 in C (about 35 µs of CPU per call here) and sends one pre-framed gRPC
Predict message over and over, ``connections`` connections with ``streams`` calls open on
each. It cannot read gRPC trailers, so the outcome of every call is taken from the server
(the ``requests_total`` counters by code, over the measured seconds); latencies come from
h2load's per-request log, the calls that started inside the measured seconds.
"""

from __future__ import annotations

import math
import resource
import struct
import subprocess
import time
from pathlib import Path

import numpy as np

from serving import client
from serving.loadtest.histogram import LatencyHistogram
from serving.loadtest.payloads import PREDICT_PATH
from serving.loadtest.server_metrics import difference, scrape

H2LOAD = "h2load"


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\0" + struct.pack(">I", len(message)) + message


def run(
    *,
    target: str,
    metrics_url: str,
    model: str,
    sample_shape: tuple[int, ...],
    connections: int,
    streams: int,
    threads: int,
    duration: float,
    warmup: float,
    work: Path,
    cpus: str | None = None,
) -> dict:
    """Drive ``target`` for ``warmup + duration`` s; a report shaped like the load tester's."""
    rng = np.random.default_rng(0)
    message = client.predict_request(model, rng.random((1, *sample_shape), dtype=np.float32))
    body = work / "h2load-body.bin"
    body.write_bytes(grpc_frame(message.SerializeToString()))
    log = work / "h2load-requests.tsv"
    log.unlink(missing_ok=True)
    command = [
        H2LOAD, "-t", str(threads), "-c", str(connections), "-m", str(streams),
        "-D", f"{round(1000 * (duration + 1.0))}ms", "--warm-up-time", f"{round(1000 * warmup)}ms",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        "--log-file", str(log), f"http://{target}{PREDICT_PATH}",
    ]  # fmt: skip
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(warmup + 0.5)
    first, first_wall, first_epoch = scrape(metrics_url, model), time.monotonic(), time.time()
    time.sleep(duration)
    last, last_wall, last_epoch = scrape(metrics_url, model), time.monotonic(), time.time()
    output, _ = process.communicate(timeout=duration + warmup + 60)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}): {output.strip()[-500:]}")

    seconds = last_wall - first_wall
    server = difference(first, last)
    latencies = LatencyHistogram()
    for line in log.read_text().splitlines():
        start_us, status, took_us = line.split("\t")[:3]
        if first_epoch <= int(start_us) / 1e6 < last_epoch and status == "200":
            latencies.record(int(took_us) / 1e6)
    cpu = server.cpu_seconds
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "load_generator": "h2load",
        "model": model,
        "concurrency": connections * streams,
        "measured_seconds": seconds,
        "requests": int(server.requests),
        "ok": int(server.requests_by_code.get("OK", 0)),
        "requests_by_code": server.requests_by_code,
        "requests_per_second": server.requests / seconds,
        "latency": {
            "count": latencies.count,
            "p50_ms": 1000 * latencies.percentile(50),
            "p99_ms": 1000 * latencies.percentile(99),
        },
        "client_cpu_ratio": client_cpu / wall,
        "server_cpu_ratio": cpu / seconds if cpu is not None else math.nan,
        "server": {
            "requests": server.requests,
            "cpu_seconds": cpu,
            "executions": server.executions,
            "rows": server.rows,
        },
    }
