"""The figures of a run, built from the raw outcome: one dataclass for the table and ``--json``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from serving.loadtest.check import CheckResult
from serving.loadtest.histogram import LatencyHistogram
from serving.loadtest.runner import RunOutcome
from serving.loadtest.server_metrics import ServerDelta
from serving.loadtest.settings import LoadTestSettings

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
LATENCY_METHOD = (
    "every successful measured request, in a log-bucketed histogram: percentiles within "
    "0.5% of the exact nearest-rank value; min and max exact"
)


@dataclass(frozen=True)
class LatencySummary:
    """Milliseconds; NaN when nothing was recorded."""

    count: int
    mean_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of(cls, histogram: LatencyHistogram) -> LatencySummary:
        p50, p90, p99, p999 = (histogram.percentile(q) * 1e3 for q in PERCENTILES)
        empty = histogram.count == 0
        return cls(
            count=histogram.count,
            mean_ms=histogram.mean * 1e3,
            min_ms=math.nan if empty else histogram.min * 1e3,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            p999_ms=p999,
            max_ms=math.nan if empty else histogram.max * 1e3,
        )


@dataclass(frozen=True)
class LoadReport:
    target: str
    model: str
    api: str
    mode: str  # "closed" or "open"
    concurrency: int | None
    rate_per_second: float | None
    rows_per_request: int
    measured_seconds: float
    requests: int  # finished measured requests, ok or not
    ok: int
    errors: dict[str, int]  # gRPC status code name -> count
    error_messages: dict[str, str]  # first message seen per code
    unfinished: int  # cut by the hard time bound
    warmup_requests: int
    requests_per_second: float  # finished requests (any outcome) per second
    ok_per_second: float
    rows_per_second: float  # rows of successful requests per second
    error_ratio: float  # (errors + unfinished) / (requests + unfinished)
    latency: LatencySummary
    latency_method: str
    send_lag: LatencySummary | None  # open loop: how late the client sent against its schedule
    cut_by_time_bound: bool
    client_cpu_ratio: float  # load generator CPU / wall over the measured part (1.0 = one core)
    server_cpu_ratio: float  # server CPU (all threads) / measured seconds; NaN when unknown
    server: ServerDelta | None
    server_note: str  # why there are no server figures, or ""
    check: CheckResult | None
    passed: bool
    failures: tuple[str, ...]  # why the run fails its gate, in words

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: NaN and infinities become null."""
        return _clean(asdict(self))


def _clean(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def build_report(
    settings: LoadTestSettings,
    outcome: RunOutcome,
    server: ServerDelta | None,
    server_note: str,
    check: CheckResult | None,
) -> LoadReport:
    seconds = outcome.measured_seconds
    errors = sum(outcome.errors.values())
    attempted = outcome.finished + outcome.unfinished
    ratio = (errors + outcome.unfinished) / attempted if attempted else math.nan

    def rate(n: int) -> float:
        return n / seconds if seconds > 0 else math.nan

    failures = []
    if outcome.finished == 0:
        failures.append("no measured request finished")
    elif ratio > settings.max_error_ratio:
        failures.append(
            f"error ratio {ratio:.4f} is above --max-error-ratio {settings.max_error_ratio:g}"
        )
    if check is not None and check.mismatches:
        failures.append(
            f"{check.mismatches} of {check.compared} checked responses differ from ONNX Runtime"
        )
    if check is not None and check.compared == 0:
        failures.append("--check: no successful response to compare")
    return LoadReport(
        target=settings.connection.target,
        model=settings.workload.model,
        api=settings.workload.api,
        mode=outcome.mode,
        concurrency=settings.plan.concurrency,
        rate_per_second=settings.plan.rate_per_second,
        rows_per_request=settings.workload.rows,
        measured_seconds=seconds,
        requests=outcome.finished,
        ok=outcome.ok,
        errors=dict(sorted(outcome.errors.items())),
        error_messages=dict(sorted(outcome.error_messages.items())),
        unfinished=outcome.unfinished,
        warmup_requests=outcome.warmup_requests,
        requests_per_second=rate(outcome.finished),
        ok_per_second=rate(outcome.ok),
        rows_per_second=rate(outcome.ok * settings.workload.rows),
        error_ratio=ratio,
        latency=LatencySummary.of(outcome.latency),
        latency_method=LATENCY_METHOD,
        send_lag=LatencySummary.of(outcome.send_lag) if outcome.send_lag is not None else None,
        cut_by_time_bound=outcome.cut_by_time_bound,
        client_cpu_ratio=outcome.client_cpu_ratio,
        server_cpu_ratio=(
            server.cpu_seconds / seconds
            if server is not None and server.cpu_seconds is not None and seconds > 0
            else math.nan
        ),
        server=server,
        server_note=server_note,
        check=check,
        passed=not failures,
        failures=tuple(failures),
    )
