"""One inference request and its answer, as the corridor sees them: no wire format.

A door (gRPC KServe, gRPC Predict, HTTP REST) turns what it received into an
``InferenceRequest`` without judging it: names, datatypes and shapes are checked in the
corridor against the model version, once, in ``serving.core.tensors.RequestSchema``. The
corridor answers with an ``InferenceResult`` of arrays that the door encodes its own way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from serving.core.tensors import classification_strings

if TYPE_CHECKING:
    from serving.core.repository import ModelVersion


class InputTensor(NamedTuple):
    """One input tensor as a client sent it.

    ``data`` is one of: ``bytes``/``memoryview`` of little-endian row-major values (BYTES:
    each element a 4-byte little-endian length and its bytes); a numpy array (decoded
    JSON); or a sequence of typed values (KServe's ``contents``; BYTES as ``bytes``).
    ``name`` None: the only input of a single-input model (Predict's ``input``).
    """

    name: str | None
    datatype: str  # KServe v2 name: FP32, INT64, BYTES, ...
    shape: tuple[int, ...]
    data: bytes | memoryview | np.ndarray | Sequence[object]


class RequestedOutput(NamedTuple):
    """An output a client asked for by name.

    ``classification`` > 0 asks for its top k classes as BYTES ``"score:index[:label]"``
    (Triton's classification extension).
    """

    name: str
    classification: int = 0


class InferenceRequest(NamedTuple):
    """What every door hands the corridor."""

    model: str
    version: int  # 0: the model's default version
    inputs: Sequence[InputTensor]
    # Empty: every output (a classifier answered through Predict: its scores).
    outputs: Sequence[RequestedOutput] = ()
    id: str = ""
    # Predict: classes per row for a classifier answered in its own fields (0: one).
    top_k: int = 0


class ChosenOutput(NamedTuple):
    """An output of the answer.

    Its name, position among the model's outputs, wire datatype, and the classification
    count it was asked with (0: the tensor itself).
    """

    name: str
    index: int
    datatype: str
    classification: int


class InferenceResult(NamedTuple):
    """The answer: the version that ran, and the arrays to send back, in request order."""

    version: ModelVersion
    request_id: str
    # The model's outputs in its own order, this request's rows only.
    outputs: Sequence[np.ndarray]
    chosen: Sequence[ChosenOutput]
    top_k: int

    def tensors(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """(name, datatype, array) of each chosen output, classification applied."""
        version = self.version
        for name, index, datatype, count in self.chosen:
            array = self.outputs[index]
            if count:
                labels = version.output_labels.get(index, ())
                array = classification_strings(array, count, labels, version.batched)
            yield name, datatype, array
