"""Per-version inference statistics with Triton's semantics (the ModelStatistics RPC).

Kept apart from the Prometheus metrics because they must exist with ``--no-metrics`` too.
They are one consistent snapshot, as in Triton: a request's success count and its four
durations (queue, compute input, compute infer, compute output) are recorded together, in
one step, when it is answered, so any read sees ``success.count == queue.count ==
compute_input.count == compute_infer.count == compute_output.count`` (Triton's
perf_analyzer refuses to run otherwise). A failed request counts only in ``fail``. Plain
integers, touched only on the event loop thread (the batcher reports from there as well),
so no locks.

Triton's meaning of each figure, which ``/metrics`` agrees with for the same traffic:

* ``success``/``fail``: requests answered OK / with an error, and their server-side time
  (``success.count`` = ``d2lserve_requests_total{code="OK"}`` of the version).
* ``queue``, ``compute_input``, ``compute_infer``, ``compute_output``: for successful
  requests, time waiting for the batcher, decoding plus gathering the inputs into the
  batch, the batch's ``session.run``, and handing back the rows plus encoding the response.
* ``inference_count``: rows of successful requests (``d2lserve_inferred_rows_total``);
  ``execution_count``: ``session.run`` calls (``d2lserve_executions_total``).
* ``batch_stats``: per batch size, executions and their input/infer/output times.
"""

from __future__ import annotations

import time

from protos import grpc_service_pb2 as pb

_NS = 1_000_000_000


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * _NS) * count

    def into(self, message: pb.StatisticDuration) -> None:
        message.count = self.count
        message.ns = self.ns


class _Batch:
    __slots__ = ("infer", "input", "output")

    def __init__(self) -> None:
        self.input = _Duration()
        self.infer = _Duration()
        self.output = _Duration()


class VersionStatistics:
    """Counters of one model version since it loaded."""

    __slots__ = (
        "compute_infer",
        "compute_input",
        "compute_output",
        "execution_count",
        "fail",
        "inference_count",
        "last_inference_ms",
        "queue",
        "sizes",
        "success",
    )

    def __init__(self) -> None:
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.sizes: dict[int, _Batch] = {}

    # -- reported by the batcher -----------------------------------------------------

    def executed(self, rows: int, gather: float, infer: float, scatter: float) -> None:
        """One execution of ``rows`` rows finished (``batch_stats``, ``execution_count``).

        ``gather``: joining the requests' inputs; ``infer``: ``session.run``; ``scatter``:
        handing each request its rows. The requests' own figures come with ``succeeded``.
        """
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        batch = self.sizes.get(rows)
        if batch is None:
            batch = self.sizes[rows] = _Batch()
        batch.input.add(gather)
        batch.infer.add(infer)
        batch.output.add(scatter)

    # -- reported by the request path, once per request ------------------------------

    def succeeded(
        self,
        seconds: float,
        rows: int,
        queue: float,
        compute_input: float,
        compute_infer: float,
        compute_output: float,
    ) -> None:
        """A request answered OK: every count moves by one, together."""
        self.success.add(seconds)
        self.inference_count += rows
        self.queue.add(queue)
        self.compute_input.add(compute_input)
        self.compute_infer.add(compute_infer)
        self.compute_output.add(compute_output)

    def failed(self, seconds: float) -> None:
        self.fail.add(seconds)

    # -- read ------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        return self.success.count

    def into(self, message: pb.ModelStatistics) -> None:
        """Fill a ModelStatistics message (name and version are the caller's)."""
        message.last_inference = self.last_inference_ms
        message.inference_count = self.inference_count
        message.execution_count = self.execution_count
        stats = message.inference_stats
        self.success.into(stats.success)
        self.fail.into(stats.fail)
        self.queue.into(stats.queue)
        self.compute_input.into(stats.compute_input)
        self.compute_infer.into(stats.compute_infer)
        self.compute_output.into(stats.compute_output)
        for size in sorted(self.sizes):
            batch = self.sizes[size]
            entry = message.batch_stats.add(batch_size=size)
            batch.input.into(entry.compute_input)
            batch.infer.into(entry.compute_infer)
            batch.output.into(entry.compute_output)
