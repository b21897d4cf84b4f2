"""The channel layer in memory (`InMemoryLayer`), and the consumer errors it records
(`ConsumerError`)."""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from zchannels.api.message import ReplyChannel
from zchannels.api.results import Member, Recovery
from zchannels.api.sender import Channel
from zchannels.broker.history import Keeper
from zchannels.broker.presence import Presence
from zchannels.core.config import CLIENT_CHANNELS, Config
from zchannels.core.exceptions import ChannelFull, UnknownChannel
from zchannels.core.stats import Counters
from zchannels.interface.clients import Client, Clients
from zchannels.interface.link import OPERATIONS
from zchannels.interface.positions import Positions
from zchannels.wire import frames as wire
from zchannels.wire.frames import check_info

log = logging.getLogger("zchannels.testing")

INTERFACE_ID = "test"  # reply channels are "test!1", "test!2", ...


@dataclass
class ConsumerError:
    """A consumer raised (or broke a rule a worker or an interface logs at ERROR)."""

    channel: str
    path: str | None
    reply_channel: str | None
    text: str  # the traceback, or the logged message
    exception: BaseException | None = None


class _Counters(Counters):
    """The layer's own counters (the process's are left alone); one never counted is 0."""

    def __missing__(self, name: str) -> int:
        return 0


# A message for a consumer, as a worker gets it from its pool: ``[header, payload,
# sequence]`` (a client's event) or ``[header, payload]`` (a named channel's), and the
# pool whose capacity it counts against (None: a client's event, not counted).
_Work = tuple[list[bytes], str | None]


class _RunQueue:
    """The sockets to the pools, as the interface's `Clients` sees them: a client's
    event joins the run queue (and is never refused)."""

    def __init__(self, work: collections.deque[_Work]) -> None:
        self.work = work

    def send_multipart(self, msg_parts: Sequence[bytes], flags: int = 0) -> None:
        self.work.append((list(msg_parts), None))


class InMemoryLayer:
    """The channel layer in memory, with the methods consumers reach (the
    `zchannels.api.sender.Sender` protocol) and the rules of the real one: the
    interface's own client and group tables (`Clients`), so membership is immediate
    and a closed client leaves every group; a named channel's pool holds at most
    ``capacity`` waiting messages (`ChannelFull`); delayed messages and timeouts wait
    on the fake clock; group history and presence are the broker's own code."""

    def __init__(self, config: Config, capacity: int | None = None) -> None:
        self.config = config
        self.capacity = {pool.name: pool.capacity if capacity is None else capacity
                         for pool in config.pools}
        self.waiting: collections.Counter[str] = collections.Counter()  # per pool
        self.work: collections.deque[_Work] = collections.deque()
        self.counters: Counters = _Counters()
        self.errors: list[ConsumerError] = []
        self.now = 0.0  # the fake clock, in seconds
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()  # orders timers due at the same time
        self.clients = Clients(config, INTERFACE_ID,
                               dict.fromkeys(CLIENT_CHANNELS, _RunQueue(self.work)),
                               clock=lambda: self.now, call_later=self.call_later,
                               counters=self.counters)
        self.clients.on_close = self._left
        # Group history and presence, kept as the broker keeps them (on the fake clock).
        self.history = Keeper(config.history, clock=lambda: self.now) \
            if config.history.enabled else None
        self.positions = Positions(config.history.groups)
        # The reply channel of the client whose event a consumer is handling now (set by
        # the server): what it adds to history is limited per connection, as the broker does.
        self.origin: bytes | None = None
        self.presence = Presence()

    def count(self, name: str, n: int = 1) -> None:
        self.counters.incr(name, n)

    def error(self, reply_channel: str | None, channel: str, path: str | None, text: str,
              exception: BaseException | None = None) -> None:
        self.errors.append(ConsumerError(channel, path, reply_channel, text, exception))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (self.now + seconds, next(self._timer_ids), callback))

    # -- what consumers call ------------------------------------------------------------

    def to_interface(self, reply_channel: Channel, header: dict[str, Any],
                     payload: bytes | None = None) -> None:
        client = self._client(reply_channel)
        operation = OPERATIONS.get(header.get("op", ""))
        if operation is None:
            self.count("garbage")
            log.warning("dropped a message with unknown op %r", header.get("op"))
        elif client is None:
            self.count("dropped_to_closed")
        else:
            operation(client, header, payload or b"")

    def send(self, channel: str, content: dict[str, Any] | None = None,
             payload: bytes = b"", delay: float | None = None) -> None:
        wire.check_name(channel, "channel")
        pool = self.config.pool_for(channel)
        if pool is None:
            raise UnknownChannel(f"no pool serves channel {channel!r}")
        header = wire.encode({**(content or {}), "channel": channel})
        payload = bytes(payload)
        if delay is None:
            self._enqueue(channel, pool.name, header, payload)
            return
        seconds = wire.check_delay(delay) / 1000

        def due() -> None:
            try:
                self._enqueue(channel, pool.name, header, payload)
            except ChannelFull:  # as the broker does: a warning, not the sender's error
                self.count("delayed_refused")
                log.warning("pool %s is full: dropped a delayed message for it", pool.name)
        self.call_later(seconds, due)
        self.count("delayed_sends")

    def _enqueue(self, channel: str, pool: str, header: bytes, payload: bytes) -> None:
        if self.waiting[pool] >= self.capacity[pool]:
            self.count("channel_full")
            raise ChannelFull(f"channel {channel!r} is full: pool {pool!r} holds "
                              f"{self.capacity[pool]} waiting message(s)")
        self.waiting[pool] += 1
        self.work.append(([header, payload], pool))

    def group_add(self, group: str, reply_channel: Channel, since: str | None = None, *,
                  info: Any = None, announce: bool = False) -> bool | Recovery:
        wire.check_name(group, "group")
        if info is not None:
            check_info(info)
        key = group.encode()
        if since is None and not isinstance(reply_channel, str) \
                and reply_channel.since is not None \
                and self.positions.rules.rule_for(key) is not None:
            since = reply_channel.since  # Last-Event-ID, as zchannels.api.connection does
        client = self._client(reply_channel)
        if client is not None and client.pipeline.closed:
            client = None  # it has left every group already
        member = client is not None and key in client.groups
        if client is not None:
            self.clients.groups.add(key, client)
        if since is None:
            self._joined(client, group, info, announce)
            return client is not None
        if not isinstance(since, str):
            raise TypeError(f"since must be a position string, not {type(since).__name__}")
        result, frames = (self.history.recover(key, since) if self.history
                          else (Keeper.nothing_kept(), []))
        # What the interface does with a join that recovers: the messages it missed
        # first (none if it was a member already), or why they cannot be had.
        history = self.positions.recovered(client, {"group": group, "since": since},
                                           result, frames, member)
        # As the broker does: the join is told once the interface has added it, after
        # what it missed.
        self._joined(client, group, info, announce)
        return Recovery.from_answer({"ok": client is not None, "history": history})

    def group_discard(self, group: str, reply_channel: Channel) -> bool:
        wire.check_name(group, "group")
        client = self._client(reply_channel)
        if client is None or not self.clients.groups.discard(group.encode(), client):
            return False
        self._left(client, [group.encode()])
        return True

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None, delay: float | None = None) -> None:
        wire.check_name(group, "group")
        header, payload = wire.group_message(text, bytes, close, event, id)
        header = wire.decode(wire.encode(header))  # what an interface would read
        origin = self.origin
        if delay is None:
            self._to_group(group, header, payload, origin)
        else:
            self.call_later(wire.check_delay(delay) / 1000,
                            lambda: self._to_group(group, header, payload, origin))
            self.count("delayed_sends")
        self.count("group_sends")

    def group_members(self, group: str) -> list[Member]:
        wire.check_name(group, "group")
        return [Member(channel, info) for channel, info in self.presence.members(group)]

    def group_size(self, group: str) -> int:
        wire.check_name(group, "group")
        return self.presence.size(group)

    def reply_channel(self, name: str) -> ReplyChannel:
        return ReplyChannel(name, self)

    def members(self, group: str) -> list[str]:
        """The reply channels in `group` now, in the order they joined."""
        return [channel for channel, _ in self.presence.members(group)]

    # -- the broker's side: fan-out, history, presence ----------------------------------

    def _to_group(self, group: str, header: dict[str, Any], payload: bytes,
                  origin: bytes | None = None) -> None:
        key = group.encode()
        stamped = self.history.stamp([key, wire.encode(header), payload], None, origin) \
            if self.history is not None and header["op"] == wire.OP_SEND else ()
        members = self.clients.groups.members(key)
        if not members:
            return
        if len(stamped) == 4:  # kept in the group's history: it carries its position
            message = self.positions.message(key, dict(header), payload, stamped[3])
            header, payload = message.header, message.payload
        operation = OPERATIONS[header["op"]]  # send, or close
        for client in tuple(members):  # a snapshot: a close ends memberships
            operation(client, header, payload)

    def _joined(self, client: Client | None, group: str, info: Any, announce: bool) -> None:
        if client is not None:
            self._announce(group, self.presence.joined(
                INTERFACE_ID.encode(), group, client.reply_channel, info, announce))

    def _left(self, client: Client, groups: list[bytes]) -> None:
        """`client` has left `groups` (the interface's table says so already)."""
        for key in groups:
            group = key.decode()
            self._announce(group, self.presence.left(INTERFACE_ID.encode(), group,
                                                     client.reply_channel))

    def _announce(self, group: str, notice: bytes | None) -> None:
        if notice is not None:
            self._to_group(group, {"op": wire.OP_SEND, "kind": wire.KIND_TEXT}, notice)

    def _client(self, reply_channel: Channel) -> Client | None:
        route = (wire.split_reply_channel(reply_channel) if isinstance(reply_channel, str)
                 else reply_channel.route)
        if route[0] != INTERFACE_ID.encode():
            return None  # another interface's: gone, as far as this one knows
        return self.clients.get(route[1])
