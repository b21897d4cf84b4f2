"""The interface's end of each in-memory connection: what it keeps of a WebSocket
(`_Socket`) or an HTTP exchange (`_Exchange`), and what each reply-channel operation
does to one (`OPERATIONS`)."""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, cast

from zchannels.wire import frames as wire
from zchannels.core.config import Config
from zchannels.wire.positions import POSITION_HEADER
from zchannels.interface.link import operations
from zchannels.interface.pipeline import AckResult, Pipeline
from zchannels.interface.sse import SSE_HEADERS, sse_event

log = logging.getLogger("zchannels.testing")

INTERFACE_ID = "test"  # reply channels are "test!1", "test!2", ...
CLOSE_CONSUMER_ERROR = 1011
NO_BODY_STATUSES = frozenset({204, 304})


class _ClientLayer(Protocol):
    """What a client needs of the layer it belongs to (`InMemoryLayer`, in layer.py,
    which imports this module)."""

    config: Config

    def count(self, name: str, n: int = 1) -> None: ...

    def error(self, reply_channel: str | None, channel: str, path: str | None, text: str,
              exception: BaseException | None = None) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None: ...

    def closed(self, client: _Client) -> None: ...


# -- the clients, as the interface sees them -------------------------------------------

class _Client:
    """What the in-memory interface keeps of a WebSocket or an HTTP exchange: what
    `zchannels.interface.clients.Client` is to the real one."""

    def __init__(self, layer: _ClientLayer, conn_id: int, path: str) -> None:
        self.layer = layer
        self.id = conn_id
        self.reply_channel = wire.reply_channel_name(INTERFACE_ID, conn_id)
        self.path = path
        self.pipeline = Pipeline()
        self.groups: set[str] = set()

    def _header(self, channel: str, **fields: Any) -> bytes:
        content: dict[str, Any] = {"channel": channel, "reply_channel": self.reply_channel,
                                   "path": self.path, "ack": True, **fields}
        return wire.encode(content)

    def event_header(self, channel: str, kind: str) -> bytes:
        raise NotImplementedError

    def disconnect_channel(self) -> str | None:
        raise NotImplementedError

    def acknowledged(self, result: AckResult) -> None:
        raise NotImplementedError

    def deliver(self, kind: str, payload: bytes, header: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def accept(self, subprotocol: Any) -> None:
        self.invalid("accept")

    def reject(self) -> None:
        self.invalid("reject")

    def start(self, header: Mapping[str, Any], payload: bytes) -> None:
        self.invalid("start")

    def body(self, payload: bytes, more: bool) -> None:
        self.invalid("body")

    def hold(self, header: Mapping[str, Any]) -> None:
        self.invalid("hold")

    def invalid(self, op: str) -> None:
        self.layer.count("garbage")
        log.warning("%s: dropped a %r operation this kind of client cannot take",
                    self.reply_channel, op)


class _Socket(_Client):
    """A WebSocket: its handshake, what it has received, and how it closed."""

    def __init__(self, layer: _ClientLayer, conn_id: int, path: str,
                 subprotocols: list[str]) -> None:
        super().__init__(layer, conn_id, path)
        self.subprotocols = subprotocols
        self.subprotocol: str | None = None
        self.status: int | None = None  # 101 accepted, 403 rejected
        self.open = False
        self.closed = False
        self.closing = False  # the server has begun to close it
        self.close_after_open: tuple[int, str] | None = None
        self.pending: list[str | bytes] = []  # sent before the handshake finished
        self.received: collections.deque[str | bytes] = collections.deque()
        self.close_code: int | None = None
        self.close_reason = ""
        self.disconnect_code = 1006  # the code its disconnect event carries

    def event_header(self, channel: str, kind: str) -> bytes:
        fields: dict[str, Any] = {"kind": kind} if channel == "websocket.receive" \
            else {"code": self.disconnect_code}
        if self.pipeline.session:
            fields["session"] = self.pipeline.session
        return self._header(channel, **fields)

    def disconnect_channel(self) -> str | None:
        return "websocket.disconnect"

    def acknowledged(self, result: AckResult) -> None:
        if result.error:
            self.close(CLOSE_CONSUMER_ERROR, "consumer failed")
        elif result.channel == "websocket.connect":
            self.decide(accept=True)  # a connect consumer that returns accepts

    def deliver(self, kind: str, payload: bytes, header: Mapping[str, Any]) -> None:
        frame: str | bytes = payload.decode() if kind == wire.KIND_TEXT else payload
        if self.closed or self.closing:
            self.layer.count("dropped_to_closed")
        elif self.open:
            self.received.append(frame)
        else:
            self.pending.append(frame)

    def accept(self, subprotocol: Any) -> None:
        if subprotocol is not None and subprotocol not in self.subprotocols:
            log.warning("%s: consumer chose subprotocol %r, which the client did not offer "
                        "(%s); ignored", self.reply_channel, subprotocol, self.subprotocols)
            subprotocol = None
        if self.status is None:
            self.subprotocol = subprotocol
        self.decide(accept=True)

    def reject(self) -> None:
        self.decide(accept=False)

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closing = True
        if not self.open:
            # A client sees a close code only on an open socket: finish the handshake.
            self.close_after_open = self.close_after_open or (code, reason)
            self.decide(accept=True)
        else:
            self.ended(code, reason)

    def decide(self, accept: bool) -> None:
        if self.status is not None:
            return  # decided already
        if not accept:
            self.status = 403
            self.pending.clear()
            self.closed = True
            self.layer.closed(self)
            return
        self.status = 101
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
        self.layer.closed(self)


class _Exchange(_Client):
    """An HTTP request and its response as the client receives it."""

    def __init__(self, layer: _ClientLayer, conn_id: int, path: str, method: str) -> None:
        super().__init__(layer, conn_id, path)
        self.method = method
        self.mode: str | None = None  # wire.MODE_*, once the response has started
        self.started = False  # status chosen (a held long-poll counts)
        self.ended = False  # the response is complete: no http.disconnect
        self.finished = False  # the client has everything it will get
        self.aborted = False  # cut short after its headers went out
        self.held: tuple[int, list[Any], int] | None = None
        self.hold_number = 0  # which hold a timer belongs to
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.parts: list[bytes] = []
        self.chunked = False

    def event_header(self, channel: str, kind: str) -> bytes:
        return self._header(channel)

    def disconnect_channel(self) -> str | None:
        return None if self.ended else "http.disconnect"

    def acknowledged(self, result: AckResult) -> None:
        if result.error:
            self.fail(500, "consumer failed")

    def close(self, code: int, reason: str) -> None:
        if self.held is not None:
            self.release()
        elif self.started:
            self.end()
        else:
            self.fail(500, reason or "closed before a response was sent")

    def accept(self, subprotocol: Any) -> None:
        self.bad_response("accept is for WebSocket connections")

    def reject(self) -> None:
        self.bad_response("reject is for WebSocket connections")

    def start(self, header: Mapping[str, Any], payload: bytes) -> None:
        if self.started or self.finished:
            self.late("start")
            return
        mode = header.get("mode", wire.MODE_RESPONSE)
        if mode not in (wire.MODE_RESPONSE, wire.MODE_STREAM, wire.MODE_SSE):
            self.bad_response(f"unknown response mode {mode!r}")
            return
        status, headers = header.get("status"), header.get("headers") or []
        problem = _bad_start(status, headers)
        if problem:
            self.bad_response(problem)
            return
        self.started, self.mode = True, mode
        self.begin(cast(int, status), headers, SSE_HEADERS if mode == wire.MODE_SSE else ())
        self.body(payload, bool(header.get("more")))

    def begin(self, status: int, headers: Iterable[Sequence[str]],
              defaults: Iterable[tuple[str, str]]) -> None:
        self.status = status
        # WSGI frameworks may leave a leading space (Django's Set-Cookie does).
        self.headers = [(name, value.strip()) for name, value in headers]
        names = {name.lower() for name, _ in self.headers}
        self.headers += [(name, value) for name, value in defaults if name.lower() not in names]

    def hold(self, header: Mapping[str, Any]) -> None:
        if self.started or self.finished:
            self.late("hold")
            return
        self.started, self.mode = True, wire.MODE_HOLD
        self.held = (header["status"], header.get("headers") or [],
                     header.get("timeout_status", 204))
        self.hold_number += 1
        number = self.hold_number
        self.layer.call_later(header["timeout"], lambda: self.hold_expired(number))

    def hold_expired(self, number: int) -> None:
        if self.held is not None and number == self.hold_number:
            self.release()

    def release(self, payload: bytes | None = None, position: Any = None) -> None:
        """Answer a held long-poll: with the message that arrived (and its group history
        position, as a header), or (None) its timeout."""
        assert self.held is not None
        status, headers, timeout_status = self.held
        self.held = None
        if payload is None:
            self.begin(timeout_status, [], ())
        else:
            if isinstance(position, str):
                headers = [*headers, [POSITION_HEADER, position]]
            self.begin(status, headers, ())
        self.mode = wire.MODE_RESPONSE
        self.body(payload or b"", more=False)

    def body(self, payload: bytes, more: bool) -> None:
        if self.finished:
            self.late("body")
            return
        if not self.started:
            self.bad_response("body before start")
            return
        if more:
            self.chunked = True
            self.write(payload)
        else:
            self.write(payload)
            self.end()

    def deliver(self, kind: str, payload: bytes, header: Mapping[str, Any]) -> None:
        if self.finished:
            self.layer.count("dropped_to_closed")
        elif self.mode == wire.MODE_SSE:
            if kind != wire.KIND_TEXT:
                self.layer.count("sse_binary_dropped")
                log.warning("%s: a binary message cannot be a Server-Sent Event; dropped",
                            self.reply_channel)
                return
            self.write(sse_event(payload, header.get("event"), header.get("id")))
        elif self.mode == wire.MODE_STREAM:
            self.write(payload)
        elif self.held is not None:
            self.release(payload, header.get("position"))
        else:
            self.layer.count("http_sends_dropped")
            log.warning("%s: a message arrived for an HTTP response that is not a stream "
                        "(mode %s); dropped. Start a stream or hold before adding it to "
                        "groups.", self.reply_channel, self.mode)

    def write(self, data: bytes) -> None:
        if data and self.status not in NO_BODY_STATUSES and self.method != "HEAD":
            self.parts.append(data)

    def end(self) -> None:
        if self.finished:
            return
        self.ended = self.finished = True
        names = {name.lower() for name, _ in self.headers}
        if not self.chunked and "content-length" not in names:
            self.headers.append(("Content-Length", str(sum(map(len, self.parts)))))
        self.layer.closed(self)

    def fail(self, status: int, reason: str) -> None:
        """An error response if no status went out yet, else cut the response short."""
        if self.finished:
            return
        self.held = None
        if self.status is not None:
            self.aborted = self.finished = True
            self.layer.closed(self)
            return
        self.started = True
        body = f"{status} {reason}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(body)))]
        if status == 503:
            headers.append(("Retry-After", "1"))
        self.begin(status, headers, ())
        self.write(body)
        # As in the interface, an error response is not an ended one: http.disconnect
        # follows it.
        self.finished = True
        self.layer.closed(self)

    def timed_out(self) -> None:
        """http_timeout passed on the fake clock."""
        if not self.started and not self.finished:
            self.layer.count("http_timeouts")
            log.warning("%s: no response to %s %s within %gs; answering 504",
                        self.reply_channel, self.method, self.path,
                        self.layer.config.http_timeout)
            self.fail(504, "no response in time")

    def late(self, what: str) -> None:
        self.layer.count("late_responses")
        log.info("%s: %s arrived after the response was %s; dropped", self.reply_channel,
                 what, "finished" if self.finished else "started")

    def bad_response(self, why: str) -> None:
        self.layer.count("bad_responses")
        self.layer.error(self.reply_channel, "http.request", self.path,
                         f"{self.reply_channel}: invalid response from the consumer ({why}); "
                         "answering 500")
        self.fail(500, "invalid response")


# What each operation of ReplyChannel does to the client it names: the interface's own
# table (runtime/interface/link.py), a message delivered to the in-memory client.
OPERATIONS = operations(lambda client, header, payload:
                        client.deliver(header.get("kind", wire.KIND_BYTES), payload, header))


def _bad_start(status: Any, headers: Any) -> str:
    """What the interface would refuse in a response's status and headers ("": nothing)."""
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        return f"status must be an int in 200..599, not {status!r}"
    for item in headers if isinstance(headers, list) else [None]:
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(s, str) and "\r" not in s and "\n" not in s
                        for s in item)):
            return f"a header must be [name, value] strings without CR or LF, not {item!r}"
    return ""
