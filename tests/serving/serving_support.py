"""Helpers for the serving tests: a small real model repository and real server processes.

``mlp`` and ``reg`` are small untrained networks exported by the real exporter
(training.export.export_trained_model), so the tests serve exactly what training writes:

* ``mlp``  classifier, input [batch, 1, 8, 8], outputs logits and probabilities [batch, 10]
* ``reg``  regression on 4 raw features (standardization inside the graph), output
  prediction [batch, 1]

``slow`` is built by hand with onnx.helper (with the contract's tensor names and metadata,
config.pbtxt through model_repository.config.format_config): a regression whose every
execution takes tens of milliseconds whatever the rows, for the queue, deadline, loading
and shutdown tests; max_queue_size 2.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from model_repository import layout
from model_repository import metadata as meta
from model_repository.config import format_config
from protos import model_config_pb2 as mc
from serving.client import Client, predict_request
from serving.healthcheck import wait_until_serving
from serving.logs import bound_ports
from serving.metrics import DROP_REASONS
from training.export import ExportSettings, export_trained_model
from training.result import DatasetInfo, TrainedModel

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LABELS = [f"class-{i}" for i in range(10)]


# -- models --------------------------------------------------------------------------


def _finish(graph: onnx.GraphProto, props: dict[str, str]) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model


def _props(kind: str, task: str, labels: list[str], layout_name: str) -> dict[str, str]:
    return {
        meta.KIND: kind,
        meta.TASK: task,
        meta.LABELS: json.dumps(labels),
        meta.DATASET: "synthetic",
        meta.INPUT_LAYOUT: layout_name,
        meta.INPUT_RANGE: "[0.0, 1.0]",
        meta.TRAINING_METRICS: json.dumps({"test_acc": 0.5}),
    }


def _trained(kind: str, net: nn.Module, info: DatasetInfo, holdout: torch.Tensor) -> TrainedModel:
    return TrainedModel(
        kind=kind,
        model=net.eval(),
        dataset=info,
        metrics={"train_loss": 0.5},
        history=[{"train_loss": 0.5}],
        hyperparameters={"epochs": 0},
        device="cpu",
        seconds=0.0,
        holdout=holdout,
    )


# The suite's small settings: one version, no preferred sizes, a 2 ms delay.
# test_production_defaults.py passes ExportSettings() to serve the exporter's defaults.
TEST_EXPORT = ExportSettings(
    max_batch_size=64, preferred_batch_sizes=(), max_queue_delay_microseconds=2000,
    num_versions=1, verify_rows=40,
)  # fmt: skip


def export_mlp(repository: Path, seed: int = 0, settings: ExportSettings = TEST_EXPORT) -> Path:
    """An untrained digits-shaped MLP through training.export (the real exporter)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():  # logits of a few units, like a trained network
        for param in net.parameters():
            param.mul_(4.0)
    info = DatasetInfo(
        name="digits",
        task=meta.TASK_CLASSIFICATION,
        input_shape=(1, 8, 8),
        labels=tuple(LABELS),
        input_range=(0.0, 1.0),
    )
    trained = _trained("mlp", net, info, torch.rand(40, 1, 8, 8))
    return export_trained_model(trained, repository, "mlp", settings)


def export_regression(repository: Path, seed: int = 0) -> Path:
    """A linear regression on 4 standardized features, through training.export."""
    torch.manual_seed(seed)
    info = DatasetInfo(
        name="csv",
        task=meta.TASK_REGRESSION,
        input_shape=(4,),
        feature_names=("a", "b", "c", "d"),
        feature_mean=(1.0, 2.0, 3.0, 4.0),
        feature_std=(2.0, 2.0, 0.5, 1.0),
        input_range=None,
        input_layout="NF",
    )
    trained = _trained("linear", nn.Linear(4, 1), info, torch.randn(40, 4))
    settings = ExportSettings(
        max_batch_size=16, preferred_batch_sizes=(), max_queue_delay_microseconds=2000,
        num_versions=1, verify_rows=40,
    )  # fmt: skip
    return export_trained_model(trained, repository, "reg", settings)


def slow_model(size: int = 512, steps: int = 30) -> onnx.ModelProto:
    """A regression whose cost does not depend on the rows: ``steps`` [size, size] matmuls.

    The heavy chain starts from the input's mean, so ONNX Runtime cannot fold it away;
    its result is multiplied by zero, so the prediction is simply input @ w.
    """
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32), "c"
        ),
        numpy_helper.from_array(np.ones((4, 1), dtype=np.float32), "w"),
        numpy_helper.from_array(np.array([size, size], dtype=np.int64), "square"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Expand", ["mean", "square"], ["a0"]),
    ]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"a{i}", "c"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"a{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"a{steps}"], ["heavy"], keepdims=0),
        helper.make_node("Mul", ["heavy", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["input", "w"], ["linear"]),
        helper.make_node("Add", ["linear", "nothing"], [meta.PREDICTION_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(meta.PREDICTION_NAME, TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    return _finish(graph, _props("linear", meta.TASK_REGRESSION, [], "NF"))


def model_config(
    name: str,
    *,
    max_batch_size: int = 64,
    delay_us: int = 2000,
    max_queue_size: int = 0,
    instances: int = 1,
    latest: int | None = None,
) -> str:
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    config.dynamic_batching.default_queue_policy.max_queue_size = max_queue_size
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)
    if latest is not None:
        config.version_policy.latest.num_versions = latest
    return format_config(config)


def write_version(repository: Path, name: str, model: onnx.ModelProto, version: int) -> Path:
    """Stage the version under a hidden name and rename it into place, as exporters do."""
    final = layout.version_dir(repository, name, version)
    staging = repository / f"{layout.STAGING_PREFIX}{name}-{version}"
    staging.mkdir(parents=True)
    onnx.save(model, staging / layout.MODEL_FILENAME)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    return final


def add_model(repository: Path, name: str, model: onnx.ModelProto, config: str) -> None:
    (repository / name).mkdir(parents=True, exist_ok=True)
    layout.config_path(repository, name).write_text(config, encoding="utf-8")
    write_version(repository, name, model, 1)


def build_repository(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    export_mlp(root)
    export_regression(root)
    add_model(
        root,
        "slow",
        slow_model(),
        model_config("slow", max_batch_size=4, delay_us=0, max_queue_size=2),
    )
    return root


# -- server processes ----------------------------------------------------------------

_started = itertools.count()


@dataclass
class ServerProcess:
    """``python -m serving`` as a child process on 127.0.0.1, on ports the kernel picks.

    The server is started with ``--grpc-port 0 --metrics-port 0`` and the bound ports are
    read back from its log (serving.logs.bound_ports), so parallel runs never race for a
    port. ``--device cpu`` unless the test passes its own ``--device``: tests that assert
    on the provider or compare numbers with a CPU session must not depend on the host.
    """

    repository: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log_dir: Path, timeout: float = 60.0, tls_ca: Path | None = None) -> None:
        device = [] if "--device" in self.args else ["--device", "cpu"]
        command = [
            PYTHON, "-m", "serving",
            "--model-repository", str(self.repository),
            "--grpc-port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            "--poll-interval", "0.2",
            "--grace-seconds", "10",
            "--log-level", "info",
            *device,
            *self.args,
        ]  # fmt: skip
        self.log_path = log_dir / f"server-{os.getpid()}-{next(_started)}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        self.wait_listening(deadline)
        self.wait_serving(max(deadline - time.monotonic(), 1.0), tls_ca)

    def wait_listening(self, deadline: float) -> None:
        """Read the bound ports from the log (metrics only when metrics are on)."""
        metrics = "--no-metrics" not in self.args
        assert self.process is not None
        while time.monotonic() < deadline:
            grpc_port, metrics_port = bound_ports(self.log())
            if grpc_port is not None and (metrics_port is not None or not metrics):
                self.port, self.metrics_port = grpc_port, metrics_port or 0
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"server logged no listening port in time:\n{self.log()}")

    def channel(self, tls_ca: Path | None = None) -> grpc.Channel:
        if tls_ca is None:
            return grpc.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        return grpc.secure_channel(
            self.target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )

    def wait_serving(self, timeout: float, tls_ca: Path | None = None) -> None:
        with self.channel(tls_ca) as channel:
            if wait_until_serving(channel, timeout, self._check_alive):
                return
        raise RuntimeError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL if it hangs)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def settle(calls: list[grpc.Future]) -> list[tuple[grpc.StatusCode, str]]:
    """Wait for every call; (status code, details) of each, OK with "" for successes."""
    outcomes = []
    for call in calls:
        try:
            call.result()
            outcomes.append((grpc.StatusCode.OK, ""))
        except grpc.RpcError as error:
            outcomes.append((error.code(), error.details() or ""))
    return outcomes


# -- metrics of a live server ---------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SLOW_ROW = np.ones((1, 4), np.float32)


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples) -> Callable[..., float]:
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def expire_one_while_queued(server, client: Client) -> Callable[..., float]:
    """Queue a 30 ms-deadline request behind two 'slow' executions; returns the deltas.

    One busy execution (~40 ms here) is not enough: the deadline (sleep + 30 ms) and the
    end of that execution race. The second busy request has max_batch_size rows, so it
    runs alone, after the first, and the short request waits at least one whole
    execution in the queue after its deadline, whatever the machine's speed.
    """
    before = scrape(server.metrics_port)
    first = client.stub.Predict.future(predict_request("slow", SLOW_ROW), timeout=30)
    time.sleep(0.01)
    full = np.ones((4, 4), np.float32)  # the slow model's max_batch_size
    second = client.stub.Predict.future(predict_request("slow", full), timeout=30)
    time.sleep(0.005)
    with pytest.raises(grpc.RpcError) as caught:
        client.predict("slow", SLOW_ROW, timeout=0.03)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    first.result()
    second.result()
    # The batcher skips the expired entry when it reaches it: allow it that moment.
    ends = time.monotonic() + 5
    while True:
        d = delta(before, scrape(server.metrics_port))
        if drops_of(d) >= 1 or time.monotonic() > ends:
            return d
        time.sleep(0.05)


def drops_of(d: Callable[..., float]) -> float:
    slow = {"model": "slow", "version": "1"}
    return sum(d("d2lserve_dropped_requests_total", **slow, reason=r) for r in DROP_REASONS)
