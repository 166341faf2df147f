"""Decoding and validation of request tensors, and the top-k encoding."""

from __future__ import annotations

import numpy as np
import pytest

from model_repository.datatypes import BY_NUMPY, BY_WIRE
from protos import grpc_service_pb2 as pb
from protos import predict_pb2
from serving.core.tensors import (
    RequestSchema,
    TensorSpec,
    classification_strings,
    encode_bytes,
    from_bytes,
    requested_outputs,
    to_bytes,
)
from serving.core.tensors import top_k as top_k_indices
from serving.errors import InvalidInputError
from serving.grpc_api import kserve as kserve_door
from serving.grpc_api import predict as predict_door
from serving.grpc_api.kserve import CONTENTS_FIELD
from serving.grpc_api.predict_tensors import (
    PREDICT_DTYPE_OF,
    add_top_k,
    array_from_predict,
    fill_predict_tensor,
)

IMAGE = TensorSpec("input", BY_WIRE["FP32"], (-1, 1, 8, 8))
MODEL = "model 'mlp' v1"
SCHEMA = RequestSchema(MODEL, (IMAGE,), batched=True, max_rows=64, finite=True)


def decode_kserve_with(schema: RequestSchema, request: pb.ModelInferRequest):
    return schema.decode(kserve_door.request_inputs(request))


def decode_predict_with(schema: RequestSchema, request: predict_pb2.PredictRequest):
    return schema.decode(predict_door.request_inputs(request))


def schema_of(spec: TensorSpec | RequestSchema) -> RequestSchema:
    if isinstance(spec, RequestSchema):
        return spec
    return RequestSchema(MODEL, (spec,), batched=True, max_rows=64, finite=True)


def decode_predict(
    message: predict_pb2.Tensor, spec: TensorSpec | RequestSchema = SCHEMA
) -> np.ndarray:
    decoded = decode_predict_with(
        schema_of(spec), predict_pb2.PredictRequest(model="mlp", input=message)
    )
    assert decoded.rows == decoded.arrays[0].shape[0]
    return decoded.arrays[0]


def decode_kserve(
    request: pb.ModelInferRequest, spec: TensorSpec | RequestSchema = SCHEMA
) -> np.ndarray:
    return decode_kserve_with(schema_of(spec), request).arrays[0]


def tensor(array: np.ndarray, dtype: int = predict_pb2.FLOAT32, shape=None) -> predict_pb2.Tensor:
    return predict_pb2.Tensor(
        shape=array.shape if shape is None else shape, dtype=dtype, data=array.tobytes()
    )


def images(rows: int) -> np.ndarray:
    return np.arange(rows * 64, dtype=np.float32).reshape(rows, 1, 8, 8) / 100


def test_valid_input_is_read_without_a_copy() -> None:
    message = tensor(images(3))
    array = decode_predict(message)
    np.testing.assert_array_equal(array, images(3))
    assert not array.flags.owndata  # a view on the request's bytes


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            tensor(images(1).astype(np.float64), predict_pb2.FLOAT64),
            "has datatype FP64; model 'mlp' v1 expects FP32",
        ),
        (
            tensor(images(1), predict_pb2.DATA_TYPE_UNSPECIFIED),
            "has datatype DATA_TYPE_UNSPECIFIED; model 'mlp' v1 expects FP32",
        ),
        (
            tensor(images(3).reshape(3, 64)),
            r"has shape \[3, 64\]; model 'mlp' v1 expects \[batch, 1, 8, 8\]",
        ),
        (
            tensor(images(2).reshape(2, 1, 4, 16)),
            r"has shape \[2, 1, 4, 16\]; model 'mlp' v1 expects \[batch, 1, 8, 8\]",
        ),
        (tensor(images(1), shape=(2, 1, 8, 8)), "has 256 bytes of data; shape .* needs 512"),
        (tensor(np.zeros((0, 1, 8, 8), np.float32)), "empty batch"),
        (tensor(images(65)), "has 65 rows; model 'mlp' v1 accepts at most 64"),
    ],
)
def test_invalid_inputs_name_what_was_received_and_expected(
    message: predict_pb2.Tensor, expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        decode_predict(message)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_their_position(bad: float) -> None:
    array = images(2)
    array[1, 0, 3, 4] = bad
    with pytest.raises(
        InvalidInputError, match=r"1 NaN/Inf values \(first at index \[1, 0, 3, 4\]\)"
    ):
        decode_predict(tensor(array))


def test_huge_finite_values_whose_sum_overflows_are_accepted() -> None:
    array = np.full((1, 1, 8, 8), 3e38, dtype=np.float32)
    array[0, 0, 0, 0] = -3e38  # finite extremes of both signs
    decoded = decode_predict(tensor(array))
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.float32 and decoded.shape == (1, 1, 8, 8)


def test_nan_passes_for_models_that_do_not_refuse_it() -> None:
    generic = RequestSchema(MODEL, (IMAGE,), batched=True, max_rows=64, finite=False)
    array = images(1)
    array[0, 0, 0, 0] = np.nan
    np.testing.assert_array_equal(decode_predict(tensor(array), generic), array)


def kserve(array: np.ndarray, *, raw: bool = True, name: str = "input", datatype: str = "FP32"):
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    request = pb.ModelInferRequest(model_name="mlp", inputs=[tensor])
    if raw:
        request.raw_input_contents.append(array.tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(array.ravel().tolist())
    return request


def test_kserve_raw_and_typed_contents_decode_to_the_same_array() -> None:
    raw = decode_kserve(kserve(images(2)))
    typed = decode_kserve(kserve(images(2), raw=False))
    np.testing.assert_array_equal(raw, typed)
    np.testing.assert_array_equal(raw, images(2))


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            kserve(images(1), name="x"),
            r"request has input 'x'; model 'mlp' v1 expects 'input'",
        ),
        (kserve(images(1), datatype="FP64"), "has datatype FP64; model 'mlp' v1 expects FP32"),
        (kserve(images(1)[:, :, :4], raw=False), r"has shape \[1, 1, 4, 8\]"),
        (
            pb.ModelInferRequest(
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(
                        name="input", datatype="FP32", shape=[1, 1, 8, 8]
                    )
                ]
            ),
            r"has 0 values; shape .* needs 64",
        ),
    ],
)
def test_invalid_kserve_requests_are_refused(request_, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        decode_kserve(request_)


def test_kserve_with_two_raw_buffers_is_refused() -> None:
    request = kserve(images(1))
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidInputError, match="2 raw_input_contents entries for 1 inputs"):
        decode_kserve(request)


def top_k(probabilities: np.ndarray, k: int, labels: tuple[str, ...]):
    response = predict_pb2.PredictResponse()
    add_top_k(response.top_k, probabilities, k, labels)
    return response.top_k


def test_top_k_rows_are_best_first_with_labels() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    labels = ("a", "b", "c")
    top1 = top_k(probabilities, 1, labels)
    assert [[c.label for c in row.classes] for row in top1] == [["b"], ["a"]]
    top2 = top_k(probabilities, 2, labels)
    assert [[c.index for c in row.classes] for row in top2] == [[1, 2], [0, 2]]
    assert top2[0].classes[0].score == pytest.approx(0.7)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_matches_a_full_sort_for_every_row(k: int) -> None:
    probabilities = np.random.default_rng(k).random((64, 10), dtype=np.float32)
    labels = tuple(f"class-{i}" for i in range(10))
    rows = top_k(probabilities, k, labels)
    assert len(rows) == 64
    for row, expected in zip(rows, probabilities, strict=True):
        best = np.argsort(-expected, kind="stable")[:k].tolist()
        assert [c.index for c in row.classes] == best
        assert [c.label for c in row.classes] == [labels[i] for i in best]
        assert [c.score for c in row.classes] == expected[best].tolist()


# -- any model: several inputs, every type, no batch dimension -------------------------

PAIR = RequestSchema(
    "model 'pair' v1",
    (
        TensorSpec("x", BY_WIRE["FP32"], (-1, 4)),
        TensorSpec("k", BY_WIRE["INT64"], (-1, 1)),
    ),
    batched=True,
    max_rows=16,
    finite=False,
)


def infer_input(
    name: str, array: np.ndarray, datatype: str
) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)


def pair_request(x: np.ndarray, k: np.ndarray, order: tuple[str, ...] = ("x", "k")):
    arrays = {"x": (x, "FP32"), "k": (k, "INT64")}
    return pb.ModelInferRequest(
        inputs=[infer_input(name, arrays[name][0], arrays[name][1]) for name in order],
        raw_input_contents=[arrays[name][0].tobytes() for name in order],
    )


def test_inputs_come_back_in_the_model_order_whatever_the_request_order() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    k = np.array([[3], [4]], dtype=np.int64)
    decoded = decode_kserve_with(PAIR, pair_request(x, k, order=("k", "x")))
    assert decoded.rows == 2 and decoded.key is None
    np.testing.assert_array_equal(decoded.arrays[0], x)
    np.testing.assert_array_equal(decoded.arrays[1], k)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            pair_request(np.zeros((2, 4), np.float32), np.zeros((3, 1), np.int64)),
            r"different batch sizes \{'x': 2, 'k': 3\}",
        ),
        (
            pb.ModelInferRequest(
                inputs=[infer_input("x", np.zeros((1, 4)), "FP32")],
                raw_input_contents=[np.zeros((1, 4), np.float32).tobytes()],
            ),
            r"request lacks input\(s\) \['k'\]; model 'pair' v1 expects 'x', 'k'",
        ),
        (
            pb.ModelInferRequest(
                inputs=[infer_input("x", np.zeros((1, 4)), "FP32")] * 2,
                raw_input_contents=[np.zeros((1, 4), np.float32).tobytes()] * 2,
            ),
            "request has input 'x' twice",
        ),
    ],
)
def test_multi_input_requests_must_name_every_input_once_with_equal_rows(
    request_, expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        decode_kserve_with(PAIR, request_)


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [True, False]),
        ("INT8", [-128, 127]),
        ("INT16", [-32768, 32767]),
        ("INT32", [-(2**31), 2**31 - 1]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("UINT8", [0, 255]),
        ("UINT16", [0, 65535]),
        ("UINT32", [0, 2**32 - 1]),
        ("UINT64", [0, 2**64 - 1]),
        ("FP32", [-1.5, 2.25]),
        ("FP64", [-1.5, 1e300]),
        ("FP16", [0.5, -2.0]),
    ],
)
def test_every_numeric_type_decodes_raw_and_typed_to_the_same_values(
    datatype: str, values: list
) -> None:
    kind = BY_WIRE[datatype]
    schema = RequestSchema("m", (TensorSpec("t", kind, (-1, 2)),), True, 4, finite=False)
    expected = np.array([values], dtype=kind.numpy)
    raw = pb.ModelInferRequest(
        inputs=[infer_input("t", expected, datatype)], raw_input_contents=[expected.tobytes()]
    )
    np.testing.assert_array_equal(decode_kserve_with(schema, raw).arrays[0], expected)
    assert decode_kserve_with(schema, raw).arrays[0].dtype == kind.numpy
    typed = pb.ModelInferRequest(inputs=[infer_input("t", expected, datatype)])
    if datatype == "FP16":  # no typed field in the protocol: raw only
        with pytest.raises(InvalidInputError, match="cannot be sent as typed values"):
            decode_kserve_with(schema, typed)
        return
    getattr(typed.inputs[0].contents, CONTENTS_FIELD[datatype]).extend(values)
    np.testing.assert_array_equal(decode_kserve_with(schema, typed).arrays[0], expected)


def test_typed_integers_out_of_range_are_refused() -> None:
    schema = RequestSchema("m", (TensorSpec("t", BY_WIRE["INT8"], (-1, 1)),), True, 4, False)
    request = pb.ModelInferRequest(inputs=[infer_input("t", np.zeros((1, 1)), "INT8")])
    request.inputs[0].contents.int_contents.append(300)
    with pytest.raises(InvalidInputError, match="outside the range of INT8"):
        decode_kserve_with(schema, request)


def test_bytes_elements_round_trip_and_bad_lengths_are_refused() -> None:
    words = np.array([[b"a"], [b""], ["\u00e9t\u00e9".encode()]], dtype=object)
    data = encode_bytes(words)
    assert data[:5] == b"\x01\x00\x00\x00a"
    decoded = from_bytes(data, BY_WIRE["BYTES"], (3, 1), "text")
    assert decoded.tolist() == [["a"], [""], ["\u00e9t\u00e9"]]
    with pytest.raises(InvalidInputError, match="element 2 claims 5 bytes; only 4 remain"):
        from_bytes(data[:-1], BY_WIRE["BYTES"], (3, 1), "text")
    with pytest.raises(
        InvalidInputError,
        match=r"^input 'text' has 9 bytes of BYTES data; 3 elements need at least 12 ",
    ):
        from_bytes(data[:9], BY_WIRE["BYTES"], (3, 1), "text")
    long_first = encode_bytes(np.array([b"abcd", b""], dtype=object))  # 12 bytes, 2 elements
    with pytest.raises(
        InvalidInputError,
        match=r"^input 'text' BYTES data ends after 2 of 3 elements; each element is a 4-byte "
        r"little-endian length and that many bytes$",
    ):
        from_bytes(long_first, BY_WIRE["BYTES"], (3, 1), "text")
    assert from_bytes(b"\0" * 12, BY_WIRE["BYTES"], (3,), "text").tolist() == ["", "", ""]
    with pytest.raises(InvalidInputError, match="1 bytes after its 3 BYTES elements"):
        from_bytes(data + b"x", BY_WIRE["BYTES"], (3, 1), "text")


def test_a_bytes_shape_larger_than_its_data_is_refused_before_allocating() -> None:
    """Found by the decoding properties: a 20-byte request claiming [1, 2**31] BYTES elements
    made the server allocate 16 GiB of object pointers (OOM-killed), [1, 2**40] raised
    MemoryError and [1, 2**62] ValueError instead of InvalidInputError."""
    schema = RequestSchema("m", (TensorSpec("t", BY_WIRE["BYTES"], (-1, -1)),), True, 4, False)
    for claimed in (2**31, 2**40, 2**62):
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="t", datatype="BYTES", shape=[1, claimed]
        )
        request = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[b"\0" * 20])
        with pytest.raises(
            InvalidInputError,
            match=rf"^input 't' has 20 bytes of BYTES data; {claimed} elements need at least "
            rf"{4 * claimed} ",
        ):
            decode_kserve_with(schema, request)


def test_dynamic_non_batch_dims_give_a_merge_key_per_shape() -> None:
    schema = RequestSchema("m", (TensorSpec("seq", BY_WIRE["FP32"], (-1, -1)),), True, 8, False)

    def key(length: int) -> object:
        array = np.zeros((2, length), np.float32)
        request = pb.ModelInferRequest(
            inputs=[infer_input("seq", array, "FP32")], raw_input_contents=[array.tobytes()]
        )
        return decode_kserve_with(schema, request).key

    assert key(3) == key(3) == ((3,),)
    assert key(3) != key(5)


def test_a_model_without_batch_dimension_takes_its_full_shape_only() -> None:
    schema = RequestSchema("m", (TensorSpec("m", BY_WIRE["FP32"], (2, 3)),), False, 0, False)
    array = np.ones((2, 3), np.float32)
    decoded = decode_predict_with(
        schema,
        predict_pb2.PredictRequest(
            input=predict_pb2.Tensor(shape=[2, 3], dtype=predict_pb2.FLOAT32, data=array.tobytes())
        ),
    )
    assert decoded.rows == 1
    with pytest.raises(InvalidInputError, match=r"has shape \[1, 2, 3\]; m expects \[2, 3\]"):
        decode_predict_with(
            schema,
            predict_pb2.PredictRequest(
                input=predict_pb2.Tensor(
                    shape=[1, 2, 3], dtype=predict_pb2.FLOAT32, data=array.tobytes()
                )
            ),
        )


def test_classification_strings_follow_triton() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    result = classification_strings(scores, 2, ("a", "b", "c"), batched=True)
    assert result.shape == (2, 2)
    assert result.tolist() == [
        [b"0.700000:1:b", b"0.200000:2:c"],
        [b"0.500000:0:a", b"0.300000:2:c"],
    ]
    unlabelled = classification_strings(scores[0], 5, (), batched=False)
    assert unlabelled.tolist() == [b"0.700000:1", b"0.200000:2", b"0.100000:0"]


def test_typed_uint8_values_above_255_are_refused_not_wrapped() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="UINT8", shape=[1, 2])
    request = pb.ModelInferRequest(inputs=[tensor])
    request.inputs[0].contents.uint_contents.extend([7, 256])
    spec = TensorSpec("input", BY_WIRE["UINT8"], (-1, 2))
    with pytest.raises(InvalidInputError, match="outside the range of UINT8"):
        decode_kserve(request, spec)


def test_an_unknown_dtype_is_refused_for_a_float64_input_too() -> None:
    """numpy compares None equal to float64: an unknown dtype must not slip through."""
    spec = TensorSpec("input", BY_WIRE["FP64"], (-1, 1))
    unspecified = predict_pb2.Tensor(shape=[1, 1], data=bytes(8))
    with pytest.raises(InvalidInputError, match=r"has datatype DATA_TYPE_UNSPECIFIED; .* FP64"):
        decode_predict(unspecified, spec)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="", shape=[1, 1])
    request = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[bytes(8)])
    with pytest.raises(InvalidInputError, match=r"has datatype \(empty\); .* expects FP64"):
        decode_kserve(request, spec)


def test_kserve_errors_name_the_model_and_what_it_expects() -> None:
    short = kserve(images(1))
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    nan = images(1)
    nan[0, 0, 0, 0] = np.nan
    cases = [
        (
            kserve(images(1)[:, :, :4], raw=False),
            "input 'input' has shape [1, 1, 4, 8]; model 'mlp' v1 expects [batch, 1, 8, 8]",
        ),
        (short, "input 'input' has 252 bytes of data; shape [1, 1, 8, 8] of FP32 needs 256"),
        (
            kserve(nan),
            "input 'input' contains 1 NaN/Inf values (first at index [0, 0, 0, 0]); "
            "model 'mlp' v1 expects finite numbers",
        ),
    ]
    for request, message in cases:
        with pytest.raises(InvalidInputError) as caught:
            decode_kserve(request)
        assert str(caught.value) == message


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i4", "<i8", "u1"])
def test_predict_tensors_written_by_the_server_read_back_on_the_client(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    message = predict_pb2.Tensor()
    datatype = BY_NUMPY[np.dtype(dtype)]
    fill_predict_tensor(message, array, datatype)
    assert list(message.shape) == [2, 3, 4]
    assert message.dtype == PREDICT_DTYPE_OF[datatype.wire]
    back = array_from_predict(message)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_top_k_breaks_ties_by_the_lower_class_index() -> None:
    probabilities = np.full((2, 40), 0.02, dtype=np.float32)
    probabilities[1, ::3] = 0.03  # 14 tied best classes in row 1
    labels = tuple(f"c{i}" for i in range(40))
    rows = top_k(probabilities, 8, labels)
    assert [c.index for c in rows[0].classes] == list(range(8))
    assert [c.index for c in rows[1].classes] == [0, 3, 6, 9, 12, 15, 18, 21]


FREE = (-1, -1, 4)  # a free dimension after the batch
ZERO = (-1, 0)  # a fixed dimension of size 0


@pytest.mark.parametrize(
    ("dims", "shape", "message"),
    [
        (FREE, [1, -1, 4], "input 'input' has a negative dimension: [1, -1, 4]"),
        (
            FREE,
            [1, 2, 5],
            "input 'input' has shape [1, 2, 5]; model 'mlp' v1 expects [batch, ?, 4]",
        ),
        (ZERO, [1, 3], "input 'input' has shape [1, 3]; model 'mlp' v1 expects [batch, 0]"),
        (  # one dimension too few, the last one matches
            (-1, 3, 4),
            [1, 4],
            "input 'input' has shape [1, 4]; model 'mlp' v1 expects [batch, 3, 4]",
        ),
        (  # the last dims match, the rank does not
            (-1, 4),
            [1, 5, 4],
            "input 'input' has shape [1, 5, 4]; model 'mlp' v1 expects [batch, 4]",
        ),
        ((-1,), [], "input 'input' has shape []; "),
        (
            FREE,
            [65, 1, 4],
            "input 'input' has 65 rows; model 'mlp' v1 accepts at most 64 (max_batch_size) "
            "per request",
        ),
        (
            FREE,
            [0, 1, 4],
            "input 'input' is an empty batch (shape [0, 1, 4]); send at least one row",
        ),
    ],
)
def test_shape_checks_of_free_zero_and_missing_dimensions(dims, shape, message) -> None:
    spec = TensorSpec("input", BY_WIRE["FP32"], dims)  # built here, not at collection
    request = predict_pb2.Tensor(shape=shape, dtype=predict_pb2.FLOAT32, data=b"")
    with pytest.raises(InvalidInputError) as caught:
        decode_predict(request, spec)
    assert str(caught.value).startswith(message)


def test_exactly_max_rows_and_zero_sized_dims_are_accepted() -> None:
    assert decode_predict(tensor(images(64))).shape == (64, 1, 8, 8)
    empty_rows = predict_pb2.Tensor(shape=[2, 0], dtype=predict_pb2.FLOAT32, data=b"")
    zero = TensorSpec("input", BY_WIRE["FP32"], ZERO)
    assert decode_predict(empty_rows, zero).shape == (2, 0)


def test_unknown_dtype_numbers_and_nan_messages_are_complete() -> None:
    with pytest.raises(InvalidInputError) as unknown:
        decode_predict(tensor(images(1), dtype=99))
    assert str(unknown.value) == "input 'input' has datatype 99; model 'mlp' v1 expects FP32"
    array = images(1)
    array[0, 0, 1, 2] = np.inf
    with pytest.raises(InvalidInputError) as nan:
        decode_predict(tensor(array))
    assert str(nan.value) == (
        "input 'input' contains 1 NaN/Inf values (first at index [0, 0, 1, 2]); "
        "model 'mlp' v1 expects finite numbers"
    )


def test_bytes_that_are_not_utf8_are_refused_raw_and_typed_naming_the_input() -> None:
    with pytest.raises(
        InvalidInputError,
        match=r"^input 'text' BYTES element 1 is not UTF-8 \(invalid start byte at byte 0\); "
        r"ONNX string tensors hold UTF-8 text$",
    ):
        from_bytes(encode_bytes(np.array([b"ok", b"\xff"], dtype=object)), BY_WIRE["BYTES"],
                   (2,), "text")  # fmt: skip
    schema = RequestSchema("m", (TensorSpec("text", BY_WIRE["BYTES"], (-1,)),), True, 4, False)
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"\xff")
    with pytest.raises(InvalidInputError, match=r"^input 'text' BYTES element 0 is not UTF-8"):
        decode_kserve_with(schema, pb.ModelInferRequest(inputs=[tensor]))


def test_a_typed_contents_error_names_the_input() -> None:
    schema = RequestSchema("m", (TensorSpec("text", BY_WIRE["INT32"], (-1,)),), True, 4, False)
    tensor = pb.ModelInferRequest.InferInputTensor(name="text", datatype="INT32", shape=[2])
    tensor.contents.int_contents.append(1)
    with pytest.raises(
        InvalidInputError,
        match=r"^input 'text' has 1 values; shape \[2\] needs 2$",
    ):
        decode_kserve_with(schema, pb.ModelInferRequest(inputs=[tensor]))


def test_raw_contents_for_some_inputs_only_are_refused_with_the_rule() -> None:
    specs = (TensorSpec("a", BY_WIRE["FP32"], (-1,)), TensorSpec("b", BY_WIRE["FP32"], (-1,)))
    schema = RequestSchema("m", specs, True, 4, False)
    request = pb.ModelInferRequest(raw_input_contents=[b"\0" * 4])
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    with pytest.raises(
        InvalidInputError,
        match=r"^request has 1 raw_input_contents entries for 2 inputs; send raw contents for "
        r"every input or for none$",
    ):
        decode_kserve_with(schema, request)


def test_outputs_go_on_the_wire_as_bytes_elements_or_raw_values() -> None:
    text = np.array([["a", b"bc"], ["", "\u00e9"]], dtype=object)  # str and bytes elements
    expected = b"".join(
        len(v).to_bytes(4, "little") + v for v in (b"a", b"bc", b"", "\u00e9".encode())
    )
    assert encode_bytes(text) == expected
    assert to_bytes(text) == expected
    numbers = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert to_bytes(numbers) == numbers.tobytes()


def test_a_client_reading_a_truncated_output_is_told_which() -> None:
    message = predict_pb2.Tensor(shape=[2], dtype=predict_pb2.FLOAT32, data=b"\0" * 4)
    with pytest.raises(
        InvalidInputError, match=r"^input 'output' has 4 bytes of data; shape \[2\] of FP32"
    ):
        array_from_predict(message)


def test_top_k_indices_per_row_best_first() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    assert top_k_indices(scores, 1).tolist() == [[1], [0]]
    assert top_k_indices(scores, 2).tolist() == [[1, 2], [0, 2]]


def test_classification_strings_break_ties_by_the_lower_index_among_many_classes() -> None:
    """200 classes of two values: an unstable sort reorders the ties."""
    scores = np.random.default_rng(0).integers(0, 2, size=(1, 200)).astype(np.float32)
    result = classification_strings(scores, 200, (), batched=True)
    indices = [int(text.split(b":")[1]) for text in result[0]]
    ones = [i for i in range(200) if scores[0, i] == 1]
    zeros = [i for i in range(200) if scores[0, i] == 0]
    assert indices == ones + zeros


def test_classification_of_a_non_numeric_output_is_refused() -> None:
    with pytest.raises(
        InvalidInputError, match=r"^classification needs a numeric output; this one is object$"
    ):
        classification_strings(np.array([["a"]], dtype=object), 1, (), batched=True)


def test_requested_outputs_are_positions_and_unknown_names_are_refused() -> None:
    names = {"logits": 0, "probabilities": 1}
    assert requested_outputs(names, ["probabilities", "logits"], "model 'm' v1") == [1, 0]
    assert requested_outputs(names, [], "model 'm' v1") == []
    with pytest.raises(
        InvalidInputError,
        match=r"^requested output 'nope' does not exist; model 'm' v1 has "
        r"\['logits', 'probabilities'\]$",
    ):
        requested_outputs(names, ["logits", "nope"], "model 'm' v1")


def test_describe_shape_names_the_batch_dimension_unless_told_otherwise() -> None:
    spec = TensorSpec("x", BY_WIRE["FP32"], (-1, 3, -1))
    assert spec.describe_shape() == "[batch, 3, ?]"
    assert spec.describe_shape(batched=False) == "[?, 3, ?]"


def two_inputs() -> RequestSchema:
    specs = (TensorSpec("a", BY_WIRE["FP32"], (-1, 2)), TensorSpec("b", BY_WIRE["INT64"], (-1,)))
    return RequestSchema("model 'two' v1", specs, True, 8, False)


def test_predict_multi_input_messages_name_the_rule_broken() -> None:
    schema = two_inputs()
    a = predict_pb2.Tensor(shape=[1, 2], dtype=predict_pb2.FLOAT32, data=b"\0" * 8)
    b = predict_pb2.Tensor(shape=[2], dtype=predict_pb2.INT64, data=b"\0" * 16)
    both = predict_pb2.PredictRequest(input=a, inputs={"a": a})
    with pytest.raises(
        InvalidInputError, match=r"^request sets both 'input' and 'inputs'; use one$"
    ):
        decode_predict_with(schema, both)
    with pytest.raises(
        InvalidInputError,
        match=r"^model 'two' v1 has inputs 'a', 'b'; send them by name$",
    ):
        decode_predict_with(schema, predict_pb2.PredictRequest(input=a))
    with pytest.raises(
        InvalidInputError,
        match=r"^request lacks input\(s\) \['b'\]; model 'two' v1 expects 'a', 'b'$",
    ):
        decode_predict_with(schema, predict_pb2.PredictRequest(inputs={"a": a}))
    with pytest.raises(
        InvalidInputError,
        match=r"^inputs have different batch sizes \{'a': 1, 'b': 2\}; every input of a request "
        r"must have the same number of rows$",
    ):
        decode_predict_with(schema, predict_pb2.PredictRequest(inputs={"a": a, "b": b}))
    short = predict_pb2.Tensor(shape=[1], dtype=predict_pb2.INT64, data=b"\0" * 4)
    with pytest.raises(InvalidInputError, match=r"^input 'b' has 4 bytes of data; shape \[1\]"):
        decode_predict_with(schema, predict_pb2.PredictRequest(inputs={"a": a, "b": short}))


def test_a_model_without_inputs_takes_an_empty_request_as_one_row() -> None:
    """An ONNX graph may have no inputs (constants only); over KServe it is one empty request."""
    schema = RequestSchema("model 'const' v1", (), False, 0, False)
    decoded = decode_kserve_with(schema, pb.ModelInferRequest())
    assert (decoded.arrays, decoded.rows, decoded.key) == ([], 1, None)
