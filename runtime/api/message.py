"""What a consumer receives (`Message`) and how it answers (`ReplyChannel`)."""
from __future__ import annotations

import builtins
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs

from zchannels.api import auth
from zchannels.api.sender import Replier, current
from zchannels.wire import frames as wire


class Session(dict[str, Any]):
    """Per-connection state that travels with the connection's events.

    Whatever a consumer stores here comes back in ``message.session`` on the
    next event of the same connection, whichever worker runs it. Keep it small
    and JSON-serialisable: it is sent with every event.
    """

    modified = False

    def __setitem__(self, key: str, value: Any) -> None:
        self.modified = True
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.modified = True
        super().__delitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.modified = True
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:  # type: ignore[override]
        self.modified = True
        return super().pop(*args)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.modified = True
        return super().setdefault(key, default)

    def clear(self) -> None:
        self.modified = True
        super().clear()

    def popitem(self) -> tuple[str, Any]:
        self.modified = True
        return super().popitem()

    def __ior__(self, other: Any) -> "Session":  # type: ignore[override,misc]
        self.modified = True
        return super().__ior__(other)


class ReplyChannel:
    """The channel of one client connection. Sends go to the interface that owns it."""

    __slots__ = ("name", "route", "_sender", "since")

    def __init__(self, name: str, sender: Replier) -> None:
        # Parsed once, here: it validates early with a clear message, and every send
        # and acknowledgement reuses it.
        self.route: tuple[bytes, int] = wire.split_reply_channel(name)
        self.name = name
        self._sender = sender
        # The last position the client saw, from an HTTP request's Last-Event-ID (an
        # EventSource reconnecting): group_add recovers from it by itself.
        self.since: str | None = None

    def send(self, text: str | None = None, bytes: bytes | None = None) -> None:
        """Send one WebSocket message: ``text=`` for a text frame, ``bytes=`` for binary."""
        kind, payload = wire.payload_of(text, bytes)
        self._sender.to_interface(self, {"op": wire.OP_SEND, "kind": kind}, payload)

    def accept(self, subprotocol: str | None = None) -> None:
        """Complete the WebSocket handshake now (otherwise it completes when the
        connect consumer returns), optionally choosing one of the client's subprotocols."""
        header: dict[str, Any] = {"op": wire.OP_ACCEPT}
        if subprotocol is not None:
            header["subprotocol"] = subprotocol
        self._sender.to_interface(self, header)

    def reject(self) -> None:
        """Refuse the WebSocket handshake: the client gets HTTP 403."""
        self._sender.to_interface(self, {"op": wire.OP_REJECT})

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a WebSocket close code: 1000 (normal), a registered
        code such as 1008 or 1011, or 3000-4999 for your application's own."""
        wire.check_close(code, reason)
        self._sender.to_interface(self, {"op": wire.OP_CLOSE, "code": code, "reason": reason})

    # -- HTTP responses (the reply channel of an http.request) ----------------

    def respond(self, body: str | bytes = b"", status: int = 200, headers: Headers = None,
                content_type: str | None = None) -> None:
        """Send a complete HTTP response. A str body is sent as UTF-8 and defaults to
        ``text/plain; charset=utf-8``; bytes default to ``application/octet-stream``."""
        payload, content_type = _body(body, content_type)
        self._start(_status(status), _headers(headers, content_type), False,
                    wire.MODE_RESPONSE, payload)

    def start_response(self, status: int = 200, headers: Headers = None,
                       content_type: str | None = None, body: str | bytes = b"") -> None:
        """Start a streamed response: the status and headers (and maybe a first part)
        go now, the body follows with `send_body` or `send` -- from this consumer or
        any other process -- until `end`. Chunked transfer encoding unless the
        headers give a Content-Length."""
        payload, _ = _body(body, None)
        self._start(_status(status), _headers(headers, content_type), True, wire.MODE_STREAM,
                    payload)

    def send_body(self, body: str | bytes, more: bool = True) -> None:
        """One more part of a started response; ``more=False`` ends it."""
        payload, _ = _body(body, None)
        self._part(payload, bool(more))

    def end(self) -> None:
        """End a started response (streamed or Server-Sent Events)."""
        self._part(b"", False)

    def start_events(self, headers: Headers = None, retry_ms: int | None = None) -> None:
        """Turn the response into a Server-Sent Events stream (``text/event-stream``).
        From now on every text message sent to this reply channel -- `send_event`,
        `send`, or a `group_send` to a group it joined -- is an event; idle streams get
        a comment line every ``sse_heartbeat`` seconds."""
        first = b"retry: %d\n\n" % retry_ms if retry_ms is not None else b""
        self._start(200, _headers(headers, None), True, wire.MODE_SSE, first)

    def send_event(self, data: str, event: str | None = None, id: str | int | None = None) -> None:
        """One Server-Sent Event on a stream started with `start_events`."""
        header: dict[str, Any] = {"op": wire.OP_SEND, "kind": wire.KIND_TEXT}
        if event is not None:
            header["event"] = event
        if id is not None:
            header["id"] = id
        kind, payload = wire.payload_of(data, None)
        self._sender.to_interface(self, header, payload)

    def _start(self, status: int, headers: list[list[str]], more: bool, mode: str,
               payload: bytes) -> None:
        """The "start" operation: status and headers (checked), maybe a first part.
        Also what the WSGI adapter (runtime/worker/wsgi.py) sends."""
        self._sender.to_interface(self, {"op": wire.OP_START, "status": status, "more": more,
                                        "mode": mode, "headers": headers}, payload)

    def _part(self, payload: bytes, more: bool) -> None:
        """The "body" operation: one more part; ``more=False`` ends the response."""
        self._sender.to_interface(self, {"op": wire.OP_BODY, "more": more}, payload)

    def hold(self, timeout: float, status: int = 200, headers: Headers = None,
             content_type: str | None = None, timeout_status: int = 204) -> None:
        """Long-poll: keep the request open; the first message sent to this reply
        channel (`send`, or a group message) becomes the whole body. After `timeout`
        seconds without one the answer is `timeout_status` with no body. Call it
        before adding the reply channel to a group."""
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ValueError(f"hold timeout must be 0 < seconds <= 3600, not {timeout!r}")
        self._sender.to_interface(self, {
            "op": wire.OP_HOLD, "timeout": timeout, "status": _status(status),
            "timeout_status": _status(timeout_status),
            "headers": _headers(headers, content_type)})

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"ReplyChannel({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyChannel) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None


def _status(status: Any) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"HTTP status must be an int in 200..599, not {status!r}")
    return status


def _body(body: str | bytes, content_type: str | None) -> tuple[bytes, str | None]:
    if isinstance(body, str):
        return body.encode(), content_type or "text/plain; charset=utf-8"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), content_type or "application/octet-stream"
    raise TypeError(f"a body is str or bytes, not {type(body).__name__}")


def _headers(headers: Headers, content_type: str | None) -> list[list[str]]:
    """Headers as [[name, value], ...], checked here so a mistake fails in the
    consumer that made it (with a traceback), not later in the interface."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    result = []
    has_type = False
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values are str, not {name!r}: {value!r}")
        if not name or any(c in name for c in " :\r\n") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        has_type = has_type or name.lower() == "content-type"
        result.append([name, value])
    if content_type and not has_type:
        result.append(["Content-Type", content_type])
    return result


def _last_event_id(content: dict[str, Any]) -> str | None:
    for name, value in content.get("headers", ()):
        if name.lower() == "last-event-id":
            return value if isinstance(value, str) and value else None
    return None


class Message:
    """One message from a channel.

    `content` is the whole header the sender wrote (for WebSocket events:
    ``path``, ``headers``, ``query_string``, ``client``, ``subprotocols``,
    ``code``); `text` / `bytes` are the payload.
    """

    __slots__ = ("channel", "content", "payload", "reply_channel", "session", "_auth")

    def __init__(self, content: dict[str, Any], payload: bytes, sender: Replier) -> None:
        self.channel: str = content["channel"]
        self.content = content
        self.payload = payload
        name = content.get("reply_channel")
        self.reply_channel = ReplyChannel(name, sender) if name else None
        if self.channel == "http.request" and self.reply_channel is not None:
            self.reply_channel.since = _last_event_id(content)
        self.session = Session(content.get("session") or ())
        self._auth: Any = None  # what zchannels.api.auth looked up for this message

    @property
    def redelivered(self) -> bool:
        """True if the worker this message was first given to died before it finished
        (see docs/consumers.md): the consumer may already have acted on it once."""
        return bool(self.content.get("redelivered"))

    @property
    def abandoned(self) -> bool:
        """True for a ``websocket.disconnect`` the broker sent because the socket's
        interface died (docs/consumers.md): code 1006, and no session (it died too)."""
        return bool(self.content.get("abandoned"))

    @property
    def text(self) -> str | None:
        """The payload of a text frame, or None for a binary one."""
        if self.content.get("kind") == wire.KIND_TEXT:
            return self.payload.decode()
        return None

    @property
    def bytes(self) -> bytes | None:
        """The payload of a binary frame, or None for a text one."""
        if self.content.get("kind") == wire.KIND_BYTES:
            return self.payload
        return None

    @property
    def path(self) -> str | None:
        return self.content.get("path")

    @property
    def method(self) -> str | None:
        """The HTTP method of an ``http.request``."""
        return self.content.get("method")

    @property
    def body(self) -> builtins.bytes:
        """The request body of an ``http.request`` (read whole, at most max_body_bytes)."""
        return self.payload

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string, parsed: ``{"name": ["value", ...]}``."""
        return parse_qs(self.content.get("query_string", ""), keep_blank_values=True)

    @property
    def headers(self) -> dict[str, str]:
        """Request headers of the connection, names lower-cased (repeated ones joined by ',')."""
        result: dict[str, str] = {}
        for name, value in self.content.get("headers", ()):
            key = name.lower()
            result[key] = f"{result[key]},{value}" if key in result else value
        return result

    @property
    def user(self) -> Any:
        """The Django user of the connection's session cookie, or an AnonymousUser.
        Django is imported on first use; see zchannels/api/auth.py."""
        return auth.django_user(self)

    @property
    def django_session(self) -> Any:
        """The Django session of the connection's session cookie, or None."""
        return auth.django_session(self)

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)

    def __repr__(self) -> str:
        return f"<Message {self.channel} {self.reply_channel or ''} {len(self.payload)}B>"


def reply_channel(name: str) -> ReplyChannel:
    """A ReplyChannel from its name, e.g. one passed along in a task message: sends go
    through this process's sender."""
    return ReplyChannel(name, current())
