"""Latency histogram: constant memory, mergeable across client processes.

Buckets grow geometrically by `GROWTH` (1 %), so any percentile is known to within
1 % of its value however many samples there are. The smallest and largest sample are
kept exactly. Client processes send their histogram to the parent as a plain dict.
"""
from __future__ import annotations

import math
from typing import Any

GROWTH = 1.01
MIN_SECONDS = 1e-6  # everything at or below one microsecond shares bucket 0
_LOG_GROWTH = math.log(GROWTH)


class Histogram:
    __slots__ = ("buckets", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    @staticmethod
    def bucket_of(seconds: float) -> int:
        if seconds <= MIN_SECONDS:
            return 0
        return int(math.log(seconds / MIN_SECONDS) / _LOG_GROWTH) + 1

    @staticmethod
    def value_of(bucket: int) -> float:
        """A representative value of a bucket: the geometric middle of its bounds."""
        if bucket <= 0:
            return MIN_SECONDS
        return MIN_SECONDS * GROWTH ** (bucket - 0.5)

    def record(self, seconds: float) -> None:
        bucket = self.bucket_of(seconds)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: "Histogram") -> None:
        for bucket, n in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (0 < p <= 100), by the nearest-rank method; None if empty."""
        if not self.count:
            return None
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {p}")
        rank = max(1, math.ceil(p / 100 * self.count))
        if rank == 1:
            return self.min
        if rank == self.count:
            return self.max
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                # Clamped, so p100 is the exact maximum and no percentile is below the minimum.
                return min(max(self.value_of(bucket), self.min), self.max)
        return self.max  # pragma: no cover (the counts always reach the rank)

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": self.mean(),
                "p50": self.percentile(50), "p90": self.percentile(90),
                "p99": self.percentile(99), "max": self.max if self.count else None}

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": {str(k): v for k, v in self.buckets.items()}, "count": self.count,
                "total": self.total, "min": self.min if self.count else None,
                "max": self.max}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Histogram":
        h = cls()
        h.buckets = {int(k): v for k, v in data["buckets"].items()}
        h.count = data["count"]
        h.total = data["total"]
        h.min = math.inf if data["min"] is None else data["min"]
        h.max = data["max"]
        return h

    def cdf_points(self) -> tuple[list[float], list[float]]:
        """(latency seconds, fraction of samples at or below it), for plotting."""
        xs, ys, seen = [], [], 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            xs.append(min(max(self.value_of(bucket), self.min), self.max))
            ys.append(seen / self.count)
        return xs, ys
