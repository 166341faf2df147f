"""Static checks of the Prometheus and Grafana assets under deploy/ (promtool, JSON structure)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from required_tools import require_tool

from serving.metrics import ServingMetrics
from serving.shared_metrics import SupervisorMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "d2lserve.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
# Grafana's built-in variables, replaced by values Prometheus accepts before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool", "Debian package 'prometheus'; make system-deps")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions(board: dict) -> list[tuple[str, str]]:
    """(panel title + refId, PromQL with Grafana variables substituted) for every target."""
    found = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace('model=~"$model"', 'model=~".*"')
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((f"{panel['title']} {target['refId']}", expr))
    return found


def exported_metric_names() -> set[str]:
    """Every sample name the server exports once each metric has been touched."""
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    metrics.for_version("m", 1)
    metrics.set_model_state("m", 1, "ready")
    metrics.load_failed("m")
    metrics.repository_scanned(1.0)
    metrics.set_runtime_info("CPUExecutionProvider", "1")
    names = {s.name for family in registry.collect() for s in family.samples}
    # --workers N: the supervisor's own (this process standing in for worker 0).
    with tempfile.TemporaryDirectory() as files:
        supervisor = SupervisorMetrics(
            Path(files), lambda: {os.getpid(): 0}, held=lambda: None, count=1
        )
        names |= {s.name for family in supervisor.registry.collect() for s in family.samples}
    return names


def test_prometheus_config_is_valid_and_loads_the_alert_rules():
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_the_compose_server_service():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["d2lserve"]["static_configs"] for t in sc["targets"]]
    assert targets == ["server:8002"]
    assert jobs["d2lserve"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["alerts.yml"]


def test_alert_rules_pass_promtool_check():
    result = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    names = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert {"D2lserveHighErrorRatio", "D2lserveHighP99Latency", "D2lserveQueueSaturated"} <= names


def test_alert_rules_fire_on_the_unit_test_series():
    # alerts_test.yml states, for synthetic series, which alerts fire with which labels/text.
    result = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_datasource_is_provisioned_with_the_uid_the_dashboard_uses():
    config = yaml.safe_load(DATASOURCES.read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["name"] == "Prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    board = dashboard()
    used = {json.dumps(p["datasource"], sort_keys=True) for p in board["panels"]}
    used |= {
        json.dumps(t["datasource"], sort_keys=True) for p in board["panels"] for t in p["targets"]
    }
    used |= {json.dumps(v["datasource"], sort_keys=True) for v in board["templating"]["list"]}
    assert used == {json.dumps({"type": "prometheus", "uid": source["uid"]}, sort_keys=True)}


def test_grafana_dashboard_provider_points_at_the_mounted_dashboards_folder():
    config = yaml.safe_load(PROVIDERS.read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path == "/var/lib/grafana/dashboards"
    compose_file = ROOT / "docker-compose.yml"
    if compose_file.exists():  # the docker helper's file mounts our folders; they must agree
        grafana = yaml.safe_load(compose_file.read_text())["services"]["grafana"]
        mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if ":" in v}
        assert mounts["./deploy/grafana/dashboards"] == path
        assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_structure_is_what_grafana_provisioning_accepts():
    board = dashboard()
    assert board["uid"] == "d2lserve"
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    assert "id" not in board or board["id"] is None  # provisioning assigns ids
    panel_ids = [p["id"] for p in board["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "heatmap", "bargauge", "table", "stat"}
        assert panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "model"


def test_dashboard_covers_the_operator_questions():
    exprs = " ".join(expr for _, expr in dashboard_expressions(dashboard()))
    for needle in (
        "rate(d2lserve_requests_total",
        'code!="OK"',
        "histogram_quantile(0.5, sum by (model, le) (rate(d2lserve_request_duration_seconds",
        "histogram_quantile(0.99, sum by (model, le) (rate(d2lserve_request_duration_seconds",
        "d2lserve_queue_duration_seconds_bucket",
        "d2lserve_batch_size_bucket",
        "d2lserve_queue_depth",
        "d2lserve_inflight_requests",
        "d2lserve_model_state",
    ):
        assert needle in exprs, needle


def test_every_metric_named_in_dashboard_and_alerts_is_exported_by_the_server():
    exported = exported_metric_names()
    text = DASHBOARD.read_text() + (PROMETHEUS / "alerts.yml").read_text()
    referenced = set(re.findall(r"\bd2lserve_[a-z_]+", text))
    assert referenced, "no d2lserve metric referenced"
    assert referenced <= exported, sorted(referenced - exported)


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    # promtool parses each recording rule's expression: one rule per dashboard target.
    exprs = dashboard_expressions(dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:target_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promql_check_rejects_a_broken_expression(tmp_path):
    # Guards the check above: promtool really parses the expressions.
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (model (up)"}]}]}
        )
    )
    assert promtool("check", "rules", str(path)).returncode != 0
