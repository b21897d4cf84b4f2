"""Class-based consumers: one class per path, beside the plain consumer functions.

A class bundles the consumers of one path -- for a WebSocket its connect, receive
and disconnect -- and one line registers them::

    class Chat(WebsocketConsumer):
        groups = ["chat.{room}"]            # joined on connect, left on close

        def receive(self, text=None, bytes=None):
            self.group_send(f"chat.{self.room}", text=text)

    Chat.register("/ws/chat/<room>")

`register` adds ordinary routes to `zchannels.api.routing.registry`, one per channel, so
the worker dispatches them like any decorated function. Each event gets a NEW
instance, and the events of one connection may run in different worker processes:
keep per-connection state in ``self.session``, never in ``self``.
"""
from __future__ import annotations

import builtins
import json
import logging
import uuid
from typing import Any, Callable, ClassVar, Mapping, Sequence

from zchannels.api import auth, routing, sender
from zchannels.wire import frames as wire
from zchannels.api.results import Recovery
from zchannels.api.message import Headers, Message, ReplyChannel, Session
from zchannels.core.stats import counters
from zchannels.core.exceptions import InvalidGroupName

log = logging.getLogger("zchannels.generic")

CLOSE_INVALID_PAYLOAD = 1007  # RFC 6455: the data does not fit the message type
CLOSE_NO_STATUS = 1006  # what a disconnect event carries when the client sent no code
CLOSE_BAD_PATH = 4400  # a group name made from the client's path cannot be used
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")

# Attributes every instance sets in __init__: a path placeholder may not hide them.
_INSTANCE_ATTRIBUTES = frozenset({"message", "kwargs", "recoveries"})


def _route_entry(cls: type[_Consumer], method: str) -> routing.Consumer:
    """The function the registry holds for one channel of `cls`: a new instance per
    event, then its handler method. Its ``check_route`` is what the registry calls
    with the whole path (a `routing.Router`'s routes, when it is included)."""
    def handle(message: Message, **kwargs: Any) -> None:
        getattr(cls(message, **kwargs), method)()
    handle.__name__ = handle.__qualname__ = f"{cls.__qualname__}.{method}"
    handle.__module__ = cls.__module__
    setattr(handle, "check_route", cls.check_route)
    return handle


class _AnyValue:
    """The sample of a custom converter's value, whose type is unknown here: any
    attribute, item or format spec of it gives ``"x"``."""

    def __format__(self, spec: str) -> str:
        return "x"

    def __getattr__(self, name: str) -> "_AnyValue":
        return self

    def __getitem__(self, key: Any) -> "_AnyValue":
        return self


def _sample(converter: routing.Converter) -> Any:
    """A value of the type `converter` gives, to try the group templates with."""
    if isinstance(converter, routing.IntConverter):
        return 0
    if isinstance(converter, routing.UUIDConverter):
        return uuid.UUID(int=0)
    if isinstance(converter, routing.StringConverter):
        return "x"
    return _AnyValue()


class _Consumer:
    """What every class-based consumer has: the message, the path's named groups as
    attributes and in `kwargs`, the connection's session, groups, and `register`."""

    #: channel -> name of the method that handles its events: one route each.
    channel_methods: ClassVar[dict[str, str]] = {}

    def __init__(self, message: Message, /, **kwargs: Any) -> None:
        self.message = message
        self.kwargs = kwargs
        for name, value in kwargs.items():
            setattr(self, name, value)

    @property
    def reply_channel(self) -> ReplyChannel:
        reply = self.message.reply_channel
        if reply is None:
            raise ValueError(f"a {self.message.channel} message has no reply channel")
        return reply

    @property
    def session(self) -> Session:
        """The connection's session: what one event stores, the next one reads."""
        return self.message.session

    def group_add(self, group: str, since: str | None = None, info: Any = None,
                  announce: bool = False) -> bool | Recovery:
        """Add this connection to `group` (it leaves by itself when it closes). With
        `since`, the client's last position: a `Recovery`, see `zchannels.group_add`;
        `info`: what `group_members` shows of it; `announce`: the group is told when
        it joins and when it leaves."""
        if since is None:
            return sender.group_add(group, self.reply_channel, info=info, announce=announce)
        return sender.group_add(group, self.reply_channel, since, info=info,
                               announce=announce)

    def group_discard(self, group: str) -> bool:
        return sender.group_discard(group, self.reply_channel)

    def group_send(self, group: str, text: str | None = None,
                   bytes: builtins.bytes | None = None, **options: Any) -> None:
        """Send to every member of `group`: `zchannels.group_send`, whose other
        keyword arguments (``close=``, ``event=``, ...) pass through."""
        sender.group_send(group, text=text, bytes=bytes, **options)

    # -- registration ------------------------------------------------------

    @classmethod
    def register(cls, path: str, *, registry: routing.Registry | None = None) -> None:
        """Route this class's channels for `path` (a template such as
        ``"/ws/chat/<int:room>"`` or a ``^regex``), in `registry` (default: the one the
        workers dispatch from). Mistakes in the class fail here, at import (in a
        `routing.Router`, when it is included: its paths are whole only then)."""
        registry = routing.registry if registry is None else registry
        for channel, method in cls.handled_channels().items():
            registry.add(channel, _route_entry(cls, method), path)

    @classmethod
    def handled_channels(cls) -> dict[str, str]:
        return dict(cls.channel_methods)

    @classmethod
    def check_route(cls, path: str, parameters: Mapping[str, routing.Converter]) -> None:
        """Raise ValueError if a path parameter (its name -> its converter) would hide
        an attribute."""
        for name in parameters:
            if name in _INSTANCE_ATTRIBUTES or hasattr(cls, name):
                raise ValueError(f"path {path!r}: <{name}> would hide {cls.__qualname__}."
                                 f"{name}; rename the placeholder")


class WebsocketConsumer(_Consumer):
    """A WebSocket path as a class: override `connect`, `receive`, `disconnect`.

    ``groups`` are group name templates, formatted with the path's named groups
    (``"chat.{room}"``); the connection joins them before `connect` runs, so what
    `connect` sends to them reaches it too, and leaves them when it closes, before
    `disconnect` runs (the interface does that; nothing is sent).
    """

    groups: ClassVar[Sequence[str]] = ()
    # The query parameter that carries the client's last position (``?since=...``):
    # the groups above that keep history are joined from it, so the client first gets
    # what it missed (docs/consumers.md#history-and-recovery). None: not looked for.
    since_query: ClassVar[str | None] = None
    # True: the groups above are told when this connection joins and leaves them
    # ({"type": "join"/"leave", "group", "member", "info": presence_info()}).
    announce_presence: ClassVar[bool] = False
    # True: an anonymous client (no Django login, see zchannels.api.auth) is refused with 403 at
    # the handshake, and closed with 4403 if its login goes while it is connected.
    login_required: ClassVar[bool] = False
    channel_methods = {"websocket.connect": "websocket_connect",
                       "websocket.receive": "websocket_receive",
                       "websocket.disconnect": "websocket_disconnect"}

    # Set by reject() and close(): a demultiplexer stops connecting its streams.
    _closing = False

    # -- override these ----------------------------------------------------

    def connect(self) -> None:
        """The handshake: returning accepts it; call `reject()` to refuse (403), or
        `accept()` to complete it before slow work."""

    def receive(self, text: str | None = None, bytes: builtins.bytes | None = None) -> None:
        """One message from the client: `text` for a text frame, `bytes` for binary."""

    def disconnect(self, code: int) -> None:
        """The connection has closed (`code`: the client's close code, or 1006). It has
        already left its groups: what this sends to them reaches only the others."""

    # -- what they can do --------------------------------------------------

    def send(self, text: str | None = None, bytes: builtins.bytes | None = None) -> None:
        self.reply_channel.send(text=text, bytes=bytes)

    def accept(self, subprotocol: str | None = None) -> None:
        self.reply_channel.accept(subprotocol)

    def reject(self) -> None:
        self._closing = True
        self.reply_channel.reject()

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.reply_channel.close(code, reason)
        self._closing = True

    def group_since(self, group: str) -> str | None:
        """The position `group` is joined from on connect: the `since_query` parameter.
        A position belongs to one group; override this when the class joins several
        groups with history."""
        if self.since_query is None:
            return None
        values = self.message.query.get(self.since_query)
        return values[0] if values else None

    def presence_info(self) -> Any:
        """What `group_members` shows of this connection in the groups it joins on
        connect (any JSON value, e.g. ``{"user": name}``); None by default. It runs
        before `connect`, from the connect message (path, query, headers, user)."""
        return None

    def group_names(self) -> list[str]:
        """The groups this connection joins: `groups` formatted with the path's
        named groups. Override it for names that depend on more than the path."""
        return [template.format(**self.kwargs) for template in self.groups]

    # -- the channels' handlers --------------------------------------------

    def websocket_connect(self) -> None:
        if self.login_required and not auth.require_login(self.message):
            self._closing = True
            return
        #: group -> its Recovery, for the groups joined from a position (group_since)
        self.recoveries: dict[str, Recovery] = {}
        names = self.group_names()
        try:  # all of them before joining any: the path is the client's
            for group in names:
                sender.check_group_name(group)
        except InvalidGroupName as e:
            self.refuse_group_name(e)
            return
        info = self.presence_info() if names else None
        for group in names:
            since = self.group_since(group)
            joined = self.group_add(group, since, info, self.announce_presence)
            if isinstance(joined, Recovery):
                self.recoveries[group] = joined
        self.connect()

    def refuse_group_name(self, error: InvalidGroupName) -> None:
        """A group of `groups` made from the path cannot be used (too long, not
        printable): the client's mistake, refused with 4400 and a warning, never a
        consumer error. Nothing is joined, and `connect` does not run."""
        log.warning("%s: %s; closing %s with %d", type(self).__qualname__, error,
                    self.message.reply_channel, CLOSE_BAD_PATH)
        self.close(CLOSE_BAD_PATH, f"group name from the path not allowed: at most "
                                   f"{wire.MAX_NAME_BYTES} bytes, printable characters")

    def websocket_receive(self) -> None:
        if self.login_required and not auth.require_login(self.message):
            return
        self.receive(text=self.message.text, bytes=self.message.bytes)

    def websocket_disconnect(self) -> None:
        self.disconnect(self.message.get("code", CLOSE_NO_STATUS))

    @classmethod
    def check_route(cls, path: str, parameters: Mapping[str, routing.Converter]) -> None:
        super().check_route(path, parameters)
        if isinstance(cls.groups, str):  # a missing comma or brackets: not its characters
            raise TypeError(f"{cls.__qualname__}.groups must be a list of names, not a str")
        # Values of the types the converters give: "{n:03d}" fits <int:n>, not <n>.
        sample = {name: _sample(converter) for name, converter in parameters.items()}
        for template in cls.groups:
            try:
                wire.check_name(template.format(**sample), "group")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{cls.__qualname__}.groups: {template!r} does not fit "
                                 f"path {path!r} ({type(e).__name__}: {e})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class JsonWebsocketConsumer(WebsocketConsumer):
    """A WebSocket whose messages are JSON: override `receive_json`, answer with
    `send_json`. A frame that is not JSON text (a binary frame, broken JSON, NaN)
    closes the socket with 1007, logged and counted (``json_invalid``)."""

    #: The stream name when a `WebsocketDemultiplexer` runs this consumer, else None.
    stream: str | None = None

    def receive_json(self, content: Any) -> None:
        """One decoded JSON message from the client (any JSON value)."""

    def send_json(self, content: Any) -> None:
        self.send(text=self.encode_json(content))

    def group_send_json(self, group: str, content: Any) -> None:
        self.group_send(group, text=self.encode_json(content))

    def encode_json(self, content: Any) -> str:
        """`content` as a frame's text; inside a demultiplexer, wrapped in its stream."""
        if self.stream is not None:
            content = {"stream": self.stream, "payload": content}
        return json.dumps(content, separators=(",", ":"), allow_nan=False)

    def receive(self, text: str | None = None, bytes: builtins.bytes | None = None) -> None:
        if text is None:
            self.refuse_frame("a binary frame", "expected JSON text")
            return
        try:
            content = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
            self.refuse_frame(f"invalid JSON ({str(e)[:80]})", "invalid JSON")
            return
        self.receive_json(content)

    def refuse_frame(self, what: str, reason: str) -> None:
        """Close with 1007 for a frame this consumer cannot take: a client bug."""
        counters.incr("json_invalid")
        log.warning("%s on %s: %s from %s; closing with %d", type(self).__qualname__,
                    self.message.path, what, self.message.reply_channel,
                    CLOSE_INVALID_PAYLOAD)
        self.close(CLOSE_INVALID_PAYLOAD, reason)


class WebsocketDemultiplexer(JsonWebsocketConsumer):
    """Several JSON consumers over one socket. Every frame is
    ``{"stream": name, "payload": ...}``; `consumers` maps each stream name to a
    `JsonWebsocketConsumer` subclass, which gets ``receive_json(payload)`` and whose
    `send_json` / `group_send_json` wrap what it sends in its stream.

    On connect, the demultiplexer's own `groups` and `connect` come first, then every
    stream's groups and `connect`, in `consumers` order, until one rejects or
    closes the socket. On disconnect, every stream's `disconnect`, then its own. A
    frame that is not such an object, or names a stream not in `consumers`, closes
    with 1007 like broken JSON (``json_invalid``).
    """

    consumers: ClassVar[dict[str, type[JsonWebsocketConsumer]]] = {}

    def stream_consumer(self, stream: str) -> JsonWebsocketConsumer:
        consumer = self.consumers[stream](self.message, **self.kwargs)
        consumer.stream = stream
        return consumer

    def websocket_connect(self) -> None:
        super().websocket_connect()
        for stream in self.consumers:
            if self._closing:
                return
            consumer = self.stream_consumer(stream)
            consumer.websocket_connect()
            self._closing = consumer._closing

    def receive_json(self, content: Any) -> None:
        if not (isinstance(content, dict) and isinstance(content.get("stream"), str)
                and "payload" in content):
            self.refuse_frame("a frame that is not {\"stream\": ..., \"payload\": ...}",
                              'expected {"stream": name, "payload": ...}')
            return
        stream = content["stream"]
        if stream not in self.consumers:
            self.refuse_frame(f"unknown stream {stream[:40]!r}", "unknown stream")
            return
        self.stream_consumer(stream).receive_json(content["payload"])

    def websocket_disconnect(self) -> None:
        for stream in self.consumers:
            self.stream_consumer(stream).websocket_disconnect()
        super().websocket_disconnect()

    @classmethod
    def check_route(cls, path: str, parameters: Mapping[str, routing.Converter]) -> None:
        super().check_route(path, parameters)
        if not cls.consumers:
            raise ValueError(f"{cls.__qualname__}.consumers is empty: map stream names to "
                             "JsonWebsocketConsumer subclasses")
        for stream, consumer in cls.consumers.items():
            if not isinstance(stream, str) or not (
                    isinstance(consumer, type) and issubclass(consumer, JsonWebsocketConsumer)):
                raise TypeError(f"{cls.__qualname__}.consumers[{stream!r}] must be a "
                                f"JsonWebsocketConsumer subclass, not {consumer!r}")
            consumer.check_route(path, parameters)


class HttpConsumer(_Consumer):
    """An HTTP path as a class: define `get`, `post`, `put`, `patch`, `delete`, `head`
    or `options` and answer with `respond` (or stream, start events, hold).

    A method the class does not define gets 405 with an ``Allow`` header. HEAD runs
    `get` unless `head` is defined (the interface sends no body). OPTIONS answers 200
    with ``Allow`` unless `options` is overridden (``options = None`` turns it off).
    If the class defines `disconnect()`, it runs on ``http.disconnect``: the client
    left before the response ended.
    """

    http_method_names: ClassVar[Sequence[str]] = HTTP_METHODS
    channel_methods = {"http.request": "http_request"}

    # -- answering (the methods of ReplyChannel, see docs/http.md) ------------

    def respond(self, body: str | builtins.bytes = b"", status: int = 200,
                headers: Headers = None, content_type: str | None = None) -> None:
        self.reply_channel.respond(body, status, headers, content_type)

    def start_response(self, status: int = 200, headers: Headers = None,
                       content_type: str | None = None,
                       body: str | builtins.bytes = b"") -> None:
        self.reply_channel.start_response(status, headers, content_type, body)

    def send_body(self, body: str | builtins.bytes, more: bool = True) -> None:
        self.reply_channel.send_body(body, more)

    def end(self) -> None:
        self.reply_channel.end()

    def start_events(self, headers: Headers = None, retry_ms: int | None = None) -> None:
        self.reply_channel.start_events(headers, retry_ms)

    def send_event(self, data: str, event: str | None = None,
                   id: str | int | None = None) -> None:
        self.reply_channel.send_event(data, event, id)

    def hold(self, timeout: float, status: int = 200, headers: Headers = None,
             content_type: str | None = None, timeout_status: int = 204) -> None:
        self.reply_channel.hold(timeout, status, headers, content_type, timeout_status)

    # -- dispatch ----------------------------------------------------------

    def options(self) -> None:
        self.respond(b"", headers={"Allow": ", ".join(self.allowed_methods())})

    def method_not_allowed(self) -> None:
        self.respond("method not allowed\n", status=405,
                     headers={"Allow": ", ".join(self.allowed_methods())})

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The methods this class answers, upper-case, for the ``Allow`` header."""
        return [name.upper() for name in cls.http_method_names
                if cls.handler_name(name) is not None]

    @classmethod
    def handler_name(cls, method: str) -> str | None:
        """The method that answers HTTP `method` (lower-case), or None. Only names in
        `http_method_names` count: a request never picks an arbitrary attribute."""
        if method not in cls.http_method_names:
            return None
        if callable(getattr(cls, method, None)):
            return method
        if method == "head" and callable(getattr(cls, "get", None)):
            return "get"
        return None

    def http_request(self) -> None:
        name = self.handler_name((self.message.method or "").lower())
        handler: Callable[[], None] = (self.method_not_allowed if name is None
                                       else getattr(self, name))
        handler()

    def http_disconnect(self) -> None:
        getattr(self, "disconnect")()

    @classmethod
    def handled_channels(cls) -> dict[str, str]:
        channels = super().handled_channels()
        if callable(getattr(cls, "disconnect", None)):
            channels["http.disconnect"] = "http_disconnect"
        return channels
