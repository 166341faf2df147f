"""docker-compose.yml: valid per the Compose Specification, and the service graph the docs promise.

`make container-test` runs this file for real on podman; these are the static checks that need
no engine: Debian's docker-compose validates the file against its bundled compose-spec schema,
and the graph is read with PyYAML (which resolves the file's ``<<: *anchor`` merge keys the
same way Compose does): flags passed exist in the CLIs, grace periods agree, and so on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from deploy_support import REPO, module_source
from required_tools import require_tool

COMPOSE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "docker-compose.gpu.yml"
PYTHON_SERVICES = ("train", "server", "loadtest")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    return compose["services"]


def flag(command: list[str], name: str) -> str:
    """The value after ``name`` in an exec-form command list."""
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def python_module(command: list[str]) -> str | None:
    """``X`` for a ``python -m X ...`` command, else None."""
    is_python = bool(command) and PurePosixPath(command[0]).name.startswith("python")
    if is_python and len(command) >= 3 and command[1] == "-m":
        return command[2]
    return None


def installed_packages() -> list[str]:
    """Top-level package patterns pyproject.toml installs (what the image contains)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["tool"]["setuptools"]["packages"]["find"]["include"]


def seconds(duration: str | int | float) -> float:
    """Compose duration ('1m30s', '25s', '500ms') in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def volume_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) for short-syntax volume entries."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *rest = entry.split(":")
        mounts[target] = (source, rest[0] if rest else "rw")
    return mounts


def published_ports(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> the published spec, for short-syntax port entries."""
    ports = {}
    for entry in service.get("ports", []):
        ports[int(str(entry).rsplit(":", 1)[-1])] = str(entry)
    return ports


def _docker_compose(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = require_tool("docker-compose", "Debian package; `make system-deps` adds it")
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("COMPOSE_")}
    return subprocess.run(
        [binary, *args], cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )


# --- validity -----------------------------------------------------------------------------------


def test_compose_file_is_valid_per_compose_spec():
    result = _docker_compose("-f", "docker-compose.yml", "config", "-q")
    assert result.returncode == 0, result.stderr


def test_gpu_override_merges_into_a_valid_file():
    result = _docker_compose(
        "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config", "-q"
    )
    assert result.returncode == 0, result.stderr


def test_validator_rejects_a_broken_dependency_condition(tmp_path):
    """Guards the check above: the validator really reads the modern spec."""
    broken = COMPOSE.read_text().replace("service_completed_successfully", "service_done")
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _docker_compose("-f", str(tmp_path / "docker-compose.yml"), "config", "-q")
    assert result.returncode != 0
    assert "service_done" in result.stderr


# --- the service graph --------------------------------------------------------------------------


def test_services_are_the_documented_ones(services):
    assert set(services) == {"train", "server", "prometheus", "grafana", "loadtest"}


def test_server_starts_only_after_training_succeeded(services):
    assert services["server"]["depends_on"] == {
        "train": {"condition": "service_completed_successfully"}
    }
    assert services["train"]["restart"] == "no"


def test_models_volume_is_written_by_train_and_read_only_for_server(compose, services):
    assert "models" in compose["volumes"]
    train, server = services["train"], services["server"]
    out = flag(train["command"], "--out")
    repository = flag(server["command"], "--model-repository")
    assert volume_mounts(train)[out] == ("models", "rw")
    assert volume_mounts(server)[repository] == ("models", "ro")
    assert server.get("read_only") is True


def test_dataset_cache_volume_keeps_downloads_between_runs(compose, services):
    train = services["train"]
    data_dir = flag(train["command"], "--data-dir")
    assert volume_mounts(train)[data_dir][0] == "data"
    assert "data" in compose["volumes"]


def test_server_listens_on_all_interfaces_and_publishes_grpc_and_metrics(services):
    server = services["server"]
    command = server["command"]
    assert flag(command, "--host") == "0.0.0.0"
    grpc_port = int(flag(command, "--grpc-port"))
    metrics_port = int(flag(command, "--metrics-port"))
    assert (grpc_port, metrics_port) == (8001, 8002)
    ports = published_ports(server)
    # all interfaces on 8001/8002 unless the host moves them (make container-test binds 127.0.0.1)
    address = "${D2LSERVE_PUBLISH_ADDRESS:-0.0.0.0}"
    assert ports[grpc_port] == f"{address}:${{D2LSERVE_GRPC_PORT:-8001}}:8001"
    assert ports[metrics_port] == f"{address}:${{D2LSERVE_METRICS_PORT:-8002}}:8002"


def test_published_ports_resolve_to_the_documented_defaults():
    """What compose really publishes with nothing set, and with the smoke test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("D2LSERVE_", "PROMETHEUS_"))}
    env = {k: v for k, v in env.items() if not k.startswith("GRAFANA_")}
    resolved = _docker_compose("-f", "docker-compose.yml", "config", env=env)
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]

    def published(name: str) -> set[tuple[str, int, int]]:
        """(host address, host port, container port) from "ADDRESS:PUBLISHED:TARGET/tcp"."""
        triples = [p.split("/")[0].rsplit(":", 2) for p in services[name]["ports"]]
        return {(address, int(host), int(target)) for address, host, target in triples}

    assert published("server") == {("0.0.0.0", 8001, 8001), ("0.0.0.0", 8002, 8002)}
    assert published("prometheus") == {("127.0.0.1", 9090, 9090)}
    assert published("grafana") == {("127.0.0.1", 3000, 3000)}
    assert services["prometheus"]["image"] == "prom/prometheus:v3.5.0"
    assert services["grafana"]["image"] == "grafana/grafana:12.2.0"
    env |= {"D2LSERVE_PUBLISH_ADDRESS": "127.0.0.1", "D2LSERVE_GRPC_PORT": "18001"}
    moved = yaml.safe_load(_docker_compose("-f", "docker-compose.yml", "config", env=env).stdout)
    services = moved["services"]
    assert published("server") == {("127.0.0.1", 18001, 8001), ("127.0.0.1", 8002, 8002)}


def test_server_healthcheck_asks_the_grpc_health_service(services):
    server = services["server"]
    check = server["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD"
    assert python_module(test[1:]) == "serving.healthcheck"
    grpc_port = flag(server["command"], "--grpc-port")
    assert flag(test, "--target") == f"127.0.0.1:{grpc_port}"
    # the probe's own deadline ends before Docker's timeout kills it
    assert float(flag(test, "--timeout")) < seconds(check["timeout"])
    assert seconds(check["start_period"]) >= 30  # models load before the first probe counts


def test_batch_jobs_do_not_inherit_the_server_healthcheck(services):
    for name in ("train", "loadtest"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_stop_grace_period_covers_the_server_grace_time(services):
    server = services["server"]
    grace = float(flag(server["command"], "--grace-seconds"))
    stop = seconds(server["stop_grace_period"])
    assert grace + 2 <= stop <= grace + 15, (grace, stop)


def test_long_running_services_restart_and_have_resource_limits(services):
    for name in ("server", "prometheus", "grafana"):
        service = services[name]
        assert service["restart"] == "unless-stopped", name
        limits = service["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and limits["memory"], name
    assert services["train"]["deploy"]["resources"]["limits"]["memory"]


def test_auth_token_reaches_server_and_loadtest_from_the_host(services):
    from serving.config import AUTH_TOKEN_ENV

    for name in ("server", "loadtest"):
        value = services[name]["environment"][AUTH_TOKEN_ENV]
        assert value == f"${{{AUTH_TOKEN_ENV}:-}}", name  # empty (auth off) unless the host sets it


def test_training_runs_in_the_training_image_and_serving_in_the_slim_one(services):
    """The Dockerfile's --target stages: torch only where training happens."""
    expected = {
        "train": ("training", "d2l-serve:train"),
        "server": ("serving-cpu", "d2l-serve:cpu"),
        "loadtest": ("serving-cpu", "d2l-serve:cpu"),
    }
    for name, (target, image) in expected.items():
        build = services[name]["build"]
        assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        assert (build["target"], services[name]["image"]) == (target, image), name
        assert "args" not in build, "stages are chosen by --target, not by a build argument"
        assert services[name]["init"] is True  # SIGTERM reaches python, not a bare PID 1


def _all_commands(services: dict[str, Any]) -> list[tuple[str, list[str]]]:
    commands = []
    for name, service in services.items():
        if "command" in service:
            commands.append((name, service["command"]))
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] in ("CMD", "CMD-SHELL"):
            commands.append((f"{name} healthcheck", test[1:]))
    return commands


def test_every_python_command_runs_a_module_of_the_package(services):
    packages = installed_packages()
    seen = set()
    for where, command in _all_commands(services):
        module = python_module(command)
        if module is None:
            continue
        seen.add(module)
        assert module_source(module) is not None, f"{where}: no module {module!r} in the repo"
        top = module.split(".")[0]
        assert any(re.fullmatch(p.replace("*", ".*"), top) for p in packages), (
            f"{where}: package {top!r} is not installed by pyproject.toml ({packages})"
        )
    assert seen == {"training", "serving", "serving.healthcheck", "serving.loadtest"}


def test_every_flag_in_a_command_is_accepted_by_its_cli(services):
    """Catches drift between the compose file and the CLIs (renamed or removed flags)."""
    by_module: dict[str, set[str]] = {}
    for _, command in _all_commands(services):
        module = python_module(command)
        if module is not None:
            flags = {arg for arg in command if arg.startswith("--")}
            by_module.setdefault(module, set()).update(flags)
    # Started together: each pays for importing torch / onnxruntime / grpc.
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "cwd": REPO}
    helps = {
        module: subprocess.Popen([sys.executable, "-m", module, "--help"], **pipes)
        for module in sorted(by_module)
    }
    for module, process in helps.items():
        try:
            stdout, stderr = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 0, f"{module} --help failed: {stderr[-2000:]}"
        offered = set(re.findall(r"--[a-z][a-z0-9-]*", stdout))
        flags = by_module[module]
        assert flags <= offered, f"python -m {module} does not accept {sorted(flags - offered)}"


# --- Prometheus and Grafana ---------------------------------------------------------------------


def test_bind_mounted_config_exists_in_the_repo(services):
    for name, service in services.items():
        for target, (source, mode) in volume_mounts(service).items():
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} (mounted at {target}) missing"
                assert mode == "ro", f"{name}: config {source} should be mounted read-only"


def test_prometheus_scrapes_the_server_metrics_port_and_loads_the_alert_rules(services):
    prometheus = services["prometheus"]
    config_file = PurePosixPath(
        next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    )
    source, _ = volume_mounts(prometheus)[str(config_file.parent)]
    config_dir = REPO / source
    config = _load(config_dir / config_file.name)
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    metrics_port = flag(services["server"]["command"], "--metrics-port")
    assert f"server:{metrics_port}" in targets
    rule_files = config.get("rule_files", [])
    assert rule_files, "prometheus.yml loads no alert rules"
    for pattern in rule_files:
        relative = PurePosixPath(pattern)
        if relative.is_absolute():  # must point inside the mounted directory
            relative = relative.relative_to(config_file.parent)
        assert list(config_dir.glob(str(relative))), f"rule file {pattern} not in {source}"


def test_grafana_is_provisioned_and_anonymous_read_only(services):
    grafana = services["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = volume_mounts(grafana)
    provisioning = REPO / mounts["/etc/grafana/provisioning"][0]
    dashboards_dir = REPO / mounts["/var/lib/grafana/dashboards"][0]
    assert list(dashboards_dir.glob("*.json")), "no dashboard JSON to provision"
    home = PurePosixPath(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (dashboards_dir / home.relative_to("/var/lib/grafana/dashboards")).is_file()

    datasources = [
        source
        for path in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in _load(path).get("datasources", [])
    ]
    prometheus_sources = [s for s in datasources if s.get("type") == "prometheus"]
    assert prometheus_sources, "no Prometheus datasource provisioned"
    assert {s["url"].rstrip("/") for s in prometheus_sources} == {"http://prometheus:9090"}
    assert published_ports(services["prometheus"])[9090].endswith(":9090")

    providers = [
        provider
        for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in _load(path).get("providers", [])
    ]
    paths = {provider["options"]["path"].rstrip("/") for provider in providers}
    assert "/var/lib/grafana/dashboards" in paths


# --- load test ----------------------------------------------------------------------------------


def test_loadtest_runs_only_under_its_profile_for_a_bounded_time(services):
    for name, service in services.items():
        assert service.get("profiles", []) == (["loadtest"] if name == "loadtest" else []), name
    loadtest = services["loadtest"]
    command = loadtest["command"]
    assert python_module(command) == "serving.loadtest"
    grpc_port = flag(services["server"]["command"], "--grpc-port")
    assert flag(command, "--target") == f"server:{grpc_port}"
    assert 0 < float(flag(command, "--duration")) <= 300
    assert float(flag(command, "--max-seconds")) >= float(flag(command, "--duration"))
    assert loadtest["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert loadtest["restart"] == "no"


# --- GPU override -------------------------------------------------------------------------------


def test_gpu_override_serves_from_the_cuda_image_and_reserves_a_gpu_for_train_and_server(services):
    override = _load(GPU_OVERRIDE)["services"]
    assert set(override) <= set(services)
    for name in ("train", "server"):
        devices = override[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices, name
        for device in devices:
            assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
    assert override["server"]["build"]["target"] == "serving-cuda"
    assert override["server"]["image"] == "d2l-serve:cuda"
    # training's image already carries CUDA torch; the load generator needs no GPU
    assert "build" not in override["train"] and "loadtest" not in override
    assert "devices" not in str(services), "the base file must run on hosts without a GPU"
