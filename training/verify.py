"""Re-check every version in a model repository: ``python -m training.verify models/``.

For each ``<name>/<version>/model.onnx``: the ONNX checker (full), loading in ONNX
Runtime, a random batch of valid inputs (drawn from the ``input_range`` metadata) with
the output shapes and values it should give, the required metadata, metrics.json, and
``<name>/config.pbtxt`` against the graph (names, dtypes, dims, max_batch_size > 0 exactly
when the batch dimension is dynamic). One line per version; exit code 0 when all hold,
1 when any check fails, 2 for bad usage (e.g. no such repository directory).

Deliberately free of torch, so it starts fast and runs where only the server's
dependencies are installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx
import onnxruntime as ort

from model_repository import layout
from model_repository import metadata as meta
from model_repository.config import ConfigError, read_config
from protos import model_config_pb2
from training.signature import config_mismatches, output_names, signature_from_onnx

_BATCH_ROWS = 3  # rows in the random batch; small, and not a size a graph would hardcode
_PROBABILITY_TOLERANCE = 1e-4


class VerifyError(Exception):
    """One failed check; the message names the problem, ``run_checks`` adds the path."""


@dataclass(frozen=True)
class Finding:
    """The outcome for one path (a version directory, or a model without versions)."""

    path: Path
    ok: bool
    message: str


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    props = {entry.key: entry.value for entry in model.metadata_props}
    missing = [key for key in meta.REQUIRED if key not in props]
    if missing:
        raise VerifyError(f"metadata_props lack {missing} (required: {list(meta.REQUIRED)})")
    for key in (meta.LABELS, meta.INPUT_RANGE, meta.TRAINING_METRICS, meta.FEATURE_NAMES):
        if key in props:
            try:
                json.loads(props[key])
            except json.JSONDecodeError as error:
                raise VerifyError(f"metadata '{key}' is not JSON: {error}") from error
    if props[meta.TASK] not in (meta.TASK_CLASSIFICATION, meta.TASK_REGRESSION):
        raise VerifyError(
            f"metadata task is {props[meta.TASK]!r}; expected classification/regression"
        )
    return props


def _input_range(props: dict[str, str]) -> tuple[float, float] | None:
    value = json.loads(props[meta.INPUT_RANGE])
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) for v in value)
        or not value[0] < value[1]
    ):
        raise VerifyError(
            f"metadata input_range is {props[meta.INPUT_RANGE]}; expected [low, high]"
        )
    return float(value[0]), float(value[1])


def _run_random_batch(
    data: bytes,
    config: model_config_pb2.ModelConfig,
    props: dict[str, str],
) -> None:
    """Run valid random inputs and check what comes out against config and metadata."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT's pybind errors share no useful base class
        raise VerifyError(f"ONNX Runtime cannot load it: {error}") from error
    rows = min(_BATCH_ROWS, config.max_batch_size) if config.max_batch_size > 0 else None
    bounds = _input_range(props)
    rng = np.random.default_rng(0)
    feeds = {}
    for entry in config.input:
        if entry.data_type != model_config_pb2.TYPE_FP32:
            dtype = model_config_pb2.DataType.Name(entry.data_type)
            raise VerifyError(
                f"input '{entry.name}' is {dtype}; every exported graph takes TYPE_FP32"
            )
        dims = [rows, *entry.dims] if rows else list(entry.dims)
        shape = [1 if dim < 0 else dim for dim in dims]
        if bounds is None:
            feeds[entry.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feeds[entry.name] = rng.uniform(*bounds, size=shape).astype(np.float32)
    try:
        results = session.run([entry.name for entry in config.output], feeds)
    except Exception as error:
        raise VerifyError(f"inference on a random batch failed: {error}") from error
    outputs = dict(zip([entry.name for entry in config.output], results, strict=True))
    for entry in config.output:
        expected = [rows, *entry.dims] if rows else list(entry.dims)
        got = list(outputs[entry.name].shape)
        if len(got) != len(expected) or any(
            w not in (-1, g) for w, g in zip(expected, got, strict=True)
        ):
            raise VerifyError(f"output '{entry.name}' has shape {got}; config says {expected}")
        if not np.isfinite(outputs[entry.name]).all():
            raise VerifyError(f"output '{entry.name}' has NaN or Inf on valid inputs")
    task = props[meta.TASK]
    wanted = set(output_names(task == meta.TASK_CLASSIFICATION))
    if set(outputs) != wanted:
        raise VerifyError(f"a {task} model must output {sorted(wanted)}; it has {sorted(outputs)}")
    if task == meta.TASK_CLASSIFICATION:
        probabilities = outputs[meta.PROBABILITIES_NAME]
        labels = json.loads(props[meta.LABELS])
        if len(labels) != probabilities.shape[-1]:
            raise VerifyError(
                f"metadata has {len(labels)} labels but the graph outputs "
                f"{probabilities.shape[-1]} classes"
            )
        sums = probabilities.sum(axis=-1)
        if (probabilities < 0).any() or np.abs(sums - 1).max() > _PROBABILITY_TOLERANCE:
            raise VerifyError(
                "probabilities are not a distribution "
                f"(row sums {sums.min():.6f}..{sums.max():.6f})"
            )


def _check_metrics(version_dir: Path) -> None:
    path = version_dir / layout.METRICS_FILENAME
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise VerifyError(f"{path}: cannot read: {error.strerror}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VerifyError(f"{path}: not valid JSON: {error}") from error


def check_version(version_dir: Path, config: model_config_pb2.ModelConfig, name: str) -> str:
    """Every check for one version; a short description when it passes, VerifyError if not."""
    model_file = version_dir / layout.MODEL_FILENAME
    try:
        data = model_file.read_bytes()
    except OSError as error:
        raise VerifyError(f"{model_file}: cannot read: {error.strerror}") from error
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # DecodeError and friends from protobuf
        raise VerifyError(
            f"{model_file}: corrupt or truncated, not an ONNX model ({type(error).__name__}: "
            f"{error})"
        ) from error
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # ValidationError, InferenceError, or worse on garbage
        raise VerifyError(f"{model_file}: fails the ONNX checker: {error}") from error
    props = _metadata(model)
    signature = signature_from_onnx(model)
    problems = config_mismatches(config, signature, name)
    if problems:
        config_file = version_dir.parent / layout.CONFIG_FILENAME
        raise VerifyError(f"{config_file} disagrees with {model_file}: {'; '.join(problems)}")
    _run_random_batch(data, config, props)
    _check_metrics(version_dir)
    shape = [spec.dims for spec in signature.inputs]
    return (
        f"{props[meta.KIND]} {props[meta.TASK]} on {props[meta.DATASET]}, "
        f"input {list(shape[0]) if shape else []}, outputs "
        + ", ".join(f"{spec.name}{list(spec.dims)}" for spec in signature.outputs)
    )


def verify_repository(repository: Path) -> list[Finding]:
    """One Finding per version directory (and per model directory with no versions)."""
    findings = []
    for name in layout.model_names(repository):
        model_dir = repository / name
        versions = layout.versions(model_dir)
        if not versions:
            findings.append(Finding(model_dir, False, "no version directories"))
            continue
        config: model_config_pb2.ModelConfig | None = None
        config_problem = ""
        try:
            config = read_config(layout.config_path(repository, name))
        except ConfigError as error:
            config_problem = str(error)
        for version in versions:
            version_dir = layout.version_dir(repository, name, version)
            if config is None:
                findings.append(Finding(version_dir, False, config_problem))
                continue
            try:
                message = check_version(version_dir, config, name)
            except VerifyError as error:
                findings.append(Finding(version_dir, False, str(error)))
            else:
                findings.append(Finding(version_dir, True, message))
    return findings


def leftover_staging(repository: Path) -> list[Path]:
    """Staging entries an export killed with SIGKILL could leave (readers ignore them)."""
    return sorted(
        entry
        for name in layout.model_names(repository)
        for entry in (repository / name).iterdir()
        if entry.name.startswith(layout.STAGING_PREFIX)
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad usage: one readable line and exit code 2, as every CLI here does."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m training.verify",
        description="Re-check every model version in a model repository.",
    )
    parser.add_argument("repository", type=Path, help="model repository directory, e.g. models/")
    args = parser.parse_args(argv)
    repository: Path = args.repository
    if not repository.is_dir():
        parser.error(f"{repository} is not a directory; expected a model repository")
    findings = verify_repository(repository)
    for finding in findings:
        status = "OK  " if finding.ok else "FAIL"
        print(f"{status} {finding.path}: {finding.message}")
    for entry in leftover_staging(repository):
        print(f"NOTE {entry}: leftover staging entry of an interrupted export; safe to delete")
    if not findings:
        print(f"FAIL {repository}: no models found")
        return 1
    failed = sum(not finding.ok for finding in findings)
    print(f"{len(findings) - failed} of {len(findings)} model versions OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
