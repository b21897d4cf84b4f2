"""``zchannels status``: one screen for a person, from the stats files and /proc.

Every process that wrote stats, with its role, pid, uptime, CPU (user + system
seconds, and the share of one core since the last screen) and resident memory,
then the host's headline figures: open clients, events and messages per second,
each pool's depth, and the errors, refusals and losses. ``--watch [SECONDS]``
redraws it until Ctrl-C.

Rates are each process's own: the difference between two of its writes of its stats
file (the one read and the earlier one it names, or the one this command read a
screen before, whichever is older), over the time between them, summed over the
processes (`runtime.metrics.rates`). Every screen's rates are therefore right
whatever the interval between screens. A single screen still waits a second for the
CPU shares. /proc is Linux's; where it cannot be read (another user's process under a
hardened /proc) the columns say ``?``.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from zchannels.core.config import Config
from zchannels.core.metrics import earlier, parse_key, process_key, process_label, rates, summarize
from zchannels.core.stats import collect

WATCH_DEFAULT = 2.0  # seconds between screens under --watch with no value
CPU_WINDOW = 1.0  # seconds between the two readings of a single screen (CPU moves in ticks)
WATCH_MIN, WATCH_MAX = 0.1, 3600.0  # seconds: the bounds of --watch
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen (only on a terminal)

try:
    CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
except (ValueError, OSError, AttributeError):  # not Linux
    CLOCK_TICKS = 100


@dataclass(frozen=True)
class ProcSample:
    pid: int
    uptime: float | None  # seconds since the process started
    cpu_seconds: float | None  # user + system
    cpu_percent: float | None  # of one core, since the previous sample (or the start)
    rss_bytes: int | None


def read_proc(pid: int) -> tuple[float | None, float | None, int | None]:
    """(uptime seconds, user+system CPU seconds, RSS bytes) of a process, from
    /proc/<pid>/stat and /proc/<pid>/status; None for what cannot be read."""
    uptime = cpu = None
    rss = None
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            fields = f.read().rpartition(")")[2].split()
        with open("/proc/uptime") as f:
            system_uptime = float(f.read().split()[0])
        # Fields 14, 15 (utime, stime) and 22 (starttime), counted from 1, in ticks.
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        uptime = max(0.0, system_uptime - int(fields[19]) / CLOCK_TICKS)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024  # given in kB
                    break
    except (OSError, ValueError, IndexError):
        pass
    return uptime, cpu, rss


class Sampler:
    """CPU shares between successive samples of the same processes."""

    def __init__(self) -> None:
        self.previous: dict[int, tuple[float, float]] = {}  # pid -> (cpu s, monotonic s)

    def sample(self, processes: list[dict[str, Any]]) -> list[ProcSample]:
        now = time.monotonic()
        samples, seen = [], {}
        for data in processes:
            pid = data.get("pid")
            if not isinstance(pid, int):
                samples.append(ProcSample(0, None, None, None, None))
                continue
            uptime, cpu, rss = read_proc(pid)
            percent = None
            if cpu is not None:
                before = self.previous.get(pid)
                if before is not None and now > before[1]:
                    percent = 100.0 * (cpu - before[0]) / (now - before[1])
                elif uptime:  # the first sample: the average since the process started
                    percent = 100.0 * cpu / uptime
                seen[pid] = (cpu, now)
            samples.append(ProcSample(pid, uptime, cpu, percent, rss))
        self.previous = seen
        return samples


def activity(data: dict[str, Any]) -> tuple[float, float]:
    """(events, ZeroMQ messages) a process has counted: events handed to pools for an
    interface, run for a worker, dispatched for the broker."""
    counts = data.get("counters", {})
    role = str(data.get("role", ""))
    if role == "interface":
        events = sum(v for k, v in counts.items() if parse_key(k)[0] == "events_sent")
    elif role == "broker":
        events = counts.get("dispatched", 0)
    else:
        events = counts.get("events", 0)
    return float(events), float(counts.get("zmq_sent", 0))


def rate(now: float, before: float, seconds: float) -> float | None:
    if seconds <= 0:
        return None
    return max(0.0, now - before) / seconds  # a restarted process counts from zero


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _number(value: float | None, digits: int = 1) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def render(config: Config, processes: list[dict[str, Any]], samples: list[ProcSample],
           before: list[dict[str, Any]] | None) -> str:
    """One screen. `before`: the previous reading (None: the rates come from the files
    alone)."""
    previous = {process_key(d): d for d in before or ()}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    lines = [f"zchannels status  {stamp}  run dir {config.run_dir}"]
    if not processes:
        lines.append(f"no running zchannels process has written stats in "
                     f"{config.run_dir}/stats")
        return "\n".join(lines) + "\n"
    lines.append(f"{'ROLE':<18} {'PROCESS':<20} {'PID':>7} {'UPTIME':>11} {'CPU s':>8} "
                 f"{'CPU %':>6} {'RSS MiB':>8} {'EVENTS/s':>9} {'MSGS/s':>9}")
    for data, proc in zip(processes, samples):
        events_rate = messages_rate = None
        old = earlier(data, previous)
        if old is not None:
            seconds = float(data.get("time", 0)) - float(old.get("time", 0))
            (events, messages), (events0, messages0) = activity(data), activity(old)
            events_rate = rate(events, events0, seconds)
            messages_rate = rate(messages, messages0, seconds)
        rss = None if proc.rss_bytes is None else proc.rss_bytes / 2**20
        lines.append(f"{str(data.get('role')):<18} {process_label(data):<20} "
                     f"{data.get('pid', '?'):>7} {_duration(proc.uptime):>11} "
                     f"{_number(proc.cpu_seconds, 2):>8} {_number(proc.cpu_percent):>6} "
                     f"{_number(rss):>8} {_number(events_rate):>9} "
                     f"{_number(messages_rate):>9}")
    now = summarize(processes)
    lines.append("")
    lines.append(f"clients   websockets {now['websockets']:.0f}   SSE streams "
                 f"{now['sse_streams']:.0f}   long-polls {now['long_polls']:.0f}   HTTP "
                 f"requests {now['http_requests']:.0f}")
    figures = rates(processes, before)
    if figures is not None:
        latency = "-" if figures["latency_ms"] is None else f"{figures['latency_ms']:.1f} ms"
        shortest, longest = figures["seconds"]
        span = f"{shortest:.1f}" if longest - shortest < 0.05 else \
            f"{shortest:.1f}-{longest:.1f}"
        lines.append(f"traffic   events/s {_number(figures['events'])} (WebSocket messages "
                     f"{_number(figures['receives'])})   messages out/s "
                     f"{_number(figures['deliveries'])}   ZeroMQ messages/s "
                     f"{_number(figures['zmq_messages'])}   mean event latency {latency}"
                     f"   (each process over its last {span} s)")
    for name, pool in sorted(now["pools"].items()):
        workers = pool["busy"] + pool["free"]
        lines.append(f"pool      {name}: depth {pool['depth']:.0f}   in flight "
                     f"{pool['in_flight']:.0f}   busy {pool['busy']:.0f} of {workers:.0f} "
                     f"workers   backlog {pool['backlog']:.0f}   capacity "
                     f"{pool['capacity']:.0f}")
    lines.append(f"problems  consumer errors {now['consumer_errors']:.0f}   event timeouts "
                 f"{now['event_timeouts']:.0f}   refusals {now['refusals']:.0f}   losses "
                 f"{now['losses']:.0f}   redelivered {now['redelivered']:.0f}   (totals)")
    return "\n".join(lines) + "\n"


def main(config: Config, watch: float | None, count: int | None = None,
         out: TextIO = sys.stdout) -> int:
    """Print one screen, or one every `watch` seconds (`count` of them, or until
    Ctrl-C). 1 if no process has written stats."""
    if watch is not None and not WATCH_MIN <= watch <= WATCH_MAX:
        print(f"zchannels status: --watch must be {WATCH_MIN:g}..{WATCH_MAX:g} seconds",
              file=sys.stderr)
        return 2
    if count is not None and count < 1:
        print("zchannels status: --count must be 1 or more", file=sys.stderr)
        return 2
    sampler = Sampler()
    clear = CLEAR if watch is not None and out.isatty() else ""
    try:
        before = collect(config.run_dir)
        sampler.sample(before)
        if not before:
            out.write(render(config, [], [], None))
            return 1
        shown = 0
        # The rates come from the files; CPU time moves in 10 ms ticks: a second at least
        # between two samples when there is time.
        time.sleep(CPU_WINDOW if watch is None else min(watch, CPU_WINDOW))
        while True:
            processes = collect(config.run_dir)
            screen = render(config, processes, sampler.sample(processes), before)
            out.write(clear + screen + ("" if clear else "\n" if watch is not None else ""))
            out.flush()
            shown += 1
            if watch is None or (count is not None and shown >= count):
                return 0 if processes else 1
            before = processes
            time.sleep(watch)
    except KeyboardInterrupt:
        out.write("\n")
        return 0
