"""deploy/kserve and the --workers settings of deploy/k8s, checked offline.

No cluster (and no KServe CRDs) here: the YAML is parsed with PyYAML, its server command is
parsed by the server's real argument parser, and the ports, formats, protocol and volume it
names are checked against each other and against deploy/k8s.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from deploy_support import REPO

from serving.__main__ import build_parser

KSERVE = REPO / "deploy" / "kserve"
K8S = REPO / "deploy" / "k8s"


def _by_kind(folder_docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in folder_docs}


@pytest.fixture(scope="module")
def kserve() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted(KSERVE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    return _by_kind([d for d in docs if d])


@pytest.fixture(scope="module")
def runtime(kserve) -> dict[str, Any]:
    return kserve["ServingRuntime"]


@pytest.fixture(scope="module")
def container(runtime) -> dict[str, Any]:
    (only,) = runtime["spec"]["containers"]
    return only


def server_args(command: list[str]) -> Any:
    """The command parsed by ``python -m serving``'s own parser (exits 2 on a bad flag)."""
    assert command[:3] == ["python", "-m", "serving"], command
    return build_parser().parse_args(command[3:])


def test_the_folder_holds_one_runtime_and_one_inference_service(kserve):
    assert {kind: doc["apiVersion"] for kind, doc in kserve.items()} == {
        "ServingRuntime": "serving.kserve.io/v1alpha1",
        "InferenceService": "serving.kserve.io/v1beta1",
    }


def test_runtime_serves_onnx_over_grpc_v2_only(runtime, container):
    spec = runtime["spec"]
    assert {"name": "onnx", "version": "1", "autoSelect": True} in spec["supportedModelFormats"]
    assert spec["protocolVersions"] == ["grpc-v2"]  # the server has no REST endpoint
    assert container["name"] == "kserve-container"  # the name KServe looks for


def test_runtime_command_is_accepted_by_the_server_and_names_kserve_paths_and_ports(
    runtime, container
):
    args = server_args(container["command"] + container["args"])
    assert str(args.model_repository) == "/mnt/models"  # where KServe puts storageUri
    assert args.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port["name"] == "h2c" and port["containerPort"] == args.grpc_port
    assert container["readinessProbe"]["grpc"]["port"] == args.grpc_port
    annotations = runtime["spec"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == args.metrics_port
    assert annotations["prometheus.kserve.io/path"] == "/metrics"


def test_inference_service_uses_the_runtime_on_the_training_volume(kserve, runtime):
    predictor = kserve["InferenceService"]["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    claim = yaml.safe_load((K8S / "models-pvc.yaml").read_text())["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{claim}/"
    assert predictor["minReplicas"] >= 2


def _k8s_server() -> dict[str, Any]:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return server


@pytest.mark.parametrize("where", ["deploy/k8s", "deploy/kserve"])
def test_workers_auto_comes_with_whole_cpu_requests_equal_to_limits(where, container):
    server = _k8s_server() if where == "deploy/k8s" else container
    command = server["command"] + server.get("args", [])
    assert command[command.index("--workers") + 1] == "auto"
    server_args(command)  # "auto" is accepted by the real parser
    resources = server["resources"]
    cpu = resources["requests"]["cpu"]
    # auto = the cgroup CPU quota, so the limit decides the worker count; requests equal to it
    # guarantee those cores (and whole numbers allow exclusive ones).
    assert resources["limits"]["cpu"] == cpu and str(cpu).isdigit() and int(cpu) >= 2
