"""The packaging split: serving runs on the base dependencies alone, training adds its stack.

The slim serving image installs ``.[cpu]`` (base + ONNX Runtime's CPU wheel); here a fresh
virtual environment with exactly that list imports every module of the serving side and runs
its command lines, so a stray ``import torch`` (or onnx, sklearn, ...) fails this test before it
fails the image.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
from deploy_support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
TRAINING_STACK = ("torch", "torchvision", "onnx", "onnxscript", "scikit-learn", "matplotlib")
TRAINING_MODULES = ("torch", "torchvision", "onnx", "onnxscript", "sklearn", "matplotlib")
SERVING_PACKAGES = ("serving", "protos", "model_repository")  # serving.loadtest included
# Modules of those packages that are tools for developers, not part of what serves.
DEV_ONLY_MODULES = {"protos.generate": "regenerates the stubs with grpcio-tools (dev extra)"}
ONNX_RUNTIME_WHEELS = ("onnxruntime", "onnxruntime-gpu")


def names(requirements: list[str]) -> list[str]:
    return [req.split("==")[0].split("[")[0].strip().lower() for req in requirements]


def test_base_dependencies_are_what_serving_needs_and_nothing_of_training():
    base = names(PROJECT["dependencies"])
    assert not set(base) & set(TRAINING_STACK), base
    for needed in ("grpcio", "grpcio-health-checking", "protobuf", "prometheus-client", "numpy"):
        assert needed in base, needed
    assert set(names(EXTRAS["train"])) == set(TRAINING_STACK)


def test_exactly_one_onnx_runtime_wheel_per_extra_and_none_in_base():
    """Both wheels install the module `onnxruntime`: pip must never be asked for the two."""
    assert not set(names(PROJECT["dependencies"])) & set(ONNX_RUNTIME_WHEELS)
    assert names(EXTRAS["cpu"]) == ["onnxruntime"]
    assert names(EXTRAS["gpu"]) == ["onnxruntime-gpu"]
    for extra in ("train", "dev"):
        assert not set(names(EXTRAS[extra])) & set(ONNX_RUNTIME_WHEELS), extra
    versions = {req.split("==")[1] for req in EXTRAS["cpu"] + EXTRAS["gpu"]}
    assert len(versions) == 1, f"the CPU and GPU images must run one ONNX Runtime: {versions}"


def test_every_dependency_is_pinned():
    for req in PROJECT["dependencies"] + [r for extra in EXTRAS.values() for r in extra]:
        assert "==" in req, req


def test_requirements_script_prints_base_plus_the_named_extras():
    def run(*extras: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / "requirements.py"), *extras],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    printed = run("train", "gpu")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == PROJECT["dependencies"] + EXTRAS["train"] + EXTRAS["gpu"]
    unknown = run("cuda")
    assert unknown.returncode != 0
    assert "cuda" in unknown.stderr and "'gpu'" in unknown.stderr


def test_runtime_probe_model_is_what_onnx_helper_builds():
    """serving.core.runtime carries the CUDA probe as bytes so that it needs no onnx package."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper

    from serving.core.runtime import PROBE_MODEL

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert model.SerializeToString() == PROBE_MODEL
    onnx.checker.check_model(onnx.load_from_string(PROBE_MODEL))
    session = ort.InferenceSession(PROBE_MODEL, providers=["CPUExecutionProvider"])
    x = np.array([2.5], np.float32)
    assert session.run(None, {"x": x})[0].tolist() == [2.5]


# --- a fresh environment with the base dependencies + ONNX Runtime's CPU wheel -----------------

IMPORT_ALL = """
import importlib, pkgutil, sys
packages, skip, banned = sys.argv[1].split(","), set(sys.argv[2].split(",")), sys.argv[3].split(",")
imported = []
for name in packages:
    package = importlib.import_module(name)
    imported.append(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if info.name not in skip and not info.name.endswith(".__main__"):  # those run a CLI
            importlib.import_module(info.name)
            imported.append(info.name)
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(banned))
assert not loaded, f"training stack imported: {loaded}"
print("\\n".join(imported))
"""


@pytest.fixture(scope="module")
def base_python(tmp_path_factory) -> str:
    """Python of a new venv (no system site-packages) with `requirements.py cpu` installed."""
    venv = tmp_path_factory.mktemp("base-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    requirements = venv / "requirements.txt"
    listed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "requirements.py"), "cpu"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    requirements.write_text(listed)
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(requirements)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def run_in(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The checkout on the path, not an installed copy: what is tested is this tree.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [python, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_fresh_base_environment_has_no_training_stack(base_python):
    probe = "import importlib.util as u; print([m for m in {} if u.find_spec(m)])"
    result = run_in(base_python, "-c", probe.format(list(TRAINING_MODULES)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_serving_module_imports_with_base_dependencies_only(base_python):
    result = run_in(
        base_python, "-c", IMPORT_ALL, ",".join(SERVING_PACKAGES),
        ",".join(DEV_ONLY_MODULES), ",".join(TRAINING_MODULES),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    imported = result.stdout.split()
    for expected in ("serving.server", "serving.loadtest.cli", "serving.healthcheck",
                     "protos.predict_pb2_grpc", "model_repository"):  # fmt: skip
        assert expected in imported, expected


def test_dev_only_modules_still_exist():
    """The exemption list names real modules (else it would hide a new one silently)."""
    for module in DEV_ONLY_MODULES:
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module


@pytest.mark.parametrize("module", ["serving", "serving.loadtest", "serving.healthcheck"])
def test_command_lines_start_with_base_dependencies_only(base_python, module):
    result = run_in(base_python, "-m", module, "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower()
