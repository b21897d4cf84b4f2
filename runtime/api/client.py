"""Sending from anywhere: a Django view, a gunicorn or Celery worker, a cron script.

::

    from zchannels.api.client import group_send, reply_channel, send

    group_send("chat.lobby", text='{"type": "message", "user": "cron", "text": "hi"}')
    send("thumbnails.make", {"url": url})
    reply_channel(name).send(text="done")

The module functions use a default `Client` made on first use from the same
configuration the servers read (`zchannels.core.config.load()`: ``ZCHANNELS_CONFIG`` or
``conf/zchannels.toml``, plus the ``ZCHANNELS_*`` environment); `configure` sets
another. A `Client` opens a `zchannels.api.connection.BrokerConnection` -- a DEALER to the broker's
``broker_clients`` and a PUSH per pool for `send` -- when it is first used, so
importing this module or making a client costs no socket.

**In a worker** (a consumer, or a WSGI view the worker runs) every call goes
through the worker's own layer instead, so a view's ``group_send`` is in order
with everything else its consumer sends (promise 8), and no second connection
is opened. The same goes for a process that called `zchannels.api.connection.connect`.

**Threads**: one layer per process, behind a lock, not one per thread. A
process-wide layer is one connection to the broker and one identity there,
however many threads a server runs (gunicorn's gthread workers, Celery's thread
pools, a thread per request): a layer per thread would open sockets for every
thread, leave them to the garbage collector when the thread ends, and register a
new peer at the broker for each. It also keeps the process's sends in one order on
the wire. The lock costs little: a send hands a message to ZeroMQ in
microseconds. It is held longer only when the next hop is full, for at most
``send_timeout``, and then the other threads' sends could not go either.
(ZeroMQ sockets may move between threads behind a full memory barrier, which
the lock gives.)

**Fork**: a ZeroMQ context must not be used across ``fork()``. A child forked
after the parent sent (gunicorn's and Celery's prefork workers,
``multiprocessing``) opens a fresh context and fresh sockets on its first send.
The parent's objects are kept, untouched, and never closed in the child, so
nothing the parent queued is flushed or cut off twice. ``os.register_at_fork``
resets every client right after the fork (while the child has one thread), and a
change of ``os.getpid()`` is checked on each call besides.

Errors are the layer's: `ChannelFull` when the next hop stays full for
``send_timeout`` seconds, `UnknownChannel` when no pool serves a channel,
``ValueError``/``TypeError`` for bad names and arguments. While the broker is
away, sends are queued (up to ZeroMQ's high-water mark) and leave when it is
back. A process should `close` a client before it exits, or let ``atexit`` do
it: that waits up to a second for queued messages to leave.
"""
from __future__ import annotations

import atexit
import os
import secrets
import threading
import weakref
from typing import Any, Callable, TypeVar

import zmq

from zchannels.core import config as config_module
from zchannels.api import sender as sender_module
from zchannels.wire import transport
from zchannels.core.config import Config
from zchannels.core.exceptions import NotInConsumer
from zchannels.api.connection import BrokerConnection
from zchannels.api.message import ReplyChannel
from zchannels.api.results import Member
from zchannels.api.sender import Channel, Sender

__all__ = ["Client", "configure", "default_client", "send", "group_send", "group_members",
           "group_size", "reply_channel", "close"]

T = TypeVar("T")


class Client:
    """Sends to named channels, groups and reply channels from any process and thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._context: zmq.Context | None = None
        self._layer: BrokerConnection | None = None
        _clients.add(self)

    @classmethod
    def from_env(cls, path: str | None = None) -> Client:
        """A client for the configuration the servers read (`zchannels.core.config.load`)."""
        return cls(config_module.load(path))

    # -- sending ---------------------------------------------------------------

    def send(self, channel: str, content: dict[str, Any] | None = None,
             payload: bytes = b"", delay: float | None = None) -> None:
        """A message to a named channel; a worker of the pool serving it runs its consumer.
        With `delay` (seconds), the broker keeps it that long first."""
        self._run(lambda layer: layer.send(channel, content, payload, delay=delay))

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None, delay: float | None = None) -> None:
        """A text or binary message (or, with ``close=CODE``, a close) to every member
        of `group`, on every interface; `event` and `id` name the Server-Sent Event that
        event-stream members receive; `delay` as for `send`."""
        self._run(lambda layer: layer.group_send(group, text=text, bytes=bytes, close=close,
                                                 event=event, id=id, delay=delay))

    def group_members(self, group: str) -> list[Member]:
        """Every member of `group` with its info (docs/consumers.md#presence)."""
        return self._run(lambda layer: layer.group_members(group))

    def group_size(self, group: str) -> int:
        return self._run(lambda layer: layer.group_size(group))

    def reply_channel(self, name: str) -> ReplyChannel:
        """The `ReplyChannel` of one connection or HTTP request, from its name: ``send``,
        ``close``, and for a request ``respond``, ``send_event`` and the rest. Each call
        goes through the layer of the process and thread that makes it."""
        return ReplyChannel(name, _Route(self))

    # -- the connection ------------------------------------------------------------

    def wait_for_broker(self, timeout: float) -> bool:
        """Whether the broker accepts connections at ``broker_clients`` within `timeout`
        seconds. Sends need no such check (they wait in ZeroMQ's queue while the
        broker is away); a short-lived command uses it to fail rather than exit with
        its message still queued."""
        context = zmq.Context()
        try:
            probe = context.socket(zmq.DEALER)
            probe.linger = 0
            monitor = probe.get_monitor_socket(zmq.EVENT_CONNECTED)  # before connecting
            transport.connect(probe, self.config.broker_clients, self.config)
            return bool(monitor.poll(max(0, int(timeout * 1000))))
        finally:
            context.destroy(linger=0)

    def close(self) -> None:
        """Close this client's sockets, waiting up to a second for what was sent to
        leave. A later send opens new ones. The layer of a worker (or of
        `zchannels.api.connection.connect`) is not this client's to close."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget()
            layer, context = self._layer, self._context
            self._layer = self._context = None
        if layer is not None and context is not None:
            layer.close()  # each socket lingers up to layer.LINGER
            context.term()  # returns when they have flushed or given up

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, operation: Callable[[Sender], T]) -> T:
        layer = process_layer()
        if layer is not None:  # a worker's own layer, in order with its consumer's sends
            return operation(layer)
        with self._lock:
            if self._pid != os.getpid():  # forked other than by os.fork (no hook ran)
                self._forget()
            if self._layer is None:
                self._context = zmq.Context()
                self._layer = BrokerConnection(self.config, self._context,
                                    identity=f"c{os.getpid()}-{secrets.token_hex(3)}")
            return operation(self._layer)

    def _forget(self) -> None:
        """In a forked child: drop the parent's sockets without touching them."""
        if self._layer is not None:
            _parents_objects.append((self._layer, self._context))
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._layer = self._context = None
        self._pid = os.getpid()


class _Route:
    """What a `ReplyChannel` sends through (it calls only ``to_interface``): the layer of
    the calling process, chosen at each call, so the channel may be kept and used
    from any thread, or after a fork."""

    __slots__ = ("client",)

    def __init__(self, client: Client | None) -> None:
        self.client = client  # None: the default client, made when first needed

    def to_interface(self, reply_channel: Channel, header: dict[str, Any],
                     payload: bytes | None = None) -> None:
        def operation(layer: Sender) -> None:
            layer.to_interface(reply_channel, header, payload)
        if self.client is None:
            _run(operation)
        else:
            self.client._run(operation)


def process_layer() -> Sender | None:
    """The layer of this process -- a worker's, or one `zchannels.api.connection.connect` opened --
    unless it was inherited from a parent across a fork."""
    try:
        layer = sender_module.current()
    except NotInConsumer:
        return None
    return None if layer is _inherited_layer else layer


# -- the default client and the module functions ---------------------------------------

_default: Client | None = None
_default_lock = threading.Lock()


def configure(config: Config) -> Client:
    """Use `config` for the module functions instead of `zchannels.core.config.load()`."""
    global _default
    with _default_lock:
        _default = Client(config)
        return _default


def default_client() -> Client:
    """The client the module functions use, made on first use from the environment."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client.from_env()
        return _default


def _run(operation: Callable[[Sender], T]) -> T:
    layer = process_layer()
    if layer is not None:  # a worker needs no configuration of its own here
        return operation(layer)
    return default_client()._run(operation)


def send(channel: str, content: dict[str, Any] | None = None, payload: bytes = b"",
         delay: float | None = None) -> None:
    """`Client.send` with the default client (or, in a worker, the worker's layer)."""
    _run(lambda layer: layer.send(channel, content, payload, delay=delay))


def group_send(group: str, text: str | None = None, bytes: bytes | None = None,
               close: int | None = None, event: str | None = None,
               id: str | int | None = None, delay: float | None = None) -> None:
    """`Client.group_send` with the default client (or, in a worker, the worker's layer)."""
    _run(lambda layer: layer.group_send(group, text=text, bytes=bytes, close=close,
                                        event=event, id=id, delay=delay))


def group_members(group: str) -> list[Member]:
    """`Client.group_members` with the default client (or, in a worker, its layer)."""
    return _run(lambda layer: layer.group_members(group))


def group_size(group: str) -> int:
    """`Client.group_size` with the default client (or, in a worker, its layer)."""
    return _run(lambda layer: layer.group_size(group))


def reply_channel(name: str) -> ReplyChannel:
    """`Client.reply_channel` with the default client (or, in a worker, its layer)."""
    return ReplyChannel(name, _Route(None))


def close() -> None:
    """Close the default client, if one was made (sends after this open it again)."""
    with _default_lock:
        client = _default
    if client is not None:
        client.close()


# -- fork and exit -------------------------------------------------------------------

_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_inherited_layer: Sender | None = None  # the parent's process layer, in a forked child
# The parent's layers and contexts, kept in the child so that no destructor runs on them.
_parents_objects: list[tuple[BrokerConnection, zmq.Context | None]] = []


def _after_fork_in_child() -> None:
    global _inherited_layer, _default_lock
    _default_lock = threading.Lock()
    try:
        _inherited_layer = sender_module.current()
    except NotInConsumer:
        _inherited_layer = None
    for client in list(_clients):
        client._forget()


def _close_all() -> None:
    """At exit: let what this process sent leave before the interpreter goes."""
    for client in list(_clients):
        if client._pid == os.getpid():
            client.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
