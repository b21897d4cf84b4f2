"""One client WebSocket inside the interface: its Tornado handler and its state.

The handshake waits for the ``websocket.connect`` consumer's decision (accept,
reject, or close), so a consumer can refuse a connection with a real HTTP 403.
Messages a consumer sends before the handshake has finished are kept (bounded)
and written once it has. The connection's events go through its `Pipeline`
(`clients.Clients`): when its queue is full the socket is not read any further
(TCP pushes back on the client) until the workers catch up.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any, Awaitable
from urllib.parse import urlsplit

import tornado.web
import tornado.websocket
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from zchannels.wire import frames as wire
from zchannels.core.config import Config
from zchannels.core.stats import Counters, counters
from zchannels.interface.clients import Clients, Outgoing, peer_port
from zchannels.interface.compat import (error_reason, inflate_messages, limit_write_buffer,
                                        lingering_close, server_closing, unsent_bytes,
                                        websocket_stream)
from zchannels.interface.deflate import Agreement, negotiate
from zchannels.interface.pipeline import AckResult, Pipeline, Refusal

log = logging.getLogger("zchannels.interface")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_CONSUMER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

# Bytes past max_outbound_bytes that Tornado's own frames (pings, pongs, the close
# frame) may still queue: its write limit must never fail one of those.
CONTROL_HEADROOM = 64 * 1024

NO_GROUPS: set[bytes] = set()  # shared by connections in no group; GroupTable never adds to it


class State(enum.Enum):
    CONNECTING = "connecting"  # handshake waiting for the connect consumer
    OPEN = "open"
    CLOSED = "closed"


class Decision(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"  # HTTP 403
    UNAVAILABLE = "unavailable"  # HTTP 503: the pool refused the connect event


class SocketRules:
    """What a WebSocket does, whatever carries it: how it answers its consumers' acks,
    its pool's refusals and timeouts (by `decide` on its handshake, or `close`), and
    that it drops the HTTP operations ("start", "body", "hold") as garbage.
    `Connection` below carries it on Tornado; the in-memory test server's sockets
    share it, counting in their own `counters`."""

    __slots__ = ()
    reply_channel: str
    counters: Counters = counters  # the process's

    def decide(self, decision: Decision) -> None:
        raise NotImplementedError  # the handshake's answer, if not given yet

    def close(self, code: int, reason: str = "") -> None:
        raise NotImplementedError

    def refused(self, refusal: Refusal) -> None:
        if refusal is Refusal.CONNECT:
            self.decide(Decision.UNAVAILABLE)
        else:  # RECEIVE: the receives behind it are gone too; tell the client to come back
            self.close(CLOSE_TRY_AGAIN_LATER, "server busy, try again later")

    def acknowledged(self, result: AckResult) -> None:
        if result.lost or result.error:
            self.close(CLOSE_CONSUMER_ERROR, "consumer failed")
        elif result.channel == "websocket.connect":
            self.decide(Decision.ACCEPT)  # a connect consumer that returns accepts

    def timed_out(self) -> None:
        self.close(CLOSE_CONSUMER_ERROR, "consumer timed out")

    def stop(self) -> None:
        self.close(CLOSE_GOING_AWAY, "server shutting down")

    def start(self, header: dict[str, Any], payload: bytes | None) -> None:
        self.not_http("start")

    def body(self, payload: bytes, more: bool) -> None:
        self.not_http("body")

    def hold(self, header: dict[str, Any]) -> None:
        self.not_http("hold")

    def not_http(self, op: str) -> None:
        self.counters.incr("garbage")
        log.warning("%s: dropped an HTTP %r operation for a WebSocket", self.reply_channel, op)


class Connection(SocketRules):
    """A WebSocket as a `clients.Client`."""

    __slots__ = (
        "id", "reply_channel", "handler", "config", "path", "state", "decision",
        "subprotocols", "subprotocol", "close_after_open", "stream", "pipeline",
        "close_code", "closing", "groups", "pending", "pending_bytes", "resume",
        "_receive_headers", "tokens", "tokens_at", "ping_at", "pong", "compression",
    )

    def __init__(self, conn_id: int, reply_channel: str, handler: "ConsumerSocket",
                 subprotocols: list[str]) -> None:
        self.id = conn_id
        self.reply_channel = reply_channel
        self.handler: ConsumerSocket | None = handler
        self.config: Config = handler.config
        self.path: str = handler.request.path
        self.state = State.CONNECTING
        # The connect consumer's decision; dropped once the socket is open (memory:
        # a connection may live for days).
        self.decision: asyncio.Future[Decision] | None = \
            asyncio.get_running_loop().create_future()
        self.subprotocols = subprotocols
        self.subprotocol: str | None = None
        self.close_after_open: tuple[int, str] | None = None
        self.stream: IOStream | None = None
        self.pipeline = Pipeline()
        self.closing = False  # the server has begun to close the socket
        self.close_code = 1006  # what the client sent when it closed; 1006: no close frame
        self.groups: set[bytes] = NO_GROUPS  # GroupTable gives it its own set on joining
        self.pending: list[bytes] = []  # frames sent before the handshake finished
        self.pending_bytes = 0
        self.resume: asyncio.Future[None] | None = None  # set while reading is paused
        self._receive_headers: dict[str, bytes] = {}
        self.tokens = 0.0  # rate limit: messages this connection may still send now
        self.tokens_at = 0.0  # when `tokens` was last topped up
        self.ping_at = 0.0  # when the last ping went out
        self.pong = True  # a pong (or nothing to wait for) since that ping
        self.compression: Agreement | None = None  # permessage-deflate, if agreed

    # -- the events ------------------------------------------------------------

    def event_header(self, channel: str, kind: str) -> bytes:
        if channel == "websocket.receive":
            header = self._receive_headers.get(kind)  # encoded once and reused
            if header is None:
                header = self._receive_headers[kind] = self._header(channel, kind=kind)
            return header
        return self._header(channel, code=self.close_code)

    def _header(self, channel: str, **fields: Any) -> bytes:
        content: dict[str, Any] = {"channel": channel, "reply_channel": self.reply_channel,
                                   "path": self.path, "ack": True, **fields}
        if self.pipeline.session:
            content["session"] = self.pipeline.session
        return wire.encode(content)

    def disconnect_channel(self) -> str | None:
        return "websocket.disconnect"

    def session_changed(self) -> None:
        self._receive_headers.clear()

    # -- what workers ask of it --------------------------------------------------

    def deliver(self, message: Outgoing) -> None:
        compression = self.compression
        self.write(message.frame(compression.deflater if compression else None))

    def accept(self, subprotocol: Any) -> None:
        self.subprotocol = chosen_subprotocol(self.reply_channel, subprotocol,
                                              self.subprotocols)
        self.decide(Decision.ACCEPT)

    def reject(self) -> None:
        self.decide(Decision.REJECT)

    def decide(self, decision: Decision) -> None:
        if self.decision is not None and not self.decision.done():
            self.decision.set_result(decision)

    def write(self, data: bytes) -> None:
        """Write one complete frame, or keep it until the handshake is done."""
        if self.state is State.OPEN:
            if self.stream is None or server_closing(self.handler) or self.stream.closed():
                counters.incr("dropped_to_closing")
                return
            if unsent_bytes(self.stream) + len(data) > self.config.max_outbound_bytes:
                # The client does not read what it is sent: close rather than buffer
                # without bound.
                self.overflow("the client is not reading fast enough")
                return
            try:
                self.stream.write(data)
            except StreamClosedError:
                counters.incr("dropped_to_closing")
            except StreamBufferFullError:  # only if unsent_bytes could not see the buffer
                self.overflow("the client is not reading fast enough")
        elif self.state is State.CONNECTING and self.handler is not None:
            if self.closing:  # sent after a close: it would follow the close frame
                counters.incr("dropped_to_closing")
                return
            self.pending_bytes += len(data)
            if self.pending_bytes > self.config.max_outbound_bytes:
                self.overflow("too much data before the handshake finished")
                return
            self.pending.append(data)
        else:
            counters.incr("dropped_to_closed")

    def overflow(self, reason: str) -> None:
        counters.incr("outbound_overflow")
        log.warning("%s: more than %d bytes waiting to be sent (%s); closing with %d",
                    self.reply_channel, self.config.max_outbound_bytes, reason, CLOSE_POLICY)
        self.close(CLOSE_POLICY, reason)

    def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        if self.state is State.CONNECTING:
            # The client can only see a close code on an open socket: finish the
            # handshake, then close.
            if self.close_after_open is None:
                self.close_after_open = (code, reason)
            self.decide(Decision.ACCEPT)
        elif self.state is State.OPEN and self.handler is not None:
            self.handler.close(code, reason)

    def tick(self, now: float) -> None:
        """Ping every ping_interval; close (1000, "ping timed out") when no pong came
        within ping_timeout, so a half-open TCP peer is found and its disconnect
        consumer runs. One task pings every socket (`sweeps`): a task per socket,
        Tornado's way, costs each connection a kilobyte or two."""
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        if not interval or self.state is not State.OPEN or self.handler is None \
                or self.closing:
            return
        if timeout and not self.pong:
            if now - self.ping_at >= timeout:
                counters.incr("ping_timeouts")
                log.info("%s: no pong within %gs; closing", self.reply_channel, timeout)
                self.close(1000, "ping timed out")
        elif now - self.ping_at >= interval:
            self.ping_at = now
            self.pong = False
            try:
                self.handler.ping()
            except tornado.websocket.WebSocketClosedError:
                pass

    # -- the socket's life ---------------------------------------------------------

    def opened(self) -> None:
        assert self.handler is not None
        self.state = State.OPEN
        self.decision = None
        self.ping_at = time.monotonic()  # the first ping is due ping_interval from now
        self.stream = stream = websocket_stream(self.handler)
        assert stream is not None  # set by Tornado before it calls open()
        if self.compression is not None:
            inflate_messages(self.handler, self.compression.client_context)
        limit_write_buffer(stream, self.config.max_outbound_bytes + CONTROL_HEADROOM)
        self.handler.clients.opened(self, self.path)  # the broker knows it is open
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for data in pending:
            self.write(data)
        if self.close_after_open is not None:
            self.handler.close(*self.close_after_open)

    def closed(self, code: int | None) -> None:
        """The socket has closed (or its handshake ended in an HTTP error)."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if code is not None:
            self.close_code = code
        self.decide(Decision.REJECT)
        handler, self.handler, self.stream = self.handler, None, None
        if handler is not None:
            handler.clients.closed(self)

    def within_rate(self, clients: Clients) -> bool:
        """Token bucket: rate_limit messages a second, rate_burst at once. A client
        over it is closed with 1008, and its queued messages are dropped with it (their
        answers could not follow the close frame)."""
        now = time.monotonic()
        burst = self.config.rate_burst
        tokens = self.tokens + (now - self.tokens_at) * self.config.rate_limit \
            if self.tokens_at else float(burst)
        self.tokens_at = now
        if tokens < 1.0:
            self.tokens = tokens
            counters.incr("rate_limited")
            log.warning("%s: more than %g messages/s (burst %d); closing with %d",
                        self.reply_channel, self.config.rate_limit, burst, CLOSE_POLICY)
            clients.drop_receives(self)
            self.close(CLOSE_POLICY, "rate limit exceeded")
            return False
        self.tokens = min(float(burst), tokens) - 1.0
        return True


def chosen_subprotocol(reply_channel: str, subprotocol: Any, offered: list[str]) -> str | None:
    """The subprotocol a consumer accepted with, if the client offered it (else None,
    and a warning): the in-memory test server decides the same way."""
    if subprotocol is not None and subprotocol not in offered:
        log.warning("%s: consumer chose subprotocol %r, which the client did not offer "
                    "(%s); ignored", reply_channel, subprotocol, offered)
        return None
    return subprotocol


def origin_allowed(config: Config, origin: str, host: str) -> bool:
    if origin in config.allowed_origins or "*" in config.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == host.lower()


class ConsumerSocket(tornado.websocket.WebSocketHandler):
    """Every WebSocket path goes here; consumers in the workers decide what happens."""

    clients: Clients
    config: Config
    conn: Connection | None

    def initialize(self, clients: Clients, config: Config) -> None:
        self.clients = clients
        self.config = config
        self.conn = None

    async def prepare(self) -> None:
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise tornado.web.HTTPError(404)
        if self.clients.at_capacity():
            raise tornado.web.HTTPError(503, "too many connections")
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            counters.incr("refused_origin")
            log.info("refused WebSocket from origin %r to %s", origin, self.request.path)
            raise tornado.web.HTTPError(403, "origin not allowed")
        header = self.request.headers.get("Sec-WebSocket-Protocol", "")
        subprotocols = [s.strip() for s in header.split(",") if s.strip()]
        self.conn = conn = self.open_connection(subprotocols)
        assert conn.decision is not None
        try:
            decision = await asyncio.wait_for(asyncio.shield(conn.decision),
                                              self.config.handshake_timeout)
        except asyncio.TimeoutError:
            counters.incr("handshake_timeouts")
            log.warning("%s: connect consumer did not decide within %gs; answering 504",
                        conn.reply_channel, self.config.handshake_timeout)
            decision = None
        if conn.state is State.CLOSED:  # the client went away while we waited
            raise tornado.web.Finish()
        if decision is Decision.ACCEPT:
            conn.compression = agreed = negotiate(
                self.request.headers.get("Sec-WebSocket-Extensions"), self.config)
            if agreed is not None:  # Tornado's own negotiation is off: it sends this header
                self.set_header("Sec-WebSocket-Extensions", agreed.response)
            return
        conn.closed(None)
        if decision is Decision.REJECT:
            raise tornado.web.HTTPError(403, "connection rejected by consumer")
        if decision is Decision.UNAVAILABLE:
            raise tornado.web.HTTPError(503, "worker pool is full")
        raise tornado.web.HTTPError(504, "connect consumer did not answer in time")

    def open_connection(self, subprotocols: list[str]) -> Connection:
        conn_id, reply_channel = self.clients.new_reply_channel()
        conn = Connection(conn_id, reply_channel, self, subprotocols)
        request = self.request
        header = wire.encode({
            "channel": "websocket.connect", "reply_channel": reply_channel,
            "path": request.path, "query_string": request.query,
            "headers": [[k, v] for k, v in request.headers.get_all()],
            "client": [request.remote_ip, peer_port(request)],
            "subprotocols": subprotocols, "ack": True,
        })
        self.clients.open(conn, ("websocket.connect", "", b"", header))
        return conn

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        return lingering_close(super().get_websocket_protocol())

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(self.config, origin, self.request.host)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.conn.subprotocol if self.conn else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.conn is not None
        self.conn.opened()

    def on_pong(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.pong = True

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        conn = self.conn
        assert conn is not None
        if conn.closing:
            # Frames the client sent before it saw our close frame: after a 1011 or
            # 1013 they must not reach a consumer without the events we dropped.
            counters.incr("receives_dropped_on_close")
            return None
        if self.config.rate_limit and not conn.within_rate(self.clients):
            return None
        if isinstance(message, str):
            event = ("websocket.receive", wire.KIND_TEXT, message.encode(), None)
        else:
            event = ("websocket.receive", wire.KIND_BYTES, message, None)
        if self.clients.push(conn, event):
            # Stop reading this socket until its consumers catch up (Tornado does not
            # read the next frame until this future is done).
            counters.incr("paused_reading")
            conn.resume = asyncio.get_running_loop().create_future()
            return conn.resume
        return None

    def on_close(self) -> None:
        if self.conn is not None:
            self.conn.closed(self.close_code)

    def on_finish(self) -> None:
        # A handshake that ended in an HTTP error never reaches on_close.
        if self.conn is not None and self.get_status() != 101:
            self.conn.closed(None)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 503:
            self.set_header("Retry-After", "1")  # send_error cleared the headers
        self.finish(f"{status_code} {error_reason(self)}\n")

