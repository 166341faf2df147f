"""deploy/k8s: the Kubernetes example agrees with the image, the compose stack and the server.

No cluster here; the manifests are parsed with PyYAML and checked for the things that would
break at apply or run time: probes on the gRPC port, a grace period longer than the server's
drain, the non-root uid the image uses, Services selecting the pods, the HPA metric existing.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploy_support import REPO, module_source

K8S = REPO / "deploy" / "k8s"


def _documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in _documents()}


@pytest.fixture(scope="module")
def deployment(manifests) -> dict[str, Any]:
    return manifests[("Deployment", "d2l-serve")]


@pytest.fixture(scope="module")
def server(deployment) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def arg(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_pods_use_the_images_compose_uses_for_the_same_job(manifests, server):
    """The Job trains in the training image (torch), the Deployment serves from the slim one."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    (train,) = manifests[("Job", "d2l-serve-train")]["spec"]["template"]["spec"]["containers"]
    assert train["image"] == compose["train"]["image"]
    assert server["image"] == compose["server"]["image"]


def test_kustomization_lists_every_manifest_in_the_folder():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_probes_call_the_grpc_health_service_on_the_server_port(server):
    grpc_port = int(arg(server["command"], "--grpc-port"))
    named = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert named == {"grpc": grpc_port, "metrics": int(arg(server["command"], "--metrics-port"))}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == grpc_port, probe
        assert "tcpSocket" not in server[probe] and "httpGet" not in server[probe], probe


def test_grace_period_covers_pre_stop_and_the_server_drain(deployment, server):
    grace = float(arg(server["command"], "--grace-seconds"))
    pre_stop = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period >= float(pre_stop[1]) + grace + 2


def without_workers(command: list[str]) -> list[str]:
    """The command less its ``--workers N`` (Kubernetes sizes workers to the pod's CPU)."""
    if "--workers" not in command:
        return command
    at = command.index("--workers")
    return command[:at] + command[at + 2 :]


def test_server_container_matches_the_compose_server():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    compose_cmd = compose["services"]["server"]["command"]
    for kind_cmd in (c for d in _documents() if d["kind"] == "Deployment"
                     for c in d["spec"]["template"]["spec"]["containers"]):  # fmt: skip
        assert without_workers(kind_cmd["command"]) == without_workers(compose_cmd)


def test_commands_run_modules_of_the_package(manifests):
    for (kind, name), doc in manifests.items():
        if kind not in ("Deployment", "Job"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            command = container["command"]
            assert command[:2] == ["python", "-m"], (kind, name)
            assert module_source(command[2]) is not None, f"{kind}/{name}: no module {command[2]}"


def test_pods_run_as_the_image_user_and_models_are_read_only(manifests, server):
    user = re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE).group(1)
    for (kind, name), doc in manifests.items():
        if kind in ("Deployment", "Job"):
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert str(context["runAsUser"]) == user, name
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts[arg(server["command"], "--model-repository")]["readOnly"] is True
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in mounts  # the only writable path with a read-only root


def test_services_select_the_pods_and_one_is_headless(manifests, deployment):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [d for (kind, _), d in manifests.items() if kind == "Service"]
    assert {s.get("spec", {}).get("clusterIP") for s in services} == {None, "None"}
    port_names = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_autoscaler_targets_the_deployment_on_a_metric_the_server_exports(manifests):
    hpa = manifests[("HorizontalPodAutoscaler", "d2l-serve")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "d2l-serve"
    }  # fmt: skip
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    source = (REPO / "serving" / "metrics.py").read_text()
    namespace = re.search(r'^NAMESPACE = "(\w+)"', source, re.MULTILINE).group(1)
    suffix = name.removeprefix(f"{namespace}_")
    assert suffix != name and f'"{suffix}"' in source, f"{name} is not defined in metrics.py"
    assert hpa["spec"]["minReplicas"] >= 2  # one pod going away never drops all traffic
