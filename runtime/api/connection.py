"""A synchronous process's connection to the broker: plain blocking ZeroMQ sockets.

`BrokerConnection` implements `zchannels.api.sender.Sender` for any process that is
not a worker -- a cron job, a Django view in gunicorn, a management command --
through `zchannels.api.client`; a worker's link (`zchannels.worker.link.WorkerLink`)
is one with the worker's events, done and credit added.

Everything except `send` to a named channel goes through one DEALER to the
broker, in order: replies, membership requests, group messages (and a worker's
credit). That one pipe is what keeps a process's consecutive messages in order
wherever they go (promise 8).

Sends block for at most ``send_timeout`` seconds when the next hop is full,
then raise `ChannelFull`: a consumer is never made to wait forever, and memory
never grows without bound.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import secrets
import threading
import time
from typing import Any

import zmq

from zchannels.api.results import Member, Recovery
from zchannels.api.sender import Channel, check_group_name, set_current
from zchannels.core.config import Config, PoolConfig
from zchannels.core.exceptions import ChannelFull, GroupError, UnknownChannel
from zchannels.core.history_rules import Rules
from zchannels.core.stats import counters
from zchannels.wire import frames as wire
from zchannels.wire import transport

log = logging.getLogger("zchannels.connection")

LINGER = 1000  # ms a closing socket may keep flushing what consumers already sent

TO, GROUP, HISTORY, QUERY = wire.VERB_TO, wire.VERB_GROUP, wire.VERB_HISTORY, wire.VERB_QUERY
REPLY_SEPARATOR = wire.REPLY_SEPARATOR.encode()


def route_of(reply_channel: Channel) -> tuple[bytes, int]:
    """(interface id, connection number) of a ReplyChannel (parsed when it was made) or
    of a reply channel's name."""
    if isinstance(reply_channel, str):
        return wire.split_reply_channel(reply_channel)
    return reply_channel.route


class BrokerConnection:
    # The connection whose event is running: only a worker's link has one (WorkerLink);
    # a group send to a group with history names it for the broker's per-connection limit.
    current_route: tuple[bytes, int] | None = None

    def __init__(self, config: Config, context: zmq.Context | None = None,
                 identity: str | None = None, endpoint: str | None = None) -> None:
        """`endpoint`: where this process meets the broker -- a worker its pool's
        ``endpoint_out``; any other process ``broker_clients``."""
        self.config = config
        self.context = context or zmq.Context.instance()
        self.identity = (identity or f"w{os.getpid()}-{secrets.token_hex(3)}").encode()
        self._send_timeout_ms = int(config.send_timeout * 1000)
        self.broker = self._socket(zmq.DEALER, endpoint or config.broker_clients,
                                   routing_id=self.identity)
        self.pools: dict[str, zmq.Socket] = {}
        self.history_rules = Rules(config.history.groups)  # which groups keep history
        self._requests = itertools.count(1)
        # Events the broker sent while a consumer waited for a membership answer.
        self.inbox: collections.deque[list[bytes]] = collections.deque()
        # The lock guards the broker socket (a process's threads share the connection).
        self.lock = threading.Lock()

    def _socket(self, kind: int, endpoint: str, routing_id: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = LINGER
        sock.sndtimeo = self._send_timeout_ms
        if routing_id is not None:
            sock.routing_id = routing_id
        transport.connect(sock, endpoint, self.config)
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
        counters.incr("zmq_sent")

    def _relay(self, frames: list[bytes]) -> None:
        """Send an operation for a connection to the broker (lock held)."""
        self._send(self.broker, frames, "the route to interface %s", frames[1])
        counters.incr("to_broker")  # what the broker lost when it died: docs/operations.md

    def _flush(self) -> None:
        """Send what was held back for a later message, before anything else (lock held):
        nothing here; a worker's link holds a consumer's last operation."""

    def _to_connection(self, route: tuple[bytes, int], frames: list[bytes]) -> None:
        """Send one operation for the connection `route` (lock held)."""
        self._relay(frames)

    def _sent_to(self, route: tuple[bytes, int]) -> None:
        """A message for the connection `route` left (lock held): a worker counts those
        for its current event."""

    def to_interface(self, reply_channel: Channel, header: dict[str, Any],
                     payload: bytes | None = None) -> None:
        """Send an operation for one connection to the interface that owns it."""
        route = route_of(reply_channel)
        header["conn"] = route[1]
        frames = [TO, route[0], wire.encode(header)]
        if payload is not None:
            frames.append(payload)
        with self.lock:
            self._flush()
            self._to_connection(route, frames)

    def send(self, channel: str, content: dict[str, Any] | None = None,
             payload: bytes = b"", delay: float | None = None) -> None:
        """Send a message to a named channel; a worker of the pool serving it runs its
        consumer. With `delay` (seconds), the broker keeps it that long first."""
        wire.check_name(channel, "channel")
        pool = self.config.pool_for(channel)
        if pool is None:
            raise UnknownChannel(f"no pool serves channel {channel!r}")
        header = dict(content or {})
        header["channel"] = channel
        frames = [wire.encode(header), bytes(payload)]
        if delay is not None:
            later = b"%s%d" % (wire.VERB_LATER, wire.check_delay(delay))
            frames = [later, wire.VERB_TO_POOL, pool.name.encode(), *frames]
        with self.lock:
            self._flush()
            if delay is not None:
                self._send(self.broker, frames, "the broker, for channel %r,", channel)
                counters.incr("delayed_sends")
            else:
                self._send(self._pool_socket(pool), frames, "channel %r", channel)

    def _pool_socket(self, pool: PoolConfig) -> zmq.Socket:
        sock = self.pools.get(pool.name)
        if sock is None:
            sock = self.pools[pool.name] = self._socket(zmq.PUSH, pool.endpoint_in)
        return sock

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None, delay: float | None = None) -> None:
        """Deliver one message to every member of `group`: a text or binary frame, or,
        with ``close=CODE``, a close. One ZeroMQ message to the broker and one from it
        to each interface, whatever the group's size. `event` and `id` name the
        Server-Sent Event that HTTP event-stream members receive; WebSocket members
        ignore them. With `delay` (seconds), the broker keeps it that long first: it
        reaches whoever is a member then."""
        check_group_name(group)
        header, payload = wire.group_message(text, bytes, close, event, id)
        frames = [GROUP, group.encode(), wire.encode(header), payload]
        route = self.current_route
        if route is not None and self.history_rules.rule_for(frames[1]) is not None:
            # Which connection's event sent it: the broker limits what one connection
            # adds to history per second (docs/operations.md#history-budgets).
            frames.append(b"%s%s%d" % (route[0], REPLY_SEPARATOR, route[1]))
        if delay is not None:
            frames.insert(0, b"%s%d" % (wire.VERB_LATER, wire.check_delay(delay)))
        with self.lock:
            self._flush()
            self._send(self.broker, frames, "group %r", group)
        counters.incr("group_sends")  # a delayed one too: see the broker's "delayed" gauge
        if delay is not None:
            counters.incr("delayed_sends")

    # -- membership --------------------------------------------------------

    def group_add(self, group: str, reply_channel: Channel,
                  since: str | None = None, *, info: Any = None,
                  announce: bool = False) -> bool | Recovery:
        """Add a connection to a group. When this returns, every later group_send
        from any process reaches it, and `group_members` lists it with `info` (any
        JSON value, up to 4 KiB encoded: a user name, say). With `announce`, the group
        is told, ``{"type": "join", "group", "member", "info"}``, and told again
        (``"leave"``) when it leaves or closes. False if the connection has already
        closed.

        With `since` (the last position the client saw, ``"<epoch>:<offset>"``), the
        connection first gets every message the group sent after it, then the live
        ones; the result is a `Recovery` (true if added) that says whether that was
        possible. An HTTP request with a ``Last-Event-ID`` header recovers from it by
        itself when the group keeps history (docs/consumers.md#history-and-recovery)."""
        if since is None and not isinstance(reply_channel, str) \
                and reply_channel.since is not None \
                and self.history_rules.rule_for(check_group_name(group).encode()):
            since = reply_channel.since
        if since is None:
            return bool(self._membership(wire.OP_GROUP_ADD, group, reply_channel,
                                         info=info, announce=announce).get("ok"))
        if not isinstance(since, str):
            raise TypeError(f"since must be a position string, not {type(since).__name__}")
        return Recovery.from_answer(self._membership(
            wire.OP_GROUP_ADD, group, reply_channel, since, info, announce))

    def group_discard(self, group: str, reply_channel: Channel) -> bool:
        """Remove a connection from a group; no group_send after this returns reaches it.
        False if it was not a member (or has closed)."""
        return bool(self._membership(wire.OP_GROUP_DISCARD, group, reply_channel).get("ok"))

    def group_members(self, group: str) -> list[Member]:
        """Every member of `group` on every interface, with the info it joined with, as
        the broker knows them now (docs/consumers.md#presence: how stale that can be)."""
        answer = self._query(group, "members")
        if not answer.get("ok"):
            raise GroupError(f"group {group!r} has {answer.get('size')} members, more than "
                             f"group_members returns ({wire.MAX_ANSWER_MEMBERS}): use group_size")
        return [Member(channel, info) for channel, info in answer["members"]]

    def group_size(self, group: str) -> int:
        """How many members `group` has, on every interface."""
        return int(self._query(group, "size")["size"])

    def _query(self, group: str, what: str) -> dict[str, Any]:
        check_group_name(group)
        request = next(self._requests)
        header = wire.encode({"req": request, "group": group, "what": what})
        with self.lock:
            self._flush()  # what this consumer did before comes first
            self._send(self.broker, [QUERY, header], "%s", "the route to the broker")
            return self._await_answer(request, f"group_{what}({group!r})")

    def _membership(self, op: str, group: str, reply_channel: Channel,
                    since: str | None = None, info: Any = None,
                    announce: bool = False) -> dict[str, Any]:
        """The owning interface's answer to a membership request: ``{"ok": ...}``."""
        check_group_name(group)
        name = str(reply_channel)
        route = route_of(reply_channel)
        request = next(self._requests)
        fields = {"op": op, "group": group, "req": request, "conn": route[1]}
        if since is not None:
            fields["since"] = since  # the broker answers with the group's history
        if info is not None:
            fields["info"] = wire.check_info(info)
        if announce:
            fields["announce"] = True
        header = wire.encode(fields)
        # The interface answers once its table has changed: that confirmation is
        # what makes membership immediate (no slow-joiner race with group sends).
        deadline = time.monotonic() + self.config.group_timeout
        with self.lock:
            self._flush()
            self._relay([TO if since is None else HISTORY, route[0], header])
            self._sent_to(route)
            return self._await_answer(request, f"{op} {group!r} for {name}: the owning "
                                      "interface", deadline)

    def _await_answer(self, request: int, what: str,
                      deadline: float | None = None) -> dict[str, Any]:
        """The answer to `request`, keeping the events that come meanwhile (lock held)."""
        if deadline is None:
            deadline = time.monotonic() + self.config.group_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.broker.poll(int(remaining * 1000) + 1):
                counters.incr("group_timeouts")
                raise GroupError(f"{what} did not answer within "
                                 f"{self.config.group_timeout:g}s")
            frames = self.broker.recv_multipart()
            if frames[0] == wire.TO_WORKER_EVENT:
                self.inbox.append(frames[1:])  # for after this consumer
                continue
            answer = self._answer(frames)
            if answer is not None and answer.get("req") == request:
                return answer

    def _answer(self, frames: list[bytes]) -> dict[str, Any] | None:
        """An answer to a membership request, or a bounce (lock held)."""
        if len(frames) == 3 and frames[0] == wire.TO_WORKER_BOUNCE:
            # The interface that owned the connection is gone, so the connection is too.
            counters.incr("unreachable_interface")
            log.debug("interface %r is gone; dropped a message for it", frames[1])
            try:
                original = wire.decode(frames[2])
            except ValueError:
                return None
            return {"req": original.get("req"), "ok": False, "bounced": True}
        if len(frames) != 3 or frames[0] != wire.TO_WORKER_ANSWER:
            counters.incr("garbage")
            log.warning("dropped a malformed message from the broker (%d frames)", len(frames))
            return None
        try:
            return wire.decode(frames[2])
        except ValueError as e:
            counters.incr("garbage")
            log.warning("dropped a malformed answer from the broker: %s", e)
            return None

    def close(self) -> None:
        with self.lock:
            try:
                self._flush()
            except ChannelFull as e:
                log.error("at close: %s", e)
        for sock in (self.broker, *self.pools.values()):
            sock.close()
        self.pools.clear()


def connect(config: Config) -> BrokerConnection:
    """Open a connection for a process that is not a worker (a script, a management
    command) and make it the one this process's consumers' functions send through.
    Most code wants `zchannels.api.client` instead, which does this on first use and
    survives threads and forks."""
    connection = BrokerConnection(config, identity=f"c{os.getpid()}-{secrets.token_hex(3)}")
    set_current(connection)
    return connection
