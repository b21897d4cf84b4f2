"""scripts/bench-presence: what presence costs, on a group of N members (default 10,000).

Against a running zchannels (scripts/run, its config as ZCHANNELS_CONFIG says), through
the demo's /ws/online/<room>: N
connections join one group with their names as info; then one member asks
``count`` (group_size) and ``who`` (group_members, the whole list, sorted by the
consumer) repeatedly, one at a time. Reported: joins per second, ZeroMQ messages per
join (all server processes' zmq_sent), broker memory per member (RSS before and
after), the round-trip time of each question (p50, p90, max) and the size of the
``who`` answer, and how long until the group is empty again once all have closed.
Bounded: every wait has a timeout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import time
from typing import Any

from zchannels.api.client import Client
from zchannels.core.config import load as load_config
from zchannels.core.stats import collect
from benchkit.wsclient import OP_TEXT, WebSocketProtocol, masked_frame, parse_url

BATCH = 50  # handshakes in flight at once (the interfaces queue 100 per pool)
WAIT = 60.0  # seconds, the bound on any phase


class Member:
    def __init__(self, protocol: WebSocketProtocol) -> None:
        self.protocol = protocol
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        protocol.on_message = lambda opcode, payload: self.answers.put_nowait(payload)

    async def ask(self, question: str) -> tuple[float, bytes]:
        started = time.perf_counter()
        self.protocol.send_frame(masked_frame(OP_TEXT, question.encode()))
        answer = await asyncio.wait_for(self.answers.get(), WAIT)
        return time.perf_counter() - started, answer


async def connect(host: str, port: int, path: str) -> Member:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: WebSocketProtocol(host, port, path),
                                               host, port)
    await asyncio.wait_for(protocol.opened, WAIT)
    return Member(protocol)


def server_totals(run_dir: str) -> tuple[int, dict[str, int]]:
    """(zmq_sent of every server process, {role: RSS KiB})."""
    sent, rss = 0, dict[str, int]()
    for data in collect(run_dir):
        sent += data.get("counters", {}).get("zmq_sent", 0)
        try:
            with open(f"/proc/{data['pid']}/status") as f:
                kib = int(next(line for line in f if line.startswith("VmRSS:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        rss[data["role"]] = rss.get(data["role"], 0) + kib
    return sent, rss


async def settle(run_dir: str, interval: float) -> tuple[int, dict[str, int]]:
    await asyncio.sleep(interval * 2 + 0.2)  # every process has written its counters
    return server_totals(run_dir)


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p90 = ms[int(len(ms) * 0.9) - 1] if len(ms) >= 10 else ms[-1]
    return f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, max {ms[-1]:.2f} ms"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host, port, _ = parse_url(args.url)
    room = f"bench-{secrets.token_hex(3)}"
    path = f"/ws/online/{room}?name="
    interval = args.stats_interval
    sent0, rss0 = await settle(args.run_dir, interval)
    started = time.perf_counter()
    members: list[Member] = []
    for start in range(0, args.members, BATCH):
        members += await asyncio.gather(*(
            connect(host, port, f"{path}m{n}")
            for n in range(start, min(start + BATCH, args.members))))
    asker = members[0]
    # Every handshake ended after its join (the connect consumer joins, then accepts).
    joined = time.perf_counter() - started
    _, answer = await asker.ask("count")
    assert int(answer) == args.members, f"group_size says {answer.decode()}, not {args.members}"
    sent1, rss1 = await settle(args.run_dir, interval)
    counts = [(await asker.ask("count"))[0] for _ in range(args.questions)]
    whos, size = [], 0
    for _ in range(max(5, args.questions // 5)):
        seconds, answer = await asker.ask("who")
        whos.append(seconds)
        size = len(answer)
        assert len(json.loads(answer)) == args.members, "who lists every member"
    # The closes flood the pool with disconnect events, and a question sent through it
    # now could be refused (1013): ask the broker directly, as any process can.
    config = load_config(environ={**os.environ, "ZCHANNELS_RUN_DIR": args.run_dir})
    with Client(config) as client:
        for member in members[1:]:
            member.protocol.close()
        closed_at = time.perf_counter()
        while client.group_size(f"online.{room}") > 1:
            assert time.perf_counter() - closed_at < WAIT, "the members never left"
            await asyncio.sleep(0.01)
        emptied = time.perf_counter() - closed_at
    asker.protocol.close()
    return {
        "members": args.members, "join_seconds": joined,
        "joins_per_second": args.members / joined,
        "zmq_per_join": (sent1 - sent0) / args.members,
        "broker_bytes_per_member": (rss1.get("broker", 0) - rss0.get("broker", 0)) * 1024
        / args.members,
        "interface_bytes_per_member": (rss1.get("interface", 0) - rss0.get("interface", 0))
        * 1024 / args.members,
        "count": percentiles(counts), "who": percentiles(whos), "who_bytes": size,
        "leave_seconds": emptied,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench-presence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--members", type=int, default=10_000)
    p.add_argument("--questions", type=int, default=50, help="count questions (who: 1/5)")
    p.add_argument("--run-dir", default=os.environ.get("ZCHANNELS_RUN_DIR", "run"))
    p.add_argument("--stats-interval", type=float, default=2.0,
                   help="the server's stats_interval (default 2)")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(f"# presence, {args.members} members in one group — {platform.node()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# command: scripts/bench-presence {' '.join(argv or sys.argv[1:])}")
    print(f"joins: {result['join_seconds']:.2f} s, {result['joins_per_second']:.0f}/s, "
          f"{result['zmq_per_join']:.2f} ZeroMQ messages per join (connect, join, "
          f"presence, answer)")
    print(f"memory per member: broker {result['broker_bytes_per_member']:.0f} B, "
          f"interfaces {result['interface_bytes_per_member']:.0f} B (RSS, connection "
          f"included)")
    print(f"group_size round trip: {result['count']}")
    print(f"group_members round trip: {result['who']}; answer {result['who_bytes']} bytes")
    print(f"all but one closed -> group_size says 1 after {result['leave_seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
