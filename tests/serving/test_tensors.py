"""Decoding and validation of request tensors, and the top-k encoding."""

from __future__ import annotations

import numpy as np
import pytest

from model_repository.datatypes import BY_WIRE
from protos import grpc_service_pb2 as pb
from protos import predict_pb2
from serving.errors import InvalidInputError
from serving.tensors import (
    CONTENTS_FIELD,
    RequestSchema,
    TensorSpec,
    add_top_k,
    classification_strings,
    encode_bytes,
    from_bytes,
)

IMAGE = TensorSpec("input", BY_WIRE["FP32"], (-1, 1, 8, 8))
MODEL = "model 'mlp' v1"
SCHEMA = RequestSchema(MODEL, (IMAGE,), batched=True, max_rows=64, finite=True)


def decode_predict(message: predict_pb2.Tensor, schema: RequestSchema = SCHEMA) -> np.ndarray:
    decoded = schema.decode_predict(predict_pb2.PredictRequest(model="mlp", input=message))
    assert decoded.rows == decoded.arrays[0].shape[0]
    return decoded.arrays[0]


def decode_kserve(request: pb.ModelInferRequest, schema: RequestSchema = SCHEMA) -> np.ndarray:
    return schema.decode_kserve(request).arrays[0]


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
            "has dtype FLOAT64; model 'mlp' v1 expects FLOAT32",
        ),
        (
            tensor(images(1), predict_pb2.DATA_TYPE_UNSPECIFIED),
            "has dtype DATA_TYPE_UNSPECIFIED; model 'mlp' v1 expects FLOAT32",
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
    np.testing.assert_array_equal(decode_predict(tensor(array)), array)


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
            r"has 0 values in contents.fp32_contents; shape .* needs 64",
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
    decoded = PAIR.decode_kserve(pair_request(x, k, order=("k", "x")))
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
            r"request has inputs \['x'\]; model 'pair' v1 expects 'x', 'k'",
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
        PAIR.decode_kserve(request_)


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
    np.testing.assert_array_equal(schema.decode_kserve(raw).arrays[0], expected)
    assert schema.decode_kserve(raw).arrays[0].dtype == kind.numpy
    typed = pb.ModelInferRequest(inputs=[infer_input("t", expected, datatype)])
    if datatype == "FP16":  # no typed field in the protocol: raw only
        with pytest.raises(InvalidInputError, match="send it in raw_input_contents"):
            schema.decode_kserve(typed)
        return
    getattr(typed.inputs[0].contents, CONTENTS_FIELD[datatype]).extend(values)
    np.testing.assert_array_equal(schema.decode_kserve(typed).arrays[0], expected)


def test_typed_integers_out_of_range_are_refused() -> None:
    schema = RequestSchema("m", (TensorSpec("t", BY_WIRE["INT8"], (-1, 1)),), True, 4, False)
    request = pb.ModelInferRequest(inputs=[infer_input("t", np.zeros((1, 1)), "INT8")])
    request.inputs[0].contents.int_contents.append(300)
    with pytest.raises(InvalidInputError, match="outside the range of INT8"):
        schema.decode_kserve(request)


def test_bytes_elements_round_trip_and_bad_lengths_are_refused() -> None:
    words = np.array([[b"a"], [b""], ["\u00e9t\u00e9".encode()]], dtype=object)
    data = encode_bytes(words)
    assert data[:5] == b"\x01\x00\x00\x00a"
    decoded = from_bytes(data, BY_WIRE["BYTES"], (3, 1), "text")
    assert decoded.tolist() == [["a"], [""], ["\u00e9t\u00e9"]]
    with pytest.raises(InvalidInputError, match="element 2 claims 5 bytes; only 4 remain"):
        from_bytes(data[:-1], BY_WIRE["BYTES"], (3, 1), "text")
    with pytest.raises(InvalidInputError, match="ends after 2 of 3 elements"):
        from_bytes(data[:9], BY_WIRE["BYTES"], (3, 1), "text")
    with pytest.raises(InvalidInputError, match="1 bytes after its 3 BYTES elements"):
        from_bytes(data + b"x", BY_WIRE["BYTES"], (3, 1), "text")


def test_dynamic_non_batch_dims_give_a_merge_key_per_shape() -> None:
    schema = RequestSchema("m", (TensorSpec("seq", BY_WIRE["FP32"], (-1, -1)),), True, 8, False)

    def key(length: int) -> object:
        array = np.zeros((2, length), np.float32)
        request = pb.ModelInferRequest(
            inputs=[infer_input("seq", array, "FP32")], raw_input_contents=[array.tobytes()]
        )
        return schema.decode_kserve(request).key

    assert key(3) == key(3) == ((3,),)
    assert key(3) != key(5)


def test_a_model_without_batch_dimension_takes_its_full_shape_only() -> None:
    schema = RequestSchema("m", (TensorSpec("m", BY_WIRE["FP32"], (2, 3)),), False, 0, False)
    array = np.ones((2, 3), np.float32)
    decoded = schema.decode_predict(
        predict_pb2.PredictRequest(
            input=predict_pb2.Tensor(shape=[2, 3], dtype=predict_pb2.FLOAT32, data=array.tobytes())
        )
    )
    assert decoded.rows == 1
    with pytest.raises(InvalidInputError, match=r"has shape \[1, 2, 3\]; m expects \[2, 3\]"):
        schema.decode_predict(
            predict_pb2.PredictRequest(
                input=predict_pb2.Tensor(
                    shape=[1, 2, 3], dtype=predict_pb2.FLOAT32, data=array.tobytes()
                )
            )
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
