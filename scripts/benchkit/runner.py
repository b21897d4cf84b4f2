"""Run one load against one server: start the client processes, step them through
their phases (client.py, modes.py), show progress, measure the server's CPU, memory and
ZeroMQ messages (accounting.py), and add up what the clients counted into one dict of
figures."""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from benchkit import accounting, servers
from benchkit.histogram import latency_histogram, summary as latency_summary
from zchannels.core.stats import Histogram
from benchkit.modes import client_process

PHASE_TIMEOUT = 180.0  # seconds for all clients to connect (or settle) at most
START_DELAY = 0.2  # seconds between "go" and the first message, so all start together
IDLE_SETTLE = 1.0  # seconds between the last idle check and the memory reading
CLIENT_SATURATED = 0.9  # share of one core above which a client process is the bottleneck
STOP_TIMEOUT = 10.0  # seconds for a client process to exit once told to close
# Seconds for the last messages of the handshakes (or the answers) to settle in the
# server's counters before its stats files count as "before" (or "after").
QUIET_MARGIN = 0.1


class BenchError(Exception):
    pass


class Clients:
    """The client processes of one run and their pipes."""

    def __init__(self, mode: str, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.count = spec["processes"]
        self.progress = ctx.Array("d", self.count, lock=False)
        self.pipes: list[Connection] = []
        self.procs = []
        for index in range(self.count):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=client_process, name=f"bench-client-{index}",
                               args=(mode, spec, index, child_end, self.progress), daemon=True)
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)

    def send_all(self, message: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    def gather(self, phase: str, timeout: float,
               while_waiting: Callable[[], None] | None = None) -> list[Any]:
        """The `phase` answer of every client, in client order."""
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < self.count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"client processes did not finish '{phase}' within "
                                 f"{timeout:.0f} s")
            waiting = [p for i, p in enumerate(self.pipes) if i not in answers]
            for ready in wait(waiting, min(left, 0.1)):
                pipe = waiting[waiting.index(ready)]  # type: ignore[arg-type]
                index = self.pipes.index(pipe)
                try:
                    kind, data = pipe.recv()
                except EOFError:
                    raise BenchError(f"client process {index} died during '{phase}'") from None
                if kind == "failed":
                    raise BenchError(f"client process {index} failed: {data}")
                if kind != phase:
                    raise BenchError(f"client process {index} said {kind!r}, not {phase!r}")
                answers[index] = data
            if while_waiting:
                while_waiting()
        return [answers[i] for i in range(self.count)]

    def done(self) -> float:
        return sum(self.progress)

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close",))
            except OSError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(STOP_TIMEOUT)


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal, unless forced)."""

    WIDTH = 30

    def __init__(self, label: str, duration: float, clients: Clients, enabled: bool) -> None:
        self.label, self.duration, self.clients = label, duration, clients
        self.enabled = enabled
        self.start = 0.0
        self.shown = 0.0

    def begin(self, start: float) -> None:
        self.start = start

    def update(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.shown < 0.25 and not final) or not self.start:
            return
        self.shown = now
        elapsed = max(0.0, now - self.start)
        share = min(1.0, elapsed / self.duration) if self.duration > 0 else 1.0
        filled = int(share * self.WIDTH)
        done = self.clients.done()
        rate = done / elapsed if elapsed > 0 else 0.0
        bar = "=" * filled + (">" if filled < self.WIDTH else "") + " " * (self.WIDTH - filled - 1)
        sys.stderr.write(f"\r  {self.label:<28} [{bar[:self.WIDTH]}] "
                         f"{min(elapsed, self.duration):5.1f}/{self.duration:.1f} s "
                         f"{done:>10,.0f} done {rate:>9,.0f}/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run_load(mode: str, spec: dict[str, Any], server_pids: Callable[[], list[int]],
             label: str, show_progress: bool,
             stats: accounting.StatsSource | None = None) -> dict[str, Any]:
    """Run `mode` with `spec` (see cli.py) against one server; every figure measured.
    With `stats`, also the ZeroMQ messages its processes sent per operation."""
    warnings: list[str] = []
    notes: list[str] = []
    pids = server_pids()
    rss_before = servers.total_rss(pids) if pids else None
    rss_each = servers.rss_by_pid(pids)
    started = time.monotonic()
    clients = Clients(mode, spec)
    progress = Progress(label, spec["duration"], clients, show_progress)
    try:
        ready = clients.gather("ready", PHASE_TIMEOUT)
        connect_seconds = time.monotonic() - started
        opened = sum(r["opened"] for r in ready)
        wanted = spec["subscribers"] if mode == "broadcast" else spec["connections"]
        if opened < wanted:
            reasons = sorted({e for r in ready for e in r["errors"]})[:5]
            warnings.append(f"only {opened:,} of {wanted:,} connections could be opened: "
                            + "; ".join(reasons))
        if mode == "broadcast":
            clients.send_all(("settle",))
            clients.gather("settled", PHASE_TIMEOUT)
        pids = server_pids()
        counted = stats is not None and mode != "idle"
        if counted:
            assert stats is not None
            # From here until "go" the server is quiet: its files written after now
            # hold the counters as they are when the load starts.
            time.sleep(QUIET_MARGIN)
            quiet_since = time.time()
            stats_before = accounting.wait_for_fresh(stats.run_dir, pids, quiet_since,
                                                     stats.timeout)
        cpu_before = servers.cpu_by_pid(pids)
        switches_before = servers.switches_by_pid(pids)
        start = time.monotonic() + START_DELAY
        deadline = start + spec["duration"]
        clients.send_all(("go", start, deadline))
        progress.begin(start)
        # The server's CPU is read when the load stops, not after the drain.
        at_deadline: dict[str, Any] = {}

        def while_waiting() -> None:
            progress.update()
            if not at_deadline and time.monotonic() >= deadline:
                at_deadline.update(cpu=servers.cpu_by_pid(pids), time=time.monotonic())
        results = clients.gather("result", spec["duration"] + spec["drain"] + PHASE_TIMEOUT,
                                 while_waiting)
        # Every answer counted is in: the CPU per operation covers the drain too.
        cpu_end = servers.cpu_by_pid(pids)
        switches_end = servers.switches_by_pid(pids)
        progress.update(final=True)
        if not at_deadline:
            at_deadline.update(cpu=servers.cpu_by_pid(pids), time=time.monotonic())
        if counted:
            assert stats is not None
            time.sleep(QUIET_MARGIN)
            answered_by = time.time()
            stats_after = accounting.wait_for_fresh(stats.run_dir, pids, answered_by,
                                                    stats.timeout)
        cpu_after = at_deadline["cpu"]
        server_wall = max(1e-9, at_deadline["time"] - start)
        figures: dict[str, Any] = {"connect_seconds": round(connect_seconds, 3),
                                   # other work on the machine shows here (1, 5, 15 min)
                                   "loadavg": os.getloadavg(),
                                   "opened": opened, "wanted": wanted}
        if mode == "idle":
            time.sleep(IDLE_SETTLE)
            pids = server_pids()
            rss_after = servers.total_rss(pids)
            figures["server_processes"] = len(pids)
            if rss_before is None or not pids:
                warnings.append("no server process found: memory not measured "
                                "(give --run-dir or --server-pid)")
            else:
                figures.update(rss_before=rss_before, rss_after=rss_after,
                               rss_per_connection=(rss_after - rss_before) / max(1, opened))
                after_each = servers.rss_by_pid(pids)
                figures["rss_by_process"] = [
                    {"pid": pid, "command": servers.command(pid),
                     "before": rss_each.get(pid), "after": after_each[pid]} for pid in pids]
    finally:
        clients.stop()
    figures.update(aggregate(mode, spec, results, warnings))
    if pids and mode != "idle":
        used = sum(cpu_after.get(p, 0.0) - cpu_before.get(p, 0.0) for p in pids)
        figures["server_cpu"] = used / server_wall  # in cores
        figures["server_processes"] = len(pids)
        figures["cpu_per_op"] = accounting.cpu_per_op(cpu_before, cpu_end,
                                                      figures["received"])
        figures["ctx_per_op"] = accounting.switches_per_op(switches_before, switches_end,
                                                           figures["received"])
    if counted:
        figures["zmq_per_op"], why_not = accounting.messages_per_op(
            stats_before, stats_after, figures["received"], quiet_since, answered_by, pids)
        figures["zmq_sent_by_process"] = [
            {"pid": pid, "role": stats_after.get(pid, stats_before.get(pid, {})).get("role"),
             "before": stats_before.get(pid, {}).get("counters", {}).get(accounting.COUNTER),
             "after": stats_after.get(pid, {}).get("counters", {}).get(accounting.COUNTER)}
            for pid in sorted(set(stats_before) | set(stats_after))]
        if why_not:
            notes.append(f"ZeroMQ messages per operation not measured: {why_not}")
    figures["warnings"] = warnings
    figures["notes"] = notes
    return figures


def aggregate(mode: str, spec: dict[str, Any], results: list[dict[str, Any]],
              warnings: list[str]) -> dict[str, Any]:
    """Add up what the client processes counted (pure: tested without processes)."""
    counts: dict[str, int] = {}
    latency = latency_histogram()
    for r in results:
        for key, value in r["counts"].items():
            counts[key] = counts.get(key, 0) + value
        latency.merge(Histogram.from_dict(r["latency"]))
    errors = sorted({e for r in results for e in r["errors"]})
    wall = max(r["wall_seconds"] for r in results)
    cpu = [r["cpu_seconds"] / max(1e-9, r["wall_seconds"]) for r in results]
    figures: dict[str, Any] = {
        "counts": counts, "latency": latency_summary(latency), "histogram": latency.to_dict(),
        "client_cpu": sum(r["cpu_seconds"] for r in results) / max(1e-9, wall),
        "client_cpu_max_process": max(cpu), "client_processes": len(results),
        "duration": wall, "errors": errors[:10]}
    if mode == "idle":
        # idle's load phase (one check) lasts milliseconds: its CPU is a clock tick or two,
        # which would print as 0 % or 100 % of a core, not a share of one.
        figures.update(client_cpu=None, client_cpu_max_process=None)
    elif max(cpu) > CLIENT_SATURATED:
        warnings.append(f"a client process used {max(cpu):.0%} of a core: the load generator "
                        "may be the bottleneck (try more --processes)")
    if mode in ("echo", "idle"):
        sent, received = counts.get("sent", 0), counts.get("received", 0)
        figures.update(sent=sent, received=received, lost=counts.get("lost", 0),
                       mismatched=counts.get("mismatched", 0),
                       rate=received / wall if mode == "echo" else None)
        figures["balanced"] = sent == received + figures["lost"] + figures["mismatched"]
    elif mode == "http":
        sent, ok = counts.get("sent", 0), counts.get("ok", 0)
        figures.update(sent=sent, received=ok, bad_status=counts.get("bad_status", 0),
                       lost=counts.get("lost", 0), reconnects=counts.get("reconnects", 0),
                       rate=ok / wall)
        figures["balanced"] = sent == ok + figures["bad_status"] + figures["lost"]
    elif mode == "broadcast":
        published = sum(sum(r["published_per_publisher"].values()) for r in results)
        per_member = [n for r in results for n in r["received_per_member"]]
        received = sum(per_member)
        lost_per_member = [published - n for n in per_member]
        first = min((r["first_send"] for r in results if r["first_send"]), default=0.0)
        last = max(r["last_delivery"] for r in results)
        span = max(1e-9, last - first) if published else wall
        figures.update(published=published, members=len(per_member),
                       expected=published * len(per_member), received=received,
                       lost=sum(n for n in lost_per_member if n > 0),
                       extra=sum(-n for n in lost_per_member if n < 0),
                       members_with_loss=sum(1 for n in lost_per_member if n > 0),
                       max_lost_per_member=max(lost_per_member, default=0),
                       rate=received / span, delivery_span=span)
        # No member may get more than was published, nor a message twice or out of order.
        figures["duplicated_or_reordered"] = counts.get("duplicated_or_reordered", 0)
        figures["balanced"] = not figures["extra"] and not figures["duplicated_or_reordered"]
        if figures["lost"]:
            warnings.append(f"{figures['lost']:,} deliveries lost "
                            f"({figures['members_with_loss']} members missed some)")
    if any("bytes_in" in r for r in results):  # --compression / --payload: bytes on the wire
        bytes_in = sum(r.get("bytes_in", 0) for r in results)
        bytes_out = sum(r.get("bytes_out", 0) for r in results)
        messages_out = figures.get("published", figures.get("sent", 0))
        figures.update(bytes_in=bytes_in, bytes_out=bytes_out,
                       bytes_in_per_op=bytes_in / figures["received"]
                       if figures.get("received") else None,
                       bytes_out_per_message=bytes_out / messages_out if messages_out else None)
    if counts.get("mismatched"):
        warnings.append(f"{counts['mismatched']:,} echoes did not match what was sent")
    if errors:
        warnings.append(f"{counts.get('errors', len(errors)):,} client errors, e.g. {errors[0]}")
    return figures
