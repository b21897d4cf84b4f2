"""An app host dies, or is cut off for 10 s, under load (issue 11's acceptance): three
hosts, each a network namespace (tests/hosts.py), over tcp:// with CURVE.

- layer: the broker.
- A: an interface and two workers; B: an interface and one worker (one pool, ``*``).

Killed: every process of B while it holds 100 room members and events in flight. The
disconnect consumers of B's sockets run once each, abandoned, on A's workers; no member
of B stays in the room; A's clients go on undisturbed.

Cut: B's link down for 10 s under echo and chat load, then up. A's clients are
undisturbed; B's clients get a close code, not silence; what B's sockets lost is
counted; traffic through B resumes within 2 s of the link coming back; no process died.
"""
import asyncio
import json
import time

import pytest
from tornado.websocket import WebSocketClosedError, websocket_connect

from harness import read, run, wait_until
from hosts import three_hosts
from zchannels.core import config as config_module
from zchannels.api.client import Client

pytestmark = pytest.mark.e2e

POOLS = {"default": ["*"]}
HEARTBEAT_BOUND = 1.0 + 3.0  # heartbeat_interval + heartbeat_timeout (the defaults)
B_MEMBERS = 100
CUT = 10.0  # seconds B's link is down
RESUME_BOUND = 2.0  # seconds after the link is back


@pytest.fixture
def cluster(tmp_path_factory):
    with three_hosts(str(tmp_path_factory.mktemp("keys") / "keys"), POOLS,
                     a={"workers": {"default": 2}, "interfaces": 1},
                     b={"workers": {"default": 1}, "interfaces": 1}) as cluster:
        if cluster.network.fallback:
            pytest.skip(f"these need network namespaces: {cluster.network.fallback}")
        yield cluster


async def member(host, group, name):
    ws = await websocket_connect(host.url(f"/test/hosts/room/{group}?name={name}"))
    first = await read(ws)
    assert first.startswith("rc:"), first
    return ws, first[3:]


def members_of(host, group):
    config = config_module.load(host.config_path)
    with Client(config) as client:
        return {m.reply_channel for m in client.group_members(group)}


async def drain(ws, quiet=0.3):
    """Everything `ws` has been sent until it is quiet for `quiet` seconds."""
    got = []
    while True:
        try:
            got.append(await read(ws, quiet))
        except asyncio.TimeoutError:
            return got


def test_a_killed_app_host_s_disconnects_run_once_on_the_other_and_its_members_leave(cluster):
    a, b = cluster["a"], cluster["b"]
    room = "room-kill"

    async def scenario():
        on_b = [await member(b, room, f"b{i}") for i in range(B_MEMBERS)]
        on_a = [await member(a, room, f"a{i}") for i in range(3)]
        for ws, _ in on_a:
            await drain(ws)  # the join notices so far
        for ws, _ in on_b[:10]:
            ws.write_message("slow")  # events in flight when B dies
        await asyncio.sleep(0.3)
        killed = time.monotonic()
        for proc in b.processes.values():
            proc.kill()
        b_channels = {rc for _, rc in on_b}

        def ran():
            lines = [r for r in a.records() if r[0] == "X" and r[1] in b_channels]
            return lines if {r[1] for r in lines} == b_channels else None
        lines = await asyncio.to_thread(wait_until, ran, HEARTBEAT_BOUND + 5,
                                        "B's sockets' disconnects to run on A")
        took = time.monotonic() - killed
        await asyncio.sleep(1.0)  # a second run of any would show now
        lines = [r for r in a.records() if r[0] == "X" and r[1] in b_channels]
        assert sorted(r[1] for r in lines) == sorted(b_channels)  # exactly once each
        assert all(r[2:] == ["True", "a"] for r in lines), lines[:3]  # abandoned, on A
        assert await asyncio.to_thread(members_of, a, room) == {rc for _, rc in on_a}
        # A's members were told of every B member's leave, and still talk.
        told = [json.loads(m) for m in await drain(on_a[0][0], 1.0)]
        leaves = {t["member"] for t in told if t.get("type") == "leave"}
        assert leaves == b_channels
        on_a[1][0].write_message("A goes on")
        for ws, _ in on_a:
            got = []
            while "A goes on" not in got:  # (a late leave notice may come first)
                got.append(await read(ws, 5))
                assert got[-1] is not None, "an A member was closed"
        assert all(ws.close_code is None for ws, _ in on_a)
        for ws, _ in on_a:
            ws.close()
        return took
    took = run(scenario(), timeout=120)
    print(f"\nB's 100 disconnects ran on A {took:.2f}s after B's processes were killed")


class Echoer:
    """A client that sends a numbered message every 50 ms and records the answers."""

    def __init__(self, ws):
        self.ws, self.sent, self.answered, self.code = ws, 0, [], None

    async def run(self, until):
        try:
            while time.monotonic() < until and self.ws.close_code is None:
                self.ws.write_message(str(self.sent))
                self.sent += 1
                try:
                    answer = await read(self.ws, 0.05)
                except asyncio.TimeoutError:
                    answer = ""
                while answer:
                    self.answered.append(int(answer))
                    try:
                        answer = await read(self.ws, 0.001)
                    except asyncio.TimeoutError:
                        answer = ""
                if answer is None:
                    break
                await asyncio.sleep(0.05)
        except WebSocketClosedError:  # closed by the server between two reads
            pass
        self.code = self.ws.close_code


def test_b_cut_off_for_10s_under_load_then_back(cluster):
    a, b, layer = cluster["a"], cluster["b"], cluster["layer"]
    network = cluster.network

    async def echoer(host):
        return Echoer(await websocket_connect(host.url("/ws/echo")))

    async def scenario():
        echo_a = [await echoer(a) for _ in range(3)]
        echo_b = [await echoer(b) for _ in range(3)]
        listener_a, _ = await member(a, "room-cut", "la")
        on_b = [await member(b, "room-cut", f"lb{i}") for i in range(3)]
        speaker, _ = await member(a, "room-cut", "speaker")
        await drain(listener_a)
        end = time.monotonic() + CUT + 6
        load = [asyncio.ensure_future(e.run(end)) for e in echo_a + echo_b]
        said = []

        async def speak():
            n = 0
            while time.monotonic() < end:
                speaker.write_message(f"chat {n}")
                said.append(f"chat {n}")
                n += 1
                await asyncio.sleep(0.05)
        speaking = asyncio.ensure_future(speak())
        await asyncio.sleep(1.0)
        network.set_link("b", up=False)
        await asyncio.sleep(CUT)
        network.set_link("b", up=True)
        healed = time.monotonic()
        # Traffic through B resumes: a new client of B gets its echo.
        resumed = None
        while resumed is None:
            assert time.monotonic() - healed < 15, "no echo through B 15s after the cut"
            try:
                ws = await asyncio.wait_for(websocket_connect(b.url("/ws/echo")), 1.0)
                ws.write_message("back")
                if await read(ws, 1.0) == "back":
                    resumed = time.monotonic() - healed
                ws.close()
            except Exception:
                await asyncio.sleep(0.1)
        await asyncio.gather(*load)
        await speaking
        heard = [m for m in await drain(listener_a, 1.0) if m.startswith("chat ")]
        b_codes = []
        for ws, _ in on_b:
            await drain(ws, 0.1)
            b_codes.append(ws.close_code)
        return echo_a, echo_b, said, heard, b_codes, resumed

    echo_a, echo_b, said, heard, b_codes, resumed = run(scenario(), timeout=120)
    print(f"\ntraffic through B resumed {resumed:.2f}s after its link came back")
    # A's clients were undisturbed: every echo answered, in order, none closed.
    for e in echo_a:
        assert e.code is None and e.answered == list(range(len(e.answered)))
        assert len(e.answered) >= e.sent - 1, (e.sent, len(e.answered))
    assert heard == said[:len(heard)] and len(heard) >= len(said) - 2  # in order, all
    # B's clients were told: a close code, never a silent end.
    for e in echo_b:
        assert e.code in (1011, 1012, 1013), e.code
        assert e.answered == list(range(len(e.answered)))  # what came back was in order
    assert all(code in (1011, 1012, 1013) for code in b_codes), b_codes
    # Counted on both sides: the broker ran B's sockets' disconnects, B closed them.
    broker = layer.settled_counters("broker")
    b_counts = b.settled_counters("interface")
    assert broker.get("interfaces_gone", 0) >= 1
    assert broker.get("abandoned_disconnects", 0) >= len(echo_b) + 3
    assert b_counts.get("abandoned_by_broker", 0) + b_counts.get("refused_pool_full", 0) \
        + b_counts.get("event_timeouts", 0) >= len(echo_b) + 3
    assert resumed <= RESUME_BOUND
    # No process died.
    for host in (a, b, layer):
        for name, proc in host.processes.items():
            assert proc.poll() is None, f"{host.name}/{name} exited"
