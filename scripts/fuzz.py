"""Throw random input at a running zchannels system while well-behaved clients use it.

Three kinds of attacker run side by side until together they have sent ``--frames``
frames (or ``--duration`` seconds have passed):

- raw WebSocket connections to /ws/echo sending random frames: random opcodes
  (reserved ones too), FIN/RSV bits, masked or not, valid or invalid UTF-8, control
  frames too long, lengths that announce more than ``max_message_bytes``, closes with
  random codes;
- raw HTTP requests: random methods, paths and versions, bytes that are not HTTP,
  oversized header blocks, bad Content-Length;
- random multipart ZeroMQ messages on every IPC endpoint in the run directory (the
  broker's two ROUTERs, for interfaces and for other senders, and each pool's PULL and
  ROUTER), including JSON headers of the right shape with the wrong types, and the
  verbs of every hop (runtime/wire/frames.py) with frames of any number and content;
- malformed requests to the publish API and the operator endpoints (metrics,
  dashboard and its events): bodies that are not JSON or not the API's shape (wrong
  types, bad names, base64, close codes, oversized, deep nesting), with the right
  token (``--publish-token``) so the body's parser sees them; and random methods,
  Host and forwarding headers, tokens, cookies, query strings and body framings
  from a second loopback address (``--operator-source``), whose wrong tokens get it
  rate-limited without disturbing the first. Afterwards the metrics must still
  answer 200 and a good publish 202.

Beside them, ``--history`` probes give the demo chat random and awkward history
positions (``?since=`` on a WebSocket or a long-poll, ``Last-Event-ID`` on an event
stream), some with a large message into their room; each must be answered (a
``recovery_failed`` notice, the join, a 4xx), never with a 5xx or a close 1011.

Meanwhile ``--echo`` clients do numbered round trips on /ws/echo, ``--chat``
clients talk in one chat room, and (with ``--history``) one client leaves its room and
comes back with the last position it saw, again and again, and must get exactly what it
missed. The report says how many frames of each kind went
out, how many round trips and chat messages the good clients completed, and whether
every one of them got every expected answer (echo: in order; chat: every message of
every member exactly once) with no unexpected close, and whether every server
process (by PID, from run_dir/ready) is still alive. Exit status 0 only if all of
that holds. Chat streams that arrived out of order are reported, not failed: the
broker keeps the group sends of one connection's consecutive events in order, even
when those run on different workers (promise 8,
docs/architecture.md#8-causal-order-for-a-connection), and the fuzzer only reports
what it sees (docs/operations.md#garbage-and-fuzzing).

    scripts/fuzz --frames 100000 --run-dir run        # against scripts/run

The ZeroMQ attacker never sends a worker's credit (``R<n>``, ``B<n>``, ``D<n>``), and
never addresses a real interface or worker by its routing id: a peer that can open the
IPC sockets is as trusted as a worker (the run directory is 0700), so this checks
garbage, not impersonation.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from benchkit.wsclient import masked_frame
from zchannels.core.stats import alive

CLOSE_CODES = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1015, 2999,
               3000, 4999, 5000, 0, 65535]
WRONG_TYPED_HEADERS = [
    {"op": "send", "conn": "1", "kind": 5}, {"op": "send", "conn": [1], "kind": ["x"]},
    {"op": "done", "seq": "x", "conn": {}}, {"op": "close", "code": 99999, "conn": 1},
    {"op": ["send"], "conn": 1}, {"op": None}, {"req": [], "ok": "yes"},
    {"op": "group_add", "group": 5, "req": {}, "conn": 1},
    {"channel": 5}, {"channel": "websocket.receive", "reply_channel": 7},
    {"channel": "websocket.receive", "reply_channel": "nobody!1", "ack": True,
     "path": "/nowhere", "kind": "text"},
    {"channel": "websocket.connect", "reply_channel": "x!y", "path": None},
    {"channel": ["x"], "session": "not a dict"}, {"channel": "app.none", "session": [1]},
    {"redelivered": "yes", "channel": "app.none"},
]


@dataclass
class Tally:
    sent: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, kind: str, n: int = 1) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + n

    def note(self, what: str, n: int = 1) -> None:
        self.events[what] = self.events.get(what, 0) + n

    def total(self) -> int:
        return sum(self.sent.values())


# -- ZeroMQ garbage ------------------------------------------------------------------

def random_frame(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.25:
        return json.dumps(rng.choice(WRONG_TYPED_HEADERS)).encode()
    if choice < 0.35:
        return b""
    if choice < 0.45:
        return rng.choice([b"{", b"[]", b"null", b'{"op":', b"\xff\xfe", b"R", b"B",
                           b"D", b"Dx", b"T", b"Tx", b"G", b"E", b"A", b"U", b"*",
                           b"unreachable", b"pong", b"12", b"-1"])
    size = rng.choice([1, 2, 8, 40, 300, 5000])
    data = rng.randbytes(rng.randint(0, size))
    if data[:1] in (b"R", b"B", b"D") and data[1:].isdigit():
        data = b"x" + data  # never a worker's credit (see the module docstring)
    return data


def random_message(rng: random.Random) -> list[bytes]:
    return [random_frame(rng) for _ in range(rng.choice([1, 1, 2, 2, 3, 3, 4, 7]))]


# Socket type an attacker connects to each bound endpoint with.
PEER_TYPES = {"broker-clients": zmq.DEALER, "broker-interfaces": zmq.DEALER}


def zmq_endpoints(run_dir: str) -> dict[str, tuple[str, int]]:
    """name -> (endpoint, socket type) for every IPC socket in the run directory."""
    found: dict[str, tuple[str, int]] = {}
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if name in PEER_TYPES:
            kind = PEER_TYPES[name]
        elif name.startswith("pool-") and name.endswith(".in"):
            kind = zmq.PUSH
        elif name.startswith("pool-") and name.endswith(".out"):
            kind = zmq.DEALER
        else:
            continue
        found[name] = (f"ipc://{path}", kind)
    return found


class ZmqAttacker:
    """One peer per endpoint; each `burst` sends random messages to all of them."""

    def __init__(self, endpoints: dict[str, tuple[str, int]], rng: random.Random) -> None:
        self.context = zmq.Context()
        self.rng = rng
        self.peers: dict[str, zmq.Socket] = {}
        for name, (endpoint, kind) in endpoints.items():
            sock = self.context.socket(kind)
            sock.linger = 0
            sock.sndhwm = 1000
            if kind == zmq.DEALER:  # a random routing id, never a real one
                sock.routing_id = b"fuzz-" + rng.randbytes(6).hex().encode()
            sock.connect(endpoint)
            self.peers[name] = sock

    def burst(self, tally: Tally, count: int) -> int:
        """Send up to `count` messages to each peer; return how many went out."""
        sent = 0
        for name, sock in self.peers.items():
            for _ in range(count):
                frames = random_message(self.rng)
                try:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                    tally.add(f"zmq {name}")
                    sent += 1
                except zmq.Again:
                    tally.note(f"zmq {name} full")
            self.discard_input(sock)
        return sent

    def discard_input(self, sock: zmq.Socket) -> None:
        while True:  # bounces, pongs, group messages: read and drop
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                return

    def close(self) -> None:
        for sock in self.peers.values():
            sock.close(0)
        self.context.term()


# -- raw WebSocket and HTTP --------------------------------------------------------

def ws_frame(rng: random.Random, max_message: int) -> tuple[bytes, bool]:
    """A random WebSocket frame, and whether it is a plain valid data frame."""
    kind = rng.random()
    fin, rsv, masked = 0x80, 0, True
    opcode = rng.choice([1, 2])
    if opcode == 1:
        payload = "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 40)))
        payload_bytes = payload.encode()
    else:
        payload_bytes = rng.randbytes(rng.randint(0, 200))
    announced = None
    valid = True
    if kind < 0.03:
        opcode, valid = rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), False
    elif kind < 0.06:
        opcode, payload_bytes, valid = 1, rng.randbytes(rng.randint(1, 30)) + b"\xff", False
    elif kind < 0.08:
        masked, valid = False, False
    elif kind < 0.10:
        rsv, valid = rng.choice([0x40, 0x20, 0x10]), False
    elif kind < 0.12:
        opcode, payload_bytes, valid = rng.choice([8, 9, 10]), rng.randbytes(126), False
    elif kind < 0.14:
        fin, valid = 0, False  # a fragment; often followed by a new data frame: error
    elif kind < 0.15:
        opcode, payload_bytes, valid = 0, rng.randbytes(10), False  # stray continuation
    elif kind < 0.16:
        announced, valid = max_message + rng.randint(1, 1 << 20), False
    elif kind < 0.18:
        opcode, valid = 8, False
        payload_bytes = rng.choice(CLOSE_CODES).to_bytes(2, "big") + rng.randbytes(
            rng.randint(0, 4))
    elif kind < 0.20:
        opcode, payload_bytes, valid = 9, rng.randbytes(rng.randint(0, 125)), False  # ping
    frame = masked_frame(opcode, payload_bytes, rng.randbytes(4) if masked else None, rsv,
                         fin=bool(fin), length=announced)
    return frame, valid


def handshake(host: str, port: int, path: str, rng: random.Random) -> bytes:
    key = base64.b64encode(rng.randbytes(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


async def drain(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


async def ws_attacker(host: str, port: int, rng: random.Random, tally: Tally,
                      budget: "Budget", max_message: int) -> None:
    while budget.left():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError):
            tally.note("ws connect failed")
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(handshake(host, port, "/ws/echo", rng))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 101"):
                tally.note(f"ws handshake {head[9:12].decode(errors='replace')}")
                continue
            tally.note("ws connections")
            draining = asyncio.ensure_future(drain(reader))
            for _ in range(rng.randint(1, 300)):
                if draining.done() or writer.is_closing():
                    tally.note("ws closed by server")
                    break
                if not budget.take():
                    break
                data, valid = ws_frame(rng, max_message)
                writer.write(data)
                tally.add("ws frames")
                if not valid:
                    tally.note("ws invalid frames")
                if writer.transport.get_write_buffer_size() > 1 << 16:
                    await asyncio.wait_for(writer.drain(), 5)
                elif rng.random() < 0.05:
                    await asyncio.sleep(0)  # let the server's answers and close come in
            await asyncio.sleep(0)
            draining.cancel()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            tally.note("ws connection errors")
        finally:
            writer.close()


def http_request(rng: random.Random, host: str, port: int) -> bytes:
    choice = rng.random()
    method = rng.choice([b"GET", b"POST", b"PUT", b"BREW", b"G\x00T", b"", b"GET GET"])
    path = rng.choice([b"/", b"/ws/echo", b"/static/../../etc/passwd", b"/%ff%00",
                       b"*", b"/" + rng.randbytes(20), b"/x" * 3000])
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"", b"FOO"])
    headers = [b"Host: %s:%d" % (host.encode(), port)]
    if choice < 0.2:
        headers.append(b"X-Big: " + b"a" * rng.choice([70_000, 200_000]))  # oversized
    elif choice < 0.35:
        headers += [b"Content-Length: " + rng.choice([b"-1", b"abc", b"99999999999", b"5"])]
    elif choice < 0.5:
        headers += [rng.randbytes(rng.randint(1, 60)) for _ in range(rng.randint(1, 5))]
    elif choice < 0.6:
        headers += [b"Upgrade: websocket", b"Connection: Upgrade",
                    b"Sec-WebSocket-Version: " + rng.choice([b"8", b"13", b"x"])]
    elif choice < 0.7:
        return rng.randbytes(rng.randint(1, 2000))
    return method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"


async def http_attacker(host: str, port: int, rng: random.Random, tally: Tally,
                        budget: "Budget") -> None:
    while budget.left():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError):
            tally.note("http connect failed")
            await asyncio.sleep(0.1)
            continue
        try:
            if not budget.take():
                break
            writer.write(http_request(rng, host, port))
            tally.add("http requests")
            if writer.can_write_eof():
                writer.write_eof()
            status = await asyncio.wait_for(reader.read(12), 10)
            tally.note(f"http {status[9:12].decode(errors='replace') or 'closed'}")
        except (OSError, asyncio.TimeoutError) as e:
            tally.note(f"http {type(e).__name__}")
        finally:
            writer.close()


class Budget:
    def __init__(self, frames: int, deadline: float) -> None:
        self.frames, self.deadline = frames, deadline

    def left(self) -> bool:
        return self.frames > 0 and time.monotonic() < self.deadline

    def take(self, n: int = 1) -> bool:
        if not self.left():
            return False
        self.frames -= n
        return True


# -- the publish API and the operator endpoints -------------------------------------

PUBLISH_PATH = "/_zchannels/publish"
OPERATOR_PATHS = ("/_zchannels/metrics", "/_zchannels/dashboard",
                  "/_zchannels/dashboard/events", PUBLISH_PATH)
BAD_PUBLISH_BODIES = [
    b"", b"{", b"[]", b"null", b"1", b'"x"', b"\xff\xfe", b"{}", b"[" * 5000 + b"]" * 5000,
    b'{"group": "g"}', b'{"group": "g", "reply_channel": "i1!1", "text": "x"}',
    b'{"group": "g", "text": "x", "extra": 1}', b'{"group": 5, "text": "x"}',
    b'{"group": "", "text": "x"}', b'{"group": "a b\\u0000", "text": "x"}',
    b'{"group": "g", "text": 5}', b'{"group": "g", "text": "\\ud800"}',
    b'{"group": "g", "bytes_b64": "***"}', b'{"group": "g", "bytes_b64": 7}',
    b'{"group": "g", "close": 99999}', b'{"group": "g", "close": "x"}',
    b'{"group": "g", "close": 1000, "text": "x"}', b'{"group": "g", "text": "x", "id": true}',
    b'{"group": "g", "text": "x", "event": "a\\nb"}', b'{"group": "g", "text": "x", "id": [1]}',
    b'{"reply_channel": "nobody", "text": "x"}', b'{"reply_channel": "i!x", "close": 4000}',
    b'{"reply_channel": ["i1!1"], "text": "x"}', b'{"channel": "no-pool.x"}',
    b'{"channel": "tasks.echo", "content": []}', b'{"channel": 1, "payload_b64": "AA=="}',
    b'{"group": "g", "text": "x", "close": 1000, "reason": 5}',
    b'{"group": "g", "text": ' + b"1" * 5000 + b"}",
]


def publish_body(rng: random.Random, max_message: int) -> bytes:
    """A body the publish API must refuse (400 or 413), or now and then accept."""
    choice = rng.random()
    if choice < 0.6:
        return rng.choice(BAD_PUBLISH_BODIES)
    if choice < 0.7:
        return json.dumps({"group": "fuzz-" + rng.randbytes(4).hex(),
                           "text": "x" * (max_message + rng.randint(1, 1000))}).encode()
    if choice < 0.8:
        return json.dumps({"group": "g" * rng.choice([1, 100, 1000, 100_000]),
                           "text": "x"}).encode()
    if choice < 0.9:
        return rng.randbytes(rng.randint(1, 3000))
    return json.dumps({"group": "fuzz-" + rng.randbytes(4).hex(), "text": "ok"}).encode()


def framed(method: bytes, path: bytes, headers: list[bytes], body: bytes,
           rng: random.Random) -> bytes:
    """A request with its body framed rightly or wrongly."""
    kind = rng.random()
    if kind < 0.6:
        headers = headers + [b"Content-Length: %d" % len(body)]
    elif kind < 0.75:
        headers = headers + [b"Transfer-Encoding: chunked"]
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if rng.random() < 0.7 \
            else b"zz\r\n" + body
    elif kind < 0.85:
        headers = headers + [b"Content-Length: %d" % (len(body) + rng.randint(1, 100_000))]
    elif kind < 0.95:
        headers = headers + [b"Content-Length: %d" % len(body), b"Expect: 100-continue"]
    return method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def operator_request(rng: random.Random, host: str, port: int) -> bytes:
    """Random methods, hosts, forwarding headers, tokens and cookies for the operator
    endpoints and the publish API."""
    method = rng.choice([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"BREW"])
    path = rng.choice(OPERATOR_PATHS).encode() + rng.choice(
        [b"", b"/", b"?token=" + rng.randbytes(8).hex().encode(), b"?token=&token=x",
         b"?token=%ff%00", b"/%2e%2e/events", b"?" + b"a=1&" * 2000, b"//", b"%00"])
    headers = [rng.choice([b"Host: %s:%d" % (host.encode(), port), b"Host: localhost",
                           b"Host: attacker.example:8401", b"Host: [::1", b"Host: ",
                           b"Host: " + b"a." * 2000 + b"example",
                           b"Host: 127.0.0.1:%d" % port])]
    for name in rng.sample([b"X-Forwarded-Host", b"X-Forwarded-For", b"X-Forwarded-Proto",
                            b"Forwarded", b"Via", b"X-Real-IP"], rng.randint(0, 3)):
        headers.append(name + b": " + rng.choice([b"localhost", b"attacker.example",
                                                  b"127.0.0.1", b"https", b'for=x;host="a"',
                                                  rng.randbytes(10).hex().encode()]))
    headers.append(rng.choice([
        b"Authorization: Bearer " + rng.randbytes(rng.choice([1, 16, 64, 600])).hex().encode(),
        b"Authorization: Bearer", b"Authorization: Basic eDp5", b"Authorization: bearer  x",
        b"Authorization: Bearer \xe9\xff", b"Cookie: zchannels_dashboard=" +
        rng.randbytes(32).hex().encode(), b"Cookie: zchannels_dashboard=\xff;;=", b"X-N: 1"]))
    body = publish_body(rng, 1 << 20) if method in (b"POST", b"PUT") else b""
    return framed(method, path, headers, body, rng)


async def send_raw(host: str, port: int, data: bytes, source: str) -> bytes:
    """Send one request and read the start of the answer: b"" if the server closed."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None), 5)
    try:
        writer.write(data)
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(12), 10)
    finally:
        writer.close()


async def publish_attacker(host: str, port: int, rng: random.Random, tally: Tally,
                           budget: Budget, token: str, source: str, max_message: int) -> None:
    """Bodies for the publish API's parser: with the right token when one is given."""
    while budget.take():
        body = publish_body(rng, max_message)
        headers = [b"Host: %s:%d" % (host.encode(), port), b"Content-Type: application/json",
                   b"Authorization: Bearer " + (token.encode() or b"not-the-token")]
        data = framed(b"POST", PUBLISH_PATH.encode(), headers, body, rng)
        try:
            status = await send_raw(host, port, data, "" if token else source)
            tally.add("publish requests")
            tally.note(f"publish {status[9:12].decode(errors='replace') or 'closed'}")
        except (OSError, asyncio.TimeoutError) as e:
            tally.add("publish requests")
            tally.note(f"publish {type(e).__name__}")


async def operator_attacker(host: str, port: int, rng: random.Random, tally: Tally,
                            budget: Budget, source: str) -> None:
    while budget.take():
        try:
            status = await send_raw(host, port, operator_request(rng, host, port), source)
            tally.add("operator requests")
            tally.note(f"operator {status[9:12].decode(errors='replace') or 'closed'}")
        except (OSError, asyncio.TimeoutError) as e:
            tally.add("operator requests")
            tally.note(f"operator {type(e).__name__}")


def operator_health(host: str, port: int, token: str, source: str, tally: Tally) -> None:
    """After the attack: the metrics still answer, and a good publish is taken (or, when
    the wrong tokens came from this very address, refused with 429)."""
    def ask(method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    try:
        status = ask("GET", "/_zchannels/metrics")
        if status not in (200, 401, 404):  # 401: metrics_token set; 404: metrics_path off
            tally.failures.append(f"the metrics answered {status} after the attack")
        if token:
            status = ask("POST", PUBLISH_PATH, json.dumps({"group": "fuzz-health",
                                                           "text": "ok"}).encode(),
                         {"Authorization": f"Bearer {token}"})
            if status != 202 and not (status == 429 and not source):
                tally.failures.append(f"a good publish got {status} after the attack")
        tally.note("operator health checks passed")
    except OSError as e:
        tally.failures.append(f"operator endpoints unreachable after the attack: {e}")


# -- well-behaved clients ------------------------------------------------------------

async def echo_client(url: str, index: int, tally: Tally, stop: asyncio.Event) -> None:
    from tornado.websocket import websocket_connect
    ws = await asyncio.wait_for(websocket_connect(url + "/ws/echo"), 10)
    n = 0
    while not stop.is_set():
        text = f"echo {index} {n}"
        ws.write_message(text)
        try:
            answer = await asyncio.wait_for(ws.read_message(), 10)
        except asyncio.TimeoutError:
            tally.failures.append(f"echo client {index}: no answer to {text!r} in 10 s")
            return
        if answer != text:
            tally.failures.append(f"echo client {index}: sent {text!r}, got {answer!r} "
                                  f"(close code {ws.close_code})")
            return
        n += 1
        tally.note("echo round trips")
        await asyncio.sleep(0.01)
    ws.close()


async def chat_clients(url: str, count: int, tally: Tally, stop: asyncio.Event,
                       rng: random.Random) -> None:
    from tornado.websocket import websocket_connect
    room = f"fuzz{rng.randrange(1 << 30)}"
    clients = [await asyncio.wait_for(websocket_connect(
        f"{url}/ws/chat/{room}?name=c{i}"), 10) for i in range(count)]
    received: list[dict[str, list[int]]] = [{} for _ in clients]
    sent = [0] * count

    async def listen(i: int) -> None:
        while True:
            text = await clients[i].read_message()
            if text is None:
                if not stop.is_set():
                    tally.failures.append(f"chat client {i} closed: {clients[i].close_code}")
                return
            event = json.loads(text)
            if event.get("type") == "message":
                user, n = event["text"].split()
                received[i].setdefault(user, []).append(int(n))
                tally.note("chat deliveries")

    listeners = [asyncio.ensure_future(listen(i)) for i in range(count)]
    await asyncio.sleep(0.5)  # every member has joined before anyone speaks
    while not stop.is_set():
        for i, ws in enumerate(clients):
            ws.write_message(json.dumps({"text": f"c{i} {sent[i]}"}))
            sent[i] += 1
        await asyncio.sleep(0.05)
    await asyncio.sleep(3.0)  # let the last messages arrive
    for i in range(count):
        for j in range(count):
            got = received[i].get(f"c{j}", [])
            if sorted(got) != list(range(sent[j])):
                missing = len(set(range(sent[j])) - set(got))
                tally.failures.append(f"chat client {i} from c{j}: {len(got)} of {sent[j]} "
                                      f"messages, {missing} missing")
            elif got != sorted(got):
                # Reported, not failed: consecutive messages of one client are consecutive
                # events, which may run on different workers; the broker keeps their group
                # sends in order (docs/architecture.md#8-causal-order-for-a-connection), and
                # the fuzzer reports a swap rather than judge it
                # (docs/operations.md#garbage-and-fuzzing).
                tally.note("chat streams received out of order (known gap)")
    for ws in clients:
        ws.close()
    for listener in listeners:
        listener.cancel()


# -- history parameters (docs/consumers.md#history-and-recovery, operations.md#history-budgets)
#
# Positions a client can give back -- ``?since=`` on a WebSocket or a long-poll,
# ``Last-Event-ID`` on an event stream -- as random and awkward values, to rooms of the
# demo chat (whose ``chat.*`` groups keep history in the shipped config); some probes
# also drop a large message into their room, as the flood of issue 21 did. Every answer
# must be an answer: a ``recovery_failed`` notice, the join, or a 4xx -- never a 5xx or
# a close 1011. Meanwhile a recovering client comes back to its own room, again and
# again, with the last position it saw, and must get exactly what it missed.

SINCE_SAMPLES = ["", ":", "x", "x:", ":1", "x:-1", "x:1.5", "x:+1", "x:1e3", "x: 1",
                 "x:" + "9" * 40, "a" * 63 + ":1", "a" * 65 + ":1", "a" * 4000 + ":1",
                 "0:0", "e:18446744073709551616", "é:1", "💥:1", "x:１", "\x00:1", "x:1\x00",
                 "x\t:1", "%:1", "x:1;y:2", "x:1,2", "null", "{}", "[1]", "x:0" * 50]


def random_since(rng: random.Random, seen: str | None) -> tuple[str, bool]:
    """(a position to give back, whether it is of the room's real epoch). `seen`: a real
    position of the room, if a probe saw one: its epoch with offsets before, at and past
    the room's last."""
    if seen is not None and rng.random() < 0.3:
        epoch, _, offset = seen.rpartition(":")
        return f"{epoch}:{max(0, int(offset) + rng.choice([-50, -1, 0, 1, 2, 1 << 40]))}", True
    if rng.random() < 0.6:
        return rng.choice(SINCE_SAMPLES), False
    epoch = rng.randbytes(rng.randint(0, 12)).hex()
    return f"{epoch}:{rng.choice([0, 1, 2, rng.randrange(1 << 64)])}", False


def since_header_value(since: str) -> bytes:
    """For Last-Event-ID: any bytes but CR and LF (a header line cannot hold them)."""
    return since.encode(errors="surrogateescape").replace(b"\r", b"").replace(b"\n", b"")


async def raw_get(host: str, port: int, target: bytes, headers: list[bytes],
                  wait: float) -> tuple[int | None, bytes]:
    """GET on a new connection: (the status, or None if none came within `wait`; what
    came, up to the end of the first block after the headers -- an SSE event -- or of
    the connection, or until `wait` is up)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
                     + b"\r\nConnection: close" + b"".join(b"\r\n" + h for h in headers)
                     + b"\r\n\r\n")
        data = b""
        deadline = time.monotonic() + wait
        while b"\n\n" not in data.partition(b"\r\n\r\n")[2]:
            try:
                chunk = await asyncio.wait_for(reader.read(65536),
                                               max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        status = int(data[9:12]) if data[:5] == b"HTTP/" and data[9:12].isdigit() else None
        return status, data
    finally:
        writer.close()


async def history_probe(host: str, port: int, rng: random.Random, tally: Tally,
                        index: int, seen: dict[str, str]) -> None:
    """One probe; `seen`: a real position of each room, as probes see them."""
    from tornado.httpclient import HTTPClientError
    from tornado.websocket import websocket_connect
    from urllib.parse import quote
    room = f"fuzzh{index % 7}"
    since, real = random_since(rng, seen.get(room))
    kind = rng.choice(["ws", "ws", "sse", "poll"])
    tally.note(f"history probes {kind}")
    if kind == "ws":
        url = f"ws://{host}:{port}/ws/chat/{room}?since={quote(since, safe='')}"
        try:
            ws = await asyncio.wait_for(websocket_connect(url), 10)
        except HTTPClientError as e:
            if e.code >= 500:
                tally.failures.append(f"history ws since={since[:40]!r}: HTTP {e.code}")
            tally.note(f"history ws refused {e.code}")
            return
        try:
            text = await asyncio.wait_for(ws.read_message(), 10)
            if text is None:
                if ws.close_code == 1011:
                    tally.failures.append(f"history ws since={since[:40]!r}: closed 1011")
                tally.note(f"history ws closed {ws.close_code}")
                return
            first = json.loads(text)
            kind = first.get("type")
            if isinstance(first.get("pos"), str):
                seen[room] = first["pos"]
            tally.note(f"history ws answered {kind}" + (" (real epoch)" if real else ""))
            if since and not real and kind != "recovery_failed":
                tally.failures.append(f"history ws since={since[:40]!r}: first event "
                                      f"{text[:80]!r}, not recovery_failed")
            if rng.random() < 0.3:  # the flood: a large message into its own room
                ws.write_message("z" * rng.choice([1000, 70_000, 300_000]))
                tally.note("history large messages")
                await asyncio.wait_for(ws.read_message(), 10)
        finally:
            ws.close()
        return
    if kind == "sse":
        target = f"/sse/chat/{room}".encode()
        headers = [b"Last-Event-ID: " + since_header_value(since)]
    else:
        target = f"/poll/chat/{room}?since={quote(since, safe='')}".encode()
        headers = []
    status, data = await raw_get(host, port, target, headers, 3.0)
    tally.note(f"history {kind} {status or 'held'}")
    if b"recovery_failed" in data:
        tally.note(f"history {kind} answered recovery_failed")
    if status is not None and status >= 500:
        tally.failures.append(f"history {kind} since={since[:40]!r}: HTTP {status}")


async def history_prober(host: str, port: int, rng: random.Random, tally: Tally,
                         probes: int) -> None:
    seen: dict[str, str] = {}
    for index in range(probes):
        try:
            await history_probe(host, port, rng, tally, index, seen)
        except (OSError, asyncio.TimeoutError) as e:
            tally.failures.append(f"history probe {index}: {type(e).__name__}: {e}")


async def recovering_client(url: str, tally: Tally, stop: asyncio.Event,
                            rng: random.Random) -> None:
    """Leaves its room, misses what a speaker says there, and comes back with the last
    position it saw: it must get exactly the missed messages, in order, then its join."""
    from tornado.websocket import websocket_connect
    from urllib.parse import quote
    room = f"fuzzr{rng.randrange(1 << 30)}"

    async def until(ws: Any, done: Callable[[list[dict[str, Any]]], bool]
                    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while not done(events):
            text = await asyncio.wait_for(ws.read_message(), 10)
            if text is None:
                raise ConnectionError(f"closed with {ws.close_code}")
            events.append(json.loads(text))
        return events

    def joined(events: list[dict[str, Any]]) -> bool:
        return bool(events) and events[-1]["type"] in ("join", "recovery_failed")

    speaker = await asyncio.wait_for(websocket_connect(f"{url}/ws/chat/{room}?name=s"), 10)
    member = await asyncio.wait_for(websocket_connect(f"{url}/ws/chat/{room}?name=r"), 10)
    last = (await until(member, joined))[-1].get("pos")
    rounds = 0
    try:
        if last is None:  # no [[history.groups]] rule keeps chat.* here
            tally.note("history: the chat rooms keep none, no recoveries checked")
            await stop.wait()
        while last is not None and not stop.is_set():
            member.close()
            said = [f"r{rounds}.{i}" for i in range(3)]
            for text in said:  # each after the last came back: in order at the broker
                speaker.write_message(text)

                def echoed(events: list[dict[str, Any]], text: str = text) -> bool:
                    return bool(events) and events[-1].get("text") == text
                await until(speaker, echoed)
            member = await asyncio.wait_for(websocket_connect(
                f"{url}/ws/chat/{room}?name=r&since={quote(last)}"), 10)
            events = await until(member, joined)
            epoch, _, offset = last.rpartition(":")
            positions = [e.get("pos") for e in events]
            expected = [f"{epoch}:{int(offset) + i}" for i in range(1, len(events) + 1)]
            kinds = [e["type"] for e in events]
            # Its own leave may come after a message the speaker sent as it closed (the
            # server had not seen the close yet): that one is missed all the same.
            if kinds[-1:] != ["join"] or kinds.count("leave") != 1 or positions != expected \
                    or [e.get("text") for e in events if e["type"] == "message"] != said:
                seen = [(e["type"], e.get("text"), e.get("pos")) for e in events]
                tally.failures.append(f"recovering client, round {rounds}: from {last} got "
                                      f"{seen}")
                return
            tally.note("history recoveries exact")
            last = events[-1]["pos"]
            rounds += 1
            await asyncio.sleep(0.2)
    except (ConnectionError, asyncio.TimeoutError) as e:
        if not stop.is_set():
            tally.failures.append(f"recovering client: {type(e).__name__}: {e}")
    finally:
        member.close()
        speaker.close()


# -- the run ---------------------------------------------------------------------

def server_pids(run_dir: str) -> dict[int, str]:
    ready = os.path.join(run_dir, "ready")
    found: dict[int, str] = {}
    for name in os.listdir(ready) if os.path.isdir(ready) else []:
        role, _, pid = name.rpartition(".")
        if pid.isdigit():
            found[int(pid)] = role
    return found


async def fuzz(args: argparse.Namespace) -> Tally:
    rng = random.Random(args.seed)
    tally = Tally()
    url = f"ws://{args.host}:{args.port}"
    stop = asyncio.Event()
    good = [asyncio.ensure_future(echo_client(url, i, tally, stop)) for i in range(args.echo)]
    if args.chat:
        good.append(asyncio.ensure_future(chat_clients(url, args.chat, tally, stop, rng)))
    if args.history:
        history_rng = random.Random(args.seed + 1)  # the others' draws stay as they were
        good.append(asyncio.ensure_future(recovering_client(url, tally, stop, history_rng)))
    await asyncio.sleep(1.0)
    deadline = time.monotonic() + args.duration
    # Shares of the frame budget: WebSocket frames most, then ZeroMQ, then HTTP, the
    # publish API and the operator endpoints.
    ws_budget = Budget(int(args.frames * 0.6), deadline)
    http_budget = Budget(int(args.frames * 0.05), deadline)
    publish_budget = Budget(int(args.frames * 0.025), deadline)
    operator_budget = Budget(int(args.frames * 0.025), deadline)
    zmq_budget = Budget(args.frames - ws_budget.frames - http_budget.frames
                        - publish_budget.frames - operator_budget.frames, deadline)
    attackers = [asyncio.ensure_future(ws_attacker(args.host, args.port,
                                                   random.Random(rng.random()), tally,
                                                   ws_budget, args.max_message_bytes))
                 for _ in range(args.connections)]
    attackers += [asyncio.ensure_future(http_attacker(args.host, args.port,
                                                      random.Random(rng.random()), tally,
                                                      http_budget)) for _ in range(2)]
    if args.history:
        attackers.append(asyncio.ensure_future(history_prober(
            args.host, args.port, random.Random(args.seed + 2), tally, args.history)))
    attackers.append(asyncio.ensure_future(publish_attacker(
        args.host, args.port, random.Random(rng.random()), tally, publish_budget,
        args.publish_token, args.operator_source, args.max_message_bytes)))
    attackers.append(asyncio.ensure_future(operator_attacker(
        args.host, args.port, random.Random(rng.random()), tally, operator_budget,
        args.operator_source)))
    endpoints = zmq_endpoints(args.run_dir) if args.run_dir else {}
    zmq_attacker = ZmqAttacker(endpoints, random.Random(rng.random())) if endpoints else None
    try:
        while any(not a.done() for a in attackers) or (zmq_attacker and zmq_budget.left()):
            if zmq_attacker and zmq_budget.left():
                per_peer = min(50, max(1, zmq_budget.frames // len(endpoints)))
                zmq_budget.take(zmq_attacker.burst(tally, per_peer))
            if any(g.done() for g in good):
                break  # a good client failed: stop at once and report
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.cancel()
        if zmq_attacker:
            zmq_attacker.close()
    for result in await asyncio.gather(*good, return_exceptions=True):
        if isinstance(result, BaseException):
            tally.failures.append(f"good client raised {type(result).__name__}: {result}")
    await asyncio.to_thread(operator_health, args.host, args.port, args.publish_token,
                            args.operator_source, tally)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("ZCHANNELS_PORT", 8000)))
    parser.add_argument("--run-dir", default=os.environ.get("ZCHANNELS_RUN_DIR", ""),
                        help="the system's run directory: ZeroMQ endpoints and PIDs")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds at most")
    parser.add_argument("--connections", type=int, default=4, help="raw WebSocket attackers")
    parser.add_argument("--echo", type=int, default=8, help="well-behaved echo clients")
    parser.add_argument("--chat", type=int, default=4, help="well-behaved chat clients")
    parser.add_argument("--max-message-bytes", type=int, default=1 << 20)
    parser.add_argument("--history", type=int, default=40, help="probes of history "
                        "parameters (since, Last-Event-ID) on the demo chat, and a client "
                        "that checks its recoveries meanwhile (0: none)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--publish-token", default=os.environ.get("ZCHANNELS_PUBLISH_TOKEN", ""),
                        help="the publish API's token, so malformed bodies reach its parser "
                             "(default: $ZCHANNELS_PUBLISH_TOKEN)")
    parser.add_argument("--operator-source", default=None,
                        help="the local address of the requests with wrong tokens, which get "
                             "it rate-limited (default: 127.0.0.2 against 127.0.0.1)")
    args = parser.parse_args(argv)
    if args.operator_source is None:
        args.operator_source = "127.0.0.2" if args.host == "127.0.0.1" else ""
    if args.seed is None:
        args.seed = random.randrange(1 << 32)
    pids_before = server_pids(args.run_dir) if args.run_dir else {}
    started = time.monotonic()
    tally = asyncio.run(fuzz(args))
    elapsed = time.monotonic() - started
    died = {pid: role for pid, role in pids_before.items() if not alive(pid)}
    print(f"fuzz: seed {args.seed}, {tally.total()} frames in {elapsed:.1f} s")
    for kind, n in sorted(tally.sent.items()):
        print(f"  sent {kind}: {n}")
    for what, n in sorted(tally.events.items()):
        print(f"  {what}: {n}")
    print(f"  server processes watched: {len(pids_before)}, died: {len(died)}")
    for pid, role in died.items():
        tally.failures.append(f"server process {role} (pid {pid}) died")
    for failure in tally.failures:
        print(f"FAIL {failure}")
    ok = not tally.failures and tally.total() >= args.frames
    if tally.total() < args.frames:
        print(f"FAIL only {tally.total()} of {args.frames} frames sent within "
              f"{args.duration:g} s")
    print("fuzz: OK, every echo answer came back in order, every chat message reached "
          "every member once, no server process died" if ok else "fuzz: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
