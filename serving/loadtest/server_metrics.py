"""Read the server's Prometheus endpoint: request counter and batch-size histogram of a model.

The load tester reads it before and after the measured part; the differences give the number
of requests the server counted and how it batched them during the run.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import NAMESPACE

# The server's families (serving.metrics): requests_total and batch_size under its namespace.
REQUESTS_FAMILY = f"{NAMESPACE}_requests"  # the parser drops the counter's "_total"
REQUESTS_SAMPLE = f"{REQUESTS_FAMILY}_total"
BATCH_SIZE_FAMILY = f"{NAMESPACE}_batch_size"
PROCESS_CPU_FAMILY = "process_cpu_seconds"  # prometheus_client's process collector
# A server with --workers N: CPU of each live worker (serving/shared_metrics.py), summed.
WORKER_CPU_FAMILY = "d2lserve_worker_cpu_seconds"


class MetricsUnavailable(Exception):
    """The metrics endpoint could not be read or parsed; the message says why."""


@dataclass(frozen=True)
class ServerSnapshot:
    """One model's counters at one moment, summed over its versions."""

    requests_by_code: dict[str, float]
    batch_buckets: tuple[tuple[float, float], ...]  # (upper bound "le", cumulative count)
    batch_count: float  # executions (session.run calls)
    batch_sum: float  # rows executed
    cpu_seconds: float | None = None  # the server process's CPU time, all threads; None: unknown

    @property
    def requests_total(self) -> float:
        return sum(self.requests_by_code.values())


@dataclass(frozen=True)
class ServerDelta:
    """What the server did during the run (differences of two snapshots)."""

    requests: float  # requests the server finished, any code
    requests_by_code: dict[str, float]
    executions: float
    rows: float
    sizes: tuple[tuple[str, float], ...]  # ("1", n), ("2", n), ("3-4", n), ... non-empty only
    cpu_seconds: float | None = None  # server CPU time (all threads) between the two readings

    @property
    def mean_batch_size(self) -> float:
        return self.rows / self.executions if self.executions else math.nan


def parse_metrics(text: str, model: str) -> ServerSnapshot:
    """Pick ``model``'s request counts and batch-size histogram out of Prometheus text."""
    by_code: dict[str, float] = {}
    buckets: dict[float, float] = {}
    count = total = 0.0
    cpu: float | None = None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        raise MetricsUnavailable(f"not Prometheus text: {error}") from error
    for family in families:
        if family.name == REQUESTS_FAMILY:
            for sample in family.samples:
                if sample.name == REQUESTS_SAMPLE and sample.labels.get("model") == model:
                    code = sample.labels.get("code", "")
                    by_code[code] = by_code.get(code, 0.0) + sample.value
        elif family.name == PROCESS_CPU_FAMILY and family.samples:
            cpu = family.samples[0].value
        elif family.name == WORKER_CPU_FAMILY and family.samples:
            cpu = sum(sample.value for sample in family.samples)
        elif family.name == BATCH_SIZE_FAMILY:
            for sample in family.samples:
                if sample.labels.get("model") != model:
                    continue
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
    return ServerSnapshot(
        requests_by_code=by_code,
        batch_buckets=tuple(sorted(buckets.items())),
        batch_count=count,
        batch_sum=total,
        cpu_seconds=cpu,
    )


def scrape(url: str, model: str, timeout_seconds: float = 10.0) -> ServerSnapshot:
    """GET ``url`` and parse it; MetricsUnavailable when unreachable or not Prometheus text.

    The timeout is generous: a server saturated by the load answers its metrics thread late.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "reason", error)
        raise MetricsUnavailable(f"{url}: {reason}") from error
    return parse_metrics(text, model)


def _bucket_label(lower: float, upper: float) -> str:
    if math.isinf(upper):
        return f">{lower:g}"
    low = math.floor(lower) + 1  # batch sizes are whole rows
    high = math.floor(upper)
    return f"{high}" if low >= high else f"{low}-{high}"


def difference(before: ServerSnapshot, after: ServerSnapshot) -> ServerDelta:
    """What happened between two snapshots of the same server."""
    codes = set(before.requests_by_code) | set(after.requests_by_code)
    by_code = {
        code: after.requests_by_code.get(code, 0.0) - before.requests_by_code.get(code, 0.0)
        for code in sorted(codes)
    }
    earlier = dict(before.batch_buckets)
    sizes = []
    previous_upper, previous_cumulative = 0.0, 0.0
    for upper, cumulative in after.batch_buckets:
        delta_cumulative = cumulative - earlier.get(upper, 0.0)
        in_bucket = delta_cumulative - previous_cumulative
        if in_bucket > 0:
            sizes.append((_bucket_label(previous_upper, upper), in_bucket))
        previous_upper, previous_cumulative = upper, delta_cumulative
    return ServerDelta(
        requests=sum(by_code.values()),
        requests_by_code={code: n for code, n in by_code.items() if n},
        executions=after.batch_count - before.batch_count,
        rows=after.batch_sum - before.batch_sum,
        sizes=tuple(sizes),
        cpu_seconds=(
            after.cpu_seconds - before.cpu_seconds
            if after.cpu_seconds is not None and before.cpu_seconds is not None
            else None
        ),
    )
