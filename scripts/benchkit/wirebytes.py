"""``scripts/bench chat-bytes``: what permessage-deflate saves on the chat demo's messages.

Members join one room of ``consumers/chat.py`` (``/ws/chat/<room>?name=...``), then
chat lines (scripts/benchkit/payloads.py) are sent one at a time, as the page sends them
(``{"text":"..."}``), each by the next member in turn, and each awaited by every member
before the next goes: the figure is bytes, not speed, so there is no load and no race.
The same room is measured without compression, then with it (the clients offer
permessage-deflate; zchannels must run with ``compression = true``), round after round:
bytes read from the socket per delivered message and written per message sent (frames,
headers included; handshakes, joins and leaves not counted), and the ratio on / off.
Every delivery is compared with the event the chat consumer must send. Beside them, the
bytes a server would send if it kept one compression context per connection (what
zchannels gives up to compress a group message once): computed, not measured.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import zlib
import tempfile
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from benchkit import payloads, report, wsclient
from benchkit.baseline import DEFLATE_SUFFIX, start_tornado
from benchkit.summary import median

CONNECT_TIMEOUT = 10.0  # seconds for one member's handshake
DELIVERY_TIMEOUT = 10.0  # seconds for one message to reach every member
SETTLE = 0.3  # seconds without an event after the joins before the messages start
SEED = "chat-bytes"  # the same lines, in the same order, in every run


class Room:
    """The members of one run and what each has received."""

    def __init__(self, members: list[wsclient.WebSocketProtocol], names: list[str]) -> None:
        self.members = members
        self.names = names
        self.expected = b""
        self.waiting: set[int] = set()
        self.delivered = 0
        self.mismatched = 0
        self.other_events = 0
        self.last_event = time.monotonic()
        self.arrived: asyncio.Event = asyncio.Event()
        for index, ws in enumerate(members):
            ws.on_message = self.receiver(index)

    def receiver(self, index: int) -> Callable[[int, bytes], None]:
        def on_message(opcode: int, payload: bytes) -> None:
            self.last_event = time.monotonic()
            if index not in self.waiting:
                self.other_events += 1  # joins (and leaves) of the others
                return
            if payload.startswith(b'{"type": "message"'):
                self.waiting.discard(index)
                if payload == self.expected:
                    self.delivered += 1
                else:
                    self.mismatched += 1
                if not self.waiting:
                    self.arrived.set()
            else:
                self.other_events += 1
        return on_message

    def wire(self) -> tuple[int, int]:
        return (sum(ws.bytes_in for ws in self.members),
                sum(ws.bytes_out for ws in self.members))


def frame_bytes(payload_bytes: int) -> int:
    """Bytes of an unmasked server frame carrying `payload_bytes` (RFC 6455 5.2)."""
    return payload_bytes + (2 if payload_bytes < 126 else 4 if payload_bytes < 65536 else 10)


def with_context_bytes(events: list[bytes], level: int = 1, mem_level: int = 8) -> int:
    """Bytes on the wire of `events` sent in order to one connection by a server that
    keeps its compression context (no server_no_context_takeover), as Tornado does for
    a client that does not ask otherwise: frames of each compressed message."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, mem_level)
    total = 0
    for event in events:
        data = compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH)
        total += frame_bytes(len(data) - len(wsclient.SYNC_TAIL))
    return total


def member_names(count: int) -> list[str]:
    """ann, bob, ..., then ann2, bob2, ...: short names, as people pick."""
    users = payloads.USERS
    return [users[i % len(users)] + (str(i // len(users) + 1) if i >= len(users) else "")
            for i in range(count)]


async def measure_room(url: str, members: int, messages: int, deflate: bool
                       ) -> dict[str, Any]:
    """One run: join, settle, send `messages` lines one at a time, count bytes."""
    names = member_names(members)
    opened = await asyncio.gather(*(wsclient.connect(f"{url}?name={name}", CONNECT_TIMEOUT,
                                                     deflate=deflate) for name in names))
    room = Room(list(opened), names)
    try:
        limit = time.monotonic() + DELIVERY_TIMEOUT
        while time.monotonic() - room.last_event < SETTLE and time.monotonic() < limit:
            await asyncio.sleep(SETTLE / 3)
        rng = random.Random(SEED)
        in_before, out_before = room.wire()
        events: list[bytes] = []
        for i in range(messages):
            sender = i % members
            text = rng.choice(payloads.LINES)
            room.expected = payloads.chat_event(names[sender], text).encode()
            events.append(room.expected)
            room.waiting = set(range(members))
            room.arrived.clear()
            sent = payloads.page_message(text).encode()
            ws = room.members[sender]
            ws.send_frame(wsclient.deflated_frame(wsclient.OP_TEXT, sent) if ws.deflate
                          else wsclient.masked_frame(wsclient.OP_TEXT, sent))
            try:
                await asyncio.wait_for(room.arrived.wait(), DELIVERY_TIMEOUT)
            except asyncio.TimeoutError:
                raise RuntimeError(f"message {i} did not reach {len(room.waiting)} of "
                                   f"{members} members within {DELIVERY_TIMEOUT:g} s") from None
        bytes_in, bytes_out = room.wire()
    finally:
        for ws in room.members:
            ws.on_close = lambda code: None
            ws.close()
    bytes_in -= in_before
    bytes_out -= out_before
    return {"members": members, "messages": messages, "delivered": room.delivered,
            "expected": messages * members, "mismatched": room.mismatched,
            "compression": deflate, "agreed": all(ws.deflate for ws in room.members),
            "bytes_in": bytes_in, "bytes_out": bytes_out,
            "bytes_in_per_delivery": bytes_in / max(1, room.delivered),
            "bytes_out_per_message": bytes_out / messages,
            "json_bytes_per_message": sum(map(len, events)) / messages,
            "context_kept_bytes_per_message": with_context_bytes(events) / messages}


ROWS = [("bytes_in_per_delivery", "bytes received per delivered message", "{:,.1f}"),
        ("bytes_out_per_message", "bytes sent per message", "{:,.1f}"),
        ("json_bytes_per_message", "the event's JSON, uncompressed", "{:,.1f}"),
        ("context_kept_bytes_per_message", "computed: received, context kept", "{:,.1f}"),
        ("delivered", "deliveries", "{:,}"), ("mismatched", "wrong deliveries", "{:,}")]


def table(names: list[str], runs: list[dict[str, Any]]) -> list[str]:
    """Each system's medians, then the ratio with compression / without, per system."""
    width = max(len(label) for _, label, _ in ROWS)
    cols = [max(14, len(n)) for n in names]
    lines = [" " * width + "  " + "  ".join(n.rjust(w) for n, w in zip(names, cols))]
    medians = {n: {key: median([r["figures"][key] for r in runs if r["name"] == n])
                   for key, _, _ in ROWS} for n in names}
    for key, label, style in ROWS:
        lines.append(label.ljust(width) + "  " + "  ".join(
            report.fmt(medians[n][key], style).rjust(w) for n, w in zip(names, cols)))
    lines.append("")
    for name in names:
        if name.endswith(DEFLATE_SUFFIX) and name[:-len(DEFLATE_SUFFIX)] in medians:
            plain = medians[name[:-len(DEFLATE_SUFFIX)]]
            on = medians[name]
            lines.append(f"{name[:-len(DEFLATE_SUFFIX)]}: on / off, bytes received "
                         f"{ratio(on, plain, 'bytes_in_per_delivery')}, bytes sent "
                         f"{ratio(on, plain, 'bytes_out_per_message')}")
    return lines


def ratio(on: dict[str, Any], off: dict[str, Any], key: str) -> str:
    if not on.get(key) or not off.get(key):
        return "-"
    return f"{on[key] / off[key]:.3f}"


def run(args: argparse.Namespace, url: str, document: dict[str, Any]) -> int:
    """The chat-bytes mode: zchannels (and with --baseline raw Tornado, started with
    permessage-deflate enabled), each without then with compression, --rounds times."""
    members = args.connections or 10
    room = urlsplit(url).path
    runs: list[dict[str, Any]] = []
    try:
        for round_index in range(args.rounds):
            runs += measure_system(args.name, url, members, args, round_index)
            if args.baseline:
                server = start_tornado(tempfile.mkdtemp(prefix="zcbench"), compression=True)
                try:
                    runs += measure_system(server.name.replace(DEFLATE_SUFFIX, ""),
                                           f"ws://{server.base}{room}", members, args,
                                           round_index)
                finally:
                    server.stop()
    except (RuntimeError, OSError, asyncio.TimeoutError, wsclient.HandshakeError) as e:
        print(f"scripts/bench: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    names = list(dict.fromkeys(r["name"] for r in runs))
    document.update(finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    loadavg_after=os.getloadavg(), runs=runs)
    print(report.header(document))
    print("\n".join(table(names, runs)))
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"chat-bytes-{time.strftime('%Y%m%d-%H%M%S')}.json")
    report.write_json(path, document)
    print(f"figures: {path}", file=sys.stderr)
    bad = any(r["figures"]["mismatched"] or r["figures"]["delivered"] != r["figures"]["expected"]
              or r["figures"]["agreed"] != r["figures"]["compression"] for r in runs)
    return 1 if bad else 0


def measure_system(name: str, url: str, members: int, args: argparse.Namespace,
                   round_index: int) -> list[dict[str, Any]]:
    """One system without, then with compression: two run records."""
    found = []
    for deflate in (False, True):
        figures = asyncio.run(measure_room(url, members, args.messages, deflate))
        found.append({"name": name + (DEFLATE_SUFFIX if deflate else ""),
                      "system": "project" if name == args.name else "baseline",
                      "round": round_index, "url": url, "compression": deflate,
                      "figures": figures})
    return found
