"""One client WebSocket inside the interface: its Tornado handler and its state.

The handshake waits for the ``websocket.connect`` consumer's decision (accept,
reject, or close), so a consumer can refuse a connection with a real HTTP 403.
Messages a consumer sends before the handshake has finished are kept (bounded)
and written once it has. Each connection has a small queue of events and at
most one in flight; when the queue is full the socket is not read any further
(TCP pushes back on the client) until the workers catch up.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import struct
import time
from typing import TYPE_CHECKING, Any, Awaitable

import tornado.web
import tornado.websocket
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from . import wire
from .stats import counters

if TYPE_CHECKING:
    from .interface import Interface

log = logging.getLogger("runtime.interface")

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODES: dict[object, int] = {wire.KIND_TEXT: OPCODE_TEXT, wire.KIND_BYTES: OPCODE_BINARY}

CLOSE_GOING_AWAY = 1001
CLOSE_CONSUMER_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_POLICY = 1008
CLOSE_INVALID_PAYLOAD = 1007

# Bytes past max_outbound_bytes that Tornado's own frames (pings, pongs, the close
# frame) may still queue: its write limit must never fail one of those.
CONTROL_HEADROOM = 64 * 1024


def frame(opcode: int, payload: bytes) -> bytes:
    """A complete, unmasked, uncompressed server-to-client WebSocket frame.

    Built once per message, so a group send writes the same bytes to every member.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def unsent_bytes(stream: IOStream | None) -> int:
    """Bytes written to the stream that the kernel has not taken yet. Tornado keeps
    no public count; without one, its own write limit is the backstop."""
    buffer = getattr(stream, "_write_buffer", None)  # None once the stream has closed
    return len(buffer) if buffer is not None else 0


NO_GROUPS: set[bytes] = set()  # shared by connections in no group; GroupTable never adds to it


class State(enum.Enum):
    CONNECTING = "connecting"  # handshake waiting for the connect consumer
    OPEN = "open"
    CLOSED = "closed"


class Decision(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"  # HTTP 403
    UNAVAILABLE = "unavailable"  # HTTP 503: the pool refused the connect event


class Connection:
    __slots__ = (
        "id", "reply_channel", "handler", "path", "state", "decision", "subprotocols",
        "subprotocol", "close_after_open", "stream", "queue", "in_flight", "in_flight_since",
        "connect_delivered", "close_code", "closed_at", "retry_scheduled", "sequence",
        "overdue", "closing",
        "groups", "session", "pending", "pending_bytes", "resume", "_receive_headers",
        "tokens", "tokens_at", "ping_at", "pong", "arrived",
    )

    def __init__(self, conn_id: int, reply_channel: str, handler: "ConsumerSocket",
                 subprotocols: list[str]) -> None:
        self.id = conn_id
        self.reply_channel = reply_channel
        self.handler: ConsumerSocket | None = handler
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
        # (channel, kind, payload, header): receive and disconnect headers are built
        # only when the event is dispatched, so they carry the session as the
        # previous event's consumer left it. A list, not a deque: it holds at most
        # max_queued_events, and an empty list is 56 bytes where a deque is 760.
        self.queue: list[tuple[str, str, bytes, bytes | None]] = []
        self.in_flight: str | None = None  # channel of the event a consumer is running
        self.in_flight_since = 0.0
        self.sequence = 0  # number of the last event dispatched; acks must name it
        self.arrived = 0  # messages from workers since then (the done says how many to expect)
        self.overdue = False  # the in-flight event has overrun event_timeout
        self.closing = False  # the server has begun to close the socket
        self.connect_delivered = False
        self.close_code = 1006  # what the client sent when it closed; 1006: no close frame
        self.closed_at = 0.0
        self.retry_scheduled = False
        self.groups: set[bytes] = NO_GROUPS  # GroupTable gives it its own set on joining
        self.session: dict[str, Any] | None = None
        self.pending: list[bytes] = []  # frames sent before the handshake finished
        self.pending_bytes = 0
        self.resume: asyncio.Future[None] | None = None  # set while reading is paused
        self._receive_headers: dict[str, bytes] = {}
        self.tokens = 0.0  # rate limit: messages this connection may still send now
        self.tokens_at = 0.0  # when `tokens` was last topped up
        self.ping_at = 0.0  # when the last ping went out (the interface's pinger)
        self.pong = True  # a pong (or nothing to wait for) since that ping

    # -- what the event pipeline asks of every connection (see exchange.Exchange) --

    def disconnect_channel(self) -> str | None:
        return "websocket.disconnect"

    def closed(self) -> None:
        self.decide(Decision.REJECT)
        self.handler = None
        self.stream = None

    def timed_out(self) -> None:
        self.close(CLOSE_CONSUMER_ERROR, "consumer timed out")

    def consumer_failed(self) -> None:
        self.close(CLOSE_CONSUMER_ERROR, "consumer failed")

    def decide(self, decision: Decision) -> None:
        if self.decision is not None and not self.decision.done():
            self.decision.set_result(decision)

    def receive_header(self, kind: str) -> bytes:
        """The header of this connection's receive events, encoded once and reused."""
        header = self._receive_headers.get(kind)
        if header is None:
            content: dict[str, Any] = {
                "channel": "websocket.receive", "reply_channel": self.reply_channel,
                "path": self.path, "kind": kind, "ack": True,
            }
            if self.session:
                content["session"] = self.session
            header = self._receive_headers[kind] = wire.encode(content)
        return header

    def disconnect_header(self) -> bytes:
        content: dict[str, Any] = {
            "channel": "websocket.disconnect", "reply_channel": self.reply_channel,
            "path": self.path, "code": self.close_code, "ack": True,
        }
        if self.session:
            content["session"] = self.session
        return wire.encode(content)

    def set_session(self, session: dict[str, Any]) -> None:
        self.session = session
        self._receive_headers.clear()

    def write(self, data: bytes) -> None:
        """Write one complete frame, or keep it until the handshake is done."""
        if self.state is State.OPEN:
            ws = self.handler.ws_connection if self.handler else None
            if self.stream is None or ws is None or ws.server_terminated or self.stream.closed():
                counters.incr("dropped_to_closing")
                return
            if self.unsent() + len(data) > self.outbound_limit():
                # The client does not read what it is sent: close rather than buffer
                # without bound.
                self.overflow("the client is not reading fast enough")
                return
            try:
                self.stream.write(data)
            except StreamClosedError:
                counters.incr("dropped_to_closing")
            except StreamBufferFullError:  # only if unsent() could not see the buffer
                self.overflow("the client is not reading fast enough")
        elif self.state is State.CONNECTING and self.handler is not None:
            if self.closing:  # sent after a close: it would follow the close frame
                counters.incr("dropped_to_closing")
                return
            self.pending_bytes += len(data)
            if self.pending_bytes > self.outbound_limit():
                self.overflow("too much data before the handshake finished")
                return
            self.pending.append(data)
        else:
            counters.incr("dropped_to_closed")

    def unsent(self) -> int:
        return unsent_bytes(self.stream)

    def outbound_limit(self) -> int:
        return self.handler.server.config.max_outbound_bytes if self.handler else 0

    def overflow(self, reason: str) -> None:
        counters.incr("outbound_overflow")
        log.warning("%s: more than %d bytes waiting to be sent (%s); closing with %d",
                    self.reply_channel, self.outbound_limit(), reason, CLOSE_POLICY)
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

    def opened(self) -> None:
        assert self.handler is not None and self.handler.ws_connection is not None
        self.state = State.OPEN
        self.decision = None
        self.ping_at = time.monotonic()  # the first ping is due ping_interval from now
        self.stream = stream = self.handler.ws_connection.stream
        assert stream is not None  # set by Tornado before it calls open()
        # Tornado raises StreamBufferFullError past this, whatever writes.
        stream.max_write_buffer_size = self.outbound_limit() + CONTROL_HEADROOM
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for data in pending:
            self.write(data)
        if self.close_after_open is not None:
            self.handler.close(*self.close_after_open)


class LingeringClose(tornado.websocket.WebSocketProtocol13):
    """Tornado closes an over-size message with 1009 and tears the TCP connection
    down at once. The rest of the big frame is then unread input, so the kernel
    answers with a reset that destroys the close frame: the client sees 1006, not
    1009. Here the connection instead lingers, reading and discarding, until the
    client closes or LINGER seconds pass."""

    LINGER = 2.0  # seconds
    _close_code: int | None = None
    _lingering = False
    _in_text_message = False

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self._close_code is None:
            self._close_code = code
        super().close(code, reason)

    def _handle_message(self, opcode: int, data: bytes) -> "asyncio.Future[None] | None":
        # Tornado aborts the connection, without a close frame or a log line, on a
        # text message that is not UTF-8; `_abort` turns that into a close with 1007.
        self._in_text_message = opcode == OPCODE_TEXT
        try:
            return super()._handle_message(opcode, data)
        finally:
            self._in_text_message = False

    def _abort(self) -> None:
        if self._in_text_message and not self.server_terminated:
            self._in_text_message = False
            counters.incr("invalid_utf8")
            log.warning("a text message that is not UTF-8: closing with %d",
                        CLOSE_INVALID_PAYLOAD)
            self.close(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
            return
        if self._lingering:
            return
        stream = self.stream
        if self._close_code == 1009 and stream is not None and not stream.closed():
            self._lingering = True
            self.client_terminated = self.server_terminated = True
            asyncio.ensure_future(self._discard_then_abort(stream))
            return
        super()._abort()

    async def _discard_then_abort(self, stream: IOStream) -> None:
        deadline = asyncio.get_running_loop().time() + self.LINGER
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                await asyncio.wait_for(stream.read_bytes(65536, partial=True), remaining)
        except (StreamClosedError, asyncio.TimeoutError):
            pass
        stream.close()


class ConsumerSocket(tornado.websocket.WebSocketHandler):
    """Every WebSocket path goes here; consumers in the workers decide what happens."""

    server: "Interface"
    conn: Connection | None

    def initialize(self, server: "Interface") -> None:
        self.server = server
        self.conn = None

    async def prepare(self) -> None:
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise tornado.web.HTTPError(404)
        if self.server.at_capacity():
            raise tornado.web.HTTPError(503, "too many connections")
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            counters.incr("refused_origin")
            log.info("refused WebSocket from origin %r to %s", origin, self.request.path)
            raise tornado.web.HTTPError(403, "origin not allowed")
        header = self.request.headers.get("Sec-WebSocket-Protocol", "")
        subprotocols = [s.strip() for s in header.split(",") if s.strip()]
        self.conn = conn = self.server.open_connection(self, subprotocols)
        assert conn.decision is not None
        try:
            decision = await asyncio.wait_for(asyncio.shield(conn.decision),
                                              self.server.config.handshake_timeout)
        except asyncio.TimeoutError:
            counters.incr("handshake_timeouts")
            log.warning("%s: connect consumer did not decide within %gs; answering 504",
                        conn.reply_channel, self.server.config.handshake_timeout)
            decision = None
        if conn.state is State.CLOSED:  # the client went away while we waited
            raise tornado.web.Finish()
        if decision is Decision.ACCEPT:
            return
        self.server.connection_closed(conn, None)
        if decision is Decision.REJECT:
            raise tornado.web.HTTPError(403, "connection rejected by consumer")
        if decision is Decision.UNAVAILABLE:
            raise tornado.web.HTTPError(503, "worker pool is full")
        raise tornado.web.HTTPError(504, "connect consumer did not answer in time")

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        protocol = super().get_websocket_protocol()
        if isinstance(protocol, tornado.websocket.WebSocketProtocol13):
            return LingeringClose(self, False, protocol.params)
        return protocol

    def check_origin(self, origin: str) -> bool:
        return self.server.origin_allowed(origin, self.request.host)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.conn.subprotocol if self.conn else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.conn is not None
        self.conn.opened()

    def on_pong(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.pong = True

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        assert self.conn is not None
        return self.server.receive(self.conn, message)

    def on_close(self) -> None:
        if self.conn is not None:
            self.server.connection_closed(self.conn, self.close_code)

    def on_finish(self) -> None:
        # A handshake that ended in an HTTP error never reaches on_close.
        if self.conn is not None and self.get_status() != 101:
            self.server.connection_closed(self.conn, None)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 503:
            self.set_header("Retry-After", "1")  # send_error cleared the headers
        self.finish(f"{status_code} {self._reason}\n")
