"""Our Predict API's tensors: its dtype enum and the ``Tensor`` message, both ways.

Shared by the Predict door and ``serving.client``, so it imports nothing of the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from model_repository.datatypes import BY_WIRE, DataType
from protos import predict_pb2
from serving.core.tensors import from_bytes, to_bytes, top_k

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
# The KServe name a Predict dtype value stands for; other values keep their enum name
# (or number), which no model input has, so the corridor refuses them by name.
WIRE_NAME_OF: dict[int, str] = {k: t.wire for k, t in PREDICT_DTYPES.items()}


def wire_name(dtype: int) -> str:
    """The KServe datatype name of a Predict dtype value (unknown ones named as received)."""
    name = WIRE_NAME_OF.get(dtype)
    if name is not None:
        return name
    if dtype in predict_pb2.DataType.values():
        return predict_pb2.DataType.Name(dtype)
    return str(dtype)


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
