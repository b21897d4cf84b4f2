"""One HTTP request inside the interface: its Tornado handler and its response state.

The request becomes an ``http.request`` event, handled by a worker like any
WebSocket event (same queue, same ordering, same acknowledgement). The
response comes back on the request's reply channel, from that consumer or from
any other process, later: a whole response, a stream of body parts, a
Server-Sent Events stream that group messages feed, or a held long-poll that
the first message completes. If the client goes away before the response has
ended, an ``http.disconnect`` event follows, and the request's group
memberships are already gone.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import tornado.routing
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream
from tornado.httputil import HTTPInputError, HTTPServerRequest, responses

from . import wire
from .stats import counters
from .websocket import State, unsent_bytes

if TYPE_CHECKING:
    from .interface import Interface

log = logging.getLogger("runtime.interface")

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
NO_BODY_STATUSES = frozenset({204, 304})
SSE_HEADERS = (("Content-Type", "text/event-stream; charset=utf-8"),
               ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
SSE_HEARTBEAT = b": keep-alive\n\n"


def sse_event(payload: bytes, event: Any = None, event_id: Any = None) -> bytes:
    """One Server-Sent Event: optional ``event:`` and ``id:`` lines, a ``data:`` line
    per line of the payload (which must be UTF-8 text), and the blank line."""
    parts = []
    if event:
        parts.append(b"event: %s\n" % _field(event))
    if event_id is not None:
        parts.append(b"id: %s\n" % _field(event_id))
    lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    parts.extend(b"data: %s\n" % line for line in lines)
    parts.append(b"\n")
    return b"".join(parts)


def _field(value: Any) -> bytes:
    # A newline would end the field and let the rest be read as another field.
    return str(value).replace("\r", " ").replace("\n", " ").encode()


class WebSocketUpgrade(tornado.routing.Matcher):
    """Matches requests that ask for a WebSocket, whatever their path."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return {}
        return None


class Exchange:
    """The state of one HTTP request/response, as the interface's event pipeline
    sees a connection (queue, one event in flight, groups) plus the response."""

    resume = None  # HTTP requests are read whole; there is nothing to pause

    __slots__ = (
        "id", "reply_channel", "handler", "path", "state", "queue", "in_flight",
        "in_flight_since", "sequence", "overdue", "connect_delivered", "closed_at",
        "retry_scheduled", "groups", "arrived", "mode", "started", "ended", "deadline", "hold",
        "last_write", "done",
    )

    def __init__(self, conn_id: int, reply_channel: str, handler: "ConsumerRequest") -> None:
        self.id = conn_id
        self.reply_channel = reply_channel
        self.handler: ConsumerRequest | None = handler
        self.path = handler.request.path
        self.state = State.OPEN
        self.queue: list[tuple[str, str, bytes, bytes | None]] = []
        self.in_flight: str | None = None
        self.in_flight_since = 0.0
        self.sequence = 0
        self.arrived = 0  # messages from workers since the request was dispatched
        self.overdue = False
        self.connect_delivered = False
        self.closed_at = 0.0
        self.retry_scheduled = False
        self.groups: set[bytes] = set()
        self.mode: str | None = None  # wire.MODE_*, once the response has started
        self.started = False  # status and headers chosen (held ones count)
        self.ended = False  # the response is complete: no http.disconnect
        self.deadline = 0.0  # monotonic time by which the response must start (or a
        # held long-poll times out)
        self.hold: tuple[int, list[Any], int] | None = None  # status, headers, timeout status
        self.last_write = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- what the event pipeline asks of every connection ---------------------

    def disconnect_channel(self) -> str | None:
        return None if self.ended else "http.disconnect"

    def disconnect_header(self) -> bytes:
        return wire.encode({"channel": "http.disconnect", "reply_channel": self.reply_channel,
                            "path": self.path, "ack": True})

    def set_session(self, session: dict[str, Any]) -> None:
        pass  # HTTP requests carry no session

    def closed(self) -> None:
        self.handler = None
        if not self.done.done():
            self.done.set_result(None)

    def timed_out(self) -> None:
        """Its consumer overran event_timeout."""
        self.fail(504, "consumer timed out")

    def consumer_failed(self) -> None:
        self.fail(500, "consumer failed")

    def refused(self) -> None:
        counters.incr("refused_http")
        self.fail(503, "worker pool is full")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """A close asked for by a consumer or a group: end the response."""
        if self.mode == wire.MODE_HOLD and self.hold is not None:
            self.release_hold()
        elif self.started:
            self.end()
        else:
            self.fail(500, reason or "closed before a response was sent")

    # -- the response ----------------------------------------------------------

    def start(self, header: dict[str, Any], payload: bytes | None) -> None:
        """Status and headers (op "start"), maybe with the first or only body part."""
        if self.started or self.handler is None:
            self.late("start")
            return
        mode = header.get("mode", wire.MODE_RESPONSE)
        if mode not in (wire.MODE_RESPONSE, wire.MODE_STREAM, wire.MODE_SSE):
            self.invalid(f"unknown response mode {mode!r}")
            return
        try:
            self.handler.begin(header.get("status"), header.get("headers"),
                               SSE_HEADERS if mode == wire.MODE_SSE else ())
        except (TypeError, ValueError, HTTPInputError) as e:
            self.invalid(str(e))
            return
        self.started = True
        self.mode = mode
        # Without a body part yet, the headers go now: a stream's client is waiting.
        self.body(payload or b"", bool(header.get("more")))

    def hold_until_message(self, header: dict[str, Any]) -> None:
        """Long-poll (op "hold"): the first message sent to this reply channel becomes
        the body; after `timeout` seconds without one, answer `timeout_status`."""
        if self.started or self.handler is None:
            self.late("hold")
            return
        status, headers = header.get("status", 200), header.get("headers") or []
        timeout, timeout_status = header.get("timeout"), header.get("timeout_status", 204)
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= 3600
                and isinstance(status, int) and isinstance(timeout_status, int)
                and isinstance(headers, list)):
            self.invalid(f"bad hold {header!r}")
            return
        self.started = True
        self.mode = wire.MODE_HOLD
        self.hold = (status, headers, timeout_status)
        self.deadline = time.monotonic() + timeout

    def release_hold(self, payload: bytes | None = None) -> None:
        """Answer a held long-poll: with the message that arrived, or (None) its timeout."""
        assert self.hold is not None and self.handler is not None
        status, headers, timeout_status = self.hold
        self.hold = None
        try:
            if payload is None:
                self.handler.begin(timeout_status, [], ())
            else:
                self.handler.begin(status, headers, ())
        except (TypeError, ValueError, HTTPInputError) as e:
            self.invalid(str(e))
            return
        self.mode = wire.MODE_RESPONSE
        self.body(payload or b"", more=False)

    def body(self, payload: bytes, more: bool) -> None:
        """A part of the body (op "body"); `more` False ends the response."""
        if self.handler is None or self.ended:
            self.late("body")
            return
        if not self.started:
            self.invalid("body before start")
            return
        if more:
            self.write(payload)
        else:
            if payload:
                self.handler.write(payload)  # finish() sends it, with Content-Length
            self.end()

    def deliver(self, kind: Any, payload: bytes, header: dict[str, Any]) -> None:
        """A message for this reply channel (``send`` or a group message)."""
        if self.handler is None or self.ended:
            counters.incr("dropped_to_closed")
        elif self.mode == wire.MODE_SSE:
            if kind != wire.KIND_TEXT:
                counters.incr("sse_binary_dropped")
                log.warning("%s: a binary message cannot be a Server-Sent Event; dropped",
                            self.reply_channel)
                return
            self.write(sse_event(payload, header.get("event"), header.get("id")))
        elif self.mode == wire.MODE_STREAM:
            self.write(payload)
        elif self.mode == wire.MODE_HOLD and self.hold is not None:
            self.release_hold(payload)
        else:
            # Before start (or on a plain response) there is nowhere to put it.
            counters.incr("http_sends_dropped")
            log.warning("%s: a message arrived for an HTTP response that is not a stream "
                        "(mode %s); dropped. Start a stream or hold before adding it to "
                        "groups.", self.reply_channel, self.mode)

    def write(self, data: bytes) -> None:
        handler = self.handler
        assert handler is not None
        limit = handler.server.config.max_outbound_bytes
        if unsent_bytes(handler.stream()) + len(data) > limit:
            counters.incr("outbound_overflow")
            log.warning("%s: more than %d bytes waiting to be sent (the client is not "
                        "reading fast enough); ending the response", self.reply_channel, limit)
            self.abort()
            return
        self.last_write = time.monotonic()
        if data:
            handler.write(data)
        handler.flush()

    def heartbeat(self, now: float, interval: float) -> None:
        if self.mode == wire.MODE_SSE and self.handler is not None and not self.ended \
                and now - self.last_write >= interval:
            self.write(SSE_HEARTBEAT)

    def end(self) -> None:
        handler = self.handler
        if handler is None or self.ended:
            return
        self.ended = True
        handler.finish()  # on_finish then ends the exchange

    def fail(self, status: int, reason: str) -> None:
        """An error response if nothing has been sent yet, else cut the stream short
        (the client sees a truncated body, not a complete one)."""
        handler = self.handler
        if handler is None or self.ended:
            return
        self.hold = None
        if handler._headers_written:
            self.abort()
            return
        self.started = True
        handler.send_error(status, reason=reason)

    def abort(self) -> None:
        handler = self.handler
        stream = handler.stream() if handler is not None else None
        if stream is not None:
            stream.close()  # on_connection_close ends the exchange, with http.disconnect

    def late(self, what: str) -> None:
        counters.incr("late_responses")
        log.info("%s: %s arrived after the response was %s; dropped", self.reply_channel,
                 what, "finished" if self.handler is None or self.ended else "started")

    def invalid(self, why: str) -> None:
        counters.incr("bad_responses")
        log.error("%s: invalid response from the consumer (%s); answering 500",
                  self.reply_channel, why)
        self.fail(500, "invalid response")


@tornado.web.stream_request_body
class ConsumerRequest(tornado.web.RequestHandler):
    """Every HTTP request that is not a WebSocket or a static file: consumers (or the
    WSGI application) in the workers answer it."""

    SUPPORTED_METHODS = METHODS
    server: "Interface"
    exchange: Exchange | None

    def initialize(self, server: "Interface") -> None:
        self.server = server
        self.exchange = None
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.too_large = False

    def prepare(self) -> None:
        if self.server.at_capacity():
            self.send_error(503, reason="Too Many Connections")
            raise tornado.web.Finish()
        limit = self.server.config.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.refuse_body(int(length))
            raise tornado.web.Finish()
        # Chunked bodies are counted as they arrive (data_received); Tornado's own
        # limit, above ours, only cuts off a client that ignores the 413.
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        connection.set_max_body_size(2 * limit + 65536)

    def data_received(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.body_size += len(chunk)
        if self.body_size > self.server.config.max_body_bytes:
            self.too_large = True
            self.body_parts.clear()
            self.refuse_body(self.body_size)
            return
        self.body_parts.append(chunk)

    def refuse_body(self, size: int) -> None:
        counters.incr("refused_body_too_large")
        log.info("refused %s %s: body of %d+ bytes is over max_body_bytes (%d); 413",
                 self.request.method, self.request.path, size,
                 self.server.config.max_body_bytes)
        self.send_error(413, reason="Payload Too Large")

    async def handle(self, *args: Any) -> None:
        if self.too_large or self._finished:
            return
        body = b"".join(self.body_parts)
        self.body_parts.clear()
        self.exchange = exchange = self.server.open_exchange(self, body)
        await exchange.done

    get = head = post = put = patch = delete = options = handle

    def begin(self, status: Any, headers: Any, defaults: tuple[tuple[str, str], ...]) -> None:
        """Set the status and headers the consumer chose (raises ValueError/TypeError)."""
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an int in 200..599, not {status!r}")
        if not isinstance(headers, list):
            raise TypeError(f"headers must be a list of [name, value], not {headers!r}")
        self.clear()
        self.clear_header("Content-Type")
        self.set_status(status, responses.get(status, "Unknown"))
        names = set()
        for item in headers:
            if not (isinstance(item, (list, tuple)) and len(item) == 2
                    and isinstance(item[0], str) and isinstance(item[1], str)):
                raise TypeError(f"a header must be [name, value] strings, not {item!r}")
            # WSGI frameworks may leave a leading space (Django's Set-Cookie does).
            self.add_header(item[0], item[1].strip())  # HTTPInputError on CR/LF
            names.add(item[0].lower())
        for name, value in defaults:
            if name.lower() not in names:
                self.set_header(name, value)

    def write(self, chunk: Any) -> None:
        if self._status_code in NO_BODY_STATUSES:
            return  # Tornado refuses any body with these
        super().write(chunk)

    def stream(self) -> IOStream | None:
        connection = self.request.connection
        return connection.stream if isinstance(connection, HTTP1Connection) else None

    def compute_etag(self) -> None:
        return None  # the application decides about ETags, not the server

    def on_connection_close(self) -> None:
        if self.exchange is not None:
            self.server.connection_closed(self.exchange, None)

    def on_finish(self) -> None:
        if self.exchange is not None:
            self.server.connection_closed(self.exchange, None)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback to the client: the worker's log has it.
        if status_code == 503:
            self.set_header("Retry-After", "1")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}\n")
