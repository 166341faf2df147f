"""The served models: load the repository, watch it, route requests to versions.

A version is visible as LOADING while its session opens and warms up in a thread; it
becomes READY (and the default when it is the newest ready one) only after a warm-up
inference passed. A version that fails is FAILED with its reason and is not retried
until its files change; the versions already serving are untouched. A version that
leaves the repository (or the version policy) is drained, then unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from model_repository import layout
from model_repository import metadata as meta_keys
from model_repository.config import ConfigError, ModelConfig, read_config
from protos import predict_pb2
from serving.batcher import Batcher, BatchingPolicy
from serving.config import DEFAULT_MAX_QUEUE_SIZE, BatchingOverrides
from serving.errors import ModelNotFoundError, ModelUnavailableError, ServingError
from serving.runtime import Runtime, metadata
from serving.tensors import ORT_DTYPES, TensorSpec

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics, VersionMetrics

LOGGER = logging.getLogger(__name__)

LOADING = predict_pb2.LOADING
READY = predict_pb2.READY
FAILED = predict_pb2.FAILED
UNLOADING = predict_pb2.UNLOADING
PLATFORM = "onnxruntime_onnx"
TASKS = (meta_keys.TASK_CLASSIFICATION, meta_keys.TASK_REGRESSION)


class LoadError(ServingError):
    """A version that cannot be served; the reason is shown in GetModel."""


def batching_policy(config: ModelConfig | None, overrides: BatchingOverrides) -> BatchingPolicy:
    """config.pbtxt's batching settings with command-line overrides on top.

    Like Triton, requests are merged only when the config has ``dynamic_batching`` and a
    positive ``max_batch_size``; ``max_batch_size: 0`` means no batching and no row limit.
    """
    dynamic = config.dynamic_batching if config is not None else None
    has_dynamic = config is not None and config.HasField("dynamic_batching")
    max_batch = overrides.max_batch_size or (config.max_batch_size if config is not None else 0)
    delay = overrides.max_queue_delay_microseconds
    if delay is None:
        delay = dynamic.max_queue_delay_microseconds if dynamic is not None else 0
    preferred = overrides.preferred_batch_sizes
    if preferred is None:
        preferred = tuple(dynamic.preferred_batch_size) if dynamic is not None else ()
    queue = overrides.max_queue_size or (
        dynamic.default_queue_policy.max_queue_size if dynamic is not None else 0
    )
    groups = sum(g.count for g in config.instance_group) if config is not None else 0
    # Triton's queue policy: DELAY keeps a timed-out request queued; our one FIFO queue
    # serves it in turn, so only REJECT has an effect.
    queue_policy = dynamic.default_queue_policy if dynamic is not None else None
    timeout_us = 0
    if queue_policy is not None and queue_policy.timeout_action == queue_policy.REJECT:
        timeout_us = queue_policy.default_timeout_microseconds
    return BatchingPolicy(
        enabled=overrides.enabled and has_dynamic and max_batch > 0,
        max_batch_size=max_batch,
        preferred_batch_sizes=tuple(p for p in preferred if max_batch and p <= max_batch),
        max_queue_delay_microseconds=delay,
        max_queue_size=queue or DEFAULT_MAX_QUEUE_SIZE,
        instances=overrides.instances or groups or 1,
        queue_timeout_microseconds=timeout_us,
    )


def select_versions(config: ModelConfig | None, candidates: list[int]) -> list[int]:
    """The versions the config's version_policy serves (Triton's default: latest 1)."""
    policy = config.version_policy if config is not None else None
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice == "all":
        return list(candidates)
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in candidates if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return candidates[-max(count, 1) :]


@dataclass
class ModelVersion:
    """One version of one model, from LOADING to unloaded."""

    name: str
    version: int
    path: Path
    policy: BatchingPolicy
    metrics: VersionMetrics
    state: int = LOADING
    reason: str = ""
    mtime: float = 0.0
    session: ort.InferenceSession | None = None
    input: TensorSpec | None = None
    outputs: tuple[TensorSpec, ...] = ()
    output_index: dict[str, int] = field(default_factory=dict)
    # (name, index, KServe datatype) of every output, precomputed for the request path.
    kserve_outputs: list[tuple[str, int, str]] = field(default_factory=list)
    task: str = ""
    labels: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    batcher: Batcher | None = None

    @property
    def description(self) -> str:
        return f"model '{self.name}' v{self.version}"

    @property
    def max_rows(self) -> int:
        """Rows one request may carry; 0 = no limit."""
        return self.policy.max_batch_size

    @property
    def classifier(self) -> bool:
        return self.task == meta_keys.TASK_CLASSIFICATION


@dataclass
class Model:
    """A model directory: its config and the versions known to the server."""

    name: str
    config: ModelConfig | None = None
    config_mtime: float = -1.0
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    default: ModelVersion | None = None

    def refresh_default(self) -> None:
        ready = [v for v in self.versions.values() if v.state == READY]
        self.default = max(ready, key=lambda v: v.version) if ready else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def open_version(runtime: Runtime, version: ModelVersion) -> None:
    """Open the session, read the signature and metadata, warm up. Runs in a thread."""
    model_file = version.path / layout.MODEL_FILENAME
    if not model_file.is_file():
        raise LoadError(f"{model_file} is missing")
    try:
        session = runtime.session(model_file)
    except Exception as error:  # ORT raises several unrelated types for bad files
        raise LoadError(f"ONNX Runtime cannot load {model_file}: {error}") from error
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != meta_keys.INPUT_NAME:
        raise LoadError(
            f"graph inputs are {[i.name for i in inputs]}; expected one '{meta_keys.INPUT_NAME}'"
        )
    version.input = _spec(inputs[0])
    version.outputs = tuple(_spec(o) for o in session.get_outputs())
    version.output_index = {spec.name: i for i, spec in enumerate(version.outputs)}
    version.kserve_outputs = [
        (spec.name, i, spec.kserve_dtype) for i, spec in enumerate(version.outputs)
    ]
    props = metadata(session)
    task = props.get(meta_keys.TASK) or (
        meta_keys.TASK_CLASSIFICATION
        if meta_keys.PROBABILITIES_NAME in version.output_index
        else meta_keys.TASK_REGRESSION
    )
    if task not in TASKS:
        raise LoadError(f"metadata task is {task!r}; expected one of {TASKS}")
    required = (
        meta_keys.PROBABILITIES_NAME
        if task == meta_keys.TASK_CLASSIFICATION
        else meta_keys.PREDICTION_NAME
    )
    if required not in version.output_index:
        raise LoadError(
            f"a {task} graph needs output '{required}'; it has {list(version.output_index)}"
        )
    try:
        labels = json.loads(props.get(meta_keys.LABELS, "[]"))
    except json.JSONDecodeError as error:
        raise LoadError(f"metadata labels is not JSON: {error}") from error
    if task == meta_keys.TASK_CLASSIFICATION:
        classes = version.outputs[version.output_index[required]].shape[-1]
        if not labels and classes > 0:
            labels = [str(i) for i in range(classes)]
        if classes > 0 and len(labels) != classes:
            raise LoadError(f"metadata has {len(labels)} labels for {classes} classes")
    version.task = task
    version.labels = tuple(str(label) for label in labels)
    version.properties = props
    version.session = session
    _warm_up(version)


def _spec(node: ort.NodeArg) -> TensorSpec:
    dtype = ORT_DTYPES.get(node.type)
    if dtype is None:
        raise LoadError(f"tensor '{node.name}' has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    if not shape:
        raise LoadError(f"tensor '{node.name}' is a scalar; expected a batch dimension first")
    return TensorSpec(node.name, dtype, shape)


def _warm_up(version: ModelVersion) -> None:
    """Run the model on zeros (one row, and a full batch) and check the output rows."""
    assert version.input is not None and version.session is not None
    sizes = [1]
    if version.policy.enabled and version.policy.max_batch_size > 1:
        sizes.append(version.policy.max_batch_size)
    for rows in sizes:
        dims = [1 if d < 0 else d for d in version.input.shape[1:]]
        batch = np.zeros((rows, *dims), dtype=version.input.dtype)
        try:
            outputs = version.session.run(None, {version.input.name: batch})
        except Exception as error:
            raise LoadError(f"warm-up inference with {rows} rows failed: {error}") from error
        for spec, output in zip(version.outputs, outputs, strict=True):
            if output.shape[0] != rows:
                raise LoadError(
                    f"warm-up: output '{spec.name}' has {output.shape[0]} rows for {rows} inputs"
                )


def _run_function(version: ModelVersion) -> Callable[[np.ndarray], list[np.ndarray]]:
    session = version.session
    assert session is not None and version.input is not None
    run = session.run
    name = version.input.name

    def run_batch(batch: np.ndarray) -> list[np.ndarray]:
        return run(None, {name: batch})

    return run_batch


class Repository:
    """Every model of the repository directory, and the request router over them."""

    def __init__(
        self,
        root: Path,
        runtime: Runtime,
        overrides: BatchingOverrides,
        metrics: ServingMetrics,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.root = root
        self.runtime = runtime
        self.overrides = overrides
        self.metrics = metrics
        self.models: dict[str, Model] = {}
        self._on_change = on_change or (lambda name, serving: None)
        self._failed: dict[tuple[str, int], float] = {}  # (name, version) -> mtime that failed
        self._scan_lock = asyncio.Lock()
        self.scans = 0

    # -- request path ----------------------------------------------------------------

    def model(self, name: str) -> Model:
        """The model called ``name``, whatever the state of its versions."""
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(f"model '{name}' not found; available models: {known}")
        return model

    def version(self, name: str, version: int) -> ModelVersion:
        """Version ``version`` of ``name``, whatever its state."""
        model = self.model(name)
        chosen = model.versions.get(version)
        if chosen is None:
            raise ModelNotFoundError(
                f"model '{name}' has no version {version}; versions: {_states(model)}"
            )
        return chosen

    def resolve(self, name: str, version: int = 0) -> ModelVersion:
        """The READY version a request goes to (``version`` 0: the default one)."""
        if version == 0:
            model = self.model(name)
            if model.default is not None:
                return model.default
            raise ModelUnavailableError(f"model '{name}' has no ready version: {_states(model)}")
        chosen = self.version(name, version)
        if chosen.state != READY:
            state = predict_pb2.VersionState.Name(chosen.state).lower()
            reason = f" ({chosen.reason})" if chosen.reason else ""
            raise ModelUnavailableError(f"{chosen.description} is {state}{reason}")
        return chosen

    def known_model(self, name: str) -> bool:
        return name in self.models

    # -- loading and watching --------------------------------------------------------

    async def scan(self) -> None:
        """Bring the served versions in line with the repository directory once."""
        async with self._scan_lock:
            names = layout.model_names(self.root)
            for name in names:
                try:
                    await self._scan_model(name)
                except Exception:
                    LOGGER.exception("event=scan_failed model=%s", name)
            for name in [n for n in self.models if n not in names]:
                model = self.models.pop(name)
                for version in list(model.versions.values()):
                    await self._unload(model, version)
                LOGGER.info("event=model_removed model=%s", name)
            self.scans += 1
            self.metrics.repository_scanned()

    async def watch(self, interval_seconds: float) -> None:
        """Scan every ``interval_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            await self.scan()

    async def close(self, timeout: float) -> None:
        """Drain and unload everything (server shutdown)."""
        async with self._scan_lock:
            for model in self.models.values():
                for version in list(model.versions.values()):
                    await self._unload(model, version, timeout)

    async def _scan_model(self, name: str) -> None:
        model_dir = self.root / name
        model = self.models.get(name)
        if model is None:
            model = self.models[name] = Model(name)
        config_file = layout.config_path(self.root, name)
        config_mtime = _mtime(config_file)
        if config_mtime != model.config_mtime:
            model.config_mtime = config_mtime
            if config_file.is_file():
                try:
                    model.config = read_config(config_file)
                except ConfigError as error:
                    LOGGER.error("event=config_invalid model=%s error=%r", name, str(error))
                    if model.config is None and not model.versions:
                        del self.models[name]
                    return
            else:
                model.config = None
        on_disk = layout.versions(model_dir)
        for number in on_disk:
            self._forget_fixed_failure(name, number, model_dir / str(number))
        candidates = [v for v in on_disk if (name, v) not in self._failed]
        for number in select_versions(model.config, candidates):
            if number not in model.versions:
                await self._load(model, number)
        # Recompute after loading: a version that just failed leaves its place to an older one.
        candidates = [v for v in on_disk if (name, v) not in self._failed]
        wanted = set(select_versions(model.config, candidates))
        for number, version in list(model.versions.items()):
            if number not in on_disk or (number not in wanted and version.state != FAILED):
                await self._unload(model, version)
            elif version.state == FAILED and (name, number) not in self._failed:
                del model.versions[number]  # its files changed: retried on the next scan

    def _forget_fixed_failure(self, name: str, number: int, path: Path) -> None:
        failed_at = self._failed.get((name, number))
        if failed_at is not None and _mtime(path / layout.MODEL_FILENAME) != failed_at:
            del self._failed[(name, number)]

    async def _load(self, model: Model, number: int) -> None:
        path = layout.version_dir(self.root, model.name, number)
        version = ModelVersion(
            name=model.name,
            version=number,
            path=path,
            policy=batching_policy(model.config, self.overrides),
            metrics=self.metrics.for_version(model.name, number),
            mtime=_mtime(path / layout.MODEL_FILENAME),
        )
        model.versions[number] = version
        self.metrics.set_model_state(model.name, number, "loading")
        LOGGER.info("event=model_loading model=%s version=%d path=%s", model.name, number, path)
        started = perf_counter()
        try:
            await asyncio.to_thread(open_version, self.runtime, version)
        except Exception as error:
            version.state = FAILED
            version.reason = str(error)
            version.session = None
            self._failed[(model.name, number)] = version.mtime
            self.metrics.set_model_state(model.name, number, "failed")
            self.metrics.load_failed(model.name)
            LOGGER.error(
                "event=model_load_failed model=%s version=%d error=%s",
                model.name,
                number,
                json.dumps(str(error)),
            )
            return
        version.batcher = Batcher(
            _run_function(version),
            version.policy,
            name=version.description,
            metrics=version.metrics,
        )
        version.batcher.start()
        version.state = READY
        model.refresh_default()
        self.metrics.set_model_state(model.name, number, "ready")
        LOGGER.info(
            "event=model_loaded model=%s version=%d task=%s batching=%s max_batch_size=%d "
            "delay_us=%d instances=%d seconds=%.3f default=%s",
            model.name,
            number,
            version.task,
            version.policy.enabled,
            version.policy.max_batch_size,
            version.policy.max_queue_delay_microseconds,
            version.policy.instances,
            perf_counter() - started,
            model.default is version,
        )
        self._on_change(model.name, True)

    async def _unload(self, model: Model, version: ModelVersion, timeout: float = 30.0) -> None:
        was_ready = version.state == READY
        version.state = UNLOADING
        model.refresh_default()
        if model.default is None:
            self._on_change(model.name, False)
        if version.batcher is not None:
            await version.batcher.close(timeout)
        model.versions.pop(version.version, None)
        version.session = None
        with contextlib.suppress(KeyError):
            self.metrics.forget_version(model.name, version.version)
        if was_ready:
            LOGGER.info("event=model_unloaded model=%s version=%d", model.name, version.version)


def _states(model: Model) -> str:
    if not model.versions:
        return "none"
    return ", ".join(
        f"{number} ({predict_pb2.VersionState.Name(v.state).lower()})"
        for number, v in sorted(model.versions.items())
    )
