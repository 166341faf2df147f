"""Decoding and validation of request tensors, and the top-k encoding."""

from __future__ import annotations

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import predict_pb2
from serving.errors import InvalidInputError
from serving.tensors import (
    PREDICT_DTYPE_OF,
    TensorSpec,
    add_top_k,
    array_from_predict,
    decode_kserve,
    decode_predict,
    fill_predict_tensor,
)

IMAGE = TensorSpec("input", np.dtype("<f4"), (-1, 1, 8, 8))
MODEL = "model 'mlp' v1"


def tensor(array: np.ndarray, dtype: int = predict_pb2.FLOAT32, shape=None) -> predict_pb2.Tensor:
    return predict_pb2.Tensor(
        shape=array.shape if shape is None else shape, dtype=dtype, data=array.tobytes()
    )


def images(rows: int) -> np.ndarray:
    return np.arange(rows * 64, dtype=np.float32).reshape(rows, 1, 8, 8) / 100


def test_valid_input_is_read_without_a_copy() -> None:
    message = tensor(images(3))
    array = decode_predict(message, IMAGE, MODEL, max_rows=64)
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
        decode_predict(message, IMAGE, MODEL, max_rows=64)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_their_position(bad: float) -> None:
    array = images(2)
    array[1, 0, 3, 4] = bad
    with pytest.raises(
        InvalidInputError, match=r"1 NaN/Inf values \(first at index \[1, 0, 3, 4\]\)"
    ):
        decode_predict(tensor(array), IMAGE, MODEL, max_rows=64)


def test_huge_finite_values_whose_sum_overflows_are_accepted() -> None:
    array = np.full((1, 1, 8, 8), 3e38, dtype=np.float32)
    array[0, 0, 0, 0] = -3e38  # finite extremes of both signs
    decoded = decode_predict(tensor(array), IMAGE, MODEL, max_rows=64)
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == np.float32 and decoded.shape == (1, 1, 8, 8)


def test_no_row_limit_when_max_rows_is_zero() -> None:
    assert decode_predict(tensor(images(100)), IMAGE, MODEL, max_rows=0).shape[0] == 100


def kserve(array: np.ndarray, *, raw: bool = True, name: str = "input", datatype: str = "FP32"):
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    request = pb.ModelInferRequest(model_name="mlp", inputs=[tensor])
    if raw:
        request.raw_input_contents.append(array.tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(array.ravel().tolist())
    return request


def test_kserve_raw_and_typed_contents_decode_to_the_same_array() -> None:
    raw = decode_kserve(kserve(images(2)), IMAGE, MODEL, 64)
    typed = decode_kserve(kserve(images(2), raw=False), IMAGE, MODEL, 64)
    np.testing.assert_array_equal(raw, typed)
    np.testing.assert_array_equal(raw, images(2))


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            kserve(images(1), name="x"),
            r"request has inputs \['x'\]; model 'mlp' v1 expects one input 'input'",
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
            "has 0 values in contents; shape .* needs 64",
        ),
    ],
)
def test_invalid_kserve_requests_are_refused(request_, expected: str) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        decode_kserve(request_, IMAGE, MODEL, 64)


def test_kserve_with_two_raw_buffers_is_refused() -> None:
    request = kserve(images(1))
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidInputError, match="2 raw_input_contents entries"):
        decode_kserve(request, IMAGE, MODEL, 64)


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


def test_typed_uint8_values_above_255_are_refused_not_wrapped() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="UINT8", shape=[1, 2])
    request = pb.ModelInferRequest(inputs=[tensor])
    request.inputs[0].contents.uint_contents.extend([7, 256])
    spec = TensorSpec("input", np.dtype("u1"), (-1, 2))
    with pytest.raises(InvalidInputError, match=r"outside UINT8's range 0\.\.255"):
        decode_kserve(request, spec, MODEL, 64)


def test_an_unknown_dtype_is_refused_for_a_float64_input_too() -> None:
    """numpy compares None equal to float64: an unknown dtype must not slip through."""
    spec = TensorSpec("input", np.dtype("<f8"), (-1, 1))
    unspecified = predict_pb2.Tensor(shape=[1, 1], data=bytes(8))
    with pytest.raises(InvalidInputError, match=r"has dtype DATA_TYPE_UNSPECIFIED; .* FLOAT64"):
        decode_predict(unspecified, spec, MODEL, 64)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="", shape=[1, 1])
    request = pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[bytes(8)])
    with pytest.raises(InvalidInputError, match=r"has datatype \(empty\); .* expects FP64"):
        decode_kserve(request, spec, MODEL, 64)


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
        (short, "input 'input' has 252 bytes of data; shape [1, 1, 8, 8] of float32 needs 256"),
        (
            kserve(nan),
            "input 'input' contains 1 NaN/Inf values (first at index [0, 0, 0, 0]); "
            "model 'mlp' v1 expects finite numbers",
        ),
    ]
    for request, message in cases:
        with pytest.raises(InvalidInputError) as caught:
            decode_kserve(request, IMAGE, MODEL, 64)
        assert str(caught.value) == message


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<i4", "<i8", "u1"])
def test_predict_tensors_written_by_the_server_read_back_on_the_client(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    message = predict_pb2.Tensor()
    fill_predict_tensor(message, array)
    assert list(message.shape) == [2, 3, 4]
    assert message.dtype == PREDICT_DTYPE_OF[np.dtype(dtype)]
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
    spec = TensorSpec("input", np.dtype("<f4"), dims)  # built here, not at collection
    request = predict_pb2.Tensor(shape=shape, dtype=predict_pb2.FLOAT32, data=b"")
    with pytest.raises(InvalidInputError) as caught:
        decode_predict(request, spec, MODEL, 64)
    assert str(caught.value).startswith(message)


def test_exactly_max_rows_and_zero_sized_dims_are_accepted() -> None:
    assert decode_predict(tensor(images(64)), IMAGE, MODEL, max_rows=64).shape == (64, 1, 8, 8)
    empty_rows = predict_pb2.Tensor(shape=[2, 0], dtype=predict_pb2.FLOAT32, data=b"")
    zero = TensorSpec("input", np.dtype("<f4"), ZERO)
    assert decode_predict(empty_rows, zero, MODEL, 64).shape == (2, 0)


def test_unknown_dtype_numbers_and_nan_messages_are_complete() -> None:
    with pytest.raises(InvalidInputError) as unknown:
        decode_predict(tensor(images(1), dtype=99), IMAGE, MODEL, 64)
    assert str(unknown.value) == "input 'input' has dtype 99; model 'mlp' v1 expects FLOAT32"
    array = images(1)
    array[0, 0, 1, 2] = np.inf
    with pytest.raises(InvalidInputError) as nan:
        decode_predict(tensor(array), IMAGE, MODEL, 64)
    assert str(nan.value) == (
        "input 'input' contains 1 NaN/Inf values (first at index [0, 0, 1, 2]); "
        "model 'mlp' v1 expects finite numbers"
    )
