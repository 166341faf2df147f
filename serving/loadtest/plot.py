"""``--plot FILE.png``: latency histogram and latency over time (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.loadtest.report import LoadReport
from serving.loadtest.runner import RunOutcome


def save_plot(outcome: RunOutcome, report: LoadReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    buckets = list(outcome.latency.buckets())
    if buckets:
        lower = np.array([max(b[0], 1e-7) for b in buckets]) * 1e3
        upper = np.array([b[1] for b in buckets]) * 1e3
        counts = np.array([b[2] for b in buckets], dtype=float)
        left.bar(lower, counts, width=upper - lower, align="edge", color="tab:blue")
        left.set_xscale("log")
        for name, value in (("p50", report.latency.p50_ms), ("p99", report.latency.p99_ms)):
            left.axvline(value, color="tab:red", linestyle="--", linewidth=1)
            left.text(value, counts.max(), f" {name} {value:.2f} ms", color="tab:red", va="top")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("requests")
    left.set_title("latency histogram (successful requests)")

    if outcome.timeline is not None and len(outcome.timeline):
        points = np.frombuffer(outcome.timeline, dtype=np.float64).reshape(-1, 2)
        right.scatter(
            points[:, 0], points[:, 1] * 1e3, s=2, alpha=0.3, color="tab:blue", label="ok"
        )
    if outcome.timeline_errors is not None and len(outcome.timeline_errors):
        failed = np.frombuffer(outcome.timeline_errors, dtype=np.float64)
        right.scatter(
            failed,
            np.full(failed.shape, report.latency.min_ms if report.ok else 1.0),
            s=8,
            marker="x",
            color="tab:red",
            label="error (send time)",
        )
    right.set_yscale("log")
    right.set_xlabel("scheduled send time since the warm-up ended (s)")
    right.set_ylabel("latency (ms)")
    right.set_title("latency over time")
    right.legend(loc="upper right")
    load = (
        f"concurrency {report.concurrency}"
        if report.mode == "closed"
        else f"{report.rate_per_second:g} req/s"
    )
    figure.suptitle(
        f"{report.model} via {report.api}, {load}: {report.requests_per_second:,.0f} req/s, "
        f"p50 {report.latency.p50_ms:.2f} ms, p99 {report.latency.p99_ms:.2f} ms"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
