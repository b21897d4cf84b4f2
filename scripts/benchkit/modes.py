"""What a client process does in each mode: echo, idle, broadcast, http (the phases
they share are in client.py)."""
from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

import ujson

from benchkit import httpclient, payloads, wsclient
from benchkit.client import CONNECT_TIMEOUT, Client, share

IDLE_CHECKS_IN_FLIGHT = 32  # idle: echoes in flight per client process while checking
# --compression / --payload: each connection cycles through this many distinct messages,
# each framed (and compressed) once; consecutive ones differ, so a stale echo mismatches.
ECHO_CYCLE = 4
PUBLISH_TEXTS = 8  # --payload chat: distinct chat paddings per publisher


def wire_options(spec: dict[str, Any]) -> tuple[bool, str]:
    """(offer permessage-deflate, payload kind) of a run: --compression, --payload."""
    return bool(spec.get("compression")), spec.get("payload", "x")


def bytes_on_wire(conns: list[Any]) -> tuple[int, int]:
    """Bytes read and written so far by the WebSockets of `conns` (after handshakes)."""
    return (sum(conn.ws.bytes_in for conn in conns),
            sum(conn.ws.bytes_out for conn in conns))


def echo_cycle(ws: wsclient.WebSocketProtocol, name: str, kind: str,
               size: int) -> list[tuple[bytes, bytes]]:
    """(payload, frame) for each of ECHO_CYCLE messages of one connection, each frame
    built (compressed, when the connection agreed to it) once for the whole run."""
    cycle = []
    for k in range(ECHO_CYCLE):
        if kind == "chat":
            payload = payloads.echo_chat(name, k, size)
        else:
            head = f"{name}:{k}:".encode()
            payload = head + b"x" * max(0, size - len(head))
        frame = wsclient.deflated_frame(wsclient.OP_TEXT, payload) if ws.deflate \
            else wsclient.masked_frame(wsclient.OP_TEXT, payload)
        cycle.append((payload, frame))
    return cycle

# -- echo -------------------------------------------------------------------------


class EchoConn:
    __slots__ = ("client", "ws", "name", "seq", "expected", "sent_at", "waiting", "cycle")

    def __init__(self, client: "EchoClient", ws: wsclient.WebSocketProtocol, name: str):
        self.client, self.ws, self.name = client, ws, name
        self.seq = 0
        self.expected = b""
        self.sent_at = 0.0
        self.waiting = False
        # --compression / --payload: the frames to send, built once (echo_cycle).
        self.cycle: list[tuple[bytes, bytes]] | None = None
        ws.on_message = self.on_message
        ws.on_close = self.on_close

    def send_next(self) -> None:
        self.seq += 1
        if self.cycle is not None:
            self.expected, frame = self.cycle[self.seq % ECHO_CYCLE]
            self.waiting = True
            self.client.count("sent")
            self.sent_at = time.monotonic()
            self.ws.send_frame(frame)
            return
        head = f"{self.name}:{self.seq}:".encode()
        self.expected = head + b"x" * max(0, self.client.size - len(head))
        self.waiting = True
        self.client.count("sent")
        self.sent_at = time.monotonic()
        self.ws.send_frame(wsclient.masked_frame(wsclient.OP_TEXT, self.expected))

    def on_message(self, opcode: int, payload: bytes) -> None:
        client = self.client
        client.last_message = now = time.monotonic()
        if not self.waiting:
            client.count("unexpected")
            return
        self.waiting = False
        if opcode != wsclient.OP_TEXT or payload != self.expected:
            client.count("mismatched")
        else:
            client.count("received")
            client.latency.observe(now - self.sent_at)
            client.done += 1
        client.answered(self)

    def on_close(self, code: int | None) -> None:
        if self.client.running or self.waiting:
            self.client.error(f"{self.name} closed by the server (code {code})")

    def close(self) -> None:
        self.ws.on_close = lambda code: None
        self.ws.close()


class ClosedLoopClient(Client):
    """Connections that each wait for one answer at a time: an answer still awaited
    when the load has ended and drained is lost. With spec["pace"] (messages/s per
    connection), each waits for its answer and for 1/pace seconds since its last send."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        pace = self.spec.get("pace") or 0.0
        self.gap = 1.0 / pace if pace > 0 else 0.0  # seconds between sends at least

    def drained(self) -> bool:
        return not any(conn.waiting for conn in self.conns)

    def extra_result(self) -> dict[str, Any]:
        waiting = sum(1 for conn in self.conns if conn.waiting)
        self.count("lost", waiting)
        return {}


class EchoClient(ClosedLoopClient):
    """C connections to the echo URL, each a closed loop: send, wait for the echo."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.size = self.spec["size"]
        self.deflate, self.payload = wire_options(self.spec)
        # The default (32 numbered bytes, no compression) builds each frame as it sends.
        self.prebuilt = self.deflate or self.payload != "x"

    def connections_needed(self) -> int:
        return share(self.spec["connections"], self.index, self.spec["processes"])

    async def connect_one(self, i: int) -> None:
        ws = await wsclient.connect(self.spec["url"], CONNECT_TIMEOUT, deflate=self.deflate)
        conn = EchoConn(self, ws, f"p{self.index}c{i}")
        if self.prebuilt:
            conn.cycle = echo_cycle(ws, conn.name, self.payload, self.size)
        self.conns.append(conn)

    def extra_result(self) -> dict[str, Any]:
        result = super().extra_result()
        if self.prebuilt:  # connected quietly, so everything read and written is the load
            result["bytes_in"], result["bytes_out"] = bytes_on_wire(self.conns)
        return result

    def start_load(self) -> None:
        for conn in self.conns:
            conn.send_next()

    def answered(self, conn: EchoConn | None) -> None:
        if self.running and conn is not None:
            paced(self, conn.sent_at, conn.send_next)


def paced(client: ClosedLoopClient, last_sent: float, send: Callable[[], None]) -> None:
    """Send now, or (with a pace, spec["pace"] messages/s per connection) once
    1/pace seconds have passed since the last send; not at all once the load is over."""
    wait = last_sent + client.gap - time.monotonic()
    if wait <= 0:
        send()
        return

    def later() -> None:
        if client.running:
            send()
    asyncio.get_running_loop().call_later(wait, later)


# -- idle ---------------------------------------------------------------------------


class IdleClient(EchoClient):
    """N connections held open; each proves it is alive with one echo, then idles.

    The checks go a few at a time: 20,000 echoes at once would only measure how the
    server refuses a burst (zchannels closes sockets with 1013 when its pool is full).
    """

    next_check = 0  # index of the next connection to check

    def start_load(self) -> None:
        for _ in range(IDLE_CHECKS_IN_FLIGHT):
            self.answered(None)

    def answered(self, conn: EchoConn | None) -> None:
        if self.next_check < len(self.conns):
            self.conns[self.next_check].send_next()
            self.next_check += 1

    def drained(self) -> bool:
        return super().drained() and self.next_check >= len(self.conns)

    async def drain(self) -> None:
        # Checking N connections takes a while at a few in flight: bounded all the same.
        self.spec = {**self.spec, "drain": self.spec["drain"] + len(self.conns) / 200}
        await super().drain()

    def extra_result(self) -> dict[str, Any]:
        unchecked = len(self.conns) - self.next_check
        if unchecked:
            self.error(f"{unchecked} connections were not checked before the drain ended")
            self.count("unchecked", unchecked)
        return super().extra_result()


# -- broadcast ----------------------------------------------------------------------


class Member:
    """One chat-room member; some members also publish."""
    __slots__ = ("client", "ws", "name", "received", "last_seq", "publisher", "seq",
                 "outstanding")

    def __init__(self, client: "BroadcastClient", ws: wsclient.WebSocketProtocol, name: str):
        self.client, self.ws, self.name = client, ws, name
        self.received = 0
        self.last_seq: dict[str, int] = {}
        self.publisher = False
        self.seq = 0
        self.outstanding = 0
        ws.on_message = self.on_message
        ws.on_close = self.on_close

    def publish(self) -> None:
        self.seq += 1
        self.outstanding += 1
        self.client.count("published")
        client = self.client
        if client.payload == "chat" or client.deflate:
            head = f"B {self.name} {self.seq} {time.monotonic():.6f}"
            if client.payload == "chat":  # as the chat page sends it: {"text": ...}
                head = payloads.page_message(payloads.broadcast_chat_text(
                    head, self.name, self.seq % PUBLISH_TEXTS, client.spec["size"]))
            data = head.encode()
            self.ws.send_frame(wsclient.deflated_frame(wsclient.OP_TEXT, data)
                               if self.ws.deflate else
                               wsclient.masked_frame(wsclient.OP_TEXT, data))
            return
        text = f"B {self.name} {self.seq} {time.monotonic():.6f}".encode()
        self.ws.send_frame(wsclient.masked_frame(wsclient.OP_TEXT, text))

    def on_message(self, opcode: int, payload: bytes) -> None:
        client = self.client
        client.last_message = now = time.monotonic()
        try:
            event = ujson.loads(payload)
            text = event["text"]
        except (ValueError, KeyError, TypeError):
            client.count("garbled")
            return
        if event.get("type") != "message" or not text.startswith("B "):
            client.count("other_events")  # joins and leaves
            return
        _, publisher, seq_text, sent = text.split(" ", 4)[:4]  # --payload chat: + chat
        seq = int(seq_text)
        if seq <= self.last_seq.get(publisher, 0):
            client.count("duplicated_or_reordered")
        self.last_seq[publisher] = max(seq, self.last_seq.get(publisher, 0))
        self.received += 1
        client.done += 1
        client.latency.observe(now - float(sent))
        if publisher == self.name:
            self.outstanding -= 1
            if client.running and client.flood:
                self.publish()

    def on_close(self, code: int | None) -> None:
        self.client.error(f"{self.name} closed by the server (code {code})")

    def close(self) -> None:
        self.ws.on_close = lambda code: None
        self.ws.close()


class BroadcastClient(Client):
    """Members of one chat room; publishers among them send at a fixed total rate, or
    (flood) keep `window` messages of their own in flight each."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.flood = self.spec["rate"] <= 0
        self.publishers: list[Member] = []
        self.first_send = 0.0
        self.last_delivery = 0.0
        self.deflate, self.payload = wire_options(self.spec)
        self.bytes_at_start = (0, 0)  # bytes_on_wire when the load began (after the joins)

    def connections_needed(self) -> int:
        return share(self.spec["subscribers"], self.index, self.spec["processes"])

    async def connect_one(self, i: int) -> None:
        # Member names are global: process p takes every p-th name.
        number = self.index + i * self.spec["processes"]
        name = f"m{number}"
        ws = await wsclient.connect(f"{self.spec['url']}?name={name}", CONNECT_TIMEOUT,
                                    deflate=self.deflate)
        member = Member(self, ws, name)
        member.publisher = number < self.spec["publishers"]
        self.conns.append(member)
        if member.publisher:
            self.publishers.append(member)

    def start_load(self) -> None:
        self.first_send = time.monotonic()
        if self.deflate or self.payload != "x":
            self.bytes_at_start = bytes_on_wire(self.conns)
        if self.flood:
            for member in self.publishers:
                for _ in range(self.spec["window"]):
                    member.publish()
            return
        interval = self.spec["publishers"] / self.spec["rate"]  # seconds per publisher
        loop = asyncio.get_running_loop()
        for k, member in enumerate(self.publishers):
            # Spread the publishers over one interval, then each keeps its own beat.
            offset = interval * (self.index + k * self.spec["processes"]) \
                / self.spec["publishers"]
            loop.call_later(offset, self.tick, member, loop.time() + offset, interval)

    def tick(self, member: Member, when: float, interval: float) -> None:
        if not self.running:
            return
        member.publish()
        loop = asyncio.get_running_loop()
        loop.call_at(when + interval, self.tick, member, when + interval, interval)

    def drained(self) -> bool:
        return time.monotonic() - self.last_message >= self.spec["quiet"]

    def extra_result(self) -> dict[str, Any]:
        result = {"received_per_member": [m.received for m in self.conns],
                  "published_per_publisher": {m.name: m.seq for m in self.publishers},
                  "last_delivery": self.last_message, "first_send": self.first_send}
        if self.deflate or self.payload != "x":
            now = bytes_on_wire(self.conns)
            result["bytes_in"] = now[0] - self.bytes_at_start[0]
            result["bytes_out"] = now[1] - self.bytes_at_start[1]
        return result


# -- http -----------------------------------------------------------------------------


class HttpLoop:
    """One connection's closed loop: request, wait for the response, repeat; reconnects
    when the server closes the connection."""

    def __init__(self, client: "HttpClient", host: str, port: int, path: str) -> None:
        self.client = client
        self.host, self.port = host, port
        self.request = httpclient.request_bytes(host, port, path)
        self.protocol: httpclient.HttpProtocol | None = None
        self.waiting = False
        self.sent_at = 0.0
        self.reconnecting = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.protocol = await asyncio.wait_for(loop.create_connection(
            lambda: httpclient.HttpProtocol(self.on_response, self.on_lost),
            self.host, self.port), CONNECT_TIMEOUT)

    def send(self) -> None:
        self.waiting = True
        self.client.count("sent")
        self.sent_at = time.monotonic()
        assert self.protocol is not None and self.protocol.transport is not None
        self.protocol.transport.write(self.request)

    def on_response(self, status: int, body: bytes, keep_alive: bool) -> None:
        client = self.client
        now = time.monotonic()
        self.waiting = False
        if status == 200 and body:
            client.count("ok")
            client.latency.observe(now - self.sent_at)
            client.done += 1
        else:
            client.count("bad_status")
            client.error(f"HTTP {status}: {body[:80]!r}")
        if not keep_alive:
            assert self.protocol is not None and self.protocol.transport is not None
            self.protocol.on_lost = lambda: None
            self.protocol.transport.close()
            if client.running:
                asyncio.ensure_future(self.reconnect_and_send())
            return
        if client.running:
            paced(client, self.sent_at, self.send)

    async def reconnect_and_send(self) -> None:
        self.client.count("reconnects")
        try:
            await self.open()
        except (OSError, asyncio.TimeoutError) as e:
            self.client.error(f"reconnect failed: {e}")
            return
        if self.client.running:
            self.send()

    def on_lost(self) -> None:
        if self.waiting:
            self.waiting = False
            self.client.count("lost")
            self.client.error("the server closed a connection with a request in flight")

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.on_lost = lambda: None
            self.protocol.transport.close()


class HttpClient(ClosedLoopClient):
    def connections_needed(self) -> int:
        return share(self.spec["connections"], self.index, self.spec["processes"])

    async def connect_one(self, i: int) -> None:
        host, port, path = wsclient.parse_url(self.spec["url"])
        conn = HttpLoop(self, host, port, path)
        await conn.open()
        self.conns.append(conn)

    def start_load(self) -> None:
        for conn in self.conns:
            conn.send()

CLIENTS = {"echo": EchoClient, "idle": IdleClient, "broadcast": BroadcastClient,
           "http": HttpClient}


def client_process(mode: str, spec: dict[str, Any], index: int, pipe: Connection,
                   progress: Any) -> None:
    """Entry point of one client process (started by runner.py)."""
    client = CLIENTS[mode](spec, index, pipe, progress)
    try:
        asyncio.run(client.run())
    except KeyboardInterrupt:
        pass
    except BaseException as e:  # tell the parent instead of leaving it waiting
        try:
            pipe.send(("failed", f"{type(e).__name__}: {e}"))
        finally:
            raise
