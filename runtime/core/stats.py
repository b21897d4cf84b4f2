"""Counters every process keeps, written to ``<run_dir>/stats/<role>.<pid>.json``.

Nothing is lost silently: each refusal, drop and garbage message bumps a named
counter here. Each process rewrites its file (atomically) every
``stats_interval`` seconds when something changed, and once more at exit;
``zchannels stats`` prints the files of the processes that are still running, a
line each. A process removes the files of dead processes when it starts, so a
restarted process starts from zero (the supervisord log says it restarted).

Besides plain counts and gauges a process may keep histograms (fixed buckets, as
the interfaces' event latency), and give any of them labels in its key
(`labelled`): ``zchannels.core.metrics`` renders all of it for Prometheus, and
``zchannels status`` and the dashboard read the same files.

Each file also carries ``previous``: the time, counters and histograms of an earlier
write of the same process, the newest at least RATE_WINDOW before this one. A reader
takes each process's rates from its own file -- two writes' times and counters --
whenever it reads, and sums them: every process writes at its own moment, so one
process's time says nothing of another's counters.
"""
from __future__ import annotations

import bisect
import collections
import json
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

log = logging.getLogger("zchannels.stats")


# Event latency (seconds), queued -> done: from half a millisecond to event_timeout's default.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds a file's rates span at least (its "previous" write is that much older, or more
# when stats_interval is longer): over a shorter span a steady load's counts would jump by
# whole messages, e.g. 2 or 3 in 0.2 s at 10/s.
RATE_WINDOW = 2.0


def labelled(name: str, **labels: str) -> str:
    """The key of a counter, gauge or histogram with labels: ``name{key=value,...}``.
    `zchannels.core.metrics` turns it into a Prometheus label set; values must not contain
    ``,``, ``=`` or ``}`` (pool and channel names cannot)."""
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


class Histogram:
    """Observations counted in fixed buckets, as a Prometheus histogram: one bisect and
    a few additions per observation, nothing allocated. It also keeps the exact count,
    smallest and largest value, so percentiles are known to within a bucket (clamped to
    what was seen); with geometric bounds (`geometric_bounds`), to within their growth.
    The interfaces keep their event latency in one; the bench (scripts/benchkit) its
    round trips, with 1 % buckets."""

    __slots__ = ("bounds", "counts", "sum", "count", "min", "max")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)  # upper bounds, increasing; +Inf is implied
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.sum += value
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("only histograms with the same buckets can be merged")
        for i, n in enumerate(other.counts):
            if n:
                self.counts[i] += n
        self.sum += other.sum
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def representative(self, bucket: int) -> float:
        """A value for the observations of bucket `bucket`: the geometric middle of its
        bounds (the arithmetic one for the first), within what was seen."""
        upper = self.bounds[bucket] if bucket < len(self.bounds) else self.max
        lower = self.bounds[bucket - 1] if bucket > 0 else min(self.min, upper)
        middle = math.sqrt(lower * upper) if lower > 0 and upper > 0 else (lower + upper) / 2
        return min(max(middle, self.min), self.max)

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
        for bucket, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.representative(bucket)
        return self.max  # pragma: no cover (the counts always reach the rank)

    def snapshot(self) -> dict[str, Any]:
        """What a stats file keeps (zchannels.core.metrics renders it)."""
        return {"buckets": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    def to_dict(self) -> dict[str, Any]:
        """Everything, with only the buckets that have observations (JSON-ready)."""
        return {"bounds": list(self.bounds),
                "counts": {str(i): n for i, n in enumerate(self.counts) if n},
                "sum": self.sum, "count": self.count,
                "min": self.min if self.count else None,
                "max": self.max if self.count else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls(data["bounds"])
        for i, n in data["counts"].items():
            histogram.counts[int(i)] = n
        histogram.sum, histogram.count = data["sum"], data["count"]
        if data["count"]:
            histogram.min, histogram.max = data["min"], data["max"]
        return histogram


def geometric_bounds(smallest: float, growth: float, largest: float) -> tuple[float, ...]:
    """Bucket bounds from `smallest` up, each `growth` times the last, past `largest`:
    any percentile is then known to within `growth` of its value."""
    bounds = [smallest]
    while bounds[-1] < largest:
        bounds.append(bounds[-1] * growth)
    return tuple(bounds)


class Counters(dict[str, int]):
    """A dict of named counts; `gauges` are callables read at write time; `histograms`
    are written with them."""

    def __init__(self) -> None:
        super().__init__()
        self.gauges: dict[str, Callable[[], Any]] = {}
        self.histograms: dict[str, Histogram] = {}
        self.role = "process"
        self.path: str | None = None
        self._written: dict[str, int] = {}
        self._written_at = 0.0
        # Earlier writes, oldest first: {"time", "counters", "histograms"} (`_previous`).
        self._history: collections.deque[dict[str, Any]] = collections.deque()

    def incr(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n

    def setup(self, run_dir: str, role: str) -> None:
        self.role = role
        # Every process counts the ZeroMQ messages it sends (the bench's messages per
        # operation): 0 means "none", absent would mean "not counted".
        self.setdefault("zmq_sent", 0)
        directory = os.path.join(run_dir, "stats")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, f"{role}.{os.getpid()}.json")
        for name in os.listdir(directory):
            pid = name.split(".")[-2] if name.endswith(".json") else ""
            if pid.isdigit() and not alive(int(pid)):
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:  # another process pruned it first
                    pass

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "pid": os.getpid(), "time": time.time()}
        # The supervisord program (e.g. interface-0), for the metrics' process label.
        data["process"] = os.environ.get("SUPERVISOR_PROCESS_NAME", "")
        data["counters"] = dict(self)
        data["gauges"] = {name: read() for name, read in self.gauges.items()}
        if self.histograms:
            data["histograms"] = {name: h.snapshot() for name, h in self.histograms.items()}
        return data

    def write(self, force: bool = False) -> None:
        """Write the file if a counter changed, or always if forced or if there are
        gauges (they may have changed without a counter moving)."""
        if self.path is None or (not force and dict(self) == self._written and not self.gauges):
            return
        data = self.snapshot()
        previous = self._previous(data["time"])
        if previous is not None:
            data["previous"] = previous
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except OSError as e:  # a full disk must not take the process down
            log.warning("cannot write stats to %s: %s", self.path, e)
            return
        self._written = data["counters"]
        self._written_at = time.monotonic()
        self._history.append({"time": data["time"], "counters": data["counters"],
                              "histograms": data.get("histograms", {})})

    def _previous(self, now: float) -> dict[str, Any] | None:
        """The earlier write a file written at `now` names as its ``previous``: the newest
        one at least RATE_WINDOW old (the oldest kept while the process is younger). The
        writes before it are no longer needed."""
        history = self._history
        while len(history) > 1 and history[1]["time"] <= now - RATE_WINDOW:
            history.popleft()
        return history[0] if history else None

    def due(self, interval: float) -> bool:
        return time.monotonic() - self._written_at >= interval


counters = Counters()


def collect(run_dir: str) -> list[dict[str, Any]]:
    """Read the stats files of processes that are still alive."""
    directory = os.path.join(run_dir, "stats")
    result: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return result
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if alive(data.get("pid")):
            result.append(data)
    return result


def alive(pid: Any) -> bool:
    """Is there a process with this pid (ours or not)?"""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
