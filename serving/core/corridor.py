"""The corridor every inference request walks, from any door: one place, one order.

admit (``Admission``, called by the door before it decodes anything) -> resolve the version
-> validate the inputs (``RequestSchema.decode``) -> queue for the batcher -> run -> record
the outcome in the metrics and the statistics, once, whatever it is. A door only turns its
wire format into an ``InferenceRequest`` and the ``InferenceResult`` back into its own.

``Corridor.infer`` is the whole walk for a caller that waits (unary calls, HTTP);
``Corridor.begin`` + ``Call.answer`` split it for one that must not (a stream answers each
message as its batch finishes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar

from serving.core.admission import Admission
from serving.core.batcher import Outputs, Ticket
from serving.core.inference import ChosenOutput, InferenceRequest, InferenceResult
from serving.core.repository import ModelVersion, Repository
from serving.errors import InternalServingError, InvalidInputError, ServingError, clip, status_code
from serving.metrics import UNKNOWN_MODEL

LOGGER = logging.getLogger(__name__)

Response = TypeVar("Response")
Encode = Callable[[InferenceResult], Response]


def choose_outputs(version: ModelVersion, request: InferenceRequest) -> list[ChosenOutput]:
    """The outputs to answer with: the requested ones (refusing unknown names), else all."""
    if not request.outputs:
        if request.top_k and version.classifier and request.top_k > len(version.labels):
            raise InvalidInputError(
                f"top_k is {request.top_k}; {version.description} has {len(version.labels)} classes"
            )
        return version.all_outputs
    chosen = []
    index_of = version.output_index
    for name, count in request.outputs:
        index = index_of.get(name)
        if index is None:
            raise InvalidInputError(
                f"requested output '{clip(name)}' does not exist; {version.description} has "
                f"{list(index_of)}"
            )
        if count < 0:
            raise InvalidInputError(
                f"output '{clip(name)}' parameter 'classification' must be a positive integer "
                "(the number of classes to return)"
            )
        datatype = "BYTES" if count else version.outputs[index].kserve_dtype
        chosen.append(ChosenOutput(name, index, datatype, count))
    return chosen


class Call:
    """One request between ``Corridor.begin`` and its answer; records its outcome once."""

    __slots__ = ("api", "chosen", "decoding", "request", "rows", "started", "ticket", "version")

    def __init__(
        self,
        api: str,
        version: ModelVersion,
        request: InferenceRequest,
        chosen: list[ChosenOutput],
        ticket: Ticket,
        rows: int,
        started: float,
        decoding: float,
    ) -> None:
        self.api = api
        self.version = version
        self.request = request
        self.chosen = chosen
        self.ticket = ticket
        self.rows = rows
        self.started = started
        self.decoding = decoding

    @property
    def future(self) -> asyncio.Future[Outputs]:
        return self.ticket.future

    async def result(self, encode: Encode[Response]) -> Response:
        """Wait for the batch, then the encoded answer (ServingError for a failed one)."""
        try:
            outputs = await self.ticket.future
        except asyncio.CancelledError:  # the caller went away
            self._record("CANCELLED", 0.0)
            raise
        except BaseException as error:
            raise self._failed(error) from None
        return self._encoded(outputs, encode)

    def answer(self, encode: Encode[Response]) -> Response:
        """Once the ticket's future is done (a done callback): as ``result``."""
        future = self.ticket.future
        if future.cancelled():  # the caller went away (asyncio.CancelledError)
            self._record("CANCELLED", 0.0)
            raise asyncio.CancelledError
        error = future.exception()
        if error is not None:
            raise self._failed(error)
        return self._encoded(future.result(), encode)

    def _encoded(self, outputs: Outputs, encode: Encode[Response]) -> Response:
        encoding_started = perf_counter()
        request = self.request
        try:
            response = encode(
                InferenceResult(self.version, request.id, outputs, self.chosen, request.top_k)
            )
        except BaseException as error:
            raise self._failed(error) from None
        self._record("OK", perf_counter() - encoding_started)
        return response

    def _failed(self, error: BaseException) -> ServingError:
        """Record a failure; the error to answer with (a bug becomes an INTERNAL error)."""
        if isinstance(error, ServingError):
            self._record(status_code(error).name, 0.0)
            return error
        self._record("INTERNAL", 0.0)
        LOGGER.error(
            "event=infer_failed api=%s model=%s error=%r",
            self.api,
            self.version.description,
            error,
            exc_info=error,
        )
        return InternalServingError(f"{self.version.description}: {error}")

    def _record(self, code: str, encoding: float) -> None:
        version = self.version
        seconds = perf_counter() - self.started
        version.metrics.request_finished(self.api, code, seconds, self.rows)
        if code != "OK":
            version.statistics.failed(seconds)
            return
        version.metrics.encode(encoding)
        ticket = self.ticket
        version.statistics.succeeded(
            seconds,
            self.rows,
            ticket.queue,
            self.decoding + ticket.gather,
            ticket.infer,
            ticket.scatter + encoding,
        )


class Corridor:
    """The shared request path over one repository, with the server-wide admission."""

    def __init__(self, repository: Repository, admission: Admission) -> None:
        self.repository = repository
        self.admission = admission

    def refused(self, api: str, model: str, error: ServingError) -> ServingError:
        """Count a request that never reached a version; return the error to answer with.

        An unknown model, or a request the door could not translate. Unknown names share
        one label value, so callers cannot grow the label set.
        """
        label = model if self.repository.known_model(model) else UNKNOWN_MODEL
        self.repository.metrics.request_unresolved(api, status_code(error).name, label)
        return error

    def begin(
        self,
        api: str,
        request: InferenceRequest,
        deadline: float | None,
        started: float | None = None,
    ) -> Call:
        """Resolve, validate and queue ``request``.

        Raises ServingError (counted) when it cannot be queued. ``deadline``: a
        ``perf_counter()`` instant, or None.
        """
        if started is None:
            started = perf_counter()
        try:
            version = self.repository.resolve(request.model, request.version)
        except ServingError as error:
            raise self.refused(api, request.model, error) from None
        rows = 0
        try:
            chosen = choose_outputs(version, request)
            assert version.schema is not None and version.batcher is not None
            inputs = version.schema.decode(request.inputs)
            rows = inputs.rows
            decoding = perf_counter() - started
            version.metrics.decode(decoding)
            ticket = version.batcher.submit(inputs.arrays, rows, inputs.key, deadline)
        except Exception as error:
            seconds = perf_counter() - started
            if not isinstance(error, ServingError):
                LOGGER.error(
                    "event=infer_failed api=%s model=%s error=%r",
                    api,
                    version.description,
                    error,
                    exc_info=error,
                )
                error = InternalServingError(f"{version.description}: {error}")
            version.metrics.request_finished(api, status_code(error).name, seconds, rows)
            version.statistics.failed(seconds)
            raise error from None
        return Call(api, version, request, chosen, ticket, rows, started, decoding)

    async def infer(
        self,
        api: str,
        request: InferenceRequest,
        encode: Encode[Response],
        deadline: float | None = None,
        started: float | None = None,
    ) -> Response:
        """The whole walk: the encoded answer, or a ServingError to answer with."""
        call = self.begin(api, request, deadline, started)
        return await call.result(encode)
