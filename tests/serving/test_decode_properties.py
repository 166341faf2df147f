"""Property-based tests of request decoding: untrusted bytes in, one outcome out.

For any ``PredictRequest`` or KServe ``ModelInferRequest`` (well-formed, subtly wrong or
arbitrary) and any model schema (one to three inputs of any KServe datatype, with or
without a batch dimension, fixed and free dims), ``RequestSchema.decode`` of the doors'
``request_inputs`` (Predict / KServe) either return exactly what an independent reference
construction gives
(the same arrays with the same dtypes, shapes and values, the same rows and batching key)
or raise InvalidInputError with a message; never another exception.

The reference functions below restate the wire contract from protos/ directly (type names,
typed contents fields, length-prefixed BYTES), without reusing serving.core.tensors. Examples are
bounded and derandomized (tests/conftest.py).
"""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from model_repository.datatypes import BY_WIRE
from protos import grpc_service_pb2 as pb
from protos import predict_pb2
from serving.core.tensors import Decoded, RequestSchema, TensorSpec
from serving.errors import InvalidInputError
from serving.grpc_api import kserve, predict


def kserve_decoder(schema: RequestSchema):
    """What the server does with a ModelInferRequest's inputs: the door, then the schema."""
    return lambda request: schema.decode(kserve.request_inputs(request))


def predict_decoder(schema: RequestSchema):
    return lambda request: schema.decode(predict.request_inputs(request))


MODEL = "model 'm' v1"
NAMES = ("input", "mask", "ids")


class Refused(Exception):
    """The reference's "must be refused"."""


# The wire, restated: KServe datatype -> (numpy dtype, typed contents field or None).
WIRE = {
    "BOOL": (np.dtype("?"), "bool_contents"),
    "UINT8": (np.dtype("u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), None),  # raw only
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "BYTES": (np.dtype(object), "bytes_contents"),
}
PREDICT_WIRE = {
    predict_pb2.FLOAT32: "FP32",
    predict_pb2.FLOAT64: "FP64",
    predict_pb2.FLOAT16: "FP16",
    predict_pb2.INT8: "INT8",
    predict_pb2.INT16: "INT16",
    predict_pb2.INT32: "INT32",
    predict_pb2.INT64: "INT64",
    predict_pb2.UINT8: "UINT8",
    predict_pb2.UINT16: "UINT16",
    predict_pb2.UINT32: "UINT32",
    predict_pb2.UINT64: "UINT64",
    predict_pb2.BOOL: "BOOL",
    predict_pb2.BYTES: "BYTES",
}
PREDICT_OF = {wire: value for value, wire in PREDICT_WIRE.items()}
# Everything a typed contents field can hold (the proto field's range).
FIELD_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.one_of(st.text(max_size=4).map(str.encode), st.binary(max_size=4)),
}
FIELD_OF_ANY = {field: wire for wire, (_, field) in WIRE.items() if field}

# Dimensions a hostile client can write: small, zero, negative, huge (int64 on the wire).
DIMS = st.one_of(
    st.integers(0, 6), st.integers(-3, -1), st.integers(2**31, 2**62), st.just(2**63 - 1)
)


def hostile_shapes(shape: tuple[int, ...]) -> st.SearchStrategy[list[int]]:
    """Any list of dims, or ``shape`` with one dim replaced (same rank: past the rank check)."""
    arbitrary = st.lists(DIMS, max_size=5)
    if not shape:
        return arbitrary
    replaced = st.tuples(st.integers(0, len(shape) - 1), DIMS).map(
        lambda pair: [pair[1] if i == pair[0] else d for i, d in enumerate(shape)]
    )
    return st.one_of(arbitrary, replaced)


# -- schemas ----------------------------------------------------------------------------


@st.composite
def schemas(draw, wires: tuple[str, ...] = tuple(WIRE), max_inputs: int = 3) -> RequestSchema:
    """1-``max_inputs`` inputs of any datatype; 0-3 dims each fixed (0-5) or free (-1)."""
    count = draw(st.integers(1, max_inputs))
    batched = draw(st.booleans())
    inputs = []
    for name in NAMES[:count]:
        tail = draw(st.lists(st.one_of(st.integers(0, 5), st.just(-1)), max_size=3))
        shape = (-1, *tail) if batched else tuple(tail)
        inputs.append(TensorSpec(name, BY_WIRE[draw(st.sampled_from(wires))], shape))
    max_rows = draw(st.sampled_from([1, 3, 64])) if batched else 0
    return RequestSchema(MODEL, tuple(inputs), batched, max_rows, finite=draw(st.booleans()))


def fitting_shape(spec: TensorSpec, batched: bool, rows: int, free: list[int]) -> tuple[int, ...]:
    dims = iter(free)
    shape = tuple(d if d >= 0 else next(dims) for d in spec.shape)
    return (rows, *shape[1:]) if batched else shape


def values_array(wire: str, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    dtype = WIRE[wire][0]
    if wire == "BYTES":  # text, mostly; sometimes bytes that are not UTF-8
        element = st.one_of(st.text(max_size=5).map(str.encode), st.binary(max_size=5))
        return st.lists(element, min_size=math.prod(shape), max_size=math.prod(shape)).map(
            lambda items: np.array([*items, None], dtype=object)[:-1].reshape(shape)
        )
    elements = None
    if dtype.kind == "f":  # NaN and Inf included, in every width
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)
    return hnp.arrays(dtype, shape, elements=elements)


def raw_bytes(array: np.ndarray) -> bytes:
    """The wire form: little-endian values, or 4-byte length + bytes per BYTES element."""
    if array.dtype.kind == "O":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return array.tobytes()


def typed_values(array: np.ndarray) -> list:
    return list(array.reshape(-1)) if array.dtype.kind == "O" else array.ravel().tolist()


# -- the reference ----------------------------------------------------------------------


def reference_rows(shape: tuple[int, ...], spec: TensorSpec, schema: RequestSchema) -> int:
    if len(shape) != len(spec.shape) or any(d < 0 for d in shape):
        raise Refused
    if any(want >= 0 and got != want for got, want in zip(shape, spec.shape, strict=True)):
        raise Refused
    if not schema.batched:
        return 1
    if not 1 <= shape[0] <= schema.max_rows:
        raise Refused
    return shape[0]


def reference_bytes_elements(data: bytes, count: int) -> np.ndarray:
    texts, position = [], 0
    for _ in range(count):  # at most len(data) / 4 rounds: each element takes 4 bytes
        if position + 4 > len(data):
            raise Refused
        length = int.from_bytes(data[position : position + 4], "little")
        position += 4
        if position + length > len(data):
            raise Refused
        try:
            texts.append(data[position : position + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise Refused from None
        position += length
    if position != len(data):
        raise Refused
    elements = np.empty(count, dtype=object)
    elements[:] = texts
    return elements


def reference_from_raw(data: bytes, wire: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = WIRE[wire][0]
    if wire == "BYTES":
        return reference_bytes_elements(data, math.prod(shape)).reshape(shape)
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise Refused
    return np.frombuffer(data, dtype).reshape(shape)


def reference_from_typed(contents: pb.InferTensorContents, wire: str, shape) -> np.ndarray:
    dtype, field = WIRE[wire]
    if field is None:
        raise Refused
    values = list(getattr(contents, field))
    if len(values) != math.prod(shape):
        raise Refused
    if wire == "BYTES":
        return reference_bytes_elements(
            raw_bytes(np.array([*values, b""], object)[:-1]), len(values)
        ).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if any(not info.min <= v <= info.max for v in values):
            raise Refused  # a typed value the input's dtype cannot hold
    return np.array(values, dtype=dtype).reshape(shape)


def reference_finite(array: np.ndarray, schema: RequestSchema) -> np.ndarray:
    if schema.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise Refused
    return array


def reference_result(schema: RequestSchema, arrays: dict[str, np.ndarray], rows: dict) -> Decoded:
    if set(arrays) != {s.name for s in schema.inputs}:
        raise Refused  # an input is missing
    if schema.batched and len(set(rows.values())) > 1:
        raise Refused
    ordered = [arrays[s.name] for s in schema.inputs]
    skip = 1 if schema.batched else 0
    dynamic = any(d < 0 for s in schema.inputs for d in s.shape[skip:])
    key = tuple(a.shape[1:] for a in ordered) if dynamic else None
    return Decoded(ordered, rows[schema.inputs[0].name] if schema.batched else 1, key)


def reference_predict(request: predict_pb2.PredictRequest, schema: RequestSchema) -> Decoded:
    if request.inputs:
        if request.HasField("input"):
            raise Refused
        named = list(request.inputs.items())
    elif len(schema.inputs) == 1:
        named = [(schema.inputs[0].name, request.input)]
    else:
        raise Refused
    specs = {s.name: s for s in schema.inputs}
    arrays, rows = {}, {}
    for name, tensor in named:
        spec = specs.get(name)
        if spec is None or PREDICT_WIRE.get(tensor.dtype) != spec.datatype.wire:
            raise Refused
        shape = tuple(tensor.shape)
        rows[name] = reference_rows(shape, spec, schema)
        arrays[name] = reference_finite(
            reference_from_raw(tensor.data, spec.datatype.wire, shape), schema
        )
    return reference_result(schema, arrays, rows)


def reference_kserve(request: pb.ModelInferRequest, schema: RequestSchema) -> Decoded:
    tensors = list(request.inputs)
    raw = list(request.raw_input_contents)
    if len(tensors) != len(schema.inputs) or (raw and len(raw) != len(tensors)):
        raise Refused
    specs = {s.name: s for s in schema.inputs}
    arrays, rows = {}, {}
    for number, tensor in enumerate(tensors):
        spec = specs.get(tensor.name)
        if spec is None or tensor.name in arrays or tensor.datatype != spec.datatype.wire:
            raise Refused
        shape = tuple(tensor.shape)
        rows[tensor.name] = reference_rows(shape, spec, schema)
        if raw:
            array = reference_from_raw(raw[number], tensor.datatype, shape)
        else:
            array = reference_from_typed(tensor.contents, tensor.datatype, shape)
        arrays[tensor.name] = reference_finite(array, schema)
    return reference_result(schema, arrays, rows)


def assert_same_outcome(decode, reference, message, schema: RequestSchema) -> Decoded | None:
    try:
        want = reference(message, schema)
    except Refused:
        want = None
    try:
        got = decode(message)
    except InvalidInputError as error:
        assert want is None, f"refused a request the reference accepts: {error}"
        assert str(error), "an error without a message"
        return None
    assert want is not None, f"accepted a request the reference refuses: {message}"
    assert len(got.arrays) == len(want.arrays)
    for have, expected in zip(got.arrays, want.arrays, strict=True):
        assert (have.dtype, have.shape) == (expected.dtype, expected.shape)
        if expected.dtype.kind == "O":
            assert have.tolist() == expected.tolist()
            assert all(type(v) is str for v in have.reshape(-1))
        else:
            np.testing.assert_array_equal(have, expected)
    assert got.rows == want.rows
    if schema.batched:  # the key only decides which requests may share a batch
        assert got.key == want.key
    return got


# -- well-formed requests, then broken ones ---------------------------------------------


@st.composite
def request_arrays(draw, schema: RequestSchema) -> list[np.ndarray]:
    """Arrays that fit ``schema``: the same rows for every input."""
    rows = draw(st.integers(1, 4))
    arrays = []
    for spec in schema.inputs:
        free = draw(st.lists(st.integers(0, 3), min_size=4, max_size=4))
        shape = fitting_shape(spec, schema.batched, rows, free)
        arrays.append(draw(values_array(spec.datatype.wire, shape)))
    return arrays


@st.composite
def predict_requests(draw, schema: RequestSchema) -> predict_pb2.PredictRequest:
    """Valid for ``schema`` about half the time; otherwise one or more parts are off."""
    arrays = draw(request_arrays(schema))
    tensors = {
        spec.name: predict_pb2.Tensor(
            shape=array.shape, dtype=PREDICT_OF[spec.datatype.wire], data=raw_bytes(array)
        )
        for spec, array in zip(schema.inputs, arrays, strict=True)
    }
    request = predict_pb2.PredictRequest(model="m")
    if len(tensors) == 1 and draw(st.booleans()):
        request.input.CopyFrom(next(iter(tensors.values())))
    else:
        for name, tensor in tensors.items():
            request.inputs[name].CopyFrom(tensor)
    if draw(st.booleans()):
        return request
    targets = [request.input] if request.HasField("input") else list(request.inputs.values())
    target = draw(st.sampled_from(targets))
    change = draw(st.sets(st.sampled_from(["dtype", "shape", "data", "names", "both"]), min_size=1))
    if "dtype" in change:
        target.dtype = draw(st.one_of(st.sampled_from(list(PREDICT_WIRE)), st.integers(-5, 99)))
    if "shape" in change:
        shape = draw(hostile_shapes(tuple(target.shape)))
        target.ClearField("shape")
        target.shape.extend(shape)
    if "data" in change:
        data = target.data
        target.data = draw(
            st.one_of(
                st.binary(max_size=64),
                st.just(data[:-1]),
                st.just(data * 2),
                st.just(data + b"\0"),
                st.just(data[:4]),
            )
        )
    if "names" in change:
        if request.inputs:
            action = draw(st.sampled_from(["drop", "extra"]))
            if action == "drop":
                del request.inputs[draw(st.sampled_from(sorted(request.inputs)))]
            else:
                request.inputs[draw(st.sampled_from(["other", "INPUT", ""]))].CopyFrom(target)
        else:
            request.ClearField("input")
    if "both" in change:
        source = next(iter(tensors.values()))
        request.input.CopyFrom(source)
        request.inputs[schema.inputs[0].name].CopyFrom(source)
    return request


@st.composite
def kserve_requests(draw, schema: RequestSchema) -> pb.ModelInferRequest:
    """Raw or typed contents, valid for ``schema`` about half the time."""
    arrays = draw(request_arrays(schema))
    raw = draw(st.booleans()) or any(s.datatype.wire == "FP16" for s in schema.inputs)
    request = pb.ModelInferRequest(model_name="m")
    order = draw(st.permutations(range(len(arrays))))  # any order of the inputs
    for index in order:
        spec, array = schema.inputs[index], arrays[index]
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype.wire, shape=array.shape)
        if raw:
            request.raw_input_contents.append(raw_bytes(array))
        else:
            getattr(tensor.contents, WIRE[spec.datatype.wire][1]).extend(typed_values(array))
    if draw(st.booleans()):
        return request
    change = draw(
        st.sets(
            st.sampled_from(["name", "datatype", "shape", "payload", "inputs", "raw_count"]),
            min_size=1,
        )
    )
    number = draw(st.integers(0, len(request.inputs) - 1))
    target = request.inputs[number]
    if "name" in change:
        target.name = draw(st.sampled_from(["", "x", "input ", "INPUT", *NAMES]))
    if "datatype" in change:
        target.datatype = draw(st.sampled_from([*WIRE, "", "fp32", "STRING", "BF16"]))
    if "shape" in change:
        shape = draw(hostile_shapes(tuple(target.shape)))
        target.ClearField("shape")
        target.shape.extend(shape)
    if "payload" in change:
        if raw:
            data = request.raw_input_contents[number]
            request.raw_input_contents[number] = draw(
                st.one_of(
                    st.binary(max_size=32),
                    st.just(data[:-1]),
                    st.just(data + b"\0"),
                    st.just(data * 2),
                    st.just(b""),
                )
            )
        else:  # values of some typed field: any value the field can hold, either exactly
            # as many as the shape needs (replacing them) or a few more
            field = draw(st.sampled_from(sorted(FIELD_VALUES)))
            values = getattr(target.contents, field)
            if draw(st.booleans()):
                count = max(0, min(math.prod(target.shape), 8))
                del values[:]
                values.extend(draw(st.lists(FIELD_VALUES[field], min_size=count, max_size=count)))
            else:
                values.extend(draw(st.lists(FIELD_VALUES[field], max_size=4)))
    if "inputs" in change:
        if draw(st.booleans()):
            extra = request.inputs.add(name=draw(st.sampled_from([*NAMES, "other"])))
            extra.datatype = "FP32"
            extra.shape.extend([1, 1])
            if raw:
                request.raw_input_contents.append(b"\0\0\0\0")
        else:
            del request.inputs[number]
            if raw:
                del request.raw_input_contents[number]
    if "raw_count" in change:
        if raw:
            request.raw_input_contents.append(b"")
        else:
            request.raw_input_contents.append(b"\0" * 4)
    return request


# -- Predict ----------------------------------------------------------------------------


@given(data=st.data(), schema=schemas())
def test_decode_predict_returns_the_reference_arrays_or_refuses_with_our_error(data, schema):
    request = data.draw(predict_requests(schema))
    assert_same_outcome(predict_decoder(schema), reference_predict, request, schema)


@given(
    schema=schemas(max_inputs=1),
    shape=st.lists(DIMS, max_size=6),
    dtype=st.integers(-(2**31), 2**31 - 1),
    payload=st.binary(max_size=128),
)
def test_decode_predict_survives_arbitrary_fields(schema, shape, dtype, payload):
    tensor = predict_pb2.Tensor(shape=shape, dtype=dtype, data=payload)
    request = predict_pb2.PredictRequest(input=tensor)
    assert_same_outcome(predict_decoder(schema), reference_predict, request, schema)


@given(schema=schemas(), payload=st.binary(max_size=256))
def test_decode_predict_survives_arbitrary_serialized_bytes(schema, payload):
    request = predict_pb2.PredictRequest()
    try:
        request.ParseFromString(payload)
    except Exception:  # not a message at all: gRPC refuses it before our code runs
        return
    assert_same_outcome(predict_decoder(schema), reference_predict, request, schema)


# -- KServe -----------------------------------------------------------------------------


@given(data=st.data(), schema=schemas())
def test_decode_kserve_returns_the_reference_arrays_or_refuses_with_our_error(data, schema):
    request = data.draw(kserve_requests(schema))
    assert_same_outcome(kserve_decoder(schema), reference_kserve, request, schema)


@given(schema=schemas(), payload=st.binary(max_size=256))
def test_decode_kserve_survives_arbitrary_serialized_bytes(schema, payload):
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(payload)
    except Exception:  # not a message at all: gRPC refuses it before our code runs
        return
    assert_same_outcome(kserve_decoder(schema), reference_kserve, request, schema)


@given(
    wire=st.sampled_from([w for w, (_, field) in WIRE.items() if field]),
    rows=st.integers(1, 3),
    data=st.data(),
)
def test_typed_contents_of_every_datatype_decode_like_raw_bytes(wire, rows, data):
    """The same values sent raw and typed give the same array, for every datatype."""
    schema = RequestSchema(
        MODEL, (TensorSpec("input", BY_WIRE[wire], (-1, 2)),), True, 64, finite=False
    )
    array = data.draw(values_array(wire, (rows, 2)))
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=wire, shape=[rows, 2])
    raw = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[raw_bytes(array)])
    typed = pb.ModelInferRequest(inputs=[tensor])
    getattr(typed.inputs[0].contents, WIRE[wire][1]).extend(typed_values(array))
    from_raw = assert_same_outcome(kserve_decoder(schema), reference_kserve, raw, schema)
    from_typed = assert_same_outcome(kserve_decoder(schema), reference_kserve, typed, schema)
    assert (from_raw is None) == (from_typed is None)  # BYTES that are not UTF-8: both refuse
    if from_raw is not None and from_typed is not None:
        assert from_raw.arrays[0].dtype == from_typed.arrays[0].dtype
        np.testing.assert_array_equal(from_raw.arrays[0], from_typed.arrays[0])  # NaN == NaN


@given(field=st.sampled_from(sorted(FIELD_VALUES)), rows=st.integers(1, 3), data=st.data())
def test_typed_contents_take_any_value_their_field_can_carry(field, rows, data):
    """uint_contents is uint32 for a UINT8 input: values above 255 must be refused, not crash."""
    wire = data.draw(st.sampled_from([w for w, (_, f) in WIRE.items() if f == field]))
    schema = RequestSchema(
        MODEL, (TensorSpec("input", BY_WIRE[wire], (-1, 2)),), True, 64, finite=True
    )
    values = data.draw(st.lists(FIELD_VALUES[field], min_size=2 * rows, max_size=2 * rows))
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=wire, shape=[rows, 2])
    request = pb.ModelInferRequest(inputs=[tensor])
    getattr(request.inputs[0].contents, field).extend(values)
    assert_same_outcome(kserve_decoder(schema), reference_kserve, request, schema)


@given(schema=schemas(), data=st.data())
def test_valid_requests_decode_the_same_on_both_apis(schema, data):
    """The arrays a well-formed request carries come back, whichever API carried them."""
    arrays = data.draw(request_arrays(schema))
    kserve = pb.ModelInferRequest()
    predict = predict_pb2.PredictRequest()
    for spec, array in zip(schema.inputs, arrays, strict=True):
        kserve.inputs.add(name=spec.name, datatype=spec.datatype.wire, shape=array.shape)
        kserve.raw_input_contents.append(raw_bytes(array))
        predict.inputs[spec.name].CopyFrom(
            predict_pb2.Tensor(
                shape=array.shape, dtype=PREDICT_OF[spec.datatype.wire], data=raw_bytes(array)
            )
        )
    one = assert_same_outcome(kserve_decoder(schema), reference_kserve, kserve, schema)
    other = assert_same_outcome(predict_decoder(schema), reference_predict, predict, schema)
    assert (one is None) == (other is None)
    if one is not None and other is not None:
        assert (one.rows, one.key) == (other.rows, other.key)


@given(
    wire=st.sampled_from(list(WIRE)),
    rows=st.integers(1, 3),
    claimed=DIMS,
    payload=st.binary(max_size=64),
    raw=st.booleans(),
)
def test_a_free_dimension_claiming_more_elements_than_the_payload_holds_is_refused(
    wire, rows, claimed, payload, raw
):
    """A few bytes cannot make the server allocate for 2**62 elements (BYTES included)."""
    schema = RequestSchema(
        MODEL, (TensorSpec("input", BY_WIRE[wire], (-1, -1)),), True, 64, finite=True
    )
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input", datatype=wire, shape=[rows, claimed]
    )
    request = pb.ModelInferRequest(inputs=[tensor])
    if raw:
        request.raw_input_contents.append(payload)
    elif WIRE[wire][1] == "bytes_contents":
        request.inputs[0].contents.bytes_contents.extend([payload] * rows)
    predict = predict_pb2.PredictRequest(
        input=predict_pb2.Tensor(shape=[rows, claimed], dtype=PREDICT_OF[wire], data=payload)
    )
    assert_same_outcome(kserve_decoder(schema), reference_kserve, request, schema)
    assert_same_outcome(predict_decoder(schema), reference_predict, predict, schema)
