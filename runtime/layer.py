"""The channel layer as a synchronous process sees it: plain blocking ZeroMQ sockets.

A worker creates one `Layer` after it has forked; consumers reach it through the
module functions `send`, `group_add`, `group_discard` and `group_send`, and
through ``message.reply_channel``. Any other process (a cron job, a management
command) may call `connect(config)` and use the same functions.

Sends block for at most ``send_timeout`` seconds when the next hop is full,
then raise `ChannelFull`: a consumer is never made to wait forever, and memory
never grows without bound.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from typing import Any

import zmq

from . import wire
from .config import Config, PoolConfig
from .exceptions import ChannelFull, GroupError, NotInConsumer, UnknownChannel
from .message import ReplyChannel
from .stats import counters

log = logging.getLogger("runtime.layer")

LINGER = 1000  # ms a closing socket may keep flushing what consumers already sent


class Layer:
    def __init__(self, config: Config, context: zmq.Context | None = None,
                 identity: str | None = None) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        self.identity = (identity or f"w{os.getpid()}-{secrets.token_hex(3)}").encode()
        send_timeout_ms = int(config.send_timeout * 1000)
        self.router = self._socket(zmq.DEALER, config.router_workers, send_timeout_ms,
                                   routing_id=self.identity)
        self.groups = self._socket(zmq.PUSH, config.forwarder_in, send_timeout_ms)
        self.pools: dict[str, zmq.Socket] = {}
        self._send_timeout_ms = send_timeout_ms
        self._requests = itertools.count(1)
        # The route of the event a worker is running, and how many messages its consumer
        # has sent there: the "done" tells the interface, which can then tell whether
        # one was lost on the way (in a router that died).
        self.current_route: tuple[bytes, int] | None = None
        self.current_sends = 0

    def _socket(self, kind: int, endpoint: str, send_timeout_ms: int,
                routing_id: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = LINGER
        sock.sndtimeo = send_timeout_ms
        if routing_id is not None:
            sock.routing_id = routing_id
        sock.connect(endpoint)
        return sock

    # -- sending ---------------------------------------------------------

    def _send(self, sock: zmq.Socket, frames: list[bytes], what: str, subject: object) -> None:
        """Send, or raise ChannelFull naming ``what % subject`` (formatted only then:
        this is the per-message path)."""
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            counters.incr("channel_full")
            raise ChannelFull(f"{what % (subject,)} is full: not accepted within "
                              f"{self.config.send_timeout:g}s") from None

    def to_interface(self, reply_channel: ReplyChannel | str, header: dict[str, Any],
                     payload: bytes | None = None) -> None:
        """Send an operation for one connection to the interface that owns it (via the router)."""
        if isinstance(reply_channel, ReplyChannel):
            route = reply_channel.route  # parsed once, when it was made
        else:
            route = wire.split_reply_channel(reply_channel)
        interface_id, conn_id = route
        header["conn"] = conn_id
        frames = [interface_id, wire.encode(header)]
        if payload is not None:
            frames.append(payload)
        self._send(self.router, frames, "the route to %s", reply_channel)
        counters.incr("to_router")  # what the router lost when it died: see docs/operations.md
        if route == self.current_route:  # no new tuple: this is the per-message path
            self.current_sends += 1

    def send(self, channel: str, content: dict[str, Any] | None = None,
             payload: bytes = b"") -> None:
        """Send a message to a named channel; a worker of the pool serving it runs its consumer."""
        wire.check_name(channel, "channel")
        pool = self.config.pool_for(channel)
        if pool is None:
            raise UnknownChannel(f"no pool serves channel {channel!r}")
        header = dict(content or {})
        header["channel"] = channel
        self._send(self._pool_socket(pool), [wire.encode(header), bytes(payload)],
                   "channel %r", channel)

    def _pool_socket(self, pool: PoolConfig) -> zmq.Socket:
        sock = self.pools.get(pool.name)
        if sock is None:
            sock = self.pools[pool.name] = self._socket(zmq.PUSH, pool.endpoint_in,
                                                        self._send_timeout_ms)
        return sock

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None) -> None:
        """Deliver one message to every member of `group`: a text or binary frame, or,
        with ``close=CODE``, a close. One ZeroMQ message, whatever the group's size.
        `event` and `id` name the Server-Sent Event that HTTP event-stream members
        receive; WebSocket members ignore them."""
        wire.check_name(group, "group")
        header: dict[str, Any]
        if close is not None:
            header, payload = {"op": wire.OP_CLOSE, "code": wire.check_close(close)}, b""
        else:
            kind, payload = wire.payload_of(text, bytes)
            header = {"op": wire.OP_SEND, "kind": kind}
            if event is not None:
                header["event"] = str(event)
            if id is not None:
                header["id"] = id
        self._send(self.groups, [group.encode(), wire.encode(header), payload],
                   "group %r", group)
        counters.incr("group_sends")

    # -- membership --------------------------------------------------------

    def group_add(self, group: str, reply_channel: ReplyChannel | str) -> bool:
        """Add a connection to a group. When this returns, every later group_send
        from any process reaches it. False if the connection has already closed."""
        return self._membership(wire.OP_GROUP_ADD, group, reply_channel)

    def group_discard(self, group: str, reply_channel: ReplyChannel | str) -> bool:
        """Remove a connection from a group; no group_send after this returns reaches it.
        False if it was not a member (or has closed)."""
        return self._membership(wire.OP_GROUP_DISCARD, group, reply_channel)

    def _membership(self, op: str, group: str, reply_channel: ReplyChannel | str) -> bool:
        wire.check_name(group, "group")
        name = str(reply_channel)
        request = next(self._requests)
        self.to_interface(reply_channel, {"op": op, "group": group, "req": request})
        # The interface answers once its table has changed: that confirmation is
        # what makes membership immediate (no slow-joiner race with group sends).
        deadline = time.monotonic() + self.config.group_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.router.poll(int(remaining * 1000) + 1):
                counters.incr("group_timeouts")
                raise GroupError(f"{op} {group!r} for {name}: the owning interface did not "
                                 f"answer within {self.config.group_timeout:g}s")
            answer = self._read_router()
            if answer is not None and answer.get("req") == request:
                return bool(answer.get("ok"))

    def _read_router(self) -> dict[str, Any] | None:
        """Read one message the router sent to this process: an answer, or a bounce."""
        frames = self.router.recv_multipart()
        if len(frames) == 3 and frames[1] == wire.UNREACHABLE:
            # The interface that owned the connection is gone, so the connection is too.
            counters.incr("unreachable_interface")
            log.debug("interface %r is gone; dropped a message for it", frames[0])
            try:
                original = wire.decode(frames[2])
            except ValueError:
                return None
            return {"req": original.get("req"), "ok": False}
        if len(frames) != 2:
            counters.incr("garbage")
            log.warning("dropped a malformed message from the router (%d frames)", len(frames))
            return None
        try:
            return wire.decode(frames[1])
        except ValueError as e:
            counters.incr("garbage")
            log.warning("dropped a malformed answer from the router: %s", e)
            return None

    def drain_router(self) -> None:
        """Read answers nobody waits for any more (late or bounced), so they are counted."""
        while self.router.poll(0):
            answer = self._read_router()
            if answer is not None and "req" in answer and answer.get("ok") is not False:
                counters.incr("late_answers")

    def close(self) -> None:
        for sock in (self.router, self.groups, *self.pools.values()):
            sock.close()
        self.pools.clear()


_current: Layer | None = None


def set_current(layer: Layer | None) -> None:
    global _current
    _current = layer


def current() -> Layer:
    if _current is None:
        raise NotInConsumer("no channel layer in this process: call this from a consumer, "
                            "or first call runtime.layer.connect(config)")
    return _current


def connect(config: Config) -> Layer:
    """Open a layer for a process that is not a worker (scripts, management commands)."""
    layer = Layer(config)
    set_current(layer)
    return layer


def send(channel: str, content: dict[str, Any] | None = None, payload: bytes = b"") -> None:
    current().send(channel, content, payload)


def group_add(group: str, reply_channel: ReplyChannel | str) -> bool:
    return current().group_add(group, reply_channel)


def group_discard(group: str, reply_channel: ReplyChannel | str) -> bool:
    return current().group_discard(group, reply_channel)


def group_send(group: str, text: str | None = None, bytes: bytes | None = None,
               close: int | None = None, event: str | None = None,
               id: str | int | None = None) -> None:
    current().group_send(group, text=text, bytes=bytes, close=close, event=event, id=id)


def reply_channel(name: str) -> ReplyChannel:
    """A ReplyChannel from its name, e.g. one passed along in a task message."""
    return ReplyChannel(name, current())
