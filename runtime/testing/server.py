"""`TestServer`: consumers, the in-memory layer and an interface in one object, running
each message as a worker does (the worker's own `Dispatcher`) and taking its done as
the interface does (the interface's own `Clients`)."""
from __future__ import annotations

import heapq
import re
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

from zchannels.api import routing
from zchannels.api.message import Message
from zchannels.api.sender import Sender, current, set_current
from zchannels.core import config as config_module
from zchannels.core.config import Config
from zchannels.core.exceptions import ConfigError, NotInConsumer
from zchannels.interface.websocket import origin_allowed
from zchannels.testing.connections import _Exchange, _Socket
from zchannels.testing.handles import HttpResponse, WebSocketClient
from zchannels.testing.layer import ConsumerError, InMemoryLayer
from zchannels.wire import frames as wire
from zchannels.worker import app, wsgi
from zchannels.worker.app import TEST_HOST as HOST  # the Host of its clients

CLIENT_IP = "127.0.0.1"
MAX_STEPS = 100_000  # consumer calls in one run: more means consumers feed each other forever

T = TypeVar("T")


def load_registry(directories: Iterable[str]) -> routing.Registry:
    """Import the consumer modules of `directories` (as a worker does) into a registry
    of their own: the global `zchannels.api.routing.registry` is left as it was."""
    shared = routing.registry
    saved = list(shared.routes)
    shared.routes.clear()
    try:
        routing.load_consumers(directories)
        registry = routing.Registry()
        registry.routes = list(shared.routes)
    finally:
        shared.routes[:] = saved
    return registry


def _configured_wsgi_app(config: Config | None, wsgi_app: Any) -> str:
    """The WSGI application whose module names the workers' Django settings: the one the
    test gives, else its config's, else the project's configuration's (as the workers
    read it: ``ZCHANNELS_CONFIG`` or ``conf/zchannels.toml``)."""
    if isinstance(wsgi_app, str):
        return wsgi_app
    if wsgi_app is not None:  # a callable: no module to read
        return ""
    if config is not None:
        return config.wsgi_app
    try:
        return config_module.load().wsgi_app
    except ConfigError:  # not this test's business: it runs with the defaults
        return ""


def _with_hint(load: Callable[[Any], T], what: Any) -> T:
    """`load(what)`; an import error that says Django is not set up gets a note on how
    the workers find its settings."""
    try:
        return load(what)
    except Exception as e:
        hint = app.hint(e)
        if hint:
            e.add_note(f"zchannels.testing:{hint}")
        raise


def _installed_layer() -> Sender | None:
    try:
        return current()
    except NotInConsumer:
        return None


# -- the server and its clients ------------------------------------------------------------

class TestServer:
    """Consumers, an in-memory layer and an interface in one object; make clients with
    `websocket` and `http`.

    `consumers`: directories to load (as ``consumers`` in the config), or a
    `zchannels.api.routing.Registry`; None: the global registry, as the ``@consumer``
    decorators of already imported modules filled it. `config`: limits and pools
    (default: the documented defaults, one pool). `capacity`: waiting messages per pool
    before `send` raises ChannelFull (default: each pool's ``capacity``). `wsgi_app`:
    a WSGI callable or ``"module:callable"`` for HTTP paths no consumer claims
    (default: the config's ``wsgi_app``; none: 404). `settings`: the Django settings
    module to run with (default: the workers', as `zchannels.worker.app` finds it).

    As a worker, it sets Django up before it imports the consumers and the WSGI
    application; it refuses (`SetupMismatch`) to run with Django set up otherwise than
    the workers set it up.

    Used as a context manager it installs its layer as the process's current one
    (``zchannels.send`` and friends work in the test itself), and at the end fails if a
    consumer raised and the test did not declare it with `expect_error`.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, consumers: Sequence[str] | routing.Registry | None = None, *,
                 config: Config | None = None, capacity: int | None = None,
                 wsgi_app: wsgi.WSGIApp | str | None = None,
                 settings: str | None = None) -> None:
        self.config = config or config_module.parse({})
        if wsgi_app is None and self.config.wsgi_app:
            wsgi_app = self.config.wsgi_app
        preloaded: routing.Registry | None = None
        directories: list[str] = []
        if isinstance(consumers, routing.Registry):
            preloaded = consumers
        elif consumers is None:
            preloaded = routing.registry
        else:
            directories = list(consumers)
        # As a worker does (zchannels.worker.app): Django set up -- or a refusal, if it is
        # set up otherwise than a worker would --, then the consumers, then the WSGI
        # application.
        app.setup_for_tests(directories, _configured_wsgi_app(config, wsgi_app), settings,
                            preloaded)
        self.registry = preloaded if preloaded is not None \
            else _with_hint(load_registry, directories)
        if isinstance(wsgi_app, str):
            wsgi_app = _with_hint(wsgi.load_app, wsgi_app)
        self.layer = InMemoryLayer(self.config, capacity)
        self.dispatcher = app.Application(self.registry, wsgi_app, app.django_configured()) \
            .dispatcher(count=self.layer.count, on_error=self._failed, in_tests=True)
        self.expected_errors: list[re.Pattern[str]] = []
        self._running = False
        self._previous: Sender | None = None

    # -- clients ------------------------------------------------------------------------

    def websocket(self, path: str, headers: Mapping[str, str] | None = None,
                  subprotocols: Sequence[str] = ()) -> WebSocketClient:
        """Open a WebSocket (``path`` may carry a ``?query``) and run its connect
        consumer. The result says how the handshake ended: ``accepted`` (status 101) or
        rejected (403); a socket the server closed at once has a ``close_code``."""
        url = urlsplit(path)
        request_headers = self._headers(headers)
        if subprotocols:
            request_headers.append(["Sec-WebSocket-Protocol", ", ".join(subprotocols)])
        conn_id, reply_channel = self.layer.clients.new_reply_channel()
        socket = _Socket(self.layer, conn_id, reply_channel, url.path, list(subprotocols))
        origin = _header_value(request_headers, "Origin")
        if origin is not None and not origin_allowed(
                self.config, origin, _header_value(request_headers, "Host") or HOST):
            socket.status, socket.closed = 403, True  # no consumer hears of it
            return WebSocketClient(self, socket)
        header = wire.encode({
            "channel": "websocket.connect", "reply_channel": socket.reply_channel,
            "path": url.path, "query_string": url.query, "headers": request_headers,
            "client": [CLIENT_IP, 40000 + conn_id], "subprotocols": list(subprotocols),
            "ack": True})
        self.layer.clients.open(socket, ("websocket.connect", "", b"", header))
        self.run()
        return WebSocketClient(self, socket)

    def http(self, method: str, path: str, body: bytes | str = b"",
             headers: Mapping[str, str] | None = None, wait: bool = True) -> HttpResponse:
        """Make an HTTP request and run its consumer; return once the response has
        started: with `wait`, the fake clock runs on until it has (a delayed message
        may answer it) or ``http_timeout`` has passed (504). A held long-poll returns at
        once, with ``status`` None until it is answered (`HttpResponse.wait`); a stream
        may still be going: read it with `HttpResponse.receive` or `receive_event`.
        Without `wait`, it returns as soon as the consumers it caused have run."""
        url = urlsplit(path)
        payload = body.encode() if isinstance(body, str) else bytes(body)
        request_headers = self._headers(headers)
        if payload and _header_value(request_headers, "Content-Length") is None:
            request_headers.append(["Content-Length", str(len(payload))])
        conn_id, reply_channel = self.layer.clients.new_reply_channel()
        exchange = _Exchange(self.layer, conn_id, reply_channel, url.path, method.upper())
        response = HttpResponse(self, exchange)
        if len(payload) > self.config.max_body_bytes:
            exchange.fail(413, "Payload Too Large")  # from the interface: no consumer runs
            return response
        header = wire.encode({
            "channel": "http.request", "reply_channel": exchange.reply_channel,
            "method": exchange.method, "path": url.path, "query_string": url.query,
            "headers": request_headers, "client": [CLIENT_IP, 40000 + conn_id],
            "server": [HOST, 80], "scheme": "http", "http_version": "1.1", "ack": True})
        self.layer.call_later(self.config.http_timeout, exchange.no_response)
        self.layer.clients.open(exchange, ("http.request", "", payload, header))
        if wait:
            self.wait_for(lambda: exchange.started or exchange.finished,
                          self.config.http_timeout + 1)
        else:
            self.run()
        return response

    def _headers(self, headers: Mapping[str, str] | None) -> list[list[str]]:
        result = [[str(name), str(value)] for name, value in (headers or {}).items()]
        if _header_value(result, "Host") is None:
            result.insert(0, ["Host", HOST])
        return result

    # -- as a script would: send, group_send -------------------------------------------

    def send(self, channel: str, content: dict[str, Any] | None = None, payload: bytes = b"",
             delay: float | None = None) -> None:
        """Send to a named channel from outside a consumer, and run what it causes."""
        self.layer.send(channel, content, payload, delay)
        self.run()

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None, delay: float | None = None) -> None:
        """Send to a group from outside a consumer, and run what it causes."""
        self.layer.group_send(group, text, bytes, close, event, id, delay)
        self.run()

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Run every queued consumer call, and the calls they cause, until none is left."""
        if self._running:
            return  # a consumer's call: the loop below gets to it
        self._running = True
        previous = _installed_layer()
        set_current(self.layer)
        try:
            for _ in range(MAX_STEPS):
                if not self.layer.work:
                    return
                self._handle(*self.layer.work.popleft())
            raise RuntimeError(f"consumers were still sending after {MAX_STEPS} calls: "
                               "do two of them keep sending to each other?")
        finally:
            set_current(previous)
            self._running = False

    def advance(self, seconds: float) -> None:
        """Move the fake clock on: delayed messages and timeouts that fall due run, in
        order of their due time."""
        self.wait_for(lambda: False, seconds)

    @property
    def clock(self) -> float:
        """The fake clock: seconds since the server was made."""
        return self.layer.now

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Run queued work, then advance the fake clock timer by timer, up to `timeout`
        seconds, until `predicate()` is true. False if it never became true."""
        layer = self.layer
        deadline = layer.now + timeout
        while True:
            self.run()
            if predicate():
                return True
            if not layer.timers or layer.timers[0][0] > deadline:
                layer.now = max(layer.now, deadline)
                return False
            due, _, callback = heapq.heappop(layer.timers)
            layer.now = max(layer.now, due)
            callback()

    def _handle(self, frames: list[bytes], pool: str | None) -> None:
        """One consumer call, as `Worker.handle` makes it; its done, as the interface
        takes it."""
        layer = self.layer
        if pool is not None:
            layer.waiting[pool] -= 1
        parsed = self.dispatcher.parse(frames, layer)
        if parsed is None:
            return
        message, sequence = parsed
        reply_channel = message.reply_channel
        # What a client's event adds to history is charged to its connection, as the
        # worker's link names it to the broker.
        layer.origin = reply_channel.name.encode() \
            if reply_channel is not None and message.content.get("ack") else None
        try:
            error = self.dispatcher.call(message)
        finally:
            layer.origin = None
        if reply_channel is None or not message.content.get("ack"):
            return
        # sent=None: nothing is lost in memory, there is no count to check.
        done = self.dispatcher.done(message, sequence, None, error)
        layer.clients.acknowledged(layer.clients.get(reply_channel.route[1]),
                                   wire.decode(done))

    def _failed(self, message: Message, text: str, exception: BaseException) -> None:
        reply_channel = message.reply_channel
        self.layer.error(reply_channel.name if reply_channel is not None else None,
                         message.channel, message.path, text, exception)

    # -- errors -------------------------------------------------------------------------

    @property
    def errors(self) -> list[ConsumerError]:
        """Every consumer exception (and every response an interface would log as
        invalid) so far, oldest first."""
        return self.layer.errors

    def expect_error(self, pattern: str) -> None:
        """Declare errors matching `pattern` (a regular expression searched in the
        traceback or message) as provoked on purpose: `close` does not fail on them."""
        self.expected_errors.append(re.compile(pattern))

    def unexpected_errors(self) -> list[ConsumerError]:
        return [e for e in self.errors
                if not any(p.search(e.text) for p in self.expected_errors)]

    def close(self) -> None:
        """Fail (AssertionError) if an error happened that `expect_error` did not declare."""
        unexpected = self.unexpected_errors()
        if unexpected:
            raise AssertionError("consumers failed:\n" + "\n".join(e.text for e in unexpected))

    def __enter__(self) -> TestServer:
        self._previous = _installed_layer()
        set_current(self.layer)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        set_current(self._previous)
        if kind is None:
            self.close()


def _header_value(headers: list[list[str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return None
