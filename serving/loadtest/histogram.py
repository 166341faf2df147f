"""A log-bucketed latency histogram: every latency recorded, percentiles within a stated error.

Keeping every latency in a list costs memory proportional to the run; a fixed-width histogram
loses the sub-millisecond detail. Like HdrHistogram, this one uses buckets whose width grows
with the value, so any percentile it reports is within ``relative_error`` (default 0.5 %) of the
exact nearest-rank percentile of the recorded values, at a few hundred buckets per run.
``min`` and ``max`` are kept exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from serving.loadtest.errors import SettingsError


class LatencyHistogram:
    """Counts of durations (seconds) in geometric buckets of ratio (1 + e) / (1 - e).

    Bucket ``i`` holds values in ``[lowest * g**i, lowest * g**(i + 1))`` and reports
    ``lowest * g**i * (1 + e)``, which is within ``e`` of every value in the bucket.
    Values below ``lowest_seconds`` (1 µs, far below any gRPC round trip) share an underflow
    bucket reported as the exact minimum.
    """

    __slots__ = (
        "_counts",
        "_inv_log_gamma",
        "count",
        "gamma",
        "lowest",
        "max",
        "min",
        "relative_error",
        "total",
    )

    def __init__(self, relative_error: float = 0.005, lowest_seconds: float = 1e-6) -> None:
        if not 0.0 < relative_error < 0.5:
            raise SettingsError(f"relative_error must be in (0, 0.5); got {relative_error}")
        if lowest_seconds <= 0.0:
            raise SettingsError(f"lowest_seconds must be positive; got {lowest_seconds}")
        self.relative_error = relative_error
        self.lowest = lowest_seconds
        self.gamma = (1.0 + relative_error) / (1.0 - relative_error)
        self._inv_log_gamma = 1.0 / math.log(self.gamma)
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, seconds: float) -> None:
        if seconds >= self.lowest:
            index = int(math.log(seconds / self.lowest) * self._inv_log_gamma)
        else:
            index = -1
        counts = self._counts
        counts[index] = counts.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def record_many(self, values: Iterable[float]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts; both must use the same bucket layout."""
        if (other.relative_error, other.lowest) != (self.relative_error, self.lowest):
            raise SettingsError("cannot merge histograms with different bucket layouts")
        for index, n in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def _representative(self, index: int) -> float:
        if index < 0:
            return self.min
        value = self.lowest * self.gamma**index * (1.0 + self.relative_error)
        # Clamping to the exact extremes makes p0/p100 and one-value histograms exact.
        return min(max(value, self.min), self.max)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile ``q`` in [0, 100], in seconds; NaN when empty."""
        if not 0.0 <= q <= 100.0:
            raise SettingsError(f"percentile must be in [0, 100]; got {q}")
        if self.count == 0:
            return math.nan
        if q == 100.0:
            return self.max
        if q == 0.0:
            return self.min
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                return self._representative(index)
        return self.max  # unreachable: counts sum to self.count

    def buckets(self) -> Iterator[tuple[float, float, int]]:
        """Non-empty buckets as (lower_seconds, upper_seconds, count), ascending."""
        for index in sorted(self._counts):
            if index < 0:
                yield 0.0, self.lowest, self._counts[index]
            else:
                lower = self.lowest * self.gamma**index
                yield lower, lower * self.gamma, self._counts[index]
