"""``python -m serving.loadtest``: parse arguments once into settings, run, print, exit.

Exit codes: 0 the run passed its gate; 1 it did not (error ratio above ``--max-error-ratio``,
``--check`` mismatches, nothing finished) or the server could not be reached; 2 bad arguments or
unusable input, with one line on stderr and no output files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

from serving.cli_args import OneLineParser
from serving.config import AUTH_TOKEN_ENV, DEFAULT_GRPC_PORT, token_from_environment
from serving.loadtest.display import LiveProgress, render_report
from serving.loadtest.errors import InputError, LoadTestError, SettingsError
from serving.loadtest.schedule import ARRIVALS
from serving.loadtest.session import run_loadtest
from serving.loadtest.settings import (
    APIS,
    INPUT_SOURCES,
    ConnectionSettings,
    LoadPlan,
    LoadTestSettings,
    Workload,
    default_metrics_url,
)

PROG = "python -m serving.loadtest"
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_GRPC_PORT}"
DEFAULT_DURATION_SECONDS = 10.0
DEFAULT_CHECK_SAMPLES = 100
EVENT_LOOPS = ("uvloop", "asyncio")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG, description="Load-test a d2lserve (or KServe v2) gRPC server."
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"HOST:PORT (default {DEFAULT_TARGET})"
    )
    target.add_argument(
        "--tls-ca", type=Path, help="PEM root certificates: use TLS (default plaintext)"
    )
    target.add_argument("--tls-server-name", help="name to check in the server certificate")
    target.add_argument(
        "--token",
        default=token_from_environment(),  # the same variable the server reads its token from
        help=f"bearer token (default ${AUTH_TOKEN_ENV})",
    )
    target.add_argument("--connect-timeout", type=float, default=10.0, help="seconds (default 10)")
    target.add_argument(
        "--connections",
        type=int,
        default=1,
        help="gRPC connections, used round-robin; a server with --workers N gives each "
        "connection to one worker, so use >= N (default 1)",
    )

    work = parser.add_argument_group("requests")
    work.add_argument("--model", required=True, help="model name")
    work.add_argument("--model-version", type=int, default=0, help="version; 0 = latest (default)")
    work.add_argument("--api", choices=APIS, default="predict", help="default predict")
    work.add_argument("--rows", type=int, default=1, help="rows per request (default 1)")
    work.add_argument(
        "--input",
        choices=INPUT_SOURCES,
        default="random",
        help="random (uniform in the model's input range, default), digits (scikit-learn 8x8 "
        "digits / 16) or fashion-mnist (test images from --data-dir)",
    )
    work.add_argument("--data-dir", type=Path, help="directory holding t10k-images-idx3-ubyte[.gz]")
    work.add_argument(
        "--top-k", type=int, default=1, help="Predict API: labels per row (default 1)"
    )
    work.add_argument(
        "--pool", type=int, default=64, help="distinct requests sent round-robin (default 64)"
    )
    work.add_argument("--seed", type=int, default=0, help="random inputs and arrivals (default 0)")

    load = parser.add_argument_group("load")
    loop = load.add_mutually_exclusive_group()
    loop.add_argument("--concurrency", type=int, help="closed loop: requests in flight (default 1)")
    loop.add_argument("--rate", type=float, help="open loop: requests/s")
    load.add_argument(
        "--arrival", choices=ARRIVALS, default="poisson", help="open loop (default poisson)"
    )
    load.add_argument(
        "--duration",
        type=float,
        help=f"seconds measured (default {DEFAULT_DURATION_SECONDS:g} unless --requests is given)",
    )
    load.add_argument("--requests", type=int, help="measured requests to send")
    load.add_argument(
        "--warmup", type=float, default=1.0, help="seconds excluded first (default 1)"
    )
    load.add_argument(
        "--max-seconds",
        type=float,
        help="hard bound on the whole run (default warm-up + duration + timeout + 5 s; 600 s with "
        "--requests alone)",
    )
    load.add_argument(
        "--timeout", type=float, default=10.0, help="deadline per request, s (default 10)"
    )
    load.add_argument("--streams", type=int, default=1, help="--api stream: streams (default 1)")
    load.add_argument(
        "--max-inflight", type=int, default=10_000, help="open loop cap (default 10000)"
    )

    out = parser.add_argument_group("report")
    out.add_argument(
        "--metrics-url", help="server metrics (default http://<target host>:8002/metrics)"
    )
    out.add_argument(
        "--no-server-metrics", action="store_true", help="do not read the server's metrics"
    )
    out.add_argument(
        "--check", action="store_true", help="compare responses with local ONNX Runtime"
    )
    out.add_argument(
        "--check-samples",
        type=int,
        default=DEFAULT_CHECK_SAMPLES,
        help="responses compared (default 100)",
    )
    out.add_argument(
        "--model-repository", type=Path, help="repository holding the model file (--check)"
    )
    out.add_argument(
        "--max-error-ratio", type=float, default=0.0, help="fail above this (default 0)"
    )
    out.add_argument("--json", type=Path, help="write the report as JSON")
    out.add_argument("--plot", type=Path, help="write latency histogram + latency over time (.png)")
    out.add_argument("--quiet", action="store_true", help="no progress bar; one summary line")
    out.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="uvloop",
        help="the load generator's event loop (default uvloop: less client CPU per request)",
    )
    out.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="warning"
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> LoadTestSettings:
    connection = ConnectionSettings(
        target=args.target,
        tls_ca=args.tls_ca,
        tls_server_name=args.tls_server_name,
        token=args.token,
        connect_timeout_seconds=args.connect_timeout,
        connections=args.connections,
    )
    workload = Workload(
        model=args.model,
        version=args.model_version,
        api=args.api,
        rows=args.rows,
        input_source=args.input,
        data_dir=args.data_dir,
        top_k=args.top_k,
        pool_size=args.pool,
        seed=args.seed,
    )
    duration = args.duration
    if duration is None and args.requests is None:
        duration = DEFAULT_DURATION_SECONDS
    plan = LoadPlan(
        concurrency=args.concurrency
        if args.rate is not None or args.concurrency is not None
        else 1,
        rate_per_second=args.rate,
        arrival=args.arrival,
        duration_seconds=duration,
        requests=args.requests,
        warmup_seconds=args.warmup,
        max_seconds=args.max_seconds,
        timeout_seconds=args.timeout,
        streams=args.streams,
        max_inflight=args.max_inflight,
        seed=args.seed,
    )
    if args.no_server_metrics:
        metrics_url = None
    else:
        metrics_url = args.metrics_url or default_metrics_url(args.target)
    return LoadTestSettings(
        connection=connection,
        workload=workload,
        plan=plan,
        metrics_url=metrics_url,
        check_samples=args.check_samples if args.check else 0,
        model_repository=args.model_repository,
        max_error_ratio=args.max_error_ratio,
        json_path=args.json,
        plot_path=args.plot,
        quiet=args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except SettingsError as error:
        return _fail(2, error)
    console = Console(stderr=False)
    show_progress = not settings.quiet and console.is_terminal
    loop_factory = None
    if args.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            if show_progress:
                description = f"{settings.workload.model} via {settings.workload.api}"
                with LiveProgress(Console(stderr=True), description) as progress:
                    result = runner.run(run_loadtest(settings, on_tick=progress.update))
            else:
                result = runner.run(run_loadtest(settings))
    except (SettingsError, InputError) as error:
        return _fail(2, error)
    except LoadTestError as error:  # TargetError and any other expected failure
        return _fail(1, error)
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    report = result.report
    if settings.json_path is not None:
        _write_atomically(settings.json_path, json.dumps(report.to_json(), indent=2) + "\n")
    if settings.plot_path is not None:
        from serving.loadtest.plot import save_plot  # matplotlib only when asked for

        save_plot(result.outcome, report, settings.plot_path)
    if settings.quiet:
        print(
            f"{'PASS' if report.passed else 'FAIL'} {report.model} {report.api}: "
            f"{report.requests_per_second:,.1f} req/s, {report.rows_per_second:,.1f} rows/s, "
            f"p50 {report.latency.p50_ms:.3f} ms, p99 {report.latency.p99_ms:.3f} ms, "
            f"errors {report.requests - report.ok}"
            + ("" if report.passed else " (" + "; ".join(report.failures) + ")")
        )
    else:
        render_report(report, console)
    return 0 if report.passed else 1


def _fail(code: int, error: object) -> int:
    print(f"{PROG}: error: {error}", file=sys.stderr)
    return code


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
