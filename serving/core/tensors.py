"""Tensors in the corridor: a request's inputs checked against the model, outputs encoded.

``RequestSchema.decode`` takes the protocol-free ``InputTensor``s a door made and returns
the model's input arrays, or raises InvalidInputError naming what was received and what
the model expects; every door validates through it. Fixed-size types are read with
``np.frombuffer`` straight from the request's bytes (no copy). BYTES tensors use the
KServe v2 / Triton binary form, each element a 4-byte little-endian length followed by its
bytes (gRPC raw contents, HTTP binary tensors and our Predict API alike).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from model_repository.datatypes import DataType
from serving.errors import InvalidInputError, clip

if TYPE_CHECKING:
    from serving.core.inference import InputTensor

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

    def _slot(self, name: str | None, arrays: list[np.ndarray | None]) -> int:
        if name is None:  # the input of a single-input model, sent without its name
            if len(self.inputs) != 1:
                raise InvalidInputError(
                    f"{self.model} has inputs {self.expected_names()}; send them by name"
                )
            name = self.inputs[0].name
        position = self.index.get(name)
        if position is None:
            raise InvalidInputError(
                f"request has input '{clip(name)}'; {self.model} expects {self.expected_names()}"
            )
        if arrays[position] is not None:
            raise InvalidInputError(f"request has input '{clip(name)}' twice")
        return position

    def decode(self, tensors: Sequence[InputTensor]) -> Decoded:
        """The validated inputs of a request, in the model's input order."""
        specs = self.inputs
        if len(specs) == 1 and len(tensors) == 1:
            # The common case (one input, sent right), without the bookkeeping of many.
            name, datatype, shape, data = tensors[0]
            spec = specs[0]
            if (name is None or name == spec.name) and datatype == spec.datatype.wire:
                rows = self.check_shape(shape, spec)
                array = to_array(data, spec.datatype, shape, spec.name)
                self.check_finite(array, spec)
                return Decoded([array], rows, (shape[1:],) if self.dynamic else None)
        if len(tensors) > len(specs):
            names = [clip(t.name) if t.name is not None else "(unnamed)" for t in tensors]
            raise InvalidInputError(
                f"request has inputs {names}; {self.model} expects {self.expected_names()}"
            )
        arrays: list[np.ndarray | None] = [None] * len(specs)
        rows_seen = [0] * len(specs)
        for name, datatype, shape, data in tensors:
            position = self._slot(name, arrays)
            spec = specs[position]
            if datatype != spec.datatype.wire:
                raise InvalidInputError(
                    f"input '{spec.name}' has datatype {clip(datatype) or '(empty)'}; "
                    f"{self.model} expects {spec.datatype.wire}"
                )
            rows_seen[position] = self.check_shape(shape, spec)
            array = to_array(data, spec.datatype, shape, spec.name)
            self.check_finite(array, spec)
            arrays[position] = array
        return self._finish(arrays, rows_seen)


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


def to_array(
    data: bytes | memoryview | np.ndarray | Sequence[object] | None,
    datatype: DataType,
    shape: Sequence[int],
    name: str,
) -> np.ndarray:
    """An array of ``shape`` from what a door received (see ``InputTensor.data``)."""
    if isinstance(data, bytes | memoryview):
        return from_bytes(data, datatype, shape, name)
    if data is None:
        raise InputDataError(name, datatype)
    if isinstance(data, np.ndarray) and not datatype.is_bytes:
        count = math.prod(shape)
        if data.size != count:
            raise InvalidInputError(
                f"input '{name}' has {data.size} values; shape {shape_text(shape)} needs {count}"
            )
        if data.dtype != datatype.numpy:
            raise InvalidInputError(
                f"input '{name}' holds {data.dtype.name} values; {datatype.wire} expected"
            )
        return data.reshape(shape)
    return from_values(data, datatype, shape, name)


class InputDataError(InvalidInputError):
    """An input whose encoding cannot carry its datatype (FP16 as typed values)."""

    def __init__(self, name: str, datatype: DataType) -> None:
        super().__init__(
            f"input '{name}' is {datatype.wire}, which cannot be sent as typed values; send "
            "its little-endian bytes (raw_input_contents, or a binary tensor over HTTP)"
        )


def from_values(
    values: Sequence[object] | np.ndarray, datatype: DataType, shape: Sequence[int], name: str
) -> np.ndarray:
    """An array of ``shape`` from typed values (KServe ``contents``, JSON ``data``)."""
    count = math.prod(shape)
    if isinstance(values, np.ndarray):
        values = values.reshape(-1)
    if len(values) != count:
        raise InvalidInputError(
            f"input '{name}' has {len(values)} values; shape {shape_text(shape)} needs {count}"
        )
    if datatype.is_bytes:
        elements = np.empty(count, dtype=object)
        for i, value in enumerate(values):
            elements[i] = _text(value, name, i)
        return elements.reshape(shape)
    try:
        return np.asarray(values, dtype=datatype.numpy).reshape(shape)
    except OverflowError as error:
        raise InvalidInputError(
            f"input '{name}' has a value outside the range of {datatype.wire}: {error}"
        ) from error
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"input '{name}' has values that are not {datatype.wire}: {clip(str(error))}"
        ) from error


def _text(value: object, name: str, index: int) -> str:
    """One BYTES element as the str ONNX Runtime's string tensors take."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInputError(
                f"input '{name}' BYTES element {index} is not UTF-8 ({error.reason} at byte "
                f"{error.start}); ONNX string tensors hold UTF-8 text"
            ) from error
    raise InvalidInputError(
        f"input '{name}' BYTES element {index} is {type(value).__name__}; expected a string"
    )


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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    if k == 1:
        return scores.argmax(axis=1)[:, None]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


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
