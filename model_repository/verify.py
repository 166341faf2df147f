"""Check every version in a model repository: ``python -m model_repository.verify models/``.

For each ``<name>/<version>/model.onnx``, the checks the server makes when it loads it,
and more: ONNX Runtime loads it; ``<name>/config.pbtxt`` (completed from the graph where it
is missing or partial, as the server does) agrees with the graph; a random batch of valid
inputs runs and gives outputs of the configured shapes. Models written by our trainer
(they carry our ``metadata_props``) are held to more: the required metadata, finite outputs
drawn from ``input_range``, the task's outputs (probabilities that are a distribution, one
label per class), and a readable metrics.json. One line per version; exit code 0 when all
hold, 1 when any check fails, 2 for bad usage.

Free of the training stack (it reads graphs through ONNX Runtime), so it runs wherever the
server runs; ``python -m training.verify`` adds the ONNX checker on top.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnxruntime as ort

from model_repository import layout
from model_repository import metadata as meta
from model_repository.config import ConfigError, read_config
from model_repository.datatypes import BY_CONFIG
from model_repository.signature import (
    GraphSignature,
    complete_config,
    config_mismatches,
    signature_from_session,
)
from protos import model_config_pb2

_BATCH_ROWS = 3  # rows in the random batch; small, and not a size a graph would hardcode
_PROBABILITY_TOLERANCE = 1e-4

# An extra check of a model file's bytes (training.verify adds the ONNX checker); it
# raises VerifyError with the problem.
ExtraCheck = Callable[[bytes], None]


class VerifyError(Exception):
    """One failed check; the message names the problem, ``verify_repository`` adds the path."""


@dataclass(frozen=True)
class Finding:
    """The outcome for one path (a version directory, or a model without versions)."""

    path: Path
    ok: bool
    message: str


def exported_by_us(props: dict[str, str]) -> bool:
    """Whether a graph carries our trainer's metadata (and so its stricter contract)."""
    return any(key in props for key in meta.REQUIRED)


def _check_metadata(props: dict[str, str]) -> None:
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


def _input_range(props: dict[str, str]) -> tuple[float, float] | None:
    value = json.loads(props.get(meta.INPUT_RANGE, "null"))
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


def random_feeds(
    config: model_config_pb2.ModelConfig,
    rows: int | None,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Valid random inputs for every configured input (dynamic dims become 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for entry in config.input:
        datatype = BY_CONFIG[entry.data_type]
        dims = [rows, *entry.dims] if rows else list(entry.dims)
        shape = [1 if dim < 0 else dim for dim in dims]
        kind = datatype.numpy.kind
        if datatype.is_bytes:
            values = rng.integers(0, 1000, size=shape)
            feeds[entry.name] = np.vectorize(lambda v: str(v).encode(), otypes=[object])(values)
        elif kind == "b":
            feeds[entry.name] = rng.random(shape) < 0.5
        elif kind in "iu":
            feeds[entry.name] = rng.integers(0, 2, size=shape).astype(datatype.numpy)
        elif bounds is None:
            feeds[entry.name] = rng.standard_normal(shape).astype(datatype.numpy)
        else:
            feeds[entry.name] = rng.uniform(*bounds, size=shape).astype(datatype.numpy)
    return feeds


def _run_random_batch(
    session: ort.InferenceSession,
    config: model_config_pb2.ModelConfig,
    props: dict[str, str],
    ours: bool,
) -> None:
    """Run valid random inputs and check what comes out against config (and metadata)."""
    rows = min(_BATCH_ROWS, config.max_batch_size) if config.max_batch_size > 0 else None
    feeds = random_feeds(config, rows, bounds=_input_range(props) if ours else None)
    names = [entry.name for entry in config.output]
    try:
        results = session.run(names, feeds)
    except Exception as error:
        raise VerifyError(f"inference on a random batch failed: {error}") from error
    outputs = dict(zip(names, results, strict=True))
    for entry in config.output:
        expected = [rows, *entry.dims] if rows else list(entry.dims)
        got = list(outputs[entry.name].shape)
        if len(got) != len(expected) or any(
            w not in (-1, g) for w, g in zip(expected, got, strict=True)
        ):
            raise VerifyError(f"output '{entry.name}' has shape {got}; config says {expected}")
        if ours and not np.isfinite(outputs[entry.name]).all():
            raise VerifyError(f"output '{entry.name}' has NaN or Inf on valid inputs")
    if ours:
        _check_task_outputs(outputs, props)


def _check_task_outputs(outputs: dict[str, np.ndarray], props: dict[str, str]) -> None:
    task = props[meta.TASK]
    wanted = set(meta.output_names(task))
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


def load_session(data: bytes, source: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a model file's bytes, or VerifyError."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT's pybind errors share no useful base class
        raise VerifyError(
            f"{source}: corrupt or truncated, ONNX Runtime cannot load it ({error})"
        ) from error


def _describe(signature: GraphSignature, config: model_config_pb2.ModelConfig) -> str:
    inputs, outputs = signature.config_specs(config.max_batch_size > 0)
    batch = f"max_batch_size {config.max_batch_size}"
    return (
        f"{batch}, inputs "
        + ", ".join(f"{s.name}{list(s.dims)}" for s in inputs)
        + ", outputs "
        + ", ".join(f"{s.name}{list(s.dims)}" for s in outputs)
    )


def check_version(
    version_dir: Path,
    config: model_config_pb2.ModelConfig | None,
    name: str,
    extra_check: ExtraCheck | None = None,
) -> str:
    """Every check for one version; a short description when it passes, VerifyError if not.

    ``config`` is the parsed config.pbtxt, None when the model has none.
    """
    model_file = version_dir / layout.MODEL_FILENAME
    try:
        data = model_file.read_bytes()
    except OSError as error:
        raise VerifyError(f"{model_file}: cannot read: {error.strerror}") from error
    session = load_session(data, model_file)
    if extra_check is not None:
        try:
            extra_check(data)
        except VerifyError as error:
            raise VerifyError(f"{model_file}: {error}") from error
    props = dict(session.get_modelmeta().custom_metadata_map)
    ours = exported_by_us(props)
    if ours:
        _check_metadata(props)
    signature = signature_from_session(session)
    completed = complete_config(config, signature, name)
    problems = config_mismatches(completed, signature, name)
    if problems:
        config_file = version_dir.parent / layout.CONFIG_FILENAME
        source = config_file if config is not None else "the auto-completed config"
        raise VerifyError(f"{source} disagrees with {model_file}: {'; '.join(problems)}")
    _run_random_batch(session, completed, props, ours)
    described = _describe(signature, completed)
    if config is None:
        described += " (no config.pbtxt: completed from the graph)"
    if not ours:
        return described
    _check_metrics(version_dir)
    return f"{props[meta.KIND]} {props[meta.TASK]} on {props[meta.DATASET]}, {described}"


def verify_repository(repository: Path, extra_check: ExtraCheck | None = None) -> list[Finding]:
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
        config_file = layout.config_path(repository, name)
        if config_file.exists():
            try:
                config = read_config(config_file)
            except ConfigError as error:
                config_problem = str(error)
        for version in versions:
            version_dir = layout.version_dir(repository, name, version)
            if config_problem:
                findings.append(Finding(version_dir, False, config_problem))
                continue
            try:
                message = check_version(version_dir, config, name, extra_check)
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


def main(
    argv: Sequence[str] | None = None,
    prog: str = "python -m model_repository.verify",
    extra_check: ExtraCheck | None = None,
) -> int:
    parser = _Parser(prog=prog, description="Check every model version in a model repository.")
    parser.add_argument("repository", type=Path, help="model repository directory, e.g. models/")
    args = parser.parse_args(argv)
    repository: Path = args.repository
    if not repository.is_dir():
        parser.error(f"{repository} is not a directory; expected a model repository")
    findings = verify_repository(repository, extra_check)
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
