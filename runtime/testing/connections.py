"""The in-memory sockets: what the test's end of a WebSocket (`_Socket`) or of an HTTP
exchange (`_Exchange`) has been sent, as `zchannels.interface.clients.Client`s.

They are what the interface's Tornado `Connection` and `Exchange` are to real
sockets: the interface's own `Clients` drives them (their events, acks, groups),
the interface's own operation table (`zchannels.interface.link.OPERATIONS`) applies
what consumers send them, and an HTTP response follows the interface's own
`Response` rules. What is left here is the socket: frames kept for the test to
read, the handshake's answer, a response's status, headers and parts.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Protocol

from zchannels.core.config import Config
from zchannels.core.stats import Counters
from zchannels.interface.clients import Clients, Outgoing
from zchannels.interface.http import NO_BODY_STATUSES, Response, check_start
from zchannels.interface.pipeline import Pipeline
from zchannels.interface.websocket import Decision, SocketRules, chosen_subprotocol
from zchannels.wire import frames as wire

log = logging.getLogger("zchannels.testing")

HANDSHAKE_STATUS = {Decision.ACCEPT: 101, Decision.REJECT: 403, Decision.UNAVAILABLE: 503}


class _Interface(Protocol):
    """What a client needs of the in-memory interface it belongs to (`InMemoryLayer`,
    in layer.py, which imports this module)."""

    config: Config
    clients: Clients
    counters: Counters

    def count(self, name: str, n: int = 1) -> None: ...

    def error(self, reply_channel: str | None, channel: str, path: str | None, text: str,
              exception: BaseException | None = None) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...


class _Client:
    """What both kinds keep for `Clients`: number, reply channel, pipeline, groups."""

    resume: asyncio.Future[None] | None = None  # never paused: each event runs at once

    def __init__(self, layer: _Interface, conn_id: int, reply_channel: str,
                 path: str) -> None:
        self.layer = layer
        self.id = conn_id
        self.reply_channel = reply_channel
        self.path = path
        self.pipeline = Pipeline()
        self.groups: set[bytes] = set()

    def _header(self, channel: str, **fields: Any) -> bytes:
        content: dict[str, Any] = {"channel": channel, "reply_channel": self.reply_channel,
                                   "path": self.path, "ack": True, **fields}
        return wire.encode(content)

    def session_changed(self) -> None:
        pass  # an event's header is built when it is dispatched, with the session then

    def tick(self, now: float) -> None:
        pass  # its deadlines are timers on the fake clock


class _Socket(_Client, SocketRules):
    """A WebSocket: its handshake, what it has received, and how it closed. How it
    answers acks, refusals and HTTP operations is the interface's own `SocketRules`."""

    def __init__(self, layer: _Interface, conn_id: int, reply_channel: str, path: str,
                 subprotocols: list[str]) -> None:
        super().__init__(layer, conn_id, reply_channel, path)
        self.counters = layer.counters
        self.subprotocols = subprotocols
        self.subprotocol: str | None = None
        self.status: int | None = None  # 101 accepted, 403 rejected, 503 refused
        self.open = False
        self.closed = False
        self.closing = False  # the server has begun to close it
        self.close_after_open: tuple[int, str] | None = None
        self.pending: list[str | bytes] = []  # sent before the handshake finished
        self.received: collections.deque[str | bytes] = collections.deque()
        self.close_code: int | None = None
        self.close_reason = ""
        self.disconnect_code = 1006  # the code its disconnect event carries

    # -- as `Clients` drives it ------------------------------------------------------

    def event_header(self, channel: str, kind: str) -> bytes:
        fields: dict[str, Any] = {"kind": kind} if channel == "websocket.receive" \
            else {"code": self.disconnect_code}
        if self.pipeline.session:
            fields["session"] = self.pipeline.session
        return self._header(channel, **fields)

    def disconnect_channel(self) -> str | None:
        return "websocket.disconnect"

    # -- what consumers send it --------------------------------------------------------

    def deliver(self, message: Outgoing) -> None:
        payload = message.payload
        frame: str | bytes = payload.decode() if message.kind == wire.KIND_TEXT else payload
        if self.closed or self.closing:
            self.layer.count("dropped_to_closed")
        elif self.open:
            self.received.append(frame)
        else:
            self.pending.append(frame)

    def accept(self, subprotocol: Any) -> None:
        chosen = chosen_subprotocol(self.reply_channel, subprotocol, self.subprotocols)
        if self.status is None:
            self.subprotocol = chosen
        self.decide(Decision.ACCEPT)

    def reject(self) -> None:
        self.decide(Decision.REJECT)

    def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closing = True
        if not self.open:
            # A client sees a close code only on an open socket: finish the handshake.
            self.close_after_open = self.close_after_open or (code, reason)
            self.decide(Decision.ACCEPT)
        else:
            self.ended(code, reason)

    # -- the socket's life ---------------------------------------------------------------

    def decide(self, decision: Decision) -> None:
        """The handshake's answer: 101 (open), or an HTTP error (403, 503)."""
        if self.status is not None:
            return  # decided already
        self.status = HANDSHAKE_STATUS[decision]
        if decision is not Decision.ACCEPT:
            self.pending.clear()
            self.closed = True
            self.layer.clients.closed(self)
            return
        self.open = True
        self.received.extend(self.pending)
        self.pending.clear()
        if self.close_after_open is not None:
            self.ended(*self.close_after_open)

    def ended(self, code: int, reason: str) -> None:
        """The socket has closed with `code` (by either side: each echoes the other's)."""
        if self.closed:
            return
        self.closed, self.open = True, False
        self.close_code, self.close_reason = code, reason
        self.disconnect_code = code
        self.layer.clients.closed(self)


class _Exchange(_Client, Response):
    """An HTTP request and its response as the client receives it: the interface's own
    `Response` rules, written to a list of parts instead of a socket."""

    def __init__(self, layer: _Interface, conn_id: int, reply_channel: str, path: str,
                 method: str) -> None:
        _Client.__init__(self, layer, conn_id, reply_channel, path)
        Response.__init__(self)
        self.counters = layer.counters
        self.method = method
        self.aborted = False  # cut short after its headers went out
        self.hold_number = 0  # which hold a timer belongs to
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.chunked = False  # a part went out before the end: no Content-Length

    def event_header(self, channel: str, kind: str) -> bytes:
        return self._header(channel)

    def disconnect_channel(self) -> str | None:
        return None if self.ended else "http.disconnect"

    def invalid(self, why: str) -> None:
        self.layer.error(self.reply_channel, "http.request", self.path,
                         f"{self.reply_channel}: invalid response from the consumer ({why}); "
                         "answering 500")
        super().invalid(why)

    # -- the socket ----------------------------------------------------------------------

    def begin(self, status: Any, headers: Any, defaults: tuple[tuple[str, str], ...]) -> None:
        """The status and headers, checked as the interface checks them (raises
        ValueError, TypeError)."""
        check_start(status, headers)
        for item in headers:
            if any("\r" in s or "\n" in s for s in item):  # as Tornado refuses them
                raise ValueError(f"a header must not contain CR or LF, not {item!r}")
        self.status = status
        # WSGI frameworks may leave a leading space (Django's Set-Cookie does).
        self.headers = [(name, value.strip()) for name, value in headers]
        names = {name.lower() for name, _ in self.headers}
        self.headers += [(name, value) for name, value in defaults if name.lower() not in names]

    def hold_for(self, seconds: float) -> None:
        self.hold_number += 1
        number = self.hold_number
        self.layer.call_later(seconds, lambda: self.hold_expired(number))

    def hold_expired(self, number: int) -> None:
        if self.held is not None and number == self.hold_number and not self.finished:
            self.release_hold()

    def write(self, data: bytes) -> None:
        """A part sent at once (flushed: the response is chunked)."""
        self.chunked = True
        self.keep(data)

    def finish(self, payload: bytes) -> None:
        self.keep(payload)
        self.end()

    def keep(self, data: bytes) -> None:
        if data and self.status not in NO_BODY_STATUSES and self.method != "HEAD":
            self.parts.append(data)

    def end(self) -> None:
        if self.finished:
            return
        self.ended = self.finished = True
        names = {name.lower() for name, _ in self.headers}
        if not self.chunked and "content-length" not in names:
            self.headers.append(("Content-Length", str(sum(map(len, self.parts)))))
        self.layer.clients.closed(self)

    def fail(self, status: int, reason: str) -> None:
        """An error response if no status went out yet, else cut the response short."""
        if self.finished:
            return
        self.held = None
        if self.status is not None:
            self.aborted = self.finished = True
            self.layer.clients.closed(self)
            return
        self.started = True
        body = f"{status} {reason}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body)))]
        if status == 503:
            headers.append(("Retry-After", "1"))
        self.begin(status, headers, ())
        self.keep(body)
        # As in the interface, an error response is not an ended one: http.disconnect
        # follows it.
        self.finished = True
        self.layer.clients.closed(self)

    def no_response(self) -> None:
        """http_timeout passed on the fake clock."""
        if not self.started and not self.finished:
            self.layer.count("http_timeouts")
            log.warning("%s: no response to %s %s within %gs; answering 504",
                        self.reply_channel, self.method, self.path,
                        self.layer.config.http_timeout)
            self.fail(504, "no response in time")
