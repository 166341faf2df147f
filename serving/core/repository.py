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
from model_repository.datatypes import BY_CONFIG
from model_repository.signature import (
    complete_config,
    config_mismatches,
    ort_type_name,
    signature_from_session,
)
from model_repository.verify import exported_by_us
from protos import model_config_pb2 as mc
from protos import predict_pb2
from serving.config import DEFAULT_MAX_QUEUE_SIZE, BatchingOverrides
from serving.core.batcher import Batcher, BatchingPolicy
from serving.core.inference import ChosenOutput
from serving.core.runtime import CUDA, Runtime, metadata
from serving.core.statistics import VersionStatistics
from serving.core.tensors import RequestSchema, TensorSpec
from serving.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelUnavailableError,
    NotAllowedError,
    ServingError,
    clip,
)

if TYPE_CHECKING:
    from serving.metrics import ServingMetrics, VersionMetrics

LOGGER = logging.getLogger(__name__)

LOADING = predict_pb2.LOADING
READY = predict_pb2.READY
FAILED = predict_pb2.FAILED
UNLOADING = predict_pb2.UNLOADING
# Triton's model states, as RepositoryIndex reports them.
INDEX_STATES = {LOADING: "LOADING", READY: "READY", FAILED: "UNAVAILABLE", UNLOADING: "UNLOADING"}
CONTROL_MODES = ("none", "poll", "explicit")


class LoadError(ServingError):
    """A version that cannot be served; the reason is shown in GetModel and the index."""


def batching_policy(config: ModelConfig, overrides: BatchingOverrides) -> BatchingPolicy:
    """The (completed) config's batching settings with command-line overrides on top.

    Like Triton, requests are merged only when the config has ``dynamic_batching`` and a
    positive ``max_batch_size``; ``max_batch_size: 0`` means the model has no batch
    dimension, which no override changes.
    """
    dynamic = config.dynamic_batching
    has_dynamic = config.HasField("dynamic_batching")
    max_batch = config.max_batch_size
    if max_batch > 0 and overrides.max_batch_size:
        max_batch = overrides.max_batch_size
    delay = overrides.max_queue_delay_microseconds
    if delay is None:
        delay = dynamic.max_queue_delay_microseconds
    preferred = overrides.preferred_batch_sizes
    if preferred is None:
        preferred = tuple(dynamic.preferred_batch_size)
    queue = overrides.max_queue_size or dynamic.default_queue_policy.max_queue_size
    groups = sum(g.count for g in config.instance_group)
    # Triton's queue policy: DELAY keeps a timed-out request queued; our one FIFO queue
    # serves it in turn, so only REJECT has an effect.
    queue_policy = dynamic.default_queue_policy
    timeout_us = 0
    if queue_policy.timeout_action == queue_policy.REJECT:
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
    metrics: VersionMetrics
    policy: BatchingPolicy = field(default_factory=BatchingPolicy)
    state: int = LOADING
    reason: str = ""
    mtime: float = 0.0
    session: ort.InferenceSession | None = None
    config: ModelConfig | None = None  # as loaded: completed from the graph where needed
    schema: RequestSchema | None = None
    outputs: tuple[TensorSpec, ...] = ()
    output_index: dict[str, int] = field(default_factory=dict)
    # Every output as an answer carries it when none is named, precomputed for the request
    # path (classification 0: the tensor itself).
    all_outputs: list[ChosenOutput] = field(default_factory=list)
    # Labels per output index, from the config's label_filename or our metadata.
    output_labels: dict[int, tuple[str, ...]] = field(default_factory=dict)
    task: str = ""  # classification / regression, or "" for a model without a task
    scores_output: int = -1  # classification: the class-score output
    prediction_output: int = -1  # regression: the prediction output
    properties: dict[str, str] = field(default_factory=dict)
    statistics: VersionStatistics = field(default_factory=VersionStatistics)
    batcher: Batcher | None = None

    @property
    def description(self) -> str:
        return f"model '{self.name}' v{self.version}"

    @property
    def version_text(self) -> str:
        """The version as KServe spells it (a string)."""
        return str(self.version)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.schema.inputs if self.schema is not None else ()

    @property
    def batched(self) -> bool:
        return self.policy.batched

    @property
    def classifier(self) -> bool:
        return self.scores_output >= 0

    @property
    def labels(self) -> tuple[str, ...]:
        return self.output_labels.get(self.scores_output, ())


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


def open_version(
    runtime: Runtime,
    version: ModelVersion,
    config: ModelConfig | None,
    overrides: BatchingOverrides,
) -> None:
    """Open the session, check it against the config, read labels, warm up (in a thread)."""
    model_file = version.path / layout.MODEL_FILENAME
    if not model_file.is_file():
        raise LoadError(f"{model_file} is missing")
    try:
        session = runtime.session(model_file)
    except Exception as error:  # ORT raises several unrelated types for bad files
        raise LoadError(f"ONNX Runtime cannot load {model_file}: {error}") from error
    signature = signature_from_session(session)
    for spec in (*signature.inputs, *signature.outputs):
        if spec.datatype is None:
            raise LoadError(
                f"graph tensor '{spec.name}' has type {ort_type_name(session, spec.name)}, "
                "which KServe v2 cannot carry"
            )
    kind = (
        mc.ModelInstanceGroup.KIND_GPU
        if runtime.provider == CUDA
        else mc.ModelInstanceGroup.KIND_CPU
    )
    completed = complete_config(config, signature, version.name, kind)
    problems = config_mismatches(completed, signature, version.name)
    if problems:
        source = layout.CONFIG_FILENAME if config is not None else "the completed config"
        raise LoadError(f"{source} disagrees with the graph: {'; '.join(problems)}")
    version.config = completed
    version.policy = batching_policy(completed, overrides)
    props = metadata(session)
    ours = exported_by_us(props)
    batched = completed.max_batch_size > 0
    lead = (-1,) if batched else ()
    version.schema = RequestSchema(
        model=version.description,
        inputs=tuple(
            TensorSpec(e.name, BY_CONFIG[e.data_type], (*lead, *e.dims)) for e in completed.input
        ),
        batched=batched,
        max_rows=version.policy.max_batch_size,
        finite=ours,
    )
    version.outputs = tuple(
        TensorSpec(e.name, BY_CONFIG[e.data_type], (*lead, *e.dims)) for e in completed.output
    )
    version.output_index = {spec.name: i for i, spec in enumerate(version.outputs)}
    version.all_outputs = [
        ChosenOutput(spec.name, i, spec.kserve_dtype, 0) for i, spec in enumerate(version.outputs)
    ]
    _read_labels(version, completed, props, ours)
    version.properties = props
    version.session = session
    _warm_up(version)


def _read_labels(
    version: ModelVersion, config: ModelConfig, props: dict[str, str], ours: bool
) -> None:
    """The task and labels: from our metadata, else from label_filename on an output."""
    for index, entry in enumerate(config.output):
        if entry.label_filename:
            version.output_labels[index] = _label_file(version.path.parent, entry.label_filename)
    if ours:
        task = props.get(meta_keys.TASK, "")
        if task not in (meta_keys.TASK_CLASSIFICATION, meta_keys.TASK_REGRESSION):
            raise LoadError(f"metadata task is {task!r}; expected classification/regression")
        wanted = (
            meta_keys.PROBABILITIES_NAME
            if task == meta_keys.TASK_CLASSIFICATION
            else meta_keys.PREDICTION_NAME
        )
        if wanted not in version.output_index:
            raise LoadError(
                f"a {task} graph needs output '{wanted}'; it has {list(version.output_index)}"
            )
        version.task = task
        if task == meta_keys.TASK_REGRESSION:
            version.prediction_output = version.output_index[wanted]
            return
        version.scores_output = version.output_index[wanted]
        try:
            labels = json.loads(props.get(meta_keys.LABELS, "[]"))
        except json.JSONDecodeError as error:
            raise LoadError(f"metadata labels is not JSON: {error}") from error
        classes = version.outputs[version.scores_output].shape[-1]
        if not labels and classes > 0:
            labels = [str(i) for i in range(classes)]
        if classes > 0 and len(labels) != classes:
            raise LoadError(f"metadata has {len(labels)} labels for {classes} classes")
        version.output_labels[version.scores_output] = tuple(str(label) for label in labels)
        return
    if version.output_labels:
        version.task = meta_keys.TASK_CLASSIFICATION
        version.scores_output = min(version.output_labels)


def _label_file(model_dir: Path, name: str) -> tuple[str, ...]:
    """A Triton label file beside config.pbtxt: one label per line, by class index."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise LoadError(f"label_filename {name!r} must name a file in {model_dir}")
    path = model_dir / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LoadError(f"label file {path} cannot be read: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise LoadError(f"label file {path} is not UTF-8: {error}") from error
    return tuple(text.splitlines())


def _warm_up(version: ModelVersion) -> None:
    """Run the model on zeros (one row, and a full batch) and check the output shapes.

    Only where every input shape is known and numeric: zeros of a guessed size could fail
    on a model that is fine (a dynamic image size, a string vocabulary).
    """
    assert version.schema is not None and version.session is not None
    skip = 1 if version.batched else 0
    inputs = version.schema.inputs
    if any(d < 0 for s in inputs for d in s.shape[skip:]) or any(
        s.datatype.is_bytes for s in inputs
    ):
        LOGGER.info("event=warm_up_skipped model=%s version=%d", version.name, version.version)
        return
    sizes = [1] if version.batched else [0]
    if version.policy.enabled and version.policy.max_batch_size > 1:
        sizes.append(version.policy.max_batch_size)
    run = _run_function(version)
    for rows in sizes:
        batch = [
            np.zeros((*((rows,) if version.batched else ()), *s.shape[skip:]), dtype=s.dtype)
            for s in inputs
        ]
        try:
            outputs = run(batch)
        except Exception as error:
            raise LoadError(f"warm-up inference with {rows} rows failed: {error}") from error
        for spec, output in zip(version.outputs, outputs, strict=True):
            if version.batched and (not output.shape or output.shape[0] != rows):
                raise LoadError(
                    f"warm-up: output '{spec.name}' has shape {list(output.shape)} for "
                    f"{rows} input rows"
                )


def _run_function(version: ModelVersion) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    session = version.session
    assert session is not None and version.schema is not None
    run = session.run
    input_names = [spec.name for spec in version.schema.inputs]
    output_names = [spec.name for spec in version.outputs]
    if len(input_names) == 1:
        (only,) = input_names

        def run_one(batch: list[np.ndarray]) -> list[np.ndarray]:
            return run(output_names, {only: batch[0]})

        return run_one

    def run_batch(batch: list[np.ndarray]) -> list[np.ndarray]:
        return run(output_names, dict(zip(input_names, batch, strict=True)))

    return run_batch


def check_model_name(name: str) -> None:
    """Refuse names that are not one plain folder name (model control requests)."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or len(name) > 255
    ):
        raise InvalidInputError(
            f"model name {clip(name)!r} is not a folder name in the repository (no '/', "
            "'\\', '..' or leading '.')"
        )


class Repository:
    """Every model of the repository directory, and the request router over them.

    Model control as in Triton: ``poll`` serves every model folder and follows the
    directory; ``none`` loads them once; ``explicit`` serves only the models named at
    start and in RepositoryModelLoad requests, until unloaded.
    """

    def __init__(
        self,
        root: Path,
        runtime: Runtime,
        overrides: BatchingOverrides,
        metrics: ServingMetrics,
        on_change: Callable[[str, bool], None] | None = None,
        control_mode: str = "poll",
        startup_models: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.runtime = runtime
        self.overrides = overrides
        self.metrics = metrics
        self.control_mode = control_mode
        self.models: dict[str, Model] = {}
        self._on_change = on_change or (lambda name, serving: None)
        self._failed: dict[tuple[str, int], float] = {}  # (name, version) -> mtime that failed
        self._config_errors: dict[str, str] = {}  # model -> why its config.pbtxt is refused
        # Explicit mode: the models asked for (None: every model folder).
        self._wanted: set[str] | None = set(startup_models) if control_mode == "explicit" else None
        self._scan_lock = asyncio.Lock()
        self.scans = 0

    # -- request path ----------------------------------------------------------------

    def model(self, name: str) -> Model:
        """The model called ``name``, whatever the state of its versions."""
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFoundError(f"model '{clip(name)}' not found; available models: {known}")
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

    def described(self, name: str, version: int = 0) -> ModelVersion:
        """The version a description is about.

        The one asked for, else the default one, else the newest known: a model may have
        no ready version and still be described.
        """
        if version:
            return self.version(name, version)
        model = self.model(name)
        if model.default is not None:
            return model.default
        if not model.versions:
            raise ModelUnavailableError(f"model '{name}' has no loaded version")
        return model.versions[max(model.versions)]

    def known_model(self, name: str) -> bool:
        return name in self.models

    # -- model control ---------------------------------------------------------------

    def index(self) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) of every model folder: Triton's RepositoryIndex.

        A folder without loaded versions has one entry with version "" and state
        UNAVAILABLE.
        """
        entries = []
        for name in layout.model_names(self.root):
            model = self.models.get(name)
            if model is None or not model.versions:
                reason = self._config_errors.get(name) or (
                    "not loaded" if self._wanted is not None and name not in self._wanted else
                    "no versions"
                )  # fmt: skip
                entries.append((name, "", "UNAVAILABLE", reason))
                continue
            for number, version in sorted(model.versions.items()):
                entries.append((name, str(number), INDEX_STATES[version.state], version.reason))
        return entries

    def _check_control(self, name: str) -> None:
        if self.control_mode != "explicit":
            raise NotAllowedError(
                "explicit model load / unload is not allowed: the server runs with "
                f"--model-control-mode {self.control_mode} (start it with explicit)"
            )
        check_model_name(name)

    async def load_model(self, name: str) -> ModelVersion:
        """Load (or reload) ``name`` in explicit mode; its default version when it serves."""
        self._check_control(name)
        if not (self.root / name).is_dir():
            raise ModelNotFoundError(
                f"model '{clip(name)}' is not a folder in the model repository"
            )
        assert self._wanted is not None
        self._wanted.add(name)
        async with self._scan_lock:
            await self._scan_model(name)
        model = self.models.get(name)
        if model is None or model.default is None:
            reasons = self._config_errors.get(name) or (_states(model) if model else "none")
            raise ModelLoadError(f"failed to load model '{name}': {reasons}")
        return model.default

    async def unload_model(self, name: str, timeout: float = 30.0) -> None:
        """Drain and unload every version of ``name`` in explicit mode."""
        self._check_control(name)
        assert self._wanted is not None
        if name not in self._wanted and name not in self.models:
            raise ModelNotFoundError(f"model '{clip(name)}' is not loaded")
        self._wanted.discard(name)
        async with self._scan_lock:
            model = self.models.pop(name, None)
            if model is not None:
                await self._unload_model(model, timeout)

    # -- loading and watching --------------------------------------------------------

    async def scan(self) -> None:
        """Bring the served versions in line with the repository directory once."""
        async with self._scan_lock:
            names = layout.model_names(self.root)
            if self._wanted is not None:
                names = [name for name in names if name in self._wanted]
            for name in names:
                try:
                    await self._scan_model(name)
                except Exception:
                    LOGGER.exception("event=scan_failed model=%s", name)
            for name in [n for n in self.models if n not in names]:
                await self._unload_model(self.models.pop(name))
            self.scans += 1
            self.metrics.repository_scanned()

    @property
    def wanted_models(self) -> frozenset[str] | None:
        """Explicit mode: the models asked for; None in the other modes (every folder)."""
        return None if self._wanted is None else frozenset(self._wanted)

    def want(self, names: list[str]) -> None:
        """Explicit mode: serve ``names`` too from the next scan (a restarted worker)."""
        if self._wanted is not None:
            self._wanted.update(names)

    def missing_startup_models(self) -> list[str]:
        """Models named with --load-model that are not folders of the repository."""
        wanted = self._wanted or set()
        return sorted(name for name in wanted if not (self.root / name).is_dir())

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

    async def _unload_model(self, model: Model, timeout: float = 30.0) -> None:
        for version in list(model.versions.values()):
            await self._unload(model, version, timeout)
        self._on_change(model.name, False)
        LOGGER.info("event=model_removed model=%s", model.name)

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
                    self._config_errors[name] = str(error)
                    if model.config is None and not model.versions:
                        del self.models[name]
                    return
            else:
                model.config = None
            self._config_errors.pop(name, None)
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
            metrics=self.metrics.for_version(model.name, number),
            mtime=_mtime(path / layout.MODEL_FILENAME),
        )
        model.versions[number] = version
        self.metrics.set_model_state(model.name, number, "loading")
        LOGGER.info("event=model_loading model=%s version=%d path=%s", model.name, number, path)
        started = perf_counter()
        try:
            await asyncio.to_thread(
                open_version, self.runtime, version, model.config, self.overrides
            )
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
            statistics=version.statistics,
        )
        version.batcher.start()
        version.state = READY
        model.refresh_default()
        self.metrics.set_model_state(model.name, number, "ready")
        LOGGER.info(
            "event=model_loaded model=%s version=%d task=%s inputs=%d outputs=%d "
            "max_batch_size=%d batching=%s delay_us=%d instances=%d seconds=%.3f default=%s",
            model.name,
            number,
            version.task or "none",
            len(version.inputs),
            len(version.outputs),
            version.policy.max_batch_size,
            version.policy.enabled,
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
