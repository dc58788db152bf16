"""Small helpers for benchmarks: timing, percentiles, and printing figures beside floors."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank on sorted samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def time_op(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds per call of fn over ``repeat`` calls, timed one by one."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def us(seconds: float) -> float:
    return round(seconds * 1_000_000, 2)
