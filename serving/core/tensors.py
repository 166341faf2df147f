"""Tensors on the wire: decoding requests with validation, encoding outputs.

Fixed-size types are read with ``np.frombuffer`` straight from the request's bytes (no
copy). BYTES tensors use the KServe v2 / Triton binary form, each element a 4-byte
little-endian length followed by its bytes, in raw contents and in our Predict API alike.
Every check names what was received and what the model expects.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from model_repository.datatypes import BY_WIRE, DataType
from protos import grpc_service_pb2, predict_pb2
from serving.errors import InvalidInputError, clip

# Our Predict API's dtype enum <-> wire type.
PREDICT_DTYPES: dict[int, DataType] = {
    predict_pb2.FLOAT32: BY_WIRE["FP32"],
    predict_pb2.FLOAT64: BY_WIRE["FP64"],
    predict_pb2.FLOAT16: BY_WIRE["FP16"],
    predict_pb2.INT8: BY_WIRE["INT8"],
    predict_pb2.INT16: BY_WIRE["INT16"],
    predict_pb2.INT32: BY_WIRE["INT32"],
    predict_pb2.INT64: BY_WIRE["INT64"],
    predict_pb2.UINT8: BY_WIRE["UINT8"],
    predict_pb2.UINT16: BY_WIRE["UINT16"],
    predict_pb2.UINT32: BY_WIRE["UINT32"],
    predict_pb2.UINT64: BY_WIRE["UINT64"],
    predict_pb2.BOOL: BY_WIRE["BOOL"],
    predict_pb2.BYTES: BY_WIRE["BYTES"],
}
PREDICT_DTYPE_OF: dict[str, int] = {t.wire: k for k, t in PREDICT_DTYPES.items()}

# The InferTensorContents field that carries each datatype's typed values (Triton's
# mapping; FP16 has none and must travel as raw contents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as requests carry it: full shape, batch dimension first when batched.

    -1 marks a dimension of any size (the batch one included).
    """

    name: str
    datatype: DataType
    shape: tuple[int, ...]
    # The shape after the batch dimension when all of it is fixed: a request's shape is
    # then checked with one tuple comparison.
    fixed_tail: tuple[int, ...] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tail = tuple(self.shape[1:])
        object.__setattr__(self, "fixed_tail", None if any(d < 0 for d in tail) else tail)

    @property
    def dtype(self) -> np.dtype:
        return self.datatype.numpy

    @property
    def kserve_dtype(self) -> str:
        return self.datatype.wire

    @property
    def predict_dtype(self) -> int:
        return PREDICT_DTYPE_OF[self.datatype.wire]

    def describe_shape(self, batched: bool = True) -> str:
        dims = [("batch" if batched and i == 0 else "?") if d < 0 else str(d)
                for i, d in enumerate(self.shape)]  # fmt: skip
        return "[" + ", ".join(dims) + "]"


class Decoded(NamedTuple):
    """A request's validated inputs, in the model's input order."""

    arrays: list[np.ndarray]
    rows: int  # batch rows; 1 for a model without a batch dimension
    # Shapes after the batch dimension when the model has dynamic ones; requests whose
    # keys differ are not merged into one execution. None when every shape is fixed.
    key: tuple[tuple[int, ...], ...] | None


@dataclass(frozen=True)
class RequestSchema:
    """How one model version's requests are checked, built once when it loads."""

    model: str  # "model 'mlp' v2", for messages
    inputs: tuple[TensorSpec, ...]
    batched: bool  # max_batch_size > 0: the first dimension is the batch one
    max_rows: int  # rows per request when batched
    finite: bool  # refuse NaN/Inf in float inputs (models our trainer exported)
    index: dict[str, int] = field(init=False, repr=False, compare=False)
    dynamic: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {s.name: i for i, s in enumerate(self.inputs)})
        skip = 1 if self.batched else 0
        dynamic = any(d < 0 for s in self.inputs for d in s.shape[skip:])
        object.__setattr__(self, "dynamic", dynamic)

    def expected_names(self) -> str:
        return ", ".join(f"'{s.name}'" for s in self.inputs)

    # -- one tensor ------------------------------------------------------------------

    def check_shape(self, shape: Sequence[int], spec: TensorSpec) -> int:
        """Validate a request tensor's shape against ``spec``; return its rows."""
        if self.batched:
            rows = shape[0] if shape else 0
            if spec.fixed_tail is not None and shape[1:] == spec.fixed_tail and rows > 0:
                if rows > self.max_rows:
                    self._too_many_rows(spec, rows)
                return rows
        if len(shape) != len(spec.shape) or any(
            want >= 0 and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise InvalidInputError(
                f"input '{spec.name}' has shape {shape_text(shape)}; {self.model} expects "
                f"{spec.describe_shape(self.batched)}"
            )
        if any(d < 0 for d in shape):
            raise InvalidInputError(
                f"input '{spec.name}' has a negative dimension: {shape_text(shape)}"
            )
        if not self.batched:
            return 1
        rows = shape[0]
        if rows == 0:
            raise InvalidInputError(
                f"input '{spec.name}' is an empty batch (shape {shape_text(shape)}); "
                "send at least one row"
            )
        if rows > self.max_rows:
            self._too_many_rows(spec, rows)
        return rows

    def _too_many_rows(self, spec: TensorSpec, rows: int) -> None:
        raise InvalidInputError(
            f"input '{spec.name}' has {rows} rows; {self.model} accepts at most "
            f"{self.max_rows} (max_batch_size) per request"
        )

    def check_finite(self, array: np.ndarray, spec: TensorSpec) -> None:
        """Refuse NaN and Inf where the model says it cannot take them."""
        # One float64 sum is cheaper than isfinite over every value, cannot overflow for
        # float32 inputs, and is NaN/Inf exactly when some value is.
        if not self.finite or array.dtype.kind != "f" or math.isfinite(array.sum(dtype=np.float64)):
            return
        bad = ~np.isfinite(array)
        if bad.any():  # a finite sum can overflow; only real NaN/Inf are refused
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInputError(
                f"input '{spec.name}' contains {int(bad.sum())} NaN/Inf values (first at "
                f"index {list(where)}); {self.model} expects finite numbers"
            )

    # -- whole requests --------------------------------------------------------------

    def _finish(self, arrays: list[np.ndarray | None], rows_seen: list[int]) -> Decoded:
        missing = [s.name for s, a in zip(self.inputs, arrays, strict=True) if a is None]
        if missing:
            raise InvalidInputError(
                f"request lacks input(s) {missing}; {self.model} expects {self.expected_names()}"
            )
        if self.batched and len(set(rows_seen)) > 1:
            counts = {s.name: r for s, r in zip(self.inputs, rows_seen, strict=True)}
            raise InvalidInputError(
                f"inputs have different batch sizes {counts}; every input of a request must "
                "have the same number of rows"
            )
        done: list[np.ndarray] = arrays  # type: ignore[assignment]
        key = tuple(a.shape[1:] for a in done) if self.dynamic else None
        return Decoded(done, rows_seen[0] if rows_seen else 1, key)

    def _slot(self, name: str, arrays: list[np.ndarray | None]) -> int:
        position = self.index.get(name)
        if position is None:
            raise InvalidInputError(
                f"request has input '{name}'; {self.model} expects {self.expected_names()}"
            )
        if arrays[position] is not None:
            raise InvalidInputError(f"request has input '{name}' twice")
        return position

    def decode_kserve(self, request: grpc_service_pb2.ModelInferRequest) -> Decoded:
        """The validated inputs of a KServe ModelInferRequest (raw or typed contents)."""
        tensors = request.inputs
        raw = request.raw_input_contents
        if len(self.inputs) == 1 and len(tensors) == 1 and len(raw) == 1:
            # The common case (one input, raw contents), without the bookkeeping of many.
            tensor = tensors[0]
            spec = self.inputs[0]
            if tensor.name == spec.name and tensor.datatype == spec.datatype.wire:
                shape = tuple(tensor.shape)
                rows = self.check_shape(shape, spec)
                array = from_bytes(raw[0], spec.datatype, shape, spec.name)
                self.check_finite(array, spec)
                return Decoded([array], rows, (shape[1:],) if self.dynamic else None)
        if len(tensors) != len(self.inputs):
            names = [t.name for t in tensors]
            raise InvalidInputError(
                f"request has inputs {names}; {self.model} expects {self.expected_names()}"
            )
        if raw and len(raw) != len(tensors):
            raise InvalidInputError(
                f"request has {len(raw)} raw_input_contents entries for {len(tensors)} inputs; "
                "send raw contents for every input or for none"
            )
        arrays: list[np.ndarray | None] = [None] * len(self.inputs)
        rows_seen = [0] * len(self.inputs)
        for number, tensor in enumerate(tensors):
            position = self._slot(tensor.name, arrays)
            spec = self.inputs[position]
            if tensor.datatype != spec.datatype.wire:
                raise InvalidInputError(
                    f"input '{spec.name}' has datatype {clip(tensor.datatype) or '(empty)'}; "
                    f"{self.model} expects {spec.datatype.wire}"
                )
            shape = tuple(tensor.shape)
            rows_seen[position] = self.check_shape(shape, spec)
            if raw:
                array = from_bytes(raw[number], spec.datatype, shape, spec.name)
            else:
                array = from_contents(tensor.contents, spec.datatype, shape, spec.name)
            self.check_finite(array, spec)
            arrays[position] = array
        return self._finish(arrays, rows_seen)

    def decode_predict(self, request: predict_pb2.PredictRequest) -> Decoded:
        """The validated inputs of a PredictRequest (``input`` or named ``inputs``)."""
        named: Iterable[tuple[str, predict_pb2.Tensor]]
        if request.inputs:
            if request.HasField("input"):
                raise InvalidInputError("request sets both 'input' and 'inputs'; use one")
            named = request.inputs.items()
        elif len(self.inputs) == 1:
            named = ((self.inputs[0].name, request.input),)
        else:
            raise InvalidInputError(
                f"{self.model} has inputs {self.expected_names()}; send them by name in 'inputs'"
            )
        arrays: list[np.ndarray | None] = [None] * len(self.inputs)
        rows_seen = [0] * len(self.inputs)
        for name, tensor in named:
            position = self._slot(name, arrays)
            spec = self.inputs[position]
            datatype = PREDICT_DTYPES.get(tensor.dtype)
            if datatype is not spec.datatype:
                raise InvalidInputError(
                    f"input '{spec.name}' has dtype {_predict_dtype_name(tensor.dtype)}; "
                    f"{self.model} expects {predict_pb2.DataType.Name(spec.predict_dtype)}"
                )
            shape = tuple(tensor.shape)
            rows_seen[position] = self.check_shape(shape, spec)
            array = from_bytes(tensor.data, datatype, shape, spec.name)
            self.check_finite(array, spec)
            arrays[position] = array
        return self._finish(arrays, rows_seen)


def _predict_dtype_name(value: int) -> str:
    if value in PREDICT_DTYPES or value == 0:
        return predict_pb2.DataType.Name(value)
    return str(value)


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def from_bytes(data: bytes, datatype: DataType, shape: Sequence[int], name: str) -> np.ndarray:
    """An array of ``shape`` read from little-endian bytes (length-prefixed for BYTES)."""
    count = math.prod(shape)
    if datatype.is_bytes:
        return _decode_bytes_elements(data, count, name).reshape(shape)
    expected = count * datatype.numpy.itemsize
    if len(data) != expected:
        raise InvalidInputError(
            f"input '{name}' has {len(data)} bytes of data; shape {shape_text(shape)} of "
            f"{datatype.wire} needs {expected}"
        )
    return np.frombuffer(data, datatype.numpy).reshape(shape)


def _decode_bytes_elements(data: bytes, count: int, name: str) -> np.ndarray:
    size = len(data)
    # Every element takes at least its 4-byte length: refuse a claimed shape the data
    # cannot hold before allocating for it (a 20-byte request must not allocate 2**31).
    if count > size // 4:
        raise InvalidInputError(
            f"input '{name}' has {size} bytes of BYTES data; {count} elements need at least "
            f"{4 * count} (each is a 4-byte little-endian length and that many bytes)"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > size:
            raise InvalidInputError(
                f"input '{name}' BYTES data ends after {i} of {count} elements; each element "
                "is a 4-byte little-endian length and that many bytes"
            )
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += 4
        if offset + length > size:
            raise InvalidInputError(
                f"input '{name}' BYTES element {i} claims {length} bytes; only "
                f"{size - offset} remain"
            )
        # ONNX Runtime's string tensors take str; bytes would reach the graph as "b'...'".
        try:
            elements[i] = bytes(data[offset : offset + length]).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInputError(
                f"input '{name}' BYTES element {i} is not UTF-8 ({error.reason} at byte "
                f"{error.start}); ONNX string tensors hold UTF-8 text"
            ) from error
        offset += length
    if offset != size:
        raise InvalidInputError(
            f"input '{name}' has {size - offset} bytes after its {count} BYTES elements"
        )
    return elements


def from_contents(
    contents: grpc_service_pb2.InferTensorContents,
    datatype: DataType,
    shape: Sequence[int],
    name: str,
) -> np.ndarray:
    """An array of ``shape`` from KServe's typed contents."""
    field_name = CONTENTS_FIELD.get(datatype.wire)
    if field_name is None:
        raise InvalidInputError(
            f"input '{name}' is {datatype.wire}, which has no typed contents field; send it "
            "in raw_input_contents"
        )
    values = getattr(contents, field_name)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInputError(
            f"input '{name}' has {len(values)} values in contents.{field_name}; shape "
            f"{shape_text(shape)} needs {count}"
        )
    if datatype.is_bytes:
        return _decode_bytes_elements(
            b"".join(_LENGTH.pack(len(v)) + v for v in values), count, name
        ).reshape(shape)
    try:
        return np.asarray(values, dtype=datatype.numpy).reshape(shape)
    except OverflowError as error:
        raise InvalidInputError(
            f"input '{name}' has a value outside the range of {datatype.wire}: {error}"
        ) from error


def encode_bytes(array: np.ndarray) -> bytes:
    """BYTES elements in row-major order, each as a 4-byte length and its bytes."""
    parts = []
    for element in array.reshape(-1):
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def to_bytes(array: np.ndarray) -> bytes:
    """An output's bytes on the wire."""
    if array.dtype.kind == "O":
        return encode_bytes(array)
    return array.tobytes()


def fill_predict_tensor(tensor: predict_pb2.Tensor, array: np.ndarray, datatype: DataType) -> None:
    """Write ``array`` into a response's Tensor field in place.

    Building a Tensor and passing it to the response constructor copies it once more.
    """
    tensor.shape.extend(array.shape)
    tensor.dtype = PREDICT_DTYPE_OF[datatype.wire]
    tensor.data = to_bytes(array)


def array_from_predict(tensor: predict_pb2.Tensor) -> np.ndarray:
    """The client side of ``fill_predict_tensor`` (no validation beyond the byte length)."""
    datatype = PREDICT_DTYPES[tensor.dtype]
    return from_bytes(tensor.data, datatype, tuple(tensor.shape), "output")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    if k == 1:
        return scores.argmax(axis=1)[:, None]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def add_top_k(
    rows: RepeatedCompositeFieldContainer[predict_pb2.RowTopK],
    scores: np.ndarray,
    k: int,
    labels: Sequence[str],
) -> None:
    """Append, per row, the ``k`` best classes with label and score, best first.

    Filled in place with ``add()``: building RowTopK/ClassScore messages first and passing
    them to the response copies each one twice.
    """
    values = scores.tolist()  # one conversion; per-element indexing is slower
    if k == 1:
        for row, index in zip(values, scores.argmax(axis=1).tolist(), strict=True):
            rows.add().classes.add(label=labels[index], index=index, score=row[index])
        return
    for row, indices in zip(values, top_k(scores, k).tolist(), strict=True):
        classes = rows.add().classes
        for index in indices:
            classes.add(label=labels[index], index=index, score=row[index])


def classification_strings(
    scores: np.ndarray, k: int, labels: Sequence[str], batched: bool
) -> np.ndarray:
    """Triton's classification extension: top ``k`` as BYTES "score:index[:label]".

    Per batch row over the remaining elements when ``batched``, else over the whole
    tensor; shape [rows, k'] or [k'] with k' = min(k, classes).
    """
    flat = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    if flat.dtype.kind not in "fiub":
        raise InvalidInputError(
            f"classification needs a numeric output; this one is {flat.dtype.name}"
        )
    count = min(k, flat.shape[1])
    order = np.argsort(-flat.astype(np.float64), axis=1, kind="stable")[:, :count]
    result = np.empty(order.shape, dtype=object)
    for r, indices in enumerate(order.tolist()):
        for c, index in enumerate(indices):
            text = f"{float(flat[r, index]):f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            result[r, c] = text.encode()
    return result if batched else result[0]


def requested_outputs(names: Mapping[str, int], wanted: Iterable[str], model: str) -> list[int]:
    """Positions of the named outputs, refusing unknown ones."""
    positions = []
    for name in wanted:
        position = names.get(name)
        if position is None:
            raise InvalidInputError(
                f"requested output '{clip(name)}' does not exist; {model} has {list(names)}"
            )
        positions.append(position)
    return positions
