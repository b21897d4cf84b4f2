"""One client process of the bench: the phases every mode shares.

A client process runs one asyncio loop and talks to the parent (runner.py) over a
pipe, in phases: connect its share of the connections -> "ready"; wait until no
message has arrived for a moment (the chat room's join announcements) -> "settled";
run the load until the shared deadline, drain what is still on its way -> "result";
hold the connections until "close" (so `idle` can measure the server meanwhile).
Counts are exact; latencies go into a `Histogram`. The modes are in modes.py.
"""
from __future__ import annotations

import asyncio
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from benchkit import wsclient
from benchkit.histogram import latency_histogram

# Handshakes in flight from all client processes together: below the interface's
# 100 events buffered towards a pool, beyond which zchannels refuses (503) new work.
CONNECT_CONCURRENCY = 64
REFUSED_RETRIES = 5  # a handshake refused with 503 is tried again this often
REFUSED_PAUSE = 0.5  # seconds before trying a refused handshake again
CONNECT_TIMEOUT = 60.0  # seconds for one handshake (a chat room's joins slow them down)
QUIET = 0.5  # seconds without a message that count as settled
SETTLE_LIMIT = 60.0  # seconds to wait for the room to settle at most
PROGRESS_INTERVAL = 0.25  # seconds between progress updates
FD_MARGIN = 64  # descriptors kept for everything that is not a connection


def raise_fd_limit(needed: int) -> tuple[int, str | None]:
    """Raise RLIMIT_NOFILE (soft to hard, and hard too when allowed) so `needed`
    connections fit. Returns the limit and, if it is too low, why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + FD_MARGIN
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # only root (CAP_SYS_RESOURCE) may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, None
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < want:
        return target, (f"file descriptor limit {target} (hard) leaves room for "
                        f"{target - FD_MARGIN} connections in this process, not {needed}: "
                        "use more --processes or raise `ulimit -Hn`")
    return target, None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """The common part of every mode: counts, progress, phases, pipe."""

    def __init__(self, spec: dict[str, Any], index: int, pipe: Connection,
                 progress: Any) -> None:
        self.spec = spec
        self.index = index
        self.pipe = pipe
        self.progress = progress
        self.latency = latency_histogram()
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.running = False
        self.done = 0  # operations completed (round trips, deliveries, responses)
        self.last_message = time.monotonic()
        self.conns: list[Any] = []

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def error(self, text: str) -> None:
        self.count("errors")
        if len(self.errors) < 20:
            self.errors.append(text)

    async def recv(self) -> Any:
        """The parent's next message, without blocking the loop."""
        loop = asyncio.get_running_loop()
        if not self.pipe.poll():
            ready: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not ready.done():
                    ready.set_result(None)
            loop.add_reader(self.pipe.fileno(), readable)
            try:
                await ready
            finally:
                loop.remove_reader(self.pipe.fileno())
        return self.pipe.recv()

    def report_progress(self) -> None:
        self.progress[self.index] = self.done
        asyncio.get_running_loop().call_later(PROGRESS_INTERVAL, self.report_progress)

    async def run(self) -> None:
        needed = self.connections_needed()
        limit, problem = raise_fd_limit(needed)
        if problem:
            self.error(problem)
            needed = max(0, min(needed, limit - FD_MARGIN))
        await self.connect_all(needed)
        self.pipe.send(("ready", {"opened": self.opened(), "failed": self.counts.get(
            "connect_failed", 0), "errors": list(self.errors)}))
        message = await self.recv()
        if message[0] == "settle":
            await self.settle()
            self.pipe.send(("settled", None))
            message = await self.recv()
        assert message[0] == "go", message
        _, start, deadline = message
        self.report_progress()
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        self.running = True
        self.start_load()
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        self.running = False
        cpu1, wall1 = cpu_seconds(), time.monotonic()
        await self.drain()
        self.progress[self.index] = self.done
        self.pipe.send(("result", {
            "counts": self.counts, "errors": self.errors, "latency": self.latency.to_dict(),
            "cpu_seconds": cpu1 - cpu0, "wall_seconds": wall1 - wall0,
            "load_seconds": self.load_seconds(wall0, wall1), **self.extra_result()}))
        message = await self.recv()
        assert message[0] == "close", message
        self.close_all()
        await asyncio.sleep(0.05)  # let the close frames go out

    async def settle(self) -> None:
        """Wait until no message has arrived for QUIET seconds (bounded)."""
        limit = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < limit:
            idle = time.monotonic() - self.last_message
            if idle >= QUIET:
                return
            await asyncio.sleep(QUIET - idle)
        self.error(f"still receiving after {SETTLE_LIMIT} s of settling")

    async def connect_all(self, n: int) -> None:
        gate = asyncio.Semaphore(max(4, CONNECT_CONCURRENCY // self.spec["processes"]))

        async def one(i: int) -> None:
            async with gate:
                try:
                    for attempt in range(REFUSED_RETRIES + 1):
                        try:
                            await self.connect_one(i)
                            break
                        except wsclient.HandshakeError as e:
                            if " 503 " not in str(e) or attempt == REFUSED_RETRIES:
                                raise
                            self.count("refused_503_retried")
                            await asyncio.sleep(REFUSED_PAUSE)
                except (OSError, asyncio.TimeoutError, wsclient.HandshakeError) as e:
                    self.count("connect_failed")
                    why = str(e) or f"no answer within {CONNECT_TIMEOUT:g} s"
                    self.error(f"connection {i}: {type(e).__name__}: {why}")
        await asyncio.gather(*(one(i) for i in range(n)))

    def close_all(self) -> None:
        for conn in self.conns:
            conn.close()

    async def drain(self) -> None:
        """Wait for what is still on its way after the deadline (bounded)."""
        limit = time.monotonic() + self.spec["drain"]
        while time.monotonic() < limit and not self.drained():
            await asyncio.sleep(0.01)

    def load_seconds(self, wall0: float, wall1: float) -> float:
        return wall1 - wall0

    # -- per mode ----------------------------------------------------------------

    def connections_needed(self) -> int:
        raise NotImplementedError

    async def connect_one(self, i: int) -> None:
        raise NotImplementedError

    def opened(self) -> int:
        return len(self.conns)

    def start_load(self) -> None:
        pass

    def drained(self) -> bool:
        return True

    def extra_result(self) -> dict[str, Any]:
        return {}


def share(total: int, index: int, processes: int) -> int:
    """How many of `total` items client process `index` of `processes` takes."""
    return total // processes + (1 if index < total % processes else 0)
