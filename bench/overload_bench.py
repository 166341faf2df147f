"""Overload benchmark (issue 12): goodput and admitted-call latency at 1x..10x of capacity.

The server (``python -m serving``) runs pinned to core 0, the load generator (this file with
``--client``: closed-loop grpc.aio callers on uvloop) to core 1. Offered load is counted in
callers: ``1x`` is as many callers as the server admits (``--max-concurrent-rpcs``, the
concurrency at which capacity is measured), ``10x`` ten times as many. A caller refused
with RESOURCE_EXHAUSTED waits the server's ``retry-after-ms`` hint (a polite client, as
gRPC's retry pushback prescribes; ``--backoff-ms`` when there is no hint) and calls again.

Three servers, each at every load:

* ``admission``: our admission control at the limit;
* ``unlimited``: no effective limit (``--max-concurrent-rpcs 1000000``): every call admitted;
* ``grpc-limit``: gRPC's own ``maximum_concurrent_rpcs`` at the limit (our limit off).

Server CPU comes from ``/proc/<pid>/stat`` over the measured window; the CPU cost of a
refusal from a last run with a limit of 1 and callers that retry at once (nearly every call
refused), the few served calls charged at the 1x run's cost per call.

    python bench/overload_bench.py                  # ~3 minutes
    python bench/overload_bench.py --quick          # ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from serve_bench import build_repository
from server_process import ROOT, ServerProcess, pinned

PYTHON = sys.executable
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
LOADS = (1, 2, 5, 10)
TICKS = os.sysconf("SC_CLK_TCK")
# gRPC's limiter: patch grpc.aio.server before the server builds its grpc.aio.Server.
GRPC_LIMIT_PATCH = (
    "import functools, sys, grpc.aio; "
    "grpc.aio.server = functools.partial(grpc.aio.server, maximum_concurrent_rpcs={limit}); "
    "from serving.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


# -- the load generator (runs in its own pinned process) ----------------------------------------


async def closed_loop(
    target: str, callers: int, warmup: float, seconds: float, backoff_ms: float
) -> dict:
    import grpc
    import numpy as np

    from protos import grpc_service_pb2 as pb

    array = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=array.shape)
    body = pb.ModelInferRequest(
        model_name="mlp", inputs=[tensor], raw_input_contents=[array.tobytes()]
    ).SerializeToString()
    ok: list[float] = []
    refused: list[float] = []
    other: dict[str, int] = {}
    measuring = False
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(MODEL_INFER)
        start = time.perf_counter()
        end = start + warmup + seconds

        async def caller() -> None:
            while (now := time.perf_counter()) < end:
                pause = 0.0
                try:
                    await call(body, timeout=30)
                    outcome = "OK"
                except grpc.aio.AioRpcError as error:
                    outcome = error.code().name
                    hint = dict(error.trailing_metadata() or ()).get("retry-after-ms")
                    if backoff_ms >= 0:  # -1: an impolite client, retrying at once
                        pause = (float(hint) if hint else backoff_ms) / 1000
                if measuring:
                    seconds_taken = time.perf_counter() - now
                    if outcome == "OK":
                        ok.append(seconds_taken)
                    elif outcome == "RESOURCE_EXHAUSTED":
                        refused.append(seconds_taken)
                    else:
                        other[outcome] = other.get(outcome, 0) + 1
                if pause:
                    await asyncio.sleep(pause)

        tasks = [asyncio.ensure_future(caller()) for _ in range(callers)]
        await asyncio.sleep(warmup)
        measuring = True
        print("MEASURE", flush=True)
        measured_from = time.perf_counter()
        await asyncio.gather(*tasks)
        window = time.perf_counter() - measured_from

    def quantile(values: list[float], q: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return values[min(int(q * len(values)), len(values) - 1)] * 1000

    return {
        "callers": callers,
        "seconds": window,
        "ok": len(ok),
        "refused": len(refused),
        "other": other,
        "goodput": len(ok) / window,
        "refused_per_s": len(refused) / window,
        "ok_p50_ms": quantile(ok, 0.5),
        "ok_p99_ms": quantile(ok, 0.99),
        "refused_p50_ms": quantile(refused, 0.5),
        "refused_p99_ms": quantile(refused, 0.99),
    }


# -- the orchestration -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


@dataclass
class Server:
    """``python -m serving`` pinned to core 0, with one of the three kinds of limit."""

    repository: Path
    limit: int
    kind: str  # admission | unlimited | grpc-limit
    log_dir: Path
    server: ServerProcess | None = None

    def __enter__(self) -> Server:
        ours = self.limit if self.kind == "admission" else 1_000_000
        # info level: the listening lines carry the ports the kernel picked
        args = ["--model-repository", str(self.repository), "--grpc-port", "0",
                "--metrics-port", "0", "--poll-interval", "0", "--log-level", "info",
                "--max-concurrent-rpcs", str(ours)]  # fmt: skip
        if self.kind == "grpc-limit":
            command = [PYTHON, "-c", GRPC_LIMIT_PATCH.format(limit=self.limit), *args]
        else:
            command = [PYTHON, "-m", "serving", *args]
        self.server = ServerProcess(command, self.log_dir / f"server-{self.kind}.log", cpus=0)
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.__exit__()

    def load(self, callers: int, warmup: float, seconds: float, backoff_ms: float) -> dict:
        """One closed-loop run from a client pinned to core 1; adds the server's CPU."""
        assert self.server is not None
        command = [PYTHON, str(Path(__file__).resolve()), "--client",
                   "--target", self.server.target, "--callers", str(callers),
                   "--warmup", str(warmup), "--seconds", str(seconds),
                   "--backoff-ms", str(backoff_ms)]  # fmt: skip
        client = subprocess.Popen(pinned(1, command), cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        cpu_from = None
        result = None
        for line in client.stdout:
            if line.startswith("MEASURE"):
                cpu_from = cpu_seconds(self.server.pid)
            elif line.startswith("{"):
                cpu_to = cpu_seconds(self.server.pid)
                result = json.loads(line)
        if client.wait() != 0 or result is None or cpu_from is None:
            raise RuntimeError(f"load generator failed (exit {client.returncode})")
        result["server_cpu_s"] = cpu_to - cpu_from
        return result


def refusal_cost(at_1x: dict, loaded: dict) -> dict:
    """CPU per served call (1x: nothing refused) and per refusal (solved from a loaded run)."""
    served_us = at_1x["server_cpu_s"] / max(at_1x["ok"], 1) * 1e6
    rest = loaded["server_cpu_s"] - loaded["ok"] * served_us / 1e6
    refused_us = rest / loaded["refused"] * 1e6 if loaded["refused"] else None
    return {"served_us": served_us, "refused_us": refused_us}


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(results: dict[str, list[dict]], limit: int, loads: tuple[int, ...]) -> str:
    lines = [
        f"limit {limit}; offered load in callers (1x = {limit}); goodput = OK calls/s",
        "",
        "| server | load | goodput req/s | admitted p50 / p99 ms | refused/s | refusal p50 ms "
        "| server CPU s/s |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for kind, runs in results.items():
        for factor, run in zip(loads, runs, strict=True):
            lines.append(
                f"| {kind} | {factor}x ({run['callers']}) | {fmt(run['goodput'], 0)} | "
                f"{fmt(run['ok_p50_ms'])} / {fmt(run['ok_p99_ms'])} | "
                f"{fmt(run['refused_per_s'], 0)} | {fmt(run['refused_p50_ms'], 2)} | "
                f"{run['server_cpu_s'] / run['seconds']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured s (default 4)")
    parser.add_argument("--limit", type=int, default=64, help="admission limit (default 64)")
    parser.add_argument(
        "--backoff-ms", type=float, default=5.0, help="pause when refused without a hint (5)"
    )
    parser.add_argument(
        "--servers", default="admission,unlimited,grpc-limit", help="comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs")
    parser.add_argument(
        "--loads", default=",".join(map(str, LOADS)), help="multiples of the limit (1,2,5,10)"
    )
    parser.add_argument("--json", type=Path, help="write every run as JSON")
    args = parser.parse_args(argv)
    if args.client:
        import uvloop

        result = uvloop.run(
            closed_loop(args.target, args.callers, args.warmup, args.seconds, args.backoff_ms)
        )
        print(json.dumps(result), flush=True)
        return 0
    seconds = 2.0 if args.quick else args.seconds
    loads = tuple(int(x) for x in args.loads.split(","))
    results: dict[str, list[dict]] = {}
    tmp_dir = tempfile.TemporaryDirectory()
    repository_dir = Path(tmp_dir.name) / "models"
    build_repository(repository_dir, wide_hidden=16)
    for kind in args.servers.split(","):
        with Server(repository_dir, args.limit, kind, Path(tmp_dir.name)) as server:
            runs = []
            for factor in loads:
                run = server.load(args.limit * factor, args.warmup, seconds, args.backoff_ms)
                runs.append(run)
                print(kind, f"{factor}x", json.dumps(run), file=sys.stderr, flush=True)
            results[kind] = runs
    print(report(results, args.limit, loads))
    if "admission" in results:
        runs = results["admission"]
        # Refusal cost: a limit of 1 and impolite callers (no pause), so nearly every call
        # is refused; the few served ones are charged at the 1x cost.
        with Server(repository_dir, 1, "admission", Path(tmp_dir.name)) as server:
            flood = server.load(args.limit, args.warmup, seconds, -1)
        results["refusal-flood"] = [flood]
        cost = refusal_cost(runs[0], flood)
        print(
            f"\nserver CPU per served call {fmt(cost['served_us'])} us (admission 1x), per "
            f"refusal {fmt(cost['refused_us'])} us (limit 1, {args.limit} callers retrying "
            f"at once: {flood['refused_per_s']:,.0f} refusals/s, {flood['goodput']:,.0f} "
            f"served/s, refusal p50 {fmt(flood['refused_p50_ms'], 2)} ms)"
        )
        capacity = runs[0]["goodput"]
        print(
            f"at 10x: goodput {runs[-1]['goodput'] / capacity:.0%} of capacity, admitted p99 "
            f"{runs[-1]['ok_p99_ms'] / runs[0]['ok_p99_ms']:.2f}x the 1x p99"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    tmp_dir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
