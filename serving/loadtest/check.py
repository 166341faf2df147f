"""``--check``: compare a sample of served responses with ONNX Runtime run here on the same file.

The server may batch a row with others, which changes the floating-point summation order, so
outputs are compared with a tolerance (``rtol=1e-3, atol=1e-4``) rather than bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository import layout
from model_repository import metadata as meta
from model_repository.datatypes import BY_WIRE
from protos import grpc_service_pb2, predict_pb2
from serving.grpc_api.predict_tensors import array_from_predict
from serving.loadtest.errors import InputError

RTOL = 1e-3
ATOL = 1e-4


@dataclass(frozen=True)
class CheckResult:
    compared: int
    mismatches: int
    max_abs_difference: float
    model_files: tuple[str, ...]
    first_mismatch: str  # "" when there is none


def decode_response(api: str, raw: bytes) -> tuple[int, dict[str, np.ndarray]]:
    """(version, {output name: array}) from a raw Predict/ModelInfer/stream response."""
    if api == "predict":
        response = predict_pb2.PredictResponse.FromString(raw)
        outputs = {}
        for name, tensor in (
            (meta.PROBABILITIES_NAME, response.probabilities),
            (meta.PREDICTION_NAME, response.predictions),
        ):
            if tensor.shape:
                outputs[name] = array_from_predict(tensor)
        return int(response.version), outputs
    if api == "stream":
        infer = grpc_service_pb2.ModelStreamInferResponse.FromString(raw).infer_response
    else:
        infer = grpc_service_pb2.ModelInferResponse.FromString(raw)
    outputs = {}
    for position, tensor in enumerate(infer.outputs):
        datatype = BY_WIRE.get(tensor.datatype)
        if position >= len(infer.raw_output_contents) or datatype is None or datatype.is_bytes:
            continue
        data = infer.raw_output_contents[position]
        outputs[tensor.name] = np.frombuffer(data, datatype.numpy).reshape(tuple(tensor.shape))
    version = int(infer.model_version) if infer.model_version.isdigit() else 0
    return version, outputs


class _LocalModels:
    """ONNX Runtime sessions of the repository's files, one per version, opened on demand."""

    def __init__(self, repository: Path, model: str) -> None:
        self.repository = repository
        self.model = model
        self.sessions: dict[int, object] = {}

    def run(self, version: int, input_name: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        import onnxruntime  # imported late: only --check needs it in the client

        session = self.sessions.get(version)
        if session is None:
            path = layout.model_path(self.repository, self.model, version)
            if not path.is_file():
                raise InputError(
                    f"--check: {path} not found (the server answered with version {version})"
                )
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.sessions[version] = session
        names = [output.name for output in session.get_outputs()]  # type: ignore[attr-defined]
        values = session.run(names, {input_name: batch})  # type: ignore[attr-defined]
        return dict(zip(names, values, strict=True))


def check_responses(
    samples: list[tuple[int, bytes]],
    batches: list[np.ndarray],
    api: str,
    repository: Path,
    model: str,
    input_name: str,
) -> CheckResult:
    """Count sampled responses whose outputs differ from a local run on the same rows."""
    local = _LocalModels(repository, model)
    mismatches, worst, first = 0, 0.0, ""
    for index, raw in samples:
        version, served = decode_response(api, raw)
        if version == 0:
            raise InputError("--check: the response does not say which model version answered")
        expected = local.run(version, input_name, batches[index])
        problem = ""
        if not served:
            problem = "the response carries no output"
        for name, array in served.items():
            if name not in expected:
                problem = problem or f"output {name!r} is not an output of {model} v{version}"
                continue
            if array.shape != expected[name].shape:
                problem = (
                    problem
                    or f"output {name!r} has shape {array.shape}; expected {expected[name].shape}"
                )
                continue
            difference = (
                float(np.max(np.abs(array.astype(np.float64) - expected[name])))
                if array.size
                else 0.0
            )
            worst = max(worst, difference)
            if not np.allclose(array, expected[name], rtol=RTOL, atol=ATOL):
                problem = problem or f"output {name!r} differs by up to {difference:.3g}"
        if problem:
            mismatches += 1
            first = first or f"payload {index}, {model} v{version}: {problem}"
    files = tuple(str(layout.model_path(repository, model, v)) for v in sorted(local.sessions))
    return CheckResult(
        compared=len(samples),
        mismatches=mismatches,
        max_abs_difference=worst,
        model_files=files,
        first_mismatch=first,
    )
