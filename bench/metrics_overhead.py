"""Cost of the metrics hot path per request, metrics enabled vs disabled (--no-metrics).

One "call set" is what the server does for one single-row request that ran in its own batch:
``queue_wait`` + ``execution`` + ``request_finished`` on a cached ``VersionMetrics``.
Prints nanoseconds per call set (best of --repeats) and the difference.

    .venv/bin/python bench/metrics_overhead.py --calls 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics


def ns_per_call_set(enabled: bool, calls: int, repeats: int) -> float:
    """Best-of-``repeats`` nanoseconds for one queue_wait + execution + request_finished."""
    metrics = ServingMetrics(CollectorRegistry(), enabled=enabled)
    vm = metrics.for_version("mlp", 1)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            vm.queue_wait(0.0003)
            vm.execution(1, 0.0007)
            vm.request_finished("predict", "OK", 0.0012, 1)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def loop_ns(calls: int, repeats: int) -> float:
    """Cost of the bare loop, subtracted from both figures."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            pass
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per repeat (200000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats, best kept (5)")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error(f"--calls and --repeats must be >= 1, got {args.calls} and {args.repeats}")
    base = loop_ns(args.calls, args.repeats)
    on = ns_per_call_set(True, args.calls, args.repeats) - base
    off = ns_per_call_set(False, args.calls, args.repeats) - base
    print(f"metrics enabled : {on:8.0f} ns per request (queue_wait + execution + request_finished)")
    print(f"metrics disabled: {off:8.0f} ns per request")
    print(f"overhead        : {on - off:8.0f} ns per request ({(on - off) / 1000:.2f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
