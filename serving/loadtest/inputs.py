"""The model's input signature (asked from the server) and the arrays the requests carry."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from model_repository import metadata as meta
from model_repository.datatypes import BY_WIRE
from protos import grpc_service_pb2, grpc_service_pb2_grpc, predict_pb2, predict_pb2_grpc
from serving.grpc_api.predict_tensors import PREDICT_DTYPES
from serving.loadtest.errors import InputError, TargetError

LOGGER = logging.getLogger(__name__)

FASHION_MNIST_TEST_IMAGES = "t10k-images-idx3-ubyte"
_IDX_IMAGES_MAGIC = 2051


@dataclass(frozen=True)
class ModelSignature:
    """What a request to the model must look like."""

    model: str
    version: int  # the version the server described; 0 when it did not say
    input_name: str
    dtype: str  # numpy dtype name
    sample_shape: tuple[int, ...]  # one row, batch dimension removed
    input_range: tuple[float, float] | None  # raw value range, None when unknown
    task: str  # "classification", "regression" or "" when unknown
    max_batch_size: int  # 0 when unknown


async def fetch_signature(
    channel: grpc.aio.Channel,
    model: str,
    version: int,
    metadata: tuple[tuple[str, str], ...],
    timeout_seconds: float,
) -> ModelSignature:
    """Ask the server for the model's input: our GetModel, else KServe ModelMetadata."""
    try:
        info = await predict_pb2_grpc.PredictionServiceStub(channel).GetModel(
            predict_pb2.GetModelRequest(name=model, version=version),
            timeout=timeout_seconds,
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise TargetError(
                f"GetModel({model!r}, version {version or 'latest'}) failed: "
                f"{error.code().name}: {error.details()}"
            ) from error
        return await _fetch_kserve_signature(channel, model, version, metadata, timeout_seconds)
    if not info.inputs:
        raise TargetError(f"model {model!r}: the server describes no input")
    spec = info.inputs[0]
    if spec.dtype not in PREDICT_DTYPES or PREDICT_DTYPES[spec.dtype].is_bytes:
        raise TargetError(
            f"model {model!r}: input dtype {spec.dtype} is not supported by the load tester"
        )
    raw_range = info.metadata.get(meta.INPUT_RANGE, "null")
    try:
        parsed = json.loads(raw_range)
    except json.JSONDecodeError:
        parsed = None
    input_range = (
        (float(parsed[0]), float(parsed[1]))
        if isinstance(parsed, list) and len(parsed) == 2
        else None
    )
    return ModelSignature(
        model=model,
        version=info.version,
        input_name=spec.name,
        dtype=PREDICT_DTYPES[spec.dtype].numpy.name,
        sample_shape=_sample_shape(model, list(spec.shape)),
        input_range=input_range,
        task=info.task,
        max_batch_size=info.batching.max_batch_size,
    )


async def _fetch_kserve_signature(
    channel: grpc.aio.Channel,
    model: str,
    version: int,
    metadata: tuple[tuple[str, str], ...],
    timeout_seconds: float,
) -> ModelSignature:
    try:
        info = await grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
            grpc_service_pb2.ModelMetadataRequest(
                name=model, version=str(version) if version else ""
            ),
            timeout=timeout_seconds,
            metadata=metadata,
        )
    except grpc.aio.AioRpcError as error:
        raise TargetError(
            f"ModelMetadata({model!r}) failed: {error.code().name}: {error.details()}"
        ) from error
    if not info.inputs:
        raise TargetError(f"model {model!r}: the server describes no input")
    spec = info.inputs[0]
    datatype = BY_WIRE.get(spec.datatype)
    if datatype is None or datatype.is_bytes:  # numeric inputs only
        raise TargetError(f"model {model!r}: input datatype {spec.datatype} is not supported")
    LOGGER.info("server has no GetModel; using KServe ModelMetadata (no input range known)")
    return ModelSignature(
        model=model,
        version=int(info.versions[-1]) if info.versions and info.versions[-1].isdigit() else 0,
        input_name=spec.name,
        dtype=datatype.numpy.name,
        sample_shape=_sample_shape(model, list(spec.shape)),
        input_range=None,
        task="",
        max_batch_size=0,
    )


def _sample_shape(model: str, shape: list[int]) -> tuple[int, ...]:
    sample = tuple(shape[1:])
    if not shape or any(d < 1 for d in sample):
        raise TargetError(
            f"model {model!r}: input shape {shape}; expected [batch, fixed dims...] for inputs"
        )
    return sample


def load_rows(
    source: str, signature: ModelSignature, seed: int, data_dir: Path | None, count: int
) -> np.ndarray:
    """``count`` rows [count, *sample_shape] of ``signature.dtype`` from ``source``."""
    if source == "random":
        return random_rows(signature, count, seed)
    images = load_digits_images() if source == "digits" else load_fashion_mnist_images(data_dir)
    return fit_images(images, signature, count)


def random_rows(signature: ModelSignature, count: int, seed: int) -> np.ndarray:
    """Uniform in the model's recorded input range; standard normal when the range is unknown."""
    rng = np.random.default_rng(seed)
    shape = (count, *signature.sample_shape)
    dtype = np.dtype(signature.dtype)
    if dtype.kind in "iu":
        low, high = signature.input_range or (0, 255 if dtype.kind == "u" else 100)
        return rng.integers(int(low), int(high), size=shape, endpoint=True).astype(dtype)
    if signature.input_range is None:
        return rng.standard_normal(shape).astype(dtype)
    low, high = signature.input_range
    return rng.uniform(low, high, size=shape).astype(dtype)


def load_digits_images() -> np.ndarray:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1], as the training code sees them."""
    from sklearn.datasets import load_digits  # imported late: slow, and only this source needs it

    return (load_digits().images / 16.0).astype(np.float32)  # (1797, 8, 8)


def load_fashion_mnist_images(data_dir: Path | None) -> np.ndarray:
    """The 10,000 Fashion-MNIST test images under ``data_dir`` scaled to [0, 1]: (N, 28, 28)."""
    if data_dir is None or not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir}: not a directory")
    candidates = sorted(data_dir.rglob(FASHION_MNIST_TEST_IMAGES)) + sorted(
        data_dir.rglob(FASHION_MNIST_TEST_IMAGES + ".gz")
    )
    if not candidates:
        raise InputError(f"no {FASHION_MNIST_TEST_IMAGES}[.gz] under {data_dir}")
    path = candidates[0]
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    header = np.frombuffer(raw[:16], dtype=">u4")
    if len(header) != 4 or header[0] != _IDX_IMAGES_MAGIC:
        raise InputError(f"{path}: not an IDX image file (magic {_IDX_IMAGES_MAGIC} expected)")
    n, rows, cols = (int(v) for v in header[1:])
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)
    if pixels.size != n * rows * cols:
        raise InputError(f"{path}: holds {pixels.size} pixels; header says {n}x{rows}x{cols}")
    return (pixels.reshape(n, rows, cols) / 255.0).astype(np.float32)


def fit_images(images: np.ndarray, signature: ModelSignature, count: int) -> np.ndarray:
    """Reshape images to the model's row shape (e.g. (8, 8) -> (1, 8, 8) or (64,)) and cycle."""
    per_image = int(np.prod(images.shape[1:]))
    per_row = int(np.prod(signature.sample_shape))
    if per_image != per_row:
        raise InputError(
            f"the images have {per_image} values ({'x'.join(map(str, images.shape[1:]))}); "
            f"model {signature.model!r} expects rows of shape {list(signature.sample_shape)}"
        )
    picked = images[np.arange(count) % len(images)]
    return picked.reshape(count, *signature.sample_shape).astype(signature.dtype)
