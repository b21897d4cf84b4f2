"""What a consumer receives (`Message`) and how it answers (`ReplyChannel`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import wire

if TYPE_CHECKING:
    from .layer import Layer


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

    __slots__ = ("name", "route", "_layer")

    def __init__(self, name: str, layer: "Layer") -> None:
        # Parsed once, here: it validates early with a clear message, and every send
        # and acknowledgement reuses it.
        self.route: tuple[bytes, int] = wire.split_reply_channel(name)
        self.name = name
        self._layer = layer

    def send(self, text: str | None = None, bytes: bytes | None = None) -> None:
        """Send one WebSocket message: ``text=`` for a text frame, ``bytes=`` for binary."""
        kind, payload = wire.payload_of(text, bytes)
        self._layer.to_interface(self, {"op": wire.OP_SEND, "kind": kind}, payload)

    def accept(self, subprotocol: str | None = None) -> None:
        """Complete the WebSocket handshake now (otherwise it completes when the
        connect consumer returns), optionally choosing one of the client's subprotocols."""
        header: dict[str, Any] = {"op": wire.OP_ACCEPT}
        if subprotocol is not None:
            header["subprotocol"] = subprotocol
        self._layer.to_interface(self, header)

    def reject(self) -> None:
        """Refuse the WebSocket handshake: the client gets HTTP 403."""
        self._layer.to_interface(self, {"op": wire.OP_REJECT})

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a WebSocket close code: 1000 (normal), a registered
        code such as 1008 or 1011, or 3000-4999 for your application's own."""
        wire.check_close(code, reason)
        self._layer.to_interface(self, {"op": wire.OP_CLOSE, "code": code, "reason": reason})

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"ReplyChannel({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyChannel) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Message:
    """One message from a channel.

    `content` is the whole header the sender wrote (for WebSocket events:
    ``path``, ``headers``, ``query_string``, ``client``, ``subprotocols``,
    ``code``); `text` / `bytes` are the payload.
    """

    __slots__ = ("channel", "content", "payload", "reply_channel", "session")

    def __init__(self, content: dict[str, Any], payload: bytes, layer: "Layer") -> None:
        self.channel: str = content["channel"]
        self.content = content
        self.payload = payload
        name = content.get("reply_channel")
        self.reply_channel = ReplyChannel(name, layer) if name else None
        self.session = Session(content.get("session") or ())

    @property
    def redelivered(self) -> bool:
        """True if the worker this message was first given to died before it finished
        (see docs/consumers.md): the consumer may already have acted on it once."""
        return bool(self.content.get("redelivered"))

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
    def headers(self) -> dict[str, str]:
        """Request headers of the connection, names lower-cased (repeated ones joined by ',')."""
        result: dict[str, str] = {}
        for name, value in self.content.get("headers", ()):
            key = name.lower()
            result[key] = f"{result[key]},{value}" if key in result else value
        return result

    def __getitem__(self, key: str) -> Any:
        return self.content[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.content.get(key, default)

    def __repr__(self) -> str:
        return f"<Message {self.channel} {self.reply_channel or ''} {len(self.payload)}B>"
