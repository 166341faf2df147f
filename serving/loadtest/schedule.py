"""Arrival times for the open-loop load model.

An open-loop generator sends on a schedule fixed in advance, whatever the server does, and
measures each latency from the *scheduled* send time; a stalled server then shows up as
latency instead of silently lowering the offered load (coordinated omission).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from serving.loadtest.errors import SettingsError

ARRIVALS = ("poisson", "constant")


def arrival_offsets(
    rate_per_second: float, arrival: str = "poisson", seed: int = 0
) -> Iterator[float]:
    """Endless, increasing send offsets (seconds from the start), ``rate_per_second`` on average.

    Poisson arrivals have exponential gaps (mean ``1/rate``), the traffic of many independent
    users; ``constant`` spaces them evenly. The same seed gives the same schedule.
    """
    if not rate_per_second > 0.0:
        raise SettingsError(f"rate must be positive requests/s; got {rate_per_second}")
    if arrival not in ARRIVALS:
        raise SettingsError(f"arrival must be one of {', '.join(ARRIVALS)}; got {arrival!r}")
    if arrival == "constant":
        gap = 1.0 / rate_per_second
        n = 0
        while True:
            yield n * gap
            n += 1
    rng = random.Random(seed)
    offset = 0.0
    while True:
        offset += rng.expovariate(rate_per_second)
        yield offset
