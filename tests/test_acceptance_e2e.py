"""The two acceptance scenarios of the faults issue: clients that stop reading during a
broadcast flood, and a burst of 1,000 connects against a saturated pool."""
import asyncio
import resource
import threading
import time

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from harness import checked_system, join_member, raw_websocket, read, run, wait_until

pytestmark = pytest.mark.e2e

MAX_OUTBOUND = 256 * 1024  # max_outbound_bytes for the flood test
ROUTER_HWM = 1000
MESSAGE_BYTES = 16 * 1024
FLOOD_MESSAGES = 512  # 8 MiB per member: more than a non-reader's kernel buffers and limit
NON_READERS = 100
READERS = 5
CONTROL_HEADROOM = 64 * 1024  # zchannels.websocket.CONTROL_HEADROOM
ZMQ_DEALER_HWM = 1000  # a worker's DEALER to the broker: the ZeroMQ default
SLACK = 64 * 1024 * 1024  # the allocator, transient copies, Tornado's own buffers


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def total_rss(system):
    return sum(rss_bytes(p.pid) for p in system.processes.values() if p.poll() is None)


def rss_bound(baseline, connections, interfaces, workers, message_bytes):
    """The documented bound (docs/operations.md, "Memory"): what the processes held
    before, plus, per connection, its outbound cap and Tornado's control headroom; per
    interface, its full DEALER queue and the broker's full ROUTER queue for it; per
    worker, a full DEALER queue to the broker; plus a fixed slack."""
    frame = message_bytes + 64
    return (baseline + connections * (MAX_OUTBOUND + CONTROL_HEADROOM)
            + interfaces * 2 * ROUTER_HWM * frame + workers * ZMQ_DEALER_HWM * frame
            + SLACK)


def raw_member(port, group):
    """A member of `group` (tests/consumers/membership.py) that never reads after the
    handshake."""
    return raw_websocket(port, f"/test/member/{group}")


class Sampler(threading.Thread):
    def __init__(self, system):
        super().__init__(daemon=True)
        self.system, self.peak, self.done = system, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, total_rss(self.system))


def test_clients_that_stop_reading_during_a_flood_cost_bounded_memory():
    server = {"max_outbound_bytes": MAX_OUTBOUND, "broker_hwm": ROUTER_HWM}
    with checked_system(server=server) as system:
        async def scenario():
            readers = [(await join_member(system, "flood"))[0] for _ in range(READERS)]
            silent = [await asyncio.to_thread(raw_member, system.port, "flood")
                      for _ in range(NON_READERS)]
            await asyncio.to_thread(
                wait_until, lambda: (system.counters("interface") or {}).get(
                    "group_members") == READERS + NON_READERS, 10, "everyone to join")
            baseline = total_rss(system)
            sampler = Sampler(system)
            sampler.start()
            received = [[] for _ in readers]

            async def collect(i):
                while len(received[i]) < FLOOD_MESSAGES:
                    message = await read(readers[i], 30)
                    assert message is not None, f"reader {i} was closed"
                    if not message.startswith("hello "):
                        received[i].append(int(message.split(" ", 1)[0]))

            collectors = [asyncio.ensure_future(collect(i)) for i in range(READERS)]
            sender = await system.connect("/test/flood/flood")
            per_event = 32
            for start in range(0, FLOOD_MESSAGES, per_event):
                sender.write_message(f"{start} {per_event} {MESSAGE_BYTES}")
                assert await read(sender, 30) == "flooded"
            await asyncio.wait_for(asyncio.gather(*collectors), 60)
            counts = await asyncio.to_thread(
                wait_until, lambda: (c := system.counters("interface")) and
                c.get("outbound_overflow", 0) >= NON_READERS and c, 30,
                "every non-reader to be closed for overflow")
            sampler.done.set()
            sampler.join()
            for sock in silent:
                sock.close()
            for ws in readers + [sender]:
                ws.close()
            return baseline, sampler.peak, received, counts

        baseline, peak, received, counts = run(scenario(), timeout=150)
        for numbers in received:
            # Every message exactly once, in the order sent: the sender's consecutive
            # events may run on different workers, but their group sends reach every
            # member in the order of those events (docs/architecture.md, promise 8).
            assert numbers == list(range(FLOOD_MESSAGES))
        assert counts["outbound_overflow"] == NON_READERS
        bound = rss_bound(baseline, READERS + NON_READERS + 1, system.interfaces, 2,
                          MESSAGE_BYTES)
        print(f"\nRSS of all server processes: {baseline / 2**20:.0f} MiB before the flood, "
              f"peak {peak / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB")
        assert peak <= bound
        assert "is not reading fast enough" in system.all_logs()


BURST = 1000
CAPACITY = 20
HANDSHAKE_TIMEOUT = 3.0
BURST_BOUND = 60.0  # seconds for every client to have its answer (loose: a loaded machine)


def test_a_burst_of_connects_against_a_saturated_pool_gets_connections_or_clean_refusals():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * BURST + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the servers
    server = {"handshake_timeout": HANDSHAKE_TIMEOUT}
    try:
        with checked_system(server=server, pool_capacity={"default": CAPACITY}) as system:
            before = {name: proc.pid for name, proc in system.processes.items()}

            async def one(i, outcomes):
                try:
                    ws = await websocket_connect(system.url("/test/slow-echo"))
                except HTTPClientError as e:
                    retry_after = e.response.headers.get("Retry-After") if e.response else None
                    outcomes.append(("refused", e.code, retry_after))
                    return
                except (OSError, asyncio.TimeoutError) as e:
                    outcomes.append(("error", type(e).__name__, None))
                    return
                ws.write_message(f"hi {i}")
                answer = await read(ws, 30)
                outcomes.append(("answered" if answer == f"hi {i}" else "closed",
                                 ws.close_code if answer is None else answer, None))
                ws.close()

            async def burst():
                outcomes = []
                started = time.monotonic()
                await asyncio.wait_for(asyncio.gather(*[one(i, outcomes)
                                                        for i in range(BURST)]), BURST_BOUND)
                return outcomes, time.monotonic() - started

            outcomes, elapsed = run(burst(), timeout=BURST_BOUND + 10)
            assert {name: proc.pid for name, proc in system.processes.items()
                    if proc.poll() is None} == before, "every server process survived"
            # And the pool serves normally once it has worked off the burst (the connect
            # events it took in run even for clients that have gone).
            assert run(_echo_when_served(system), timeout=BURST_BOUND) == "after"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    kinds = {}
    for kind, detail, retry_after in outcomes:
        kinds[(kind, detail if kind != "answered" else "")] = \
            kinds.get((kind, detail if kind != "answered" else ""), 0) + 1
    print(f"\n{BURST} connects in {elapsed:.1f} s: {kinds}")
    assert len(outcomes) == BURST
    for kind, detail, retry_after in outcomes:
        if kind == "refused":
            assert detail in (503, 504), detail
            if detail == 503:
                assert retry_after == "1"
        elif kind == "closed":
            assert detail in (1011, 1013), detail  # an event refused or timed out
        else:
            assert kind == "answered", (kind, detail)
    # Some handshakes completed (their first message may still meet a full pool: 1013).
    assert any(kind in ("answered", "closed") for kind, _, _ in outcomes)
    assert any(kind == "refused" for kind, _, _ in outcomes), "the pool was saturated"


async def _echo_when_served(system):
    while True:
        try:
            ws = await system.connect("/test/slow-echo")
            break
        except HTTPClientError as e:
            assert e.code in (503, 504), e.code
            await asyncio.sleep(1.0)  # Retry-After
    ws.write_message("after")
    answer = await read(ws, 10)
    ws.close()
    return answer
