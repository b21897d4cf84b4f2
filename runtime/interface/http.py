"""One HTTP request inside the interface: its Tornado handler and its response state.

The request becomes an ``http.request`` event, handled by a worker like any
WebSocket event (the same `Pipeline`: ordering, acknowledgement). The
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
from typing import Any

import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream
from tornado.httputil import HTTPInputError, HTTPServerRequest, responses

from zchannels.wire import frames as wire
from zchannels.core.config import Config
from zchannels.wire.positions import POSITION_HEADER
from zchannels.core.stats import Counters, counters
from zchannels.interface.clients import Clients, Outgoing, peer_port
from zchannels.interface.compat import (error_reason, headers_written, is_finished,
                                        request_stream, response_status, unsent_bytes)
from zchannels.interface.pipeline import AckResult, Pipeline, Refusal
from zchannels.interface.sse import SSE_HEADERS, SSE_HEARTBEAT, sse_event

log = logging.getLogger("zchannels.interface")

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
NO_BODY_STATUSES = frozenset({204, 304})


def unread_body(request: HTTPServerRequest) -> bool:
    """Whether the request announces a body (for a streamed handler's `prepare`: one
    that has not been read yet). Refused with it unread, the connection is closed
    after the answer, so the answer must say ``Connection: close``, or a client that
    pools its connections sends its next request into the closing one."""
    length = request.headers.get("Content-Length", "").strip()
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return chunked or (length != "" and length != "0")


RESPONSE_MODES = (wire.MODE_RESPONSE, wire.MODE_STREAM, wire.MODE_SSE)  # what "start" may ask


def check_start(status: Any, headers: Any) -> None:
    """Raise ValueError or TypeError for a status or headers no response may have (the
    in-memory test server checks the same)."""
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"status must be an int in 200..599, not {status!r}")
    if not isinstance(headers, list):
        raise TypeError(f"headers must be a list of [name, value], not {headers!r}")
    for item in headers:
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and isinstance(item[0], str) and isinstance(item[1], str)):
            raise TypeError(f"a header must be [name, value] strings, not {item!r}")


class Response:
    """The rules of one HTTP response, without I/O: which operations it takes when
    (start, body, hold, a message for it, close) and in which mode, and what is late
    or invalid. A subclass does the I/O: `begin` (status and headers), `write` (a
    body part, sent at once), `finish` (the last part, then the end), `end`, `fail`
    (an error response, or cut short) and `hold_for` (a long-poll's timeout), and sets
    `finished` once the client has all it will get. `Exchange` below writes to
    Tornado; the in-memory test server (`zchannels.testing`) keeps what a client
    would have received."""

    __slots__ = ("mode", "started", "ended", "finished", "held")
    reply_channel: str
    counters: Counters = counters  # the process's

    def __init__(self) -> None:
        self.mode: str | None = None  # wire.MODE_*, once the response has started
        self.started = False  # status and headers chosen (held ones count)
        self.ended = False  # the response is complete: no http.disconnect
        self.finished = False  # complete, failed or cut short, or the client has gone
        self.held: tuple[int, list[Any], int] | None = None  # status, headers, timeout status

    def begin(self, status: Any, headers: Any, defaults: tuple[tuple[str, str], ...]) -> None:
        raise NotImplementedError  # raises ValueError/TypeError for what cannot be sent

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self, payload: bytes) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def fail(self, status: int, reason: str) -> None:
        raise NotImplementedError

    def hold_for(self, seconds: float) -> None:
        raise NotImplementedError

    # -- what `Clients` tells it -----------------------------------------------

    def refused(self, refusal: Refusal) -> None:
        self.counters.incr("refused_http")
        self.fail(503, "worker pool is full")

    def acknowledged(self, result: AckResult) -> None:
        if result.lost or result.error:
            self.fail(500, "consumer failed")

    def timed_out(self) -> None:
        """Its consumer overran event_timeout."""
        self.fail(504, "consumer timed out")

    def stop(self) -> None:
        if self.started:  # a stream ends
            self.close()
        else:
            self.fail(503, "server shutting down")

    # -- what consumers send it ------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """A close asked for by a consumer or a group: end the response."""
        if self.finished:
            return
        if self.mode == wire.MODE_HOLD and self.held is not None:
            self.release_hold()
        elif self.started:
            self.end()
        else:
            self.fail(500, reason or "closed before a response was sent")

    def accept(self, subprotocol: Any) -> None:
        self.invalid("accept is for WebSocket connections")

    def reject(self) -> None:
        self.invalid("reject is for WebSocket connections")

    def start(self, header: dict[str, Any], payload: bytes | None) -> None:
        """Status and headers (op "start"), maybe with the first or only body part."""
        if self.started or self.finished:
            self.late("start")
            return
        mode = header.get("mode", wire.MODE_RESPONSE)
        if mode not in RESPONSE_MODES:
            self.invalid(f"unknown response mode {mode!r}")
            return
        try:
            self.begin(header.get("status"), header.get("headers"),
                       SSE_HEADERS if mode == wire.MODE_SSE else ())
        except (TypeError, ValueError, HTTPInputError) as e:
            self.invalid(str(e))
            return
        self.started = True
        self.mode = mode
        # Without a body part yet, the headers go now: a stream's client is waiting.
        self.body(payload or b"", bool(header.get("more")))

    def hold(self, header: dict[str, Any]) -> None:
        """Long-poll (op "hold"): the first message sent to this reply channel becomes
        the body; after `timeout` seconds without one, answer `timeout_status`."""
        if self.started or self.finished:
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
        self.held = (status, headers, timeout_status)
        self.hold_for(timeout)

    def release_hold(self, payload: bytes | None = None, position: Any = None) -> None:
        """Answer a held long-poll: with the message that arrived, or (None) its timeout.
        A message of a group that keeps history brings its position, sent as the
        ``ZChannels-Position`` header: the next poll's ``since``."""
        assert self.held is not None
        status, headers, timeout_status = self.held
        self.held = None
        try:
            if payload is None:
                self.begin(timeout_status, [], ())
            else:
                if isinstance(position, str):
                    headers = [*headers, [POSITION_HEADER, position]]
                self.begin(status, headers, ())
        except (TypeError, ValueError, HTTPInputError) as e:
            self.invalid(str(e))
            return
        self.mode = wire.MODE_RESPONSE
        self.body(payload or b"", more=False)

    def body(self, payload: bytes, more: bool) -> None:
        """A part of the body (op "body"); `more` False ends the response."""
        if self.finished:
            self.late("body")
            return
        if not self.started:
            self.invalid("body before start")
            return
        if more:
            self.write(payload)
        else:
            self.finish(payload)

    def deliver(self, message: Outgoing) -> None:
        """A message for this reply channel (``send`` or a group message)."""
        kind, payload, header = message.kind, message.payload, message.header
        if self.finished:
            self.counters.incr("dropped_to_closed")
        elif self.mode == wire.MODE_SSE:
            if kind != wire.KIND_TEXT:
                self.counters.incr("sse_binary_dropped")
                log.warning("%s: a binary message cannot be a Server-Sent Event; dropped",
                            self.reply_channel)
                return
            self.write(sse_event(payload, header.get("event"), header.get("id")))
        elif self.mode == wire.MODE_STREAM:
            self.write(payload)
        elif self.mode == wire.MODE_HOLD and self.held is not None:
            self.release_hold(payload, header.get("position"))
        else:
            # Before start (or on a plain response) there is nowhere to put it.
            self.counters.incr("http_sends_dropped")
            log.warning("%s: a message arrived for an HTTP response that is not a stream "
                        "(mode %s); dropped. Start a stream or hold before adding it to "
                        "groups.", self.reply_channel, self.mode)

    def late(self, what: str) -> None:
        self.counters.incr("late_responses")
        log.info("%s: %s arrived after the response was %s; dropped", self.reply_channel,
                 what, "finished" if self.finished else "started")

    def invalid(self, why: str) -> None:
        self.counters.incr("bad_responses")
        log.error("%s: invalid response from the consumer (%s); answering 500",
                  self.reply_channel, why)
        self.fail(500, "invalid response")


class Exchange(Response):
    """One HTTP request and its response, as a `clients.Client`: the `Response` rules
    written to Tornado."""

    # HTTP requests are read whole: there is nothing to pause, and this stays None.
    resume: asyncio.Future[None] | None = None

    __slots__ = (
        "id", "reply_channel", "handler", "config", "path", "pipeline", "groups",
        "deadline", "last_write", "done",
    )

    def __init__(self, conn_id: int, reply_channel: str, handler: "ConsumerRequest") -> None:
        super().__init__()
        self.id = conn_id
        self.reply_channel = reply_channel
        self.handler: ConsumerRequest | None = handler
        self.config: Config = handler.config
        self.path = handler.request.path
        self.pipeline = Pipeline()
        self.groups: set[bytes] = set()
        # Monotonic time by which the response must start (or a held long-poll times out).
        self.deadline = time.monotonic() + self.config.http_timeout
        self.last_write = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the events ------------------------------------------------------------

    def event_header(self, channel: str, kind: str) -> bytes:
        return wire.encode({"channel": channel, "reply_channel": self.reply_channel,
                            "path": self.path, "ack": True})

    def disconnect_channel(self) -> str | None:
        return None if self.ended else "http.disconnect"

    def session_changed(self) -> None:
        pass  # HTTP requests carry no session

    def closed(self) -> None:
        """The response has ended or the client has gone."""
        handler, self.handler = self.handler, None
        self.finished = True
        if not self.done.done():
            self.done.set_result(None)
        if handler is not None:
            handler.clients.closed(self)

    def tick(self, now: float) -> None:
        """A response that did not start within http_timeout (504), a held long-poll
        whose time is up, a heartbeat on an idle event stream."""
        if self.handler is None or self.finished:
            return
        if self.held is not None:
            if now > self.deadline:
                self.release_hold()
        elif not self.started:
            if now > self.deadline:
                counters.incr("http_timeouts")
                log.warning("%s: no response to %s %s within %gs; answering 504",
                            self.reply_channel, self.handler.request.method, self.path,
                            self.config.http_timeout)
                self.fail(504, "no response in time")
        elif self.mode == wire.MODE_SSE and now - self.last_write >= self.config.sse_heartbeat:
            self.write(SSE_HEARTBEAT)

    # -- the response, to Tornado ----------------------------------------------

    def begin(self, status: Any, headers: Any, defaults: tuple[tuple[str, str], ...]) -> None:
        assert self.handler is not None  # (not finished)
        self.handler.begin(status, headers, defaults)

    def hold_for(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds  # tick releases it

    def write(self, data: bytes) -> None:
        handler = self.handler
        assert handler is not None
        limit = self.config.max_outbound_bytes
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

    def finish(self, payload: bytes) -> None:
        if payload and self.handler is not None:
            self.handler.write(payload)  # finish() sends it, with Content-Length
        self.end()

    def end(self) -> None:
        handler = self.handler
        if handler is None or self.ended:
            return
        self.ended = self.finished = True
        handler.finish()  # on_finish then ends the exchange

    def fail(self, status: int, reason: str) -> None:
        """An error response if nothing has been sent yet, else cut the stream short
        (the client sees a truncated body, not a complete one)."""
        handler = self.handler
        if handler is None or self.ended:
            return
        self.held = None
        if headers_written(handler):
            self.abort()
            return
        self.started = True
        handler.send_error(status, reason=reason)

    def abort(self) -> None:
        handler = self.handler
        stream = handler.stream() if handler is not None else None
        if stream is not None:
            stream.close()  # on_connection_close ends the exchange, with http.disconnect


@tornado.web.stream_request_body
class ConsumerRequest(tornado.web.RequestHandler):
    """Every HTTP request that is not a WebSocket or a static file: consumers (or the
    WSGI application) in the workers answer it."""

    SUPPORTED_METHODS = METHODS
    clients: Clients
    config: Config
    exchange: Exchange | None

    def initialize(self, clients: Clients, config: Config, port: int) -> None:
        self.clients = clients
        self.config = config
        self.port = port
        self.exchange = None
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.too_large = False
        self.body_unread = False  # refused before the end of its body: Connection: close

    def prepare(self) -> None:
        if self.clients.at_capacity():
            self.body_unread = unread_body(self.request)
            self.send_error(503, reason="Too Many Connections")
            raise tornado.web.Finish()
        limit = self.config.max_body_bytes
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
        if self.body_size > self.config.max_body_bytes:
            self.too_large = True
            self.body_parts.clear()
            self.refuse_body(self.body_size)
            return
        self.body_parts.append(chunk)

    def refuse_body(self, size: int) -> None:
        self.body_unread = True
        counters.incr("refused_body_too_large")
        log.info("refused %s %s: body of %d+ bytes is over max_body_bytes (%d); 413",
                 self.request.method, self.request.path, size,
                 self.config.max_body_bytes)
        self.send_error(413, reason="Payload Too Large")

    async def handle(self, *args: Any) -> None:
        if self.too_large or is_finished(self):
            return
        body = b"".join(self.body_parts)
        self.body_parts.clear()
        self.exchange = exchange = self.open_exchange(body)
        await exchange.done

    def open_exchange(self, body: bytes) -> Exchange:
        conn_id, reply_channel = self.clients.new_reply_channel()
        exchange = Exchange(conn_id, reply_channel, self)
        request = self.request
        header = wire.encode({
            "channel": "http.request", "reply_channel": reply_channel,
            "method": request.method, "path": request.path, "query_string": request.query,
            "headers": [[k, v] for k, v in request.headers.get_all()],
            "client": [request.remote_ip, peer_port(request)],
            "server": [request.host_name, self.port], "scheme": request.protocol,
            "http_version": request.version.partition("/")[2], "ack": True,
        })
        self.clients.open(exchange, ("http.request", "", body, header))
        return exchange

    get = head = post = put = patch = delete = options = handle

    def begin(self, status: Any, headers: Any, defaults: tuple[tuple[str, str], ...]) -> None:
        """Set the status and headers the consumer chose (raises ValueError/TypeError)."""
        check_start(status, headers)
        self.clear()
        self.clear_header("Content-Type")
        self.set_status(status, responses.get(status, "Unknown"))
        names = set()
        for item in headers:
            # WSGI frameworks may leave a leading space (Django's Set-Cookie does).
            self.add_header(item[0], item[1].strip())  # HTTPInputError on CR/LF
            names.add(item[0].lower())
        for name, value in defaults:
            if name.lower() not in names:
                self.set_header(name, value)

    def write(self, chunk: Any) -> None:
        if response_status(self) in NO_BODY_STATUSES:
            return  # Tornado refuses any body with these
        super().write(chunk)

    def stream(self) -> IOStream | None:
        return request_stream(self.request.connection)

    def compute_etag(self) -> None:
        return None  # the application decides about ETags, not the server

    def on_connection_close(self) -> None:
        if self.exchange is not None:
            self.exchange.closed()

    def on_finish(self) -> None:
        if self.exchange is not None:
            self.exchange.closed()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback to the client: the worker's log has it.
        if status_code == 503:
            self.set_header("Retry-After", "1")
        if self.body_unread:
            self.set_header("Connection", "close")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {error_reason(self)}\n")
