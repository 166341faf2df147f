"""The load tester against a live ``python -m serving`` (fixtures from conftest.py).

Each run lasts a second or two; together well under 30 s on the shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import ServerProcess

from serving.loadtest import cli
from serving.loadtest.session import run_loadtest
from serving.loadtest.settings import ConnectionSettings, LoadPlan, LoadTestSettings, Workload


def settings_for(
    server: ServerProcess,
    *,
    model: str = "mlp",
    api: str = "predict",
    rows: int = 1,
    check: int = 0,
    **plan: object,
) -> LoadTestSettings:
    return LoadTestSettings(
        connection=ConnectionSettings(target=server.target, connect_timeout_seconds=10.0),
        workload=Workload(model=model, api=api, rows=rows, pool_size=16),
        plan=LoadPlan(**{"warmup_seconds": 0.0, "timeout_seconds": 5.0, **plan}),  # type: ignore[arg-type]
        metrics_url=f"http://127.0.0.1:{server.metrics_port}/metrics",
        check_samples=check,
        model_repository=server.repository if check else None,
    )


@pytest.mark.parametrize("api", ["predict", "kserve", "stream"])
def test_figures_are_sane_and_match_the_server_request_counter(
    server: ServerProcess, api: str
) -> None:
    settings = settings_for(server, api=api, rows=2, check=40, concurrency=8, duration_seconds=1.0)
    report = asyncio.run(run_loadtest(settings)).report
    assert report.passed, report.failures
    assert report.ok == report.requests > 50 and report.errors == {}
    # Every request the tester counted, and no other, was counted by the server.
    assert report.server is not None, report.server_note
    assert report.server.requests == report.requests
    assert report.server.requests_by_code == {"OK": report.requests}
    assert report.server.rows == 2 * report.requests
    assert 0 < report.server.executions <= report.requests
    assert report.rows_per_second == pytest.approx(2 * report.ok / report.measured_seconds)
    assert report.measured_seconds == pytest.approx(1.0, abs=0.5)
    latency = report.latency
    assert latency.count == report.ok
    assert 0 < latency.min_ms <= latency.p50_ms <= latency.p90_ms <= latency.p99_ms
    assert latency.p99_ms <= latency.p999_ms <= latency.max_ms < 5000
    assert 0.0 < report.server_cpu_ratio < 2.5 and 0.0 < report.client_cpu_ratio < 1.5
    assert report.check is not None and report.check.compared == 40
    assert report.check.mismatches == 0


def test_open_loop_keeps_its_rate_against_a_quick_server(server: ServerProcess) -> None:
    settings = settings_for(server, rate_per_second=250.0, duration_seconds=2.0)
    report = asyncio.run(run_loadtest(settings)).report
    assert report.passed, report.failures
    assert report.requests == pytest.approx(500, rel=0.15)  # Poisson: sd of the count ~ 4.5 %
    assert report.requests_per_second == pytest.approx(250, rel=0.15)
    assert report.send_lag is not None and report.send_lag.p50_ms < 5.0
    assert report.server is not None and report.server.requests == report.requests


def test_errors_are_counted_by_code_like_the_server_counts_them(server: ServerProcess) -> None:
    # mlp's max_batch_size is 64: every 65-row request is refused with INVALID_ARGUMENT.
    settings = settings_for(server, rows=65, concurrency=4, requests=120)
    report = asyncio.run(run_loadtest(settings)).report
    assert report.errors == {"INVALID_ARGUMENT": 120} and report.ok == 0
    assert "64" in report.error_messages["INVALID_ARGUMENT"]
    assert not report.passed and report.error_ratio == 1.0
    assert report.server is not None
    assert report.server.requests_by_code == {"INVALID_ARGUMENT": 120.0}


def test_queue_full_rejections_are_counted_and_the_time_bound_is_honoured(
    server: ServerProcess,
) -> None:
    # 'slow' runs tens of ms per execution with a queue of 2: at concurrency 12 many requests
    # are refused with RESOURCE_EXHAUSTED. The plan asks for 20 s; the bound cuts it at 1.5 s.
    settings = settings_for(
        server, model="slow", concurrency=12, duration_seconds=20.0, max_seconds=1.5
    )
    started = time.perf_counter()
    report = asyncio.run(run_loadtest(settings)).report
    assert time.perf_counter() - started < 4.0
    assert report.cut_by_time_bound
    assert report.errors.get("RESOURCE_EXHAUSTED", 0) > 0 and report.ok > 0
    assert set(report.errors) <= {"RESOURCE_EXHAUSTED"}
    assert not report.passed


def test_cli_against_a_server_with_a_token(
    model_repository: Path, start_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(model_repository, "--auth-token", "t0ken")
    base = ["--target", server.target, "--model", "mlp", "--requests", "50", "--warmup", "0",
            "--concurrency", "2", "--metrics-url", f"http://127.0.0.1:{server.metrics_port}/metrics",
            "--quiet"]  # fmt: skip
    assert cli.main(base) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    json_path = tmp_path / "report.json"
    assert cli.main([*base, "--token", "t0ken", "--json", str(json_path)]) == 0
    data = json.loads(json_path.read_text())
    assert data["ok"] == 50 and data["server"]["requests"] == 50
    assert "PASS" in capsys.readouterr().out
