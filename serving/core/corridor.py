"""The life of one unary inference call, shared by Predict and KServe ModelInfer.

Both APIs resolve a version, decode and validate the input, wait for the batcher, and
encode the answer; only decoding and encoding differ. Timing, the status code of every
outcome and the metrics accounting live here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from typing import TypeVar

import grpc

from serving.core.batcher import Outputs
from serving.core.repository import ModelVersion, Repository
from serving.core.tensors import Decoded
from serving.errors import ServingError, status_code
from serving.metrics import UNKNOWN_MODEL

LOGGER = logging.getLogger(__name__)

State = TypeVar("State")
Response = TypeVar("Response")


def count_unresolved(
    repository: Repository, api: str, model: str, error: ServingError
) -> grpc.StatusCode:
    """Count a request that never reached a version; return the status it gets.

    Unknown names share one label value, so callers cannot grow the label set.
    """
    code = status_code(error)
    label = model if repository.known_model(model) else UNKNOWN_MODEL
    repository.metrics.request_unresolved(api, code.name, label)
    return code


async def abort_unresolved(
    repository: Repository,
    api: str,
    model: str,
    error: ServingError,
    context: grpc.aio.ServicerContext,
) -> None:
    """Count a request that never reached a version, then abort it with its status."""
    await context.abort(count_unresolved(repository, api, model, error), str(error))


async def infer_unary(
    api: str,
    version: ModelVersion,
    context: grpc.aio.ServicerContext,
    started: float,
    prepare: Callable[[], tuple[Decoded, State]],
    respond: Callable[[Outputs, State], Response],
) -> Response:
    """Run one request on ``version`` and account for it, whatever its outcome.

    ``prepare`` decodes and validates the request into (inputs, state for ``respond``)
    and raises a ServingError for bad input; ``respond`` builds the answer from the
    outputs.
    """
    metrics = version.metrics
    code = "OK"
    rows = 0
    decoding = encoding = 0.0
    try:
        inputs, state = prepare()
        rows = inputs.rows
        decoded = perf_counter()
        decoding = decoded - started
        metrics.decode(decoding)
        remaining = context.time_remaining()
        deadline = None if remaining is None else decoded + remaining
        assert version.batcher is not None
        outputs = await version.batcher.submit(inputs.arrays, rows, inputs.key, deadline)
        encoded = perf_counter()
        response = respond(outputs, state)
        encoding = perf_counter() - encoded
        metrics.encode(encoding)
        return response
    except ServingError as error:
        grpc_code = status_code(error)
        code = grpc_code.name
        await context.abort(grpc_code, str(error))
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception as error:
        code = "INTERNAL"
        LOGGER.exception("event=infer_failed api=%s model=%s", api, version.description)
        await context.abort(grpc.StatusCode.INTERNAL, f"{version.description}: {error}")
    finally:
        version.finished(api, code, perf_counter() - started, rows, decoding, encoding)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
