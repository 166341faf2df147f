"""How the gRPC door answers a ServingError, and the deadline a call brings."""

from __future__ import annotations

from typing import NoReturn

import grpc

from serving.errors import ServingError, status_code


async def abort_with(context: grpc.aio.ServicerContext, error: ServingError) -> NoReturn:
    """End the call with the error's status code and message."""
    await context.abort(status_code(error), str(error))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def deadline_of(context: grpc.aio.ServicerContext, started: float) -> float | None:
    """The call's deadline as a ``perf_counter()`` instant (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else started + remaining
