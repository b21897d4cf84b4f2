"""The channel layer in memory (`InMemoryLayer`), and the consumer errors it records
(`ConsumerError`)."""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, cast

from zchannels.wire import frames as wire
from zchannels.core.config import Config
from zchannels.core.exceptions import ChannelFull, UnknownChannel
from zchannels.wire.positions import RECOVERY_FAILED, notice
from zchannels.broker.history import Keeper
from zchannels.api.results import Recovery
from zchannels.core.history_rules import Rules
from zchannels.interface.pipeline import Event, Limits
from zchannels.interface.positions import positioned
from zchannels.api.message import ReplyChannel
from zchannels.api.results import Member
from zchannels.broker.presence import Presence
from zchannels.wire.frames import check_info
from zchannels.testing.connections import INTERFACE_ID, OPERATIONS, _Client

log = logging.getLogger("zchannels.testing")


@dataclass
class ConsumerError:
    """A consumer raised (or broke a rule a worker or an interface logs at ERROR)."""

    channel: str
    path: str | None
    reply_channel: str | None
    text: str  # the traceback, or the logged message
    exception: BaseException | None = None

# -- the layer ---------------------------------------------------------------------------

# A message for a consumer: (header, payload, the client whose event it is, its
# sequence number); for a named channel's message, (header, payload, None, pool name).
_Work = tuple[bytes, bytes, _Client | None, int | str]


class InMemoryLayer:
    """The channel layer in memory, with the methods consumers reach (`send`,
    `group_add`, `group_discard`, `group_send`, `to_interface`) and the rules of the
    real one: membership is immediate, a closed client leaves every group, a
    named channel's pool holds at most ``capacity`` waiting messages (`ChannelFull`),
    delayed messages wait on the fake clock."""

    def __init__(self, config: Config, capacity: int | None = None) -> None:
        self.config = config
        self.capacity = {pool.name: pool.capacity if capacity is None else capacity
                         for pool in config.pools}
        self.waiting: collections.Counter[str] = collections.Counter()  # per pool
        self.limits = Limits(config.max_queued_events, config.event_timeout)
        self.work: collections.deque[_Work] = collections.deque()
        self.clients: dict[int, _Client] = {}
        self.groups: dict[str, dict[_Client, None]] = {}  # ordered sets
        self.counters: collections.Counter[str] = collections.Counter()
        self.errors: list[ConsumerError] = []
        self.now = 0.0  # the fake clock, in seconds
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()  # orders timers due at the same time
        self._client_ids = itertools.count(1)
        self.current_sends = 0  # what zchannels.api.connection.Layer counts for its "done"; unused
        # Group history, kept as the broker keeps it (on the fake clock).
        self.history = Keeper(config.history, clock=lambda: self.now) \
            if config.history.enabled else None
        self.history_rules = Rules(config.history.groups)
        # The reply channel of the client whose event a consumer is handling now (set by
        # the server): what it adds to history is limited per connection, as the broker does.
        self.origin: bytes | None = None
        self.presence = Presence()  # who is in which group, as the broker keeps it

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def error(self, reply_channel: str | None, channel: str, path: str | None, text: str,
              exception: BaseException | None = None) -> None:
        self.errors.append(ConsumerError(channel, path, reply_channel, text, exception))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (self.now + seconds, next(self._timer_ids), callback))

    # -- what consumers call ------------------------------------------------------------

    def to_interface(self, reply_channel: ReplyChannel | str, header: dict[str, Any],
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
        self.work.append((header, payload, None, pool))

    def group_add(self, group: str, reply_channel: ReplyChannel | str,
                  since: str | None = None, *, info: Any = None,
                  announce: bool = False) -> bool | Recovery:
        wire.check_name(group, "group")
        if info is not None:
            check_info(info)
        if since is None and isinstance(reply_channel, ReplyChannel) \
                and reply_channel.since is not None \
                and self.history_rules.rule_for(group.encode()) is not None:
            since = reply_channel.since  # Last-Event-ID, as zchannels.api.connection does
        client = self._client(reply_channel)
        added = client is not None and not client.pipeline.closed
        member = client is not None and added and group in client.groups
        if added:
            assert client is not None
            self.groups.setdefault(group, {})[client] = None
            client.groups.add(group)
        if since is None:
            self._joined(client if added else None, group, info, announce)
            return added  # (if not added, it has left every group already)
        if not isinstance(since, str):
            raise TypeError(f"since must be a position string, not {type(since).__name__}")
        result, frames = (self.history.recover(group.encode(), since) if self.history
                          else (Keeper.nothing_kept(), []))
        if member:  # it has had the group's messages live: nothing twice
            result = {**result, "missed": 0} if result.get("ok") else result
        elif added and client is not None:
            self._recovered(client, group, since, result, frames)
        # As the broker does: the join is told once the interface has added it, after
        # what it missed.
        self._joined(client if added else None, group, info, announce)
        return Recovery.from_answer({"ok": added, "history": result})

    def _joined(self, client: _Client | None, group: str, info: Any, announce: bool) -> None:
        if client is not None:
            self._announce(group, self.presence.joined(
                INTERFACE_ID.encode(), group, client.reply_channel, info, announce))

    def _recovered(self, client: _Client, group: str, since: str, result: dict[str, Any],
                   frames: list[bytes]) -> None:
        """What the interface does for a join that recovers (interface/positions.py)."""
        if not result.get("ok"):
            current = result.get("position")
            client.deliver(wire.KIND_TEXT, notice(group, since, result), {
                "op": wire.OP_SEND, "kind": wire.KIND_TEXT, "event": RECOVERY_FAILED,
                "id": current, "position": current})
            return
        for i in range(0, len(frames), 3):
            if client.pipeline.closed:
                break
            message = positioned(result.get("key") or "", wire.decode(frames[i]),
                                 frames[i + 1], frames[i + 2])
            client.deliver(message.kind, message.payload, message.header)

    def group_discard(self, group: str, reply_channel: ReplyChannel | str) -> bool:
        wire.check_name(group, "group")
        client = self._client(reply_channel)
        members = self.groups.get(group)
        if client is None or members is None or client not in members:
            return False
        self._leave(group, client)
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

    def _to_group(self, group: str, header: dict[str, Any], payload: bytes,
                  origin: bytes | None = None) -> None:
        if self.history is not None and header["op"] == wire.OP_SEND:
            stamped = self.history.stamp([group.encode(), wire.encode(header), payload], None,
                                         origin)
            if len(stamped) == 4:
                rule = self.history_rules.rule_for(group.encode())
                message = positioned(rule.key if rule else "", dict(header), payload,
                                     stamped[3])
                header, payload = message.header, message.payload
        targets = tuple(self.groups.get(group, ()))  # a close ends memberships
        for client in targets:
            if header["op"] == wire.OP_CLOSE:
                client.close(header["code"], "")
            else:
                client.deliver(header["kind"], payload, header)

    def reply_channel(self, name: str) -> ReplyChannel:
        return ReplyChannel(name, cast(Any, self))

    def group_members(self, group: str) -> list[Member]:
        wire.check_name(group, "group")
        return [Member(channel, info) for channel, info in self.presence.members(group)]

    def group_size(self, group: str) -> int:
        wire.check_name(group, "group")
        return self.presence.size(group)

    def _announce(self, group: str, notice: bytes | None) -> None:
        if notice is not None:
            self._to_group(group, {"op": wire.OP_SEND, "kind": wire.KIND_TEXT}, notice)

    def members(self, group: str) -> list[str]:
        """The reply channels in `group` now, in the order they joined."""
        return [client.reply_channel for client in self.groups.get(group, ())]

    def _client(self, reply_channel: ReplyChannel | str) -> _Client | None:
        route = (reply_channel.route if isinstance(reply_channel, ReplyChannel)
                 else wire.split_reply_channel(reply_channel))
        if route[0] != INTERFACE_ID.encode():
            return None  # another interface's: gone, as far as this one knows
        return self.clients.get(route[1])

    def _leave(self, group: str, client: _Client) -> None:
        members = self.groups[group]
        del members[client]
        client.groups.discard(group)
        if not members:
            del self.groups[group]
        self._announce(group, self.presence.left(INTERFACE_ID.encode(), group,
                                                 client.reply_channel))

    # -- the interface's side -----------------------------------------------------------

    def open(self, client: _Client, first_event: Event) -> None:
        self.clients[client.id] = client
        self.push(client, first_event)

    def push(self, client: _Client, event: Event) -> None:
        client.pipeline.push(event, self.limits)
        self.dispatch(client)

    def dispatch(self, client: _Client) -> None:
        """Hand the client's next event to the run queue if none is in flight."""
        def queue(event: Event, sequence: int) -> bool:
            channel, kind, payload, header = event
            if header is None:  # built now, with the session as the last consumer left it
                header = client.event_header(channel, kind)
            self.work.append((header, payload, client, sequence))
            return True
        client.pipeline.dispatch(queue, self.now, self.limits)
        if client.pipeline.finished():
            self.clients.pop(client.id, None)

    def closed(self, client: _Client) -> None:
        """The socket or response is gone: leave every group now, then the disconnect
        event goes last in its queue."""
        if not client.pipeline.close(client.disconnect_channel(), self.now):
            return
        for group in list(client.groups):
            self._leave(group, client)
        self.dispatch(client)

    def new_id(self) -> int:
        return next(self._client_ids)
