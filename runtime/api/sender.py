"""What a consumer sends through: the `Sender` protocol, and the module functions
(`send`, `group_add`, `group_send`, ...) that reach this process's sender.

Three things implement it: a worker's link to the broker
(`zchannels.worker.link.WorkerLink`), the connection any other process opens
(`zchannels.api.connection.BrokerConnection`, which `zchannels.api.client` manages), and
the test server's in-memory layer (`zchannels.testing`). A consumer never names
them: it calls these functions, or the methods of its `ReplyChannel`, and they go to
whichever sender the process has set with `set_current`.
"""
from __future__ import annotations

from typing import Any, Protocol, overload

from zchannels.api.results import Member, Recovery
from zchannels.core.exceptions import InvalidGroupName, NotInConsumer
from zchannels.core.stats import counters
from zchannels.wire import frames as wire


class Routed(Protocol):
    """A reply channel as a sender sees it: its route, parsed once, and the position its
    client last saw (an EventSource's ``Last-Event-ID``), if any."""

    route: tuple[bytes, int]
    since: str | None


Channel = Routed | str  # a ReplyChannel, or its name


class Replier(Protocol):
    """What a `ReplyChannel` sends through: one operation (send, accept, close, a
    response part...) for one connection."""

    def to_interface(self, reply_channel: Channel, header: dict[str, Any],
                     payload: bytes | None = None) -> None: ...


class Sender(Replier, Protocol):
    """Everything a consumer may send: to its connections, to named channels, to groups,
    and its questions about groups."""

    def send(self, channel: str, content: dict[str, Any] | None = None,
             payload: bytes = b"", delay: float | None = None) -> None: ...

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None, delay: float | None = None) -> None: ...

    def group_add(self, group: str, reply_channel: Channel, since: str | None = None, *,
                  info: Any = None, announce: bool = False) -> bool | Recovery:
        """True (or, with `since`, a `Recovery`) once the connection is a member: the
        module function `group_add` below types the two cases."""

    def group_discard(self, group: str, reply_channel: Channel) -> bool: ...

    def group_members(self, group: str) -> list[Member]: ...

    def group_size(self, group: str) -> int: ...


_current: Sender | None = None


def check_group_name(group: Any) -> str:
    """`group` if it can name a group: a non-empty string of printable characters, at
    most 200 bytes of UTF-8 (`wire.MAX_NAME_BYTES`); otherwise `InvalidGroupName`,
    counted (``invalid_group_names``). Every group function checks its name so; call
    this first for a name made of what a client sent, to refuse the client before
    starting anything for it (a stream, a hold)."""
    try:
        return wire.check_name(group, "group")
    except InvalidGroupName:
        counters.incr("invalid_group_names")
        raise


def set_current(sender: Sender | None) -> None:
    """Make `sender` the one this process's consumers send through (None: no more)."""
    global _current
    _current = sender


def current() -> Sender:
    if _current is None:
        raise NotInConsumer("no channel layer in this process: call this from a consumer, "
                            "or send with zchannels.client (docs/consumers.md)")
    return _current


def send(channel: str, content: dict[str, Any] | None = None, payload: bytes = b"",
         delay: float | None = None) -> None:
    """Send a message to a named channel; with `delay` (seconds), the broker keeps it
    that long first."""
    current().send(channel, content, payload, delay=delay)


@overload
def group_add(group: str, reply_channel: Channel, *, info: Any = None,
              announce: bool = False) -> bool: ...
@overload
def group_add(group: str, reply_channel: Channel, since: str, *,
              info: Any = None, announce: bool = False) -> Recovery: ...


def group_add(group: str, reply_channel: Channel, since: str | None = None, *,
              info: Any = None, announce: bool = False) -> bool | Recovery:
    """Add a connection to a group: with `since`, recover what the client missed;
    `info`, what `group_members` shows of it; `announce`, tell the group when it joins
    and leaves (docs/consumers.md#groups)."""
    if since is None:
        return current().group_add(group, reply_channel, info=info, announce=announce)
    return current().group_add(group, reply_channel, since, info=info, announce=announce)


def group_members(group: str) -> list[Member]:
    return current().group_members(group)


def group_size(group: str) -> int:
    return current().group_size(group)


def group_discard(group: str, reply_channel: Channel) -> bool:
    return current().group_discard(group, reply_channel)


def group_send(group: str, text: str | None = None, bytes: bytes | None = None,
               close: int | None = None, event: str | None = None,
               id: str | int | None = None, delay: float | None = None) -> None:
    current().group_send(group, text=text, bytes=bytes, close=close, event=event, id=id,
                         delay=delay)
