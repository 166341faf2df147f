"""Cost of the metrics hot path per request, metrics enabled vs disabled (--no-metrics).

Two call sets on a cached ``VersionMetrics``, for one single-row request run in its own batch:
* core: ``queue_wait`` + ``execution`` + ``request_finished``;
* full: everything the server reports for such a request (adds ``inflight`` +1/-1, ``decode``,
  ``queue_depth``, ``encode``).
Prints nanoseconds per call set (best of --repeats, bare loop subtracted) and the difference.

    .venv/bin/python bench/metrics_overhead.py --calls 200000 --repeats 5
"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from serving.metrics import ServingMetrics


def ns_per_core_set(enabled: bool, calls: int, repeats: int) -> float:
    """Best-of-``repeats`` nanoseconds for one queue_wait + execution + request_finished."""
    vm = ServingMetrics(CollectorRegistry(), enabled=enabled).for_version("mlp", 1)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            vm.queue_wait(0.0003)
            vm.execution(1, 0.0007)
            vm.request_finished("predict", "OK", 0.0012, 1)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def ns_per_full_set(enabled: bool, calls: int, repeats: int) -> float:
    """Best-of-``repeats`` nanoseconds for every report the server makes for one request."""
    vm = ServingMetrics(CollectorRegistry(), enabled=enabled).for_version("mlp", 1)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            vm.inflight(1)
            vm.decode(0.00002)
            vm.queue_depth(1)
            vm.queue_wait(0.0003)
            vm.execution(1, 0.0007)
            vm.encode(0.00001)
            vm.inflight(-1)
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
    for name, measure in (("core", ns_per_core_set), ("full", ns_per_full_set)):
        on = measure(True, args.calls, args.repeats) - base
        off = measure(False, args.calls, args.repeats) - base
        print(
            f"{name} set: enabled {on:6.0f} ns, disabled {off:4.0f} ns, "
            f"overhead {(on - off) / 1000:.2f} us per request"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
