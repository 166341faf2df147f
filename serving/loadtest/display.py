"""Terminal output of the command line: a live progress bar and the report table (rich)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serving.loadtest.report import LatencySummary, LoadReport
from serving.loadtest.runner import Tick


class LiveProgress:
    """A progress bar with live throughput, errors and requests in flight."""

    def __init__(self, console: Console, description: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task(description, total=1.0, status="")

    def __enter__(self) -> LiveProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, tick: Tick) -> None:
        phase = "warm-up " if tick.warming_up else ""
        status = (
            f"{phase}{tick.recent_requests_per_second:,.0f} req/s  ok {tick.ok:,}  "
            f"errors {tick.errors:,}  in flight {tick.inflight}"
        )
        self._progress.update(self._task, completed=tick.fraction_done, status=status)


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.3f}"


def _latency_row(table: Table, name: str, summary: LatencySummary) -> None:
    table.add_row(
        name,
        _ms(summary.p50_ms),
        _ms(summary.p90_ms),
        _ms(summary.p99_ms),
        _ms(summary.p999_ms),
        _ms(summary.max_ms),
        _ms(summary.mean_ms),
    )


def render_report(report: LoadReport, console: Console) -> None:
    load = (
        f"concurrency {report.concurrency}"
        if report.mode == "closed"
        else f"open loop {report.rate_per_second:g} req/s"
    )
    summary = Table(
        title=f"{report.model} via {report.api} at {report.target}: {load}, "
        f"{report.rows_per_request} row(s)/request",
        show_header=False,
    )
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    summary.add_row("measured seconds", f"{report.measured_seconds:.2f}")
    summary.add_row(
        "requests (ok / errors)",
        f"{report.requests:,} ({report.ok:,} / {report.requests - report.ok:,})",
    )
    summary.add_row("requests/s", f"{report.requests_per_second:,.1f}")
    summary.add_row("rows/s", f"{report.rows_per_second:,.1f}")
    summary.add_row(
        "error ratio", "-" if math.isnan(report.error_ratio) else f"{report.error_ratio:.4%}"
    )
    summary.add_row("load generator CPU (1.0 = a core)", _ratio(report.client_cpu_ratio))
    summary.add_row("server CPU (1.0 = a core)", _ratio(report.server_cpu_ratio))
    if report.warmup_requests:
        summary.add_row("warm-up requests (excluded)", f"{report.warmup_requests:,}")
    if report.unfinished or report.cut_by_time_bound:
        summary.add_row("cut by the time bound, unfinished", f"{report.unfinished:,}")
    console.print(summary)

    latency = Table(title="latency, ms (" + report.latency_method + ")")
    for column in ("", "p50", "p90", "p99", "p99.9", "max", "mean"):
        latency.add_column(column, justify="right")
    _latency_row(latency, "request", report.latency)
    if report.send_lag is not None:
        _latency_row(latency, "send lag", report.send_lag)
    console.print(latency)

    if report.errors:
        errors = Table(title="errors by gRPC status code")
        errors.add_column("code")
        errors.add_column("count", justify="right")
        errors.add_column("first message")
        for code, count in report.errors.items():
            errors.add_row(code, f"{count:,}", report.error_messages.get(code, ""))
        console.print(errors)

    if report.server is not None:
        server = report.server
        batches = Table(
            title=f"server: {server.requests:,.0f} requests, {server.executions:,.0f} executions, "
            f"mean batch {server.mean_batch_size:.2f} rows"
        )
        batches.add_column("rows per execution")
        batches.add_column("executions", justify="right")
        batches.add_column("share", justify="right")
        for label, count in server.sizes:
            share = count / server.executions if server.executions else math.nan
            batches.add_row(label, f"{count:,.0f}", f"{share:.1%}")
        console.print(batches)
    elif report.server_note:
        console.print(f"server metrics: {report.server_note}")

    if report.check is not None:
        check = report.check
        console.print(
            f"check: {check.compared} responses compared with ONNX Runtime, "
            f"{check.mismatches} mismatches, max |difference| {check.max_abs_difference:.3g}"
            + (f"; first: {check.first_mismatch}" if check.first_mismatch else "")
        )
    verdict = (
        "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]: " + "; ".join(report.failures)
    )
    console.print(verdict)
