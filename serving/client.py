"""A small synchronous client for the Predict API (demo, load test, tests).

>>> with Client("127.0.0.1:8001") as client:
...     result = client.predict("mlp", images, top_k=3)
...     result.labels[0], result.probabilities.shape

Failed calls raise ``grpc.RpcError``; ``error.code()`` is the status (NOT_FOUND, ...).
Every call has a deadline (``timeout`` seconds, per client or per call).

One gRPC channel is one HTTP/2 connection, and a server run with ``--workers N`` hands each
connection to one worker: ``connections=K`` opens K channels and spreads calls over them
round-robin, so one client reaches every worker.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from model_repository.datatypes import of_array
from protos import predict_pb2, predict_pb2_grpc
from serving.core.tensors import to_bytes
from serving.grpc_api.predict_tensors import PREDICT_DTYPE_OF, array_from_predict

DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Prediction:
    """One Predict answer as numpy arrays and plain lists."""

    model: str
    version: int
    probabilities: np.ndarray | None  # classifiers: float32 [rows, classes]
    labels: list[list[str]]  # classifiers: per row, the top-k labels, best first
    scores: list[list[float]]  # the matching probabilities
    indices: list[list[int]]  # the matching class indices
    predictions: np.ndarray | None  # regression: float32 [rows, 1]
    outputs: dict[str, np.ndarray]  # named outputs (asked for, or of a model without a task)


def tensor_message(array: np.ndarray) -> predict_pb2.Tensor:
    """A Predict Tensor for ``array``: little-endian row-major bytes, or BYTES elements."""
    array = np.asarray(array)
    if array.dtype.kind in "SU":
        array = array.astype(object)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.ascontiguousarray(array)
    datatype = of_array(array)
    if datatype is None:
        raise ValueError(
            f"array dtype {array.dtype} is not supported; use one of "
            f"{sorted(PREDICT_DTYPE_OF)} (numpy bool, int, uint, float or bytes)"
        )
    return predict_pb2.Tensor(
        shape=array.shape, dtype=PREDICT_DTYPE_OF[datatype.wire], data=to_bytes(array)
    )


def predict_request(
    model: str,
    array: np.ndarray | dict[str, np.ndarray],
    top_k: int = 1,
    version: int | None = None,
    outputs: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    """The PredictRequest for one input array, or for named inputs."""
    request = predict_pb2.PredictRequest(
        model=model, version=version or 0, top_k=top_k, outputs=outputs
    )
    if isinstance(array, dict):
        for name, value in array.items():
            request.inputs[name].CopyFrom(tensor_message(value))
    else:
        request.input.CopyFrom(tensor_message(array))
    return request


def prediction_from_response(response: predict_pb2.PredictResponse) -> Prediction:
    probabilities = (
        array_from_predict(response.probabilities) if response.HasField("probabilities") else None
    )
    predictions = (
        array_from_predict(response.predictions) if response.HasField("predictions") else None
    )
    rows = [list(row.classes) for row in response.top_k]
    named = {name: array_from_predict(tensor) for name, tensor in response.outputs.items()}
    return Prediction(
        model=response.model,
        version=response.version,
        probabilities=probabilities,
        labels=[[c.label for c in row] for row in rows],
        scores=[[c.score for c in row] for row in rows],
        indices=[[c.index for c in row] for row in rows],
        predictions=predictions,
        outputs=named,
    )


class Client:
    """Blocking client over ``connections`` gRPC channels; close it (or use ``with``)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls_ca: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = 64 * 1024 * 1024,
        connections: int = 1,
    ) -> None:
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if connections > 1:
            # Channels with equal arguments share one connection unless each has its own pool.
            options.append(("grpc.use_local_subchannel_pool", 1))
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
            self.channels = [
                grpc.secure_channel(target, credentials, options=options)
                for _ in range(connections)
            ]
        else:
            self.channels = [
                grpc.insecure_channel(target, options=options) for _ in range(connections)
            ]
        self.channel = self.channels[0]
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stubs = [predict_pb2_grpc.PredictionServiceStub(c) for c in self.channels]
        self.stub = self.stubs[0]
        self._round_robin = itertools.cycle(self.stubs)

    def next_stub(self) -> predict_pb2_grpc.PredictionServiceStub:
        """The stub of the next connection, round-robin."""
        return next(self._round_robin)

    def predict(
        self,
        model: str,
        array: np.ndarray | dict[str, np.ndarray],
        top_k: int = 1,
        version: int | None = None,
        *,
        outputs: tuple[str, ...] = (),
        timeout: float | None = None,
    ) -> Prediction:
        """Run ``model`` on ``array`` ([rows, ...]) or on named inputs.

        Labels for classifiers, values for regressions, named ``outputs`` when asked for
        (every output of a model without a task).
        """
        response = self.next_stub().Predict(
            predict_request(model, array, top_k, version, outputs),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )
        return prediction_from_response(response)

    def list_models(self, *, timeout: float | None = None) -> list[predict_pb2.ModelInfo]:
        response = self.next_stub().ListModels(
            predict_pb2.ListModelsRequest(), timeout=timeout or self.timeout, metadata=self.metadata
        )
        return list(response.models)

    def get_model(
        self, name: str, version: int | None = None, *, timeout: float | None = None
    ) -> predict_pb2.ModelInfo:
        return self.next_stub().GetModel(
            predict_pb2.GetModelRequest(name=name, version=version or 0),
            timeout=timeout or self.timeout,
            metadata=self.metadata,
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
