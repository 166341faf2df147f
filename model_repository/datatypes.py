"""Tensor element types, one table for every name each side gives them.

A type has four names: Triton's config enum (``TYPE_FP32``), the KServe v2 / Triton wire
name (``FP32``), the numpy dtype that holds it (little-endian on the wire), and ONNX
Runtime's type string (``tensor(float)``). BYTES (ONNX ``string``) travels as
length-prefixed elements and lives in numpy ``object`` arrays of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos import model_config_pb2 as mc


@dataclass(frozen=True)
class DataType:
    config: int  # model_config_pb2.DataType value
    wire: str  # KServe v2 datatype name
    numpy: np.dtype
    ort: str  # ONNX Runtime NodeArg.type

    @property
    def config_name(self) -> str:
        return mc.DataType.Name(self.config)

    @property
    def is_bytes(self) -> bool:
        return self.numpy.kind == "O"


DATATYPES: tuple[DataType, ...] = (
    DataType(mc.TYPE_BOOL, "BOOL", np.dtype("?"), "tensor(bool)"),
    DataType(mc.TYPE_UINT8, "UINT8", np.dtype("u1"), "tensor(uint8)"),
    DataType(mc.TYPE_UINT16, "UINT16", np.dtype("<u2"), "tensor(uint16)"),
    DataType(mc.TYPE_UINT32, "UINT32", np.dtype("<u4"), "tensor(uint32)"),
    DataType(mc.TYPE_UINT64, "UINT64", np.dtype("<u8"), "tensor(uint64)"),
    DataType(mc.TYPE_INT8, "INT8", np.dtype("i1"), "tensor(int8)"),
    DataType(mc.TYPE_INT16, "INT16", np.dtype("<i2"), "tensor(int16)"),
    DataType(mc.TYPE_INT32, "INT32", np.dtype("<i4"), "tensor(int32)"),
    DataType(mc.TYPE_INT64, "INT64", np.dtype("<i8"), "tensor(int64)"),
    DataType(mc.TYPE_FP16, "FP16", np.dtype("<f2"), "tensor(float16)"),
    DataType(mc.TYPE_FP32, "FP32", np.dtype("<f4"), "tensor(float)"),
    DataType(mc.TYPE_FP64, "FP64", np.dtype("<f8"), "tensor(double)"),
    DataType(mc.TYPE_STRING, "BYTES", np.dtype(object), "tensor(string)"),
)

BY_CONFIG: dict[int, DataType] = {t.config: t for t in DATATYPES}
BY_WIRE: dict[str, DataType] = {t.wire: t for t in DATATYPES}
BY_ORT: dict[str, DataType] = {t.ort: t for t in DATATYPES}
BY_NUMPY: dict[np.dtype, DataType] = {t.numpy: t for t in DATATYPES}


def of_array(array: np.ndarray) -> DataType | None:
    """The type of a numpy array, or None when no wire type holds it."""
    if array.dtype.kind == "O":
        return BY_WIRE["BYTES"]
    return BY_NUMPY.get(array.dtype)
