"""numpy arrays <-> KServe v2 / Triton wire tensors, written from the protocol, not the server.

Raw contents are little-endian and row-major; a BYTES tensor is its elements each as a
4-byte little-endian length followed by the bytes, concatenated (Triton's encoding, also
used by our Predict API's BYTES tensors). Strings go to ONNX Runtime as ``str``, so the
wire's bytes are UTF-8.
"""

from __future__ import annotations

import struct

import numpy as np

from protos import grpc_service_pb2 as pb

# numpy dtype -> KServe datatype; numpy object arrays hold strings (ONNX STRING).
DATATYPES: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.object_): "BYTES",
}
DTYPES: dict[str, np.dtype] = {name: dtype for dtype, name in DATATYPES.items()}

# KServe datatype -> the InferTensorContents field that carries it (FP16 has none).
CONTENTS_FIELDS = {
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


def datatype(array: np.ndarray) -> str:
    return DATATYPES[array.dtype]


def as_bytes(element: object) -> bytes:
    return element if isinstance(element, bytes) else str(element).encode("utf-8")


def encode_bytes(array: np.ndarray) -> bytes:
    """Triton's BYTES encoding: per element, uint32 little-endian length, then the bytes."""
    parts = []
    for element in array.ravel():
        data = as_bytes(element)
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def decode_bytes(data: bytes) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        elements.append(bytes(data[offset : offset + length]))
        offset += length
    return elements


def raw(array: np.ndarray) -> bytes:
    """The raw contents of ``array`` for its KServe datatype."""
    if array.dtype == np.object_:
        return encode_bytes(array)
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()


def from_raw(data: bytes, datatype_name: str, shape: list[int]) -> np.ndarray:
    """A numpy array (object array of bytes for BYTES) from raw contents."""
    if datatype_name == "BYTES":
        array = np.empty(len(decode_bytes(data)), dtype=object)
        array[:] = decode_bytes(data)
        return array.reshape(shape)
    dtype = DTYPES[datatype_name].newbyteorder("<")
    return np.frombuffer(data, dtype).astype(DTYPES[datatype_name]).reshape(shape)


def infer_request(
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    outputs: tuple[str, ...] = (),
    typed: bool = False,
    request_id: str = "",
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input as raw contents (or typed ``contents``)."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype(array), shape=array.shape)
        if typed:
            field = CONTENTS_FIELDS[tensor.datatype]
            values = array.ravel().tolist()
            if tensor.datatype == "BYTES":
                values = [as_bytes(v) for v in values]
            getattr(tensor.contents, field).extend(values)
        else:
            request.raw_input_contents.append(raw(array))
    for name in outputs:
        request.outputs.add(name=name)
    return request


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of a response, decoded from its raw contents."""
    assert len(response.raw_output_contents) == len(response.outputs), (
        "outputs must come back as raw_output_contents, one per output"
    )
    return {
        output.name: from_raw(data, output.datatype, list(output.shape))
        for output, data in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def assert_bit_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and bytes (so -0.0 vs 0.0 or a NaN payload would differ).

    Expected strings are ``str`` (from ONNX Runtime), received ones UTF-8 ``bytes``.
    """
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        have = got[name]
        assert have.shape == want.shape, f"{name}: shape {have.shape}, expected {want.shape}"
        if want.dtype == np.object_:
            assert have.dtype == np.object_, f"{name}: dtype {have.dtype}, expected strings"
            assert [as_bytes(v) for v in have.ravel()] == [as_bytes(v) for v in want.ravel()]
            continue
        assert have.dtype == want.dtype, f"{name}: dtype {have.dtype}, expected {want.dtype}"
        assert have.tobytes() == want.tobytes(), f"{name}: values differ\n{have}\n!=\n{want}"
