"""Latency histograms of the bench: `zchannels.core.stats.Histogram` with 1 % buckets.

Buckets grow geometrically by `GROWTH` (1 %) from a microsecond to `LARGEST`, so any
percentile is known to within 1 % of its value however many samples there are; the
smallest and largest sample are kept exactly. Client processes send their histogram to
the parent as a plain dict (`Histogram.to_dict`).
"""
from __future__ import annotations

from zchannels.core.stats import Histogram, geometric_bounds

GROWTH = 1.01
MIN_SECONDS = 1e-6  # everything at or below one microsecond shares the first bucket
LARGEST = 120.0  # seconds: beyond it, one bucket (the exact maximum is still kept)
BOUNDS = geometric_bounds(MIN_SECONDS, GROWTH, LARGEST)


def latency_histogram() -> Histogram:
    return Histogram(BOUNDS)


def summary(histogram: Histogram) -> dict[str, float | int | None]:
    return {"count": histogram.count, "mean": histogram.mean(),
            "p50": histogram.percentile(50), "p90": histogram.percentile(90),
            "p99": histogram.percentile(99),
            "max": histogram.max if histogram.count else None}


def cdf_points(histogram: Histogram) -> tuple[list[float], list[float]]:
    """(latency seconds, fraction of samples at or below it), for plotting."""
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for bucket, n in enumerate(histogram.counts):
        if n:
            seen += n
            xs.append(histogram.representative(bucket))
            ys.append(seen / histogram.count)
    return xs, ys
