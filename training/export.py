"""Turn a TrainedModel into a verified ONNX version in a Triton-style model repository.

Steps, each of which can abort the export before anything is written::

    TrainedModel -> ExportModule (standardization + softmax inside the graph)
                 -> torch.onnx.export(dynamo=True) -> metadata_props -> onnx.checker (full)
                 -> ONNX Runtime vs PyTorch on the holdout and on batch sizes 1 and 37
                 -> config.pbtxt (created, or an existing one checked against the graph)
                 -> models/<name>/<next version>/ published atomically (training.publish)

Exporter choice (torch 2.14.1): the torch.export-based exporter (``dynamo=True``) is the
default and the maintained one; the TorchScript exporter (``dynamo=False``) still runs but
warns that it is deprecated and will be removed. For these networks both produce the same
clean graph (Sub/Div/Reshape-or-Flatten/Gemm/Relu/Softmax) with a symbolic ``batch``
dimension, so the maintained one wins. It also runs the onnxscript optimizer
(``optimize=True``: constant folding, dead-code elimination), which is the only graph
simplification applied; ONNX Runtime's offline optimizer is not used because its
extended levels emit com.microsoft fused ops that Triton builds with other ORT versions
need not run and that the ONNX checker cannot validate. Opset 18: the exporter's native
opset, >= 17 as required; with IR version 8 (the lowest that carries it) every ONNX
Runtime since 1.14 loads the file.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from model_repository import layout
from model_repository import metadata as meta
from model_repository.config import ConfigError, format_config, read_config
from model_repository.signature import (
    PLATFORM,
    GraphSignature,
    config_mismatches,
    signature_from_session,
)
from protos import model_config_pb2
from training.errors import TrainingError
from training.models import KINDS
from training.publish import create_file_atomically, publish_version
from training.result import TrainedModel

LOGGER = logging.getLogger(__name__)

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SAMPLE_ROWS = 4  # rows of the example input; > 1 so torch.export keeps batch symbolic
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")
_RESERVED_FILES = (layout.MODEL_FILENAME, layout.METRICS_FILENAME, layout.CONFIG_FILENAME)


class ExportError(TrainingError):
    """An export that was refused or failed; nothing was written to the repository."""


@dataclass(frozen=True)
class ExportSettings:
    """How the graph is exported and checked, and the serving settings written to config.pbtxt.

    Defaults and why:

    * ``max_batch_size`` 256: the classifiers' training batch size; a 256 x 784 float32
      batch is 0.8 MB, well inside gRPC's default 4 MB message limit, and on a CPU these
      small GEMMs gain little throughput from bigger batches while latency keeps growing.
    * ``preferred_batch_sizes`` (64, 128): let the batcher run early at sizes where the
      per-row cost has already flattened out instead of always waiting to fill 256.
    * ``max_queue_delay_microseconds`` 500: a single-row request waits at most 0.5 ms for
      company, small against a gRPC round trip.
    * ``max_queue_size`` 1024 requests: bounds memory; at ~1 ms per batch a full queue
      drains in a few ms for single-row clients, beyond that callers get RESOURCE_EXHAUSTED.
    * ``instance_kind`` KIND_AUTO, count 1: the export machine says nothing about the
      serving machine. Triton places KIND_AUTO instances on a GPU when one is available and
      on the CPU otherwise, which is also what our server does (CUDA provider when it can
      be created); KIND_GPU would fail to load on CPU-only hosts, KIND_CPU would waste a GPU.
    * ``num_versions`` 2: serve the newest and the previous version, so clients pinned to
      the previous one keep working while a new one rolls out.
    * ``atol`` 1e-5 per element, raised to ``ulps`` float32 spacings of the reference value
      only where 1e-5 is below float32 resolution (|value| >= 32, e.g. raw CSV targets).
    """

    opset: int = 18
    max_batch_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = (64, 128)
    max_queue_delay_microseconds: int = 500
    max_queue_size: int = 1024
    instance_kind: int = model_config_pb2.ModelInstanceGroup.KIND_AUTO
    instance_count: int = 1
    num_versions: int = 2
    atol: float = 1e-5
    ulps: float = 4.0
    verify_rows: int = 2048  # holdout rows compared; more adds time, not confidence

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ExportError(f"opset must be >= 17; got {self.opset}")
        if self.max_batch_size < 1:
            raise ExportError(f"max_batch_size must be >= 1; got {self.max_batch_size}")
        bad = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if bad:
            raise ExportError(
                f"preferred_batch_sizes must lie in [1, max_batch_size={self.max_batch_size}]; "
                f"got {list(self.preferred_batch_sizes)}"
            )
        if self.max_queue_delay_microseconds < 0 or self.max_queue_size < 1:
            raise ExportError(
                "max_queue_delay_microseconds must be >= 0 and max_queue_size >= 1; got "
                f"{self.max_queue_delay_microseconds} and {self.max_queue_size}"
            )
        if self.instance_count < 1 or self.num_versions < 1:
            raise ExportError(
                f"instance_count and num_versions must be >= 1; got {self.instance_count} "
                f"and {self.num_versions}"
            )
        if not (self.atol > 0 and self.ulps >= 0 and self.verify_rows >= 37):
            raise ExportError(
                f"need atol > 0, ulps >= 0, verify_rows >= 37; got {self.atol}, {self.ulps}, "
                f"{self.verify_rows}"
            )


class ExportModule(nn.Module):
    """The exported graph: raw inputs in, the tensors the server returns out.

    Tabular standardization (x - mean) / std happens here, so callers send raw values;
    classifiers also get softmax here, so probabilities come from the same graph as logits.
    """

    def __init__(
        self,
        model: nn.Module,
        classify: bool,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.classify = classify
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.feature_mean is not None:
            x = (x - self.feature_mean) / self.feature_std  # (B, *input_shape)
        out = self.model(x)  # (B, classes) logits or (B, 1) prediction
        if self.classify:
            return out, torch.softmax(out, dim=1)
        return out

    @classmethod
    def from_trained(cls, trained: TrainedModel) -> ExportModule:
        """Wrap a copy of the network (float32, CPU, eval) so the caller's stays untouched."""
        info = trained.dataset
        model = copy.deepcopy(trained.model).to(device="cpu", dtype=torch.float32).eval()
        mean = std = None
        if info.feature_mean is not None:
            mean = torch.tensor(info.feature_mean, dtype=torch.float32).reshape(info.input_shape)
            std = torch.tensor(info.feature_std, dtype=torch.float32).reshape(info.input_shape)
        classify = info.task == meta.TASK_CLASSIFICATION
        return cls(model, classify, mean, std).eval()


def _validate(trained: TrainedModel, name: str) -> None:
    """Refuse inputs the exporter cannot turn into a correct graph, before any work."""
    info = trained.dataset
    if not _NAME_PATTERN.fullmatch(name) or name.isdigit():
        raise ExportError(
            f"model name {name!r} is not usable as a repository directory; expected letters, "
            "digits, '_', '.', '-' (not starting with '.' or '-', not all digits, <= 64 chars)"
        )
    if trained.kind not in KINDS:
        raise ExportError(f"unknown model kind {trained.kind!r}; expected one of {KINDS}")
    if info.task not in (meta.TASK_CLASSIFICATION, meta.TASK_REGRESSION):
        raise ExportError(f"unknown task {info.task!r}; expected classification or regression")
    if info.task == meta.TASK_CLASSIFICATION and not info.labels:
        raise ExportError(f"classifier {trained.kind!r} has no class labels in its DatasetInfo")
    if info.input_layout not in meta.LAYOUTS:
        raise ExportError(f"input_layout {info.input_layout!r} is not one of 'NCHW', 'NF'")
    expected_rank = 3 if info.input_layout == meta.LAYOUT_NCHW else 1
    if len(info.input_shape) != expected_rank or min(info.input_shape, default=0) < 1:
        raise ExportError(
            f"input_shape {info.input_shape} does not fit layout {info.input_layout} "
            f"(expected {expected_rank} positive dims per sample)"
        )
    if (info.feature_mean is None) != (info.feature_std is None):
        raise ExportError("feature_mean and feature_std must be given together")
    if info.feature_std is not None and info.feature_mean is not None:
        count = math.prod(info.input_shape)
        if len(info.feature_mean) != count or len(info.feature_std) != count:
            raise ExportError(
                f"standardization has {len(info.feature_mean)} means and "
                f"{len(info.feature_std)} stds; input_shape {info.input_shape} needs {count}"
            )
        if not all(math.isfinite(s) and s > 0 for s in info.feature_std):
            raise ExportError(f"feature_std must be finite and > 0; got {info.feature_std}")
    holdout = trained.holdout
    if holdout.ndim != len(info.input_shape) + 1 or tuple(holdout.shape[1:]) != info.input_shape:
        raise ExportError(
            f"holdout has shape {list(holdout.shape)}; expected [N, *{list(info.input_shape)}]"
        )
    if holdout.shape[0] < 1 or holdout.dtype != torch.float32:
        raise ExportError(
            f"holdout must be float32 with at least 1 row; got {holdout.dtype}, "
            f"{holdout.shape[0]} rows"
        )
    if not bool(torch.isfinite(holdout).all()):
        raise ExportError("holdout contains NaN or Inf values")
    for file_name, path in trained.artifacts.items():
        if "/" in file_name or file_name.startswith(".") or file_name in _RESERVED_FILES:
            raise ExportError(f"artifact name {file_name!r} is not a plain, unreserved file name")
        if not Path(path).is_file():
            raise ExportError(f"artifact {file_name!r}: {path} is not a readable file")


def _rows(holdout: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` holdout rows, cycling when the holdout is shorter."""
    index = torch.arange(count) % holdout.shape[0]
    return holdout[index].contiguous()


def to_onnx(wrapper: ExportModule, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    """Export ``wrapper`` with a symbolic batch dimension named ``batch``."""
    quiet = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # their INFO lines describe optimizer passes, not our export
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        program = torch.onnx.export(
            wrapper,
            (sample,),
            input_names=[meta.INPUT_NAME],
            output_names=list(
                meta.output_names(
                    meta.TASK_CLASSIFICATION if wrapper.classify else meta.TASK_REGRESSION
                )
            ),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=True,
            verbose=False,
        )
    except Exception as error:  # the exporter raises many types; all mean "cannot export"
        raise ExportError(f"torch.onnx.export failed: {type(error).__name__}: {error}") from error
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def git_commit() -> str:
    """The commit of the training code, or "" when git or the repository is unavailable."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()


def library_versions() -> dict[str, str]:
    import onnxscript  # imported here: only its version is needed

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }


def _json_float(value: object) -> object:
    return float(value) if isinstance(value, (int, float, np.floating, np.integer)) else value


def metadata(trained: TrainedModel, created_at: str, commit: str) -> dict[str, str]:
    """The metadata_props every exported graph carries (keys from model_repository.metadata)."""
    info = trained.dataset
    return {
        meta.KIND: trained.kind,
        meta.TASK: info.task,
        meta.LABELS: json.dumps(list(info.labels)),
        meta.DATASET: info.name,
        meta.INPUT_LAYOUT: info.input_layout,
        meta.INPUT_RANGE: json.dumps(list(info.input_range) if info.input_range else None),
        meta.FEATURE_NAMES: json.dumps(list(info.feature_names)),
        meta.TRAINING_METRICS: json.dumps(
            {key: _json_float(value) for key, value in trained.metrics.items()}
        ),
        meta.LIBRARY_VERSIONS: json.dumps(library_versions()),
        meta.CREATED_AT: created_at,
        meta.GIT_COMMIT: commit,
    }


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def compare_with_torch(
    data: bytes, wrapper: ExportModule, holdout: torch.Tensor, settings: ExportSettings
) -> dict[str, object]:
    """Run the serialized graph in ONNX Runtime (CPU) against the PyTorch wrapper.

    Checked on the holdout and on batch sizes 1 and 37: shapes equal, outputs finite,
    every element within tolerance, and (classifiers) the argmax equal on every row.
    The session uses ORT's default optimization level, as the server does.
    Returns the measured maximum absolute difference per output.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own pybind types
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {error}") from error
    names = [output.name for output in session.get_outputs()]
    batches = {
        "holdout": holdout[: settings.verify_rows],
        "batch of 1": _rows(holdout, 1),
        "batch of 37": _rows(holdout, 37),
    }
    worst = dict.fromkeys(names, 0.0)
    for label, batch in batches.items():
        with torch.no_grad():
            expected = wrapper(batch)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = session.run(None, {meta.INPUT_NAME: batch.numpy()})
        for name, want_tensor, have in zip(names, expected, got, strict=True):
            want = want_tensor.numpy()
            if want.shape != have.shape:
                raise ExportError(
                    f"{label}: output '{name}' has shape {list(have.shape)} in ONNX Runtime "
                    f"but {list(want.shape)} in PyTorch"
                )
            if not (np.isfinite(want).all() and np.isfinite(have).all()):
                raise ExportError(f"{label}: output '{name}' contains NaN or Inf")
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
            bound = np.maximum(settings.atol, settings.ulps * np.spacing(np.abs(want)))
            if (diff > bound).any():
                row = int(np.unravel_index(int(np.argmax(diff - bound)), diff.shape)[0])
                raise ExportError(
                    f"{label}: output '{name}' differs from PyTorch by up to {diff.max():.3g} "
                    f"(row {row}); allowed {settings.atol:g} (or {settings.ulps:g} float32 "
                    "ulps for large values)"
                )
            worst[name] = max(worst[name], float(diff.max()))
        if wrapper.classify:
            agree = np.argmax(got[0], axis=1) == expected[0].numpy().argmax(axis=1)
            if not agree.all():
                raise ExportError(
                    f"{label}: predicted class differs from PyTorch on {int((~agree).sum())} "
                    f"of {agree.size} rows"
                )
    return {"max_abs_diff": worst, "rows_checked": {k: int(v.shape[0]) for k, v in batches.items()}}


def graph_signature(data: bytes) -> GraphSignature:
    """The graph's signature as the server will read it (through ONNX Runtime)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return signature_from_session(session)


def build_config(
    name: str, signature: GraphSignature, layout_name: str, settings: ExportSettings
) -> model_config_pb2.ModelConfig:
    """The config.pbtxt for a graph, as protobuf (serialized with format_config)."""
    config = model_config_pb2.ModelConfig(
        name=name, platform=PLATFORM, max_batch_size=settings.max_batch_size
    )
    inputs, outputs = signature.config_specs(batched=True)
    for spec in inputs:
        entry = config.input.add(name=spec.name, data_type=spec.data_type, dims=spec.dims)
        if layout_name == meta.LAYOUT_NCHW:
            entry.format = model_config_pb2.ModelInput.FORMAT_NCHW
    for spec in outputs:
        config.output.add(name=spec.name, data_type=spec.data_type, dims=spec.dims)
    config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_microseconds
    config.dynamic_batching.default_queue_policy.max_queue_size = settings.max_queue_size
    config.instance_group.add(count=settings.instance_count, kind=settings.instance_kind)
    config.version_policy.latest.num_versions = settings.num_versions
    return config


def _check_existing_config(path: Path, signature: GraphSignature, name: str) -> bool:
    """True when ``path`` exists and fits the graph; ExportError when it exists and does not.

    An existing config.pbtxt is kept (a user may have tuned batching) but never rewritten
    to fit a new graph: it also describes the versions already served under this name, so
    a different signature belongs under a different name.
    """
    if not path.exists():
        return False
    try:
        existing = read_config(path)
    except ConfigError as error:
        raise ExportError(f"existing {error}; fix or remove it") from error
    problems = config_mismatches(existing, signature, name)
    if problems:
        raise ExportError(
            f"{path} does not fit the new graph: {'; '.join(problems)}. It also describes the "
            f"versions already in {path.parent}; export under another --name or remove "
            f"{path.parent} to start over"
        )
    return True


def _metrics_document(
    trained: TrainedModel,
    created_at: str,
    commit: str,
    export_report: dict[str, object],
    export_seconds: dict[str, float],
) -> dict[str, object]:
    """What training measured plus how the export went, for metrics.json."""
    info = trained.dataset
    return {
        "kind": trained.kind,
        "dataset": asdict(info),
        "epochs": trained.hyperparameters.get("epochs", len(trained.history)),
        "final": {key: _json_float(value) for key, value in trained.metrics.items()},
        "history": [
            {key: _json_float(value) for key, value in entry.items()} for entry in trained.history
        ],
        "hyperparameters": trained.hyperparameters,
        "device": trained.device,
        "timings_seconds": {"train": trained.seconds, **export_seconds},
        "export": export_report,
        "created_at": created_at,
        "git_commit": commit,
    }


def export_trained_model(
    trained: TrainedModel,
    repository: Path,
    name: str | None = None,
    settings: ExportSettings | None = None,
) -> Path:
    """Export, verify and publish ``trained`` as the next version of ``name``; return its dir.

    ``name`` defaults to ``trained.kind``. Raises ExportError (nothing written) when the
    model cannot be exported, fails the ONNX Runtime comparison, or does not fit an
    existing config.pbtxt of that name.
    """
    settings = settings or ExportSettings()
    name = name or trained.kind
    repository = Path(repository)
    _validate(trained, name)
    started = time.perf_counter()
    wrapper = ExportModule.from_trained(trained)
    onnx_model = to_onnx(wrapper, _rows(trained.holdout, _SAMPLE_ROWS), settings.opset)
    # The exporter stamps its newest IR version (10); the oldest one that carries these
    # opsets (8 for opset 18) lets older ONNX Runtime builds, e.g. in Triton, load it too.
    onnx_model.ir_version = min(
        onnx_model.ir_version, onnx.helper.find_min_ir_version_for(onnx_model.opset_import)
    )
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    commit = git_commit()
    set_metadata(onnx_model, metadata(trained, created_at, commit))
    onnx_model.doc_string = (
        f"{trained.kind} ({trained.dataset.task}) trained on {trained.dataset.name}; "
        "inputs are raw values, any standardization is inside the graph"
    )
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"exported graph fails the ONNX checker: {error}") from error
    data = onnx_model.SerializeToString()
    exported = time.perf_counter()
    comparison = compare_with_torch(data, wrapper, trained.holdout, settings)
    verified = time.perf_counter()

    signature = graph_signature(data)
    config = build_config(name, signature, trained.dataset.input_layout, settings)
    model_dir = repository / name
    config_file = layout.config_path(repository, name)
    keep_config = _check_existing_config(config_file, signature, name)

    report: dict[str, object] = {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": settings.opset,
        "onnx_bytes": len(data),
        "ort_vs_torch": comparison,
        "tolerance": {"atol": settings.atol, "ulps": settings.ulps},
    }
    seconds = {"export": exported - started, "verify": verified - exported}
    files = {
        layout.MODEL_FILENAME: data,
        layout.METRICS_FILENAME: (
            json.dumps(
                _metrics_document(trained, created_at, commit, report, seconds),
                indent=2,
                default=str,
            )
            + "\n"
        ).encode(),
    }
    for file_name, path in trained.artifacts.items():
        files[file_name] = Path(path).read_bytes()

    created_model_dir = not model_dir.exists()
    created_config = False
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        if not keep_config:
            try:
                create_file_atomically(config_file, format_config(config).encode())
                created_config = True
            except FileExistsError:  # another export created it since we looked
                _check_existing_config(config_file, signature, name)
        target = publish_version(model_dir, files)
    except BaseException as error:  # also KeyboardInterrupt: leave no config behind
        if created_config and not layout.versions(model_dir):
            config_file.unlink(missing_ok=True)
        if created_model_dir and model_dir.exists() and not any(model_dir.iterdir()):
            model_dir.rmdir()
        if isinstance(error, OSError):
            raise ExportError(f"cannot write {name!r} into {repository}: {error}") from error
        raise
    diffs = comparison["max_abs_diff"]
    LOGGER.info(
        "exported %s to %s in %.2f s (export %.2f s, verify %.2f s); ORT vs torch max |diff| %s",
        name,
        target,
        time.perf_counter() - started,
        exported - started,
        verified - exported,
        diffs,
    )
    return target
