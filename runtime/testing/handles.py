"""The test's end of each connection: `WebSocketClient` and `HttpResponse`, and what
they raise and return (`WebSocketClosed`, `ServerSentEvent`)."""
from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple, Protocol
from wsgiref.headers import Headers

from zchannels.wire import frames as wire
from zchannels.core.config import Config
from zchannels.testing.connections import _Exchange, _Socket
from zchannels.testing.layer import InMemoryLayer

CLOSE_MESSAGE_TOO_BIG = 1009


class _Server(Protocol):
    """What a client handle needs of `TestServer` (in server.py, which imports this
    module)."""

    config: Config
    layer: InMemoryLayer

    def run(self) -> None: ...

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> bool: ...


class WebSocketClosed(Exception):
    """`WebSocketClient.receive` on a socket that is closed and has nothing left to read."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"the WebSocket is closed (code {code}, {reason!r})"
                         if code is not None else "the handshake was rejected")
        self.code = code
        self.reason = reason


class ServerSentEvent(NamedTuple):
    data: str
    event: str | None = None
    id: str | None = None

    @classmethod
    def parse(cls, block: str) -> ServerSentEvent | None:
        """One event from the text between two blank lines; None for one without data
        (a comment such as the heartbeat, or ``retry:``)."""
        data: list[str] = []
        event = event_id = None
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            elif field == "id":
                event_id = value
        return cls("\n".join(data), event, event_id) if data else None

class WebSocketClient:
    """The test's end of a WebSocket made by `TestServer.websocket`."""

    def __init__(self, server: _Server, socket: _Socket) -> None:
        self._server = server
        self._socket = socket

    @property
    def accepted(self) -> bool:
        return self._socket.status == 101

    @property
    def status(self) -> int | None:
        """The handshake's HTTP status: 101 (accepted) or 403 (rejected)."""
        return self._socket.status

    @property
    def subprotocol(self) -> str | None:
        return self._socket.subprotocol

    @property
    def reply_channel(self) -> str:
        """The connection's reply channel name, as its consumers see it."""
        return self._socket.reply_channel

    @property
    def close_code(self) -> int | None:
        """How the socket closed (the server's code, or the one given to `close`);
        None while it is open, and for a rejected handshake."""
        return self._socket.close_code

    @property
    def close_reason(self) -> str:
        return self._socket.close_reason

    @property
    def closed(self) -> bool:
        return self._socket.closed

    def send(self, text: str | None = None, bytes: bytes | None = None) -> None:
        """Send one frame and run the consumers it causes."""
        kind, payload = wire.payload_of(text, bytes)
        socket = self._socket
        if not socket.open:
            raise WebSocketClosed(socket.close_code, socket.close_reason)
        if len(payload) > self._server.config.max_message_bytes:
            socket.close(CLOSE_MESSAGE_TOO_BIG, "message too big")
        else:
            self._server.layer.clients.push(socket, ("websocket.receive", kind, payload, None))
        self._server.run()

    def send_json(self, content: Any) -> None:
        self.send(text=json.dumps(content))

    def receive(self, timeout: float = 1.0) -> str | bytes:
        """The next frame the server sent: str for text, bytes for binary. Waits up to
        `timeout` seconds of the fake clock (delayed messages may arrive meanwhile);
        raises TimeoutError if none came, WebSocketClosed once the socket is closed
        and every frame before the close has been read."""
        socket = self._socket
        if not self._server.wait_for(lambda: socket.received or socket.closed, timeout):
            raise TimeoutError(f"nothing received on {socket.path} within {timeout}s")
        if socket.received:
            return socket.received.popleft()
        raise WebSocketClosed(socket.close_code, socket.close_reason)

    def receive_json(self, timeout: float = 1.0) -> Any:
        frame = self.receive(timeout)
        if not isinstance(frame, str):
            raise AssertionError(f"expected a text frame of JSON, got bytes {frame[:40]!r}")
        return json.loads(frame)

    def receive_nothing(self, timeout: float = 0.0) -> bool:
        """True if no frame arrives within `timeout` seconds of the fake clock."""
        socket = self._socket
        return not self._server.wait_for(lambda: socket.received, timeout)

    def wait_closed(self, timeout: float = 1.0) -> int | None:
        """Wait (fake clock) until the socket is closed, leaving unread frames readable;
        its close code. TimeoutError if it is still open."""
        socket = self._socket
        if not self._server.wait_for(lambda: socket.closed, timeout):
            raise TimeoutError(f"{socket.path} still open after {timeout}s")
        return socket.close_code

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close from the client's side: the socket leaves its groups and its disconnect
        consumer runs (with `code`)."""
        self._socket.ended(code, reason)
        self._server.run()

    def __repr__(self) -> str:
        return f"<WebSocketClient {self._socket.path} {self.reply_channel} " \
               f"status={self.status} close_code={self.close_code}>"


class HttpResponse:
    """The test's end of an HTTP request made by `TestServer.http`."""

    def __init__(self, server: _Server, exchange: _Exchange) -> None:
        self._server = server
        self._exchange = exchange
        self._read = 0  # parts handed out by receive()
        self._events = ""  # Server-Sent Event text not parsed yet

    @property
    def status(self) -> int | None:
        """The status; None while the request is held (long-poll) or not answered."""
        return self._exchange.status

    @property
    def headers(self) -> Headers:
        """Case-insensitive: ``headers["content-type"]``, ``headers.get_all("Set-Cookie")``."""
        return Headers(list(self._exchange.headers))

    @property
    def body(self) -> bytes:
        """Everything received so far."""
        return b"".join(self._exchange.parts)

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def complete(self) -> bool:
        """The response has ended (or failed, or was cut short)."""
        return self._exchange.finished

    @property
    def aborted(self) -> bool:
        """Cut short after its headers went out (a consumer failed mid-stream)."""
        return self._exchange.aborted

    def wait(self, timeout: float = 60.0) -> HttpResponse:
        """Advance the fake clock until the response is complete (a long-poll answered or
        timed out, a stream ended); TimeoutError if it is not after `timeout` seconds."""
        exchange = self._exchange
        if not self._server.wait_for(lambda: exchange.finished, timeout):
            raise TimeoutError(f"{exchange.method} {exchange.path} not complete "
                               f"after {timeout}s")
        return self

    def receive(self, timeout: float = 1.0) -> bytes:
        """The next part of the body as it was written (one `send_body`, one stream
        message, one Server-Sent Event); b"" once the response is complete and every
        part has been read. TimeoutError if none came within `timeout` (fake clock)."""
        exchange = self._exchange
        if not self._server.wait_for(
                lambda: len(exchange.parts) > self._read or exchange.finished, timeout):
            raise TimeoutError(f"no more of {exchange.method} {exchange.path} within "
                               f"{timeout}s")
        if len(exchange.parts) > self._read:
            self._read += 1
            return exchange.parts[self._read - 1]
        return b""

    def receive_event(self, timeout: float = 1.0) -> ServerSentEvent:
        """The next Server-Sent Event with data (comments and ``retry:`` are skipped).
        EOFError if the stream ended first."""
        while True:
            block, sep, rest = self._events.partition("\n\n")
            if sep:
                self._events = rest
                event = ServerSentEvent.parse(block)
                if event is not None:
                    return event
                continue
            part = self.receive(timeout)
            if not part:
                raise EOFError("the event stream ended")
            self._events += part.decode()

    def close(self) -> None:
        """The client goes away: unless the response had ended, the request leaves its
        groups and the ``http.disconnect`` consumer runs."""
        exchange = self._exchange
        if not exchange.finished:
            exchange.finished = True
            self._server.layer.clients.closed(exchange)
        self._server.run()

    def __repr__(self) -> str:
        return f"<HttpResponse {self._exchange.method} {self._exchange.path} " \
               f"status={self.status} complete={self.complete}>"
