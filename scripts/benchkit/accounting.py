"""What the server spent per operation (round trip, request, delivery): CPU time and
context switches from /proc, and ZeroMQ messages from the processes' own counters.

Every zchannels server process keeps a counter ``zmq_sent`` (ZeroMQ messages it sent) in
``<run_dir>/stats/<role>.<pid>.json`` (runtime/core/stats.py), rewritten every
``stats_interval`` seconds. A file is therefore a snapshot taken up to one interval
ago: the bench reads "before" only from files written after the connections were
open and the server went quiet, and "after" only from files written after the last
answer arrived. A process that writes no such file in time, a process that appeared or
disappeared in between, or a server that does not count ``zmq_sent`` gives no figure
(None, with the reason), never a wrong one. Which processes count is never decided by
their role: every live process that writes a stats file (or announces itself in
``run_dir/ready``) is a server process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from zchannels.core.stats import collect

COUNTER = "zmq_sent"
POLL_INTERVAL = 0.05  # seconds between looks at the stats directory
WAIT_INTERVALS = 3  # stats intervals to wait for a fresh file at most

Snapshot = dict[int, dict[str, Any]]  # pid -> the newest stats file of that process


@dataclass(frozen=True)
class StatsSource:
    """Where a server's processes write their counters, and how often."""

    run_dir: str
    interval: float  # seconds between two writes of one process's file

    @property
    def timeout(self) -> float:
        """How long to wait for every process to write a fresh file."""
        return max(1.0, WAIT_INTERVALS * self.interval)


def read_stats(run_dir: str) -> Snapshot:
    """The stats file of every live process in ``run_dir/stats``, by pid."""
    return {data["pid"]: data for data in collect(run_dir) if isinstance(data.get("pid"), int)}


def fresh(snapshot: Snapshot, pids: list[int], since: float) -> Snapshot:
    """The files of `pids` written after `since` (wall-clock seconds)."""
    return {pid: snapshot[pid] for pid in pids
            if pid in snapshot and _time(snapshot[pid]) > since}


def wait_for_fresh(run_dir: str, pids: list[int], since: float, timeout: float) -> Snapshot:
    """Wait (at most `timeout` seconds) until every one of `pids`, and every other live
    process with a stats file, has written it after `since`; the files as they are then
    (a late process's file is stale, or missing)."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = read_stats(run_dir)
        wanted = set(pids) | set(snapshot)
        if len(fresh(snapshot, sorted(wanted), since)) == len(wanted) \
                or time.monotonic() >= deadline:
            return snapshot
        time.sleep(POLL_INTERVAL)


def _time(data: dict[str, Any]) -> float:
    value = data.get("time")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _name(pid: int, *snapshots: Snapshot) -> str:
    for snapshot in snapshots:
        if pid in snapshot:
            return f"{snapshot[pid].get('role', '?')}.{pid}"
    return f"process {pid}"


def messages_per_op(before: Snapshot, after: Snapshot, ops: int, before_since: float,
                    after_since: float, pids: list[int] | tuple[int, ...] = ()
                    ) -> tuple[float | None, str | None]:
    """ZeroMQ messages sent by all server processes per operation, or (None, why not).

    `before` must hold, for every process, a file written after `before_since` (the
    server was quiet from then until the load began), `after` one written after
    `after_since` (the last answer); both must cover the same processes, and every
    one of `pids` (the server processes known otherwise, e.g. from run_dir/ready)."""
    if ops <= 0:
        return None, "no operation completed"
    silent = [f"process {pid}" for pid in pids if pid not in before and pid not in after]
    if silent:
        return None, "no stats file from " + ", ".join(silent)
    pids = sorted(set(before) | set(after))
    if not pids:
        return None, "no server process writes a stats file"
    stale = [_name(pid, after, before) for pid in pids
             if pid in before and _time(before[pid]) <= before_since
             or pid in after and _time(after[pid]) <= after_since]
    if stale:
        return None, "no fresh stats file from " + ", ".join(stale)
    changed = [_name(pid, after, before) for pid in pids
               if pid not in before or pid not in after]
    if changed:
        return None, "server processes came or went during the load: " + ", ".join(changed)
    counting = [pid for pid in pids if COUNTER in after[pid].get("counters", {})]
    if not counting:
        return None, f"the server counts no {COUNTER} yet"
    lacking = [_name(pid, after) for pid in pids if pid not in counting
               or COUNTER not in before[pid].get("counters", {})]
    if lacking:
        return None, f"no {COUNTER} counter in " + ", ".join(lacking)
    sent = 0
    for pid in pids:
        delta = after[pid]["counters"][COUNTER] - before[pid]["counters"][COUNTER]
        if delta < 0:  # the counter started again: the process was replaced
            return None, f"{COUNTER} went backwards in {_name(pid, after)}"
        sent += delta
    return sent / ops, None


def cpu_per_op(before: dict[int, float], after: dict[int, float], ops: int) -> float | None:
    """Server CPU seconds (user + system, summed over the processes) per operation.
    A process that is gone reads as 0 afterwards; its share is not counted."""
    if ops <= 0 or not before:
        return None
    used = sum(max(0.0, after.get(pid, 0.0) - start) for pid, start in before.items())
    return used / ops


def switches_per_op(before: dict[int, dict[int, int]], after: dict[int, dict[int, int]],
                    ops: int) -> float | None:
    """Server context switches (voluntary + involuntary, summed over every thread of every
    process read before) per operation; the readings are pid -> thread id -> count
    (servers.switches_by_pid). A thread that started in between counts from 0; one that
    ended before "after" was read, or a process that is gone, counts nothing: Linux
    shows no other process the switches of its ended threads (servers.switches_by_thread)."""
    if ops <= 0 or not before:
        return None
    used = 0
    for pid, threads in before.items():
        for tid, count in after.get(pid, {}).items():
            used += max(0, count - threads.get(tid, 0))
    return used / ops
