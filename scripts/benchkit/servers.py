"""The server processes being measured: which they are, their memory, CPU and context
switches (from /proc)."""
from __future__ import annotations

import os
from typing import Callable

# The two lines of /proc/PID/task/TID/status that count a thread's context switches.
SWITCH_FIELDS = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def zchannels_pids(run_dir: str) -> dict[int, str]:
    """Every zchannels process of the copy using `run_dir`: each writes
    ``run_dir/ready/<role>.<pid>`` once it is up (runtime/wire/process.py). pid -> role."""
    ready = os.path.join(run_dir, "ready")
    found = {}
    try:
        names = os.listdir(ready)
    except FileNotFoundError:
        return {}
    for name in names:
        role, _, pid = name.rpartition(".")
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            found[int(pid)] = role
    return found


def server_pids(run_dir: str) -> list[int]:
    """Every live process of the zchannels copy using `run_dir`, whatever its role: those
    announced in ``run_dir/ready`` and those writing ``run_dir/stats/<role>.<pid>.json``."""
    found = set(zchannels_pids(run_dir))
    try:
        names = os.listdir(os.path.join(run_dir, "stats"))
    except FileNotFoundError:
        names = []
    for name in names:
        parts = name.split(".")
        if name.endswith(".json") and len(parts) >= 3 and parts[-2].isdigit() \
                and os.path.exists(f"/proc/{parts[-2]}"):
            found.add(int(parts[-2]))
    return sorted(found)


def children(pid: int) -> list[int]:
    """Direct children of a process (Linux 3.5+ exposes them per thread)."""
    result: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                result += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return result


def with_descendants(pids: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += children(pid)
    return seen


def rss_bytes(pid: int) -> int:
    """Resident set size of one process; 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (FileNotFoundError, ProcessLookupError):
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far; 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def command(pid: int) -> str:
    """A process's command line, shortened to what names its role."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return "?"
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(args) if a)[:80]


def rss_by_pid(pids: list[int]) -> dict[int, int]:
    return {pid: rss_bytes(pid) for pid in pids}


def total_rss(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def task_statuses(pid: int) -> dict[int, str]:
    """The text of ``/proc/PID/task/TID/status`` of every thread of a process, by thread
    id; {} once it has gone. A thread that ends while they are read is left out."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return {}
    found = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                found[int(tid)] = f.read()
        except (FileNotFoundError, ProcessLookupError):
            pass
    return found


def parse_switches(status: str) -> int | None:
    """Voluntary + involuntary context switches from one status text; None without them."""
    counts = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in SWITCH_FIELDS and value.strip().isdigit():
            counts[name] = int(value)
    return sum(counts.values()) if len(counts) == len(SWITCH_FIELDS) else None


def switches_by_thread(pid: int, read: Callable[[int], dict[int, str]] = task_statuses
                       ) -> dict[int, int]:
    """Context switches so far of every live thread of a process, by thread id.

    Per thread, not ``/proc/PID/status``: that file counts the main thread only (Linux's
    fs/proc/array.c prints the leader's own nvcsw/nivcsw), and the counts of threads that
    ended are kept only where getrusage(RUSAGE_SELF) sees them, which no other process
    can read. So a thread that ends between two readings takes its count with it."""
    found = {}
    for tid, status in read(pid).items():
        count = parse_switches(status)
        if count is not None:
            found[tid] = count
    return found


def switches_by_pid(pids: list[int], read: Callable[[int], dict[int, str]] = task_statuses
                    ) -> dict[int, dict[int, int]]:
    return {pid: switches_by_thread(pid, read) for pid in pids}
