"""``python -m serving --model-repository models/``: the command line, parsed once here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from serving.cli_args import OneLineParser
from serving.config import (
    AUTH_TOKEN_ENV,
    CONTROL_MODES,
    DEFAULT_GRPC_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_METRICS_PORT,
    DEFAULT_WORKER_TIMEOUT_SECONDS,
    DEVICES,
    EVENT_LOOPS,
    LOG_FORMATS,
    LOG_LEVELS,
    BatchingOverrides,
    RuntimeSettings,
    ServerSettings,
    token_from_environment,
)
from serving.errors import SettingsError
from serving.logs import configure_logging

LOGGER = logging.getLogger("serving")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _workers(text: str) -> int:
    if text == "auto":
        from serving.workers import usable_cores

        return usable_cores()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {count}")
    return count


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m serving", description="gRPC inference server for ONNX models."
    )
    p.add_argument(
        "--model-repository", type=Path, required=True, help="model repository directory"
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=DEFAULT_GRPC_PORT,
        help="gRPC port (default: %(default)s; 0 picks one and logs it)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="Prometheus /metrics port (default: %(default)s; 0 picks one and logs it)",
    )
    p.add_argument(
        "--no-metrics",
        action="store_true",
        help="disable metrics collection and the /metrics endpoint",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        help="seconds between repository scans; 0 disables watching (default: %(default)s)",
    )
    p.add_argument(
        "--model-control-mode",
        choices=CONTROL_MODES,
        default="poll",
        help="poll: serve every model folder and follow changes; none: load once at start; "
        "explicit: only --load-model and RepositoryModelLoad models (default: %(default)s)",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="explicit mode: a model to load at start (repeatable)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM/SIGINT, time to finish queued and in-flight calls (default: %(default)s)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest request or response message (default: %(default)s = 4 MiB)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="inference requests (unary calls, stream messages) admitted at once; more are "
        "refused with RESOURCE_EXHAUSTED (default: what the models' batch queues and "
        "running batches can hold)",
    )
    p.add_argument(
        "--tls-cert", type=Path, help="PEM certificate chain; enables TLS with --tls-key"
    )
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument(
        "--auth-token",
        help=f"require 'authorization: Bearer <token>' (default: ${AUTH_TOKEN_ENV})",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="server processes sharing the gRPC port (SO_REUSEPORT), each with its own sessions; "
        "auto = usable cores (default: %(default)s)",
    )
    p.add_argument(
        "--worker-timeout",
        type=_positive_seconds,
        default=DEFAULT_WORKER_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="--workers N: a worker that stops answering the supervisor (hung, stopped) for "
        "this long is killed and restarted (default: %(default)s)",
    )
    # Set by the supervisor of --workers N on each worker's command line.
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)")
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="key=value text or JSON lines (default: %(default)s)",
    )
    p.add_argument(
        "--event-loop", choices=EVENT_LOOPS, default="uvloop", help="(default: %(default)s)"
    )
    runtime = p.add_argument_group("ONNX Runtime")
    runtime.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto: CUDA when a CUDA session can be created, else CPU (default: %(default)s)",
    )
    runtime.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="threads inside one execution; 0 = ORT default (default: %(default)s)",
    )
    runtime.add_argument("--inter-op-threads", type=int, default=1, help="(default: %(default)s)")
    batching = p.add_argument_group("batching (override every model's config.pbtxt)")
    batching.add_argument("--no-batching", action="store_true", help="run every request alone")
    batching.add_argument("--max-batch-size", type=int, help="rows per execution and per request")
    batching.add_argument(
        "--preferred-batch-size", type=_sizes, help="comma-separated row counts that run at once"
    )
    batching.add_argument(
        "--max-queue-delay-us", type=int, help="longest wait for a batch to fill, microseconds"
    )
    batching.add_argument(
        "--max-queue-size", type=int, help="waiting requests before RESOURCE_EXHAUSTED"
    )
    batching.add_argument("--instances", type=int, help="parallel executions per model version")
    return p


def settings_from_args(argv: Sequence[str] | None = None) -> ServerSettings:
    return settings_from_namespace(build_parser().parse_args(argv))


def settings_from_namespace(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        model_repository=args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        metrics_enabled=not args.no_metrics,
        poll_interval_seconds=args.poll_interval,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        grace_seconds=args.grace_seconds,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_token=args.auth_token or token_from_environment(),
        log_level=args.log_level,
        log_format=args.log_format,
        event_loop=args.event_loop,
        runtime=RuntimeSettings(
            device=args.device,
            intra_op_threads=args.intra_op_threads,
            inter_op_threads=args.inter_op_threads,
        ),
        batching=BatchingOverrides(
            enabled=not args.no_batching,
            max_batch_size=args.max_batch_size,
            preferred_batch_sizes=args.preferred_batch_size,
            max_queue_delay_microseconds=args.max_queue_delay_us,
            max_queue_size=args.max_queue_size,
            instances=args.instances,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_namespace(args)
    except SettingsError as error:
        print(f"python -m serving: error: {error}", file=sys.stderr)
        return 2
    worker = None
    if args.worker_index is not None and args.run_dir is not None:
        from serving.control import WorkerContext

        worker = WorkerContext(args.worker_index, args.workers, args.run_dir)
    configure_logging(
        settings.log_level, settings.log_format, worker=None if worker is None else worker.index
    )
    if args.auth_token and worker is None:
        LOGGER.warning(
            "event=auth_token_on_command_line: any local user can read it in the process "
            "list; set $%s instead",
            AUTH_TOKEN_ENV,
        )
    if worker is None and args.workers > 1:
        from serving.workers import supervise

        try:
            return supervise(settings, args.workers, argv, args.worker_timeout)
        except SettingsError as error:
            LOGGER.error("event=startup_failed error=%r", str(error))
            return 2
        except OSError as error:  # e.g. the metrics port is taken
            LOGGER.error("event=startup_failed error=%r", str(error))
            return 1
    from serving.server import Server  # heavy imports (onnxruntime, grpc) after parsing

    async def serve() -> int:
        return await Server(settings, worker).run()

    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            code = runner.run(serve())
        if worker is not None:  # drained: a late signal must not turn exit 0 into a kill
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return code
    except SettingsError as error:
        LOGGER.error("event=startup_failed error=%r", str(error))
        return 2
    except OSError as error:
        LOGGER.error("event=startup_failed error=%r", str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
