"""Request messages, serialized once before the run and sent as bytes.

The generated stubs serialize a message on every call; at thousands of requests per second
that is a real share of the load generator's single core. The runner therefore sends these
pre-serialized bytes through a multicallable on the same method path as the stub.
"""

from __future__ import annotations

import numpy as np

from model_repository.datatypes import BY_NUMPY
from protos import grpc_service_pb2, predict_pb2
from serving import client
from serving.loadtest.inputs import ModelSignature

# Tag of ModelInferRequest.id (field 3, length-delimited): (3 << 3) | 2.
_REQUEST_ID_TAG = b"\x1a"


def _method_path(service: object, method: str) -> str:
    return f"/{service.full_name}/{service.methods_by_name[method].name}"  # type: ignore[attr-defined]


PREDICT_PATH = _method_path(predict_pb2.DESCRIPTOR.services_by_name["PredictionService"], "Predict")
KSERVE_INFER_PATH = _method_path(
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], "ModelInfer"
)
KSERVE_STREAM_PATH = _method_path(
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"], "ModelStreamInfer"
)


def predict_request(
    signature: ModelSignature, batch: np.ndarray, version: int, top_k: int
) -> bytes:
    """A serialized PredictRequest carrying ``batch`` [rows, *sample_shape]."""
    array = np.asarray(batch, dtype=signature.dtype)
    return client.predict_request(signature.model, array, top_k, version).SerializeToString()


def kserve_request(signature: ModelSignature, batch: np.ndarray, version: int) -> bytes:
    """A serialized ModelInferRequest with the batch as ``raw_input_contents``."""
    array = np.ascontiguousarray(batch, dtype=np.dtype(signature.dtype).newbyteorder("<"))
    request = grpc_service_pb2.ModelInferRequest(
        model_name=signature.model,
        model_version=str(version) if version else "",
        inputs=[
            grpc_service_pb2.ModelInferRequest.InferInputTensor(
                name=signature.input_name,
                datatype=BY_NUMPY[array.dtype].wire,
                shape=list(array.shape),
            )
        ],
        raw_input_contents=[array.tobytes()],
    )
    return request.SerializeToString()


def build_payloads(
    api: str, signature: ModelSignature, batches: list[np.ndarray], version: int, top_k: int
) -> list[bytes]:
    if api == "predict":
        return [predict_request(signature, batch, version, top_k) for batch in batches]
    return [kserve_request(signature, batch, version) for batch in batches]


def with_request_id(payload: bytes, request_id: str) -> bytes:
    """Append ``id`` to a serialized ModelInferRequest without re-serializing it.

    Protobuf parsers merge repeated occurrences of a message's fields and keep the last value of
    a scalar, so appending the encoded field sets the id of the message.
    """
    encoded = request_id.encode()
    return payload + _REQUEST_ID_TAG + _varint(len(encoded)) + encoded


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)
