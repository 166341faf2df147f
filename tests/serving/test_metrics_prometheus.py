"""A real Prometheus scrapes the live server; PromQL over its data returns values for the model.

Uses Debian's ``prometheus`` binary (``make system-deps`` installs it as root); skips elsewhere,
and fails when it is missing under CI=true (tests/required_tools.py). Prometheus listens on a
127.0.0.1 port it picks itself (port 0, read back from its log), scrapes every 0.5 s, keeps
its data in a temporary directory that is removed afterwards, and is stopped by the fixture.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from required_tools import require_tool

from serving.client import Client

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "d2lserve.json"
INSTALL_HINT = "Debian package 'prometheus'; make system-deps"
WINDOW = "5s"  # rate() window: >= 4 scrapes at 0.5 s
MLP_ROW = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)


@dataclass
class Prometheus:
    url: str

    def query(self, promql: str) -> dict:
        """GET /api/v1/query; returns the decoded body (status 'success' or 'error')."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(address, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:  # 400/422 carry the PromQL error as JSON
            return json.load(error)

    def values(self, promql: str) -> list[float]:
        body = self.query(promql)
        assert body["status"] == "success", f"{promql}: {body}"
        return [float(item["value"][1]) for item in body["data"]["result"]]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.load(response)


@pytest.fixture(scope="module")
def prometheus(server) -> Iterator[Prometheus]:
    """Prometheus scraping the session server's metrics port, with our alert rules loaded."""
    binary = require_tool("prometheus", INSTALL_HINT)
    data = Path(tempfile.mkdtemp(prefix="d2lserve-prometheus-"))
    config = {
        # Rules are the shipped ones, evaluated every 0.5 s instead of every 15 s.
        "global": {
            "scrape_interval": "500ms",
            "scrape_timeout": "400ms",
            "evaluation_interval": "500ms",
        },
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "d2lserve",
                "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}],
            }
        ],
    }
    (data / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (data / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={data / 'prometheus.yml'}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            "--web.listen-address=127.0.0.1:0",
            "--log.level=info",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = wait_ready(process, data / "prometheus.log")
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)
    assert not data.exists()


# Prometheus logs the address it bound: msg="Listening on" address=127.0.0.1:40029
LISTENING = re.compile(r'msg="Listening on" address=(127\.0\.0\.1:\d+)')


def wait_ready(process: subprocess.Popen, log: Path, timeout: float = 30.0) -> str:
    """Wait until Prometheus listens and answers /-/ready; return its base URL."""
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited {process.returncode}:\n{log.read_text()}")
        if url is None:
            found = LISTENING.search(log.read_text(errors="replace"))
            if found is None or found.group(1).endswith(":0"):
                time.sleep(0.05)
                continue
            url = f"http://{found.group(1)}"
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return url
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"prometheus not ready after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def traffic(server) -> Iterator[None]:
    """Steady Predict traffic to mlp (bounded to 60 s) while the module's tests poll."""
    stop = threading.Event()

    def send() -> None:
        ends = time.monotonic() + 60
        with Client(server.target, timeout=10) as client:
            while not stop.is_set() and time.monotonic() < ends:
                client.predict("mlp", MLP_ROW)
                time.sleep(0.005)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(15)


def poll_values(prometheus: Prometheus, promql: str, timeout: float = 30.0) -> list[float]:
    """Query until the result holds finite values (data arrives with the scrapes)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [v for v in prometheus.values(promql) if math.isfinite(v)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def test_prometheus_scrapes_the_server(prometheus, traffic):
    assert poll_values(prometheus, 'up{job="d2lserve"} == 1') == [1.0]


def test_request_rate_for_the_model(prometheus, traffic):
    rates = poll_values(
        prometheus, f'sum(rate(d2lserve_requests_total{{model="mlp",code="OK"}}[{WINDOW}]))'
    )
    assert rates and rates[0] > 0, "no request rate for mlp"


def test_p99_latency_for_the_model(prometheus, traffic):
    p99 = poll_values(
        prometheus,
        "histogram_quantile(0.99, sum by (le) "
        f'(rate(d2lserve_request_duration_seconds_bucket{{model="mlp"}}[{WINDOW}])))',
    )
    assert p99, "no p99 latency for mlp"
    assert 0 < p99[0] <= 5.0  # inside the histogram's buckets


def test_every_dashboard_expression_runs_on_live_data(prometheus, traffic):
    poll_values(prometheus, f'rate(d2lserve_requests_total{{model="mlp"}}[{WINDOW}])')
    board = json.loads(DASHBOARD.read_text())
    substitutions = {
        "$__rate_interval": WINDOW,
        "$__range": "1m",
        '"$model"': '"mlp|reg"',
    }
    empty = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, replacement in substitutions.items():
                expr = expr.replace(variable, replacement)
            body = prometheus.query(expr)
            assert body["status"] == "success", f"{panel['title']}: {expr}: {body}"
            if not body["data"]["result"]:
                empty.append(panel["title"])
    # Panels fed by the steady mlp traffic must show data.
    for title in (
        "Requests/s by model",
        "Request latency p50 / p99",
        "Queue depth",
        "Model versions",
    ):
        assert title not in empty, f"panel {title!r} has no data"


def test_alert_rules_evaluate_without_errors(prometheus, traffic):
    poll_values(prometheus, f'rate(d2lserve_requests_total{{model="mlp"}}[{WINDOW}])')
    deadline = time.monotonic() + 15
    while True:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        # Never-evaluated rules report the zero time, 0001-01-01T00:00:00Z.
        evaluated = [r for r in rules if not r["lastEvaluation"].startswith("0001")]
        if (rules and len(evaluated) == len(rules)) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert {r["name"] for r in rules} >= {"D2lserveHighErrorRatio", "D2lserveHighP99Latency"}
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
    # Healthy traffic: nothing fires.
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
