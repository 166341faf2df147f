"""Property-based tests of request decoding: untrusted bytes in, one outcome out.

For any Predict ``Tensor`` or KServe ``ModelInferRequest`` (well-formed, subtly wrong or
arbitrary), ``decode_predict`` / ``decode_kserve`` either return exactly the array that an
independent reference construction gives (same dtype, shape and values) or raise
InvalidInputError whose message names the input; never another exception.

The reference functions below restate the wire contract from protos/ directly, without
reusing serving.tensors. Written against today's single-input decoders; the multi-input
rework adapts them. Examples are bounded and derandomized (tests/conftest.py).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protos import grpc_service_pb2 as pb
from protos import predict_pb2
from serving.errors import InvalidInputError
from serving.tensors import TensorSpec, decode_kserve, decode_predict

MODEL = "model 'm' v1"
REFUSED = object()  # the reference's "must be refused"

# The wire's dtype names, restated (little-endian payloads).
PREDICT_WIRE = {
    predict_pb2.FLOAT32: np.dtype("<f4"),
    predict_pb2.FLOAT64: np.dtype("<f8"),
    predict_pb2.INT32: np.dtype("<i4"),
    predict_pb2.INT64: np.dtype("<i8"),
    predict_pb2.UINT8: np.dtype("u1"),
}
KSERVE_WIRE = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT8": (np.dtype("u1"), "uint_contents"),
    "BOOL": (np.dtype("?"), "bool_contents"),
}
SPEC_DTYPES = tuple(PREDICT_WIRE.values())
KSERVE_SPEC_DTYPES = tuple(dtype for dtype, _ in KSERVE_WIRE.values())
# Everything a typed contents field can hold, per datatype (the proto field's range).
TYPED_VALUES = {
    "FP32": st.floats(width=32),
    "FP64": st.floats(),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "UINT8": st.integers(0, 2**32 - 1),  # uint_contents is uint32 on the wire
    "BOOL": st.booleans(),
}


# -- specs and shapes -------------------------------------------------------------------


@st.composite
def specs(draw, dtypes: tuple[np.dtype, ...] = SPEC_DTYPES) -> TensorSpec:
    """A model input: dtype, batch first, then 0-3 dims each fixed (0-5) or free (-1)."""
    tail = draw(st.lists(st.one_of(st.integers(0, 5), st.just(-1)), max_size=3))
    return TensorSpec("input", draw(st.sampled_from(dtypes)), (-1, *tail))


def fitting_shape(spec: TensorSpec, rows: int, free: list[int]) -> tuple[int, ...]:
    dims = iter(free)
    return (rows, *(d if d >= 0 else next(dims) for d in spec.shape[1:]))


# Dimensions a hostile client can write: small, zero, negative, huge (int64 on the wire).
DIMS = st.one_of(
    st.integers(0, 6), st.integers(-3, -1), st.integers(2**31, 2**62), st.just(2**63 - 1)
)


def values_array(dtype: np.dtype, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    elements = None
    if dtype.kind == "f":  # NaN and Inf included, in both widths
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)
    return hnp.arrays(dtype, shape, elements=elements)


# -- the reference ----------------------------------------------------------------------


def reference_shape_check(shape: tuple[int, ...], spec: TensorSpec, max_rows: int) -> bool:
    if len(shape) != len(spec.shape) or any(d < 0 for d in shape):
        return False
    if any(want >= 0 and got != want for got, want in zip(shape, spec.shape, strict=True)):
        return False
    return shape[0] >= 1 and not (max_rows and shape[0] > max_rows)


def finite(array: np.ndarray) -> bool:
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def reference_predict(tensor: predict_pb2.Tensor, spec: TensorSpec, max_rows: int):
    dtype = PREDICT_WIRE.get(tensor.dtype)
    shape = tuple(tensor.shape)
    if dtype is None or dtype != spec.dtype or not reference_shape_check(shape, spec, max_rows):
        return REFUSED
    if len(tensor.data) != math.prod(shape) * dtype.itemsize:
        return REFUSED
    array = np.frombuffer(tensor.data, dtype).reshape(shape)
    return array if finite(array) else REFUSED


def reference_kserve(request: pb.ModelInferRequest, spec: TensorSpec, max_rows: int):
    if len(request.inputs) != 1 or request.inputs[0].name != spec.name:
        return REFUSED
    tensor = request.inputs[0]
    if tensor.datatype not in KSERVE_WIRE:
        return REFUSED
    dtype, field = KSERVE_WIRE[tensor.datatype]
    shape = tuple(tensor.shape)
    if dtype is None or dtype != spec.dtype or not reference_shape_check(shape, spec, max_rows):
        return REFUSED
    count = math.prod(shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            return REFUSED
        data = request.raw_input_contents[0]
        if len(data) != count * dtype.itemsize:
            return REFUSED
        array = np.frombuffer(data, dtype).reshape(shape)
    else:
        values = list(getattr(tensor.contents, field))
        if len(values) != count:
            return REFUSED
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and any(not info.min <= v <= info.max for v in values):
            return REFUSED  # a typed value the input's dtype cannot hold
        array = np.array(values, dtype=dtype).reshape(shape)
    return array if finite(array) else REFUSED


def assert_same_outcome(decode, reference, message, spec: TensorSpec, max_rows: int) -> None:
    want = reference(message, spec, max_rows)
    try:
        got = decode(message, spec, MODEL, max_rows)
    except InvalidInputError as error:
        assert want is REFUSED, f"refused a request the reference accepts: {error}"
        text = str(error)
        assert f"'{spec.name}'" in text or "request has" in text, text
        return
    assert want is not REFUSED, f"accepted a request the reference refuses: {message}"
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# -- Predict ----------------------------------------------------------------------------


@st.composite
def predict_tensors(draw, spec: TensorSpec) -> predict_pb2.Tensor:
    """Valid for ``spec`` about half the time; otherwise one or more fields are off."""
    rows = draw(st.integers(1, 4))
    free = draw(st.lists(st.integers(0, 4), min_size=3, max_size=3))
    shape = fitting_shape(spec, rows, free)
    wire = {v: k for k, v in PREDICT_WIRE.items()}[spec.dtype]
    array = draw(values_array(spec.dtype, shape))
    tensor = predict_pb2.Tensor(shape=shape, dtype=wire, data=array.tobytes())
    if draw(st.booleans()):
        return tensor
    change = draw(st.sets(st.sampled_from(["dtype", "shape", "data"]), min_size=1))
    if "dtype" in change:
        tensor.dtype = draw(st.one_of(st.sampled_from(list(PREDICT_WIRE)), st.integers(-5, 99)))
    if "shape" in change:
        tensor.ClearField("shape")
        tensor.shape.extend(draw(st.lists(DIMS, max_size=5)))
    if "data" in change:
        tensor.data = draw(
            st.one_of(st.binary(max_size=64), st.just(tensor.data[:-1]), st.just(tensor.data * 2))
        )
    return tensor


@given(data=st.data(), spec=specs(), max_rows=st.sampled_from([0, 1, 3, 64]))
def test_decode_predict_returns_the_reference_array_or_refuses_with_our_error(data, spec, max_rows):
    tensor = data.draw(predict_tensors(spec))
    assert_same_outcome(decode_predict, reference_predict, tensor, spec, max_rows)


@given(spec=specs(), shape=st.lists(DIMS, max_size=6), dtype=st.integers(-(2**31), 2**31 - 1),
       payload=st.binary(max_size=128))  # fmt: skip
def test_decode_predict_survives_arbitrary_fields(spec, shape, dtype, payload):
    tensor = predict_pb2.Tensor(shape=shape, dtype=dtype, data=payload)
    assert_same_outcome(decode_predict, reference_predict, tensor, spec, 64)


@given(spec=specs(), payload=st.binary(max_size=256))
def test_decode_predict_survives_arbitrary_serialized_bytes(spec, payload):
    tensor = predict_pb2.Tensor()
    try:
        tensor.ParseFromString(payload)
    except Exception:  # not a message at all: gRPC refuses it before our code runs
        return
    assert_same_outcome(decode_predict, reference_predict, tensor, spec, 64)


# -- KServe -----------------------------------------------------------------------------


@st.composite
def kserve_requests(draw, spec: TensorSpec) -> pb.ModelInferRequest:
    """Raw or typed contents, valid for ``spec`` about half the time."""
    rows = draw(st.integers(1, 4))
    free = draw(st.lists(st.integers(0, 4), min_size=3, max_size=3))
    shape = fitting_shape(spec, rows, free)
    datatype = {v[0]: k for k, v in KSERVE_WIRE.items()}[spec.dtype]
    array = draw(values_array(spec.dtype, shape))
    tensor = pb.ModelInferRequest.InferInputTensor(name=spec.name, datatype=datatype, shape=shape)
    request = pb.ModelInferRequest(model_name="m", inputs=[tensor])
    raw = draw(st.booleans())
    if raw:
        request.raw_input_contents.append(array.tobytes())
    else:
        field = KSERVE_WIRE[datatype][1]
        getattr(request.inputs[0].contents, field).extend(array.ravel().tolist())
    if draw(st.booleans()):
        return request
    change = draw(
        st.sets(st.sampled_from(["name", "datatype", "shape", "payload", "inputs"]), min_size=1)
    )
    target = request.inputs[0]
    if "name" in change:
        target.name = draw(st.sampled_from(["", "x", "input ", "INPUT"]))
    if "datatype" in change:
        target.datatype = draw(
            st.sampled_from([*KSERVE_WIRE, "", "FP16", "BYTES", "fp32", "UINT64"])
        )
    if "shape" in change:
        target.ClearField("shape")
        target.shape.extend(draw(st.lists(DIMS, max_size=5)))
    if "payload" in change:
        if raw:
            extra = draw(st.sampled_from(["short", "long", "second", "empty"]))
            if extra == "second":
                request.raw_input_contents.append(b"")
            else:
                data = {"short": array.tobytes()[:-1], "long": array.tobytes() + b"\0"}
                request.raw_input_contents[0] = data.get(extra, b"")
        else:  # values of the declared datatype's field: any value the field can hold,
            # either exactly as many as the shape needs (replacing them) or a few more
            field = KSERVE_WIRE.get(target.datatype, KSERVE_WIRE["FP32"])[1]
            kind = {v[1]: k for k, v in KSERVE_WIRE.items()}[field]
            values = getattr(target.contents, field)
            if draw(st.booleans()):
                count = math.prod(shape)
                del values[:]
                values.extend(draw(st.lists(TYPED_VALUES[kind], min_size=count, max_size=count)))
            else:
                values.extend(draw(st.lists(TYPED_VALUES[kind], max_size=6)))
    if "inputs" in change:
        request.inputs.add(name=draw(st.sampled_from(["input", "other"])), datatype="FP32")
    return request


@given(data=st.data(), spec=specs(KSERVE_SPEC_DTYPES), max_rows=st.sampled_from([0, 1, 3, 64]))
def test_decode_kserve_returns_the_reference_array_or_refuses_with_our_error(data, spec, max_rows):
    request = data.draw(kserve_requests(spec))
    assert_same_outcome(decode_kserve, reference_kserve, request, spec, max_rows)


@given(spec=specs(KSERVE_SPEC_DTYPES), payload=st.binary(max_size=256))
def test_decode_kserve_survives_arbitrary_serialized_bytes(spec, payload):
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(payload)
    except Exception:  # not a message at all: gRPC refuses it before our code runs
        return
    assert_same_outcome(decode_kserve, reference_kserve, request, spec, 64)


@given(
    datatype=st.sampled_from(list(KSERVE_WIRE)),
    rows=st.integers(1, 3),
    data=st.data(),
)
def test_typed_contents_of_every_datatype_decode_like_raw_bytes(datatype, rows, data):
    """The same values sent raw and typed give the same array, for every datatype."""
    dtype, field = KSERVE_WIRE[datatype]
    spec = TensorSpec("input", dtype, (-1, 2))
    elements = st.floats(width=8 * dtype.itemsize) if dtype.kind == "f" else None
    array = data.draw(hnp.arrays(dtype, (rows, 2), elements=elements))
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=[rows, 2])
    raw = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[array.tobytes()])
    typed = pb.ModelInferRequest(inputs=[tensor])
    getattr(typed.inputs[0].contents, field).extend(array.ravel().tolist())
    assert_same_outcome(decode_kserve, reference_kserve, raw, spec, 64)
    assert_same_outcome(decode_kserve, reference_kserve, typed, spec, 64)
    if finite(array):
        np.testing.assert_array_equal(
            decode_kserve(raw, spec, MODEL, 64), decode_kserve(typed, spec, MODEL, 64)
        )


@given(datatype=st.sampled_from(list(KSERVE_WIRE)), rows=st.integers(1, 3), data=st.data())
def test_typed_contents_take_any_value_their_field_can_carry(datatype, rows, data):
    """uint_contents is uint32 for a UINT8 input: values above 255 must be refused, not crash."""
    dtype, field = KSERVE_WIRE[datatype]
    spec = TensorSpec("input", dtype, (-1, 2))
    values = data.draw(st.lists(TYPED_VALUES[datatype], min_size=2 * rows, max_size=2 * rows))
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype, shape=[rows, 2])
    request = pb.ModelInferRequest(inputs=[tensor])
    getattr(request.inputs[0].contents, field).extend(values)
    assert_same_outcome(decode_kserve, reference_kserve, request, spec, 64)
