"""Presence: who is in a group, across every interface, kept by the broker.

The interfaces own membership (promise 2: a ``group_add`` returns once the owning
interface's table has changed). Each interface tells the broker every change of its
table as it makes it -- a join with the info the consumer attached, a leave when a
member is discarded or its connection closes -- on the same pipe that then carries
its answer to the worker. So the broker's view is behind an interface by at most the
messages in that pipe, and a ``group_add`` that has returned is already in it: a
later ``group_members`` from any process sees the member.

What makes the view wrong, and how long for (docs/consumers.md#presence):
- an interface that dies: its members are dropped when the broker sees it go (at
  once over IPC; over TCP, within the heartbeat timeout);
- a broker that restarts: the view is empty until each interface, on reconnecting,
  sends it again (a snapshot of its table, within a second of the broker's start).

This module is the bookkeeping, without I/O: `Presence` is fed by the broker.
"""
from __future__ import annotations

from typing import Any

from zchannels.wire import frames as wire

class Presence:
    """Every group's members with their info, and which interface each one is on.

    A member that joined with ``announce`` has its join and its leave told to the
    group: `joined` and `left` return that notice (encoded), or None."""

    def __init__(self) -> None:
        # group -> {reply channel: (info, announce)}
        self.groups: dict[str, dict[str, tuple[Any, bool]]] = {}
        self.interfaces: dict[bytes, set[tuple[str, str]]] = {}  # -> {(group, channel)}

    def joined(self, interface: bytes, group: str, channel: str, info: Any,
               announce: bool, quiet: bool = False) -> bytes | None:
        """A member joined (or joined again: its info may have changed). The join
        notice, if it is new and announced (`quiet`: a snapshot, told before)."""
        members = self.groups.setdefault(group, {})
        new = channel not in members
        members[channel] = (info, announce)
        self.interfaces.setdefault(interface, set()).add((group, channel))
        return notice("join", group, channel, info) if new and announce and not quiet else None

    def left(self, interface: bytes, group: str, channel: str) -> bytes | None:
        """A member left: its leave notice if its join was announced."""
        members = self.groups.get(group)
        if members is None or channel not in members:
            return None
        info, announce = members.pop(channel)
        if not members:
            del self.groups[group]
        held = self.interfaces.get(interface)
        if held is not None:
            held.discard((group, channel))
            if not held:
                del self.interfaces[interface]
        return notice("leave", group, channel, info) if announce else None

    def forget_interface(self, interface: bytes, quiet: bool = False
                         ) -> list[tuple[str, bytes]]:
        """An interface is gone (or starts over, `quiet`): its members leave. The
        (group, notice) of each announced one, unless quiet."""
        notices = []
        for group, channel in self.interfaces.pop(interface, set()):
            members = self.groups.get(group)
            if members is not None and channel in members:
                info, announce = members.pop(channel)
                if not members:
                    del self.groups[group]
                if announce and not quiet:
                    notices.append((group, notice("leave", group, channel, info)))
        return notices

    def members(self, group: str) -> list[tuple[str, Any]]:
        return [(channel, info) for channel, (info, _) in self.groups.get(group, {}).items()]

    def size(self, group: str) -> int:
        return len(self.groups.get(group, ()))

    def total(self) -> int:
        return sum(len(members) for members in self.groups.values())


class OpenSockets:
    """The open WebSockets of every interface, so that when one dies the broker can
    run their disconnect consumers (abandoned: the interface is not there to)."""

    def __init__(self) -> None:
        self.by_interface: dict[bytes, dict[str, str]] = {}  # -> {reply channel: path}

    def opened(self, interface: bytes, channel: str, path: str) -> None:
        self.by_interface.setdefault(interface, {})[channel] = path

    def closed(self, interface: bytes, channel: str) -> None:
        sockets = self.by_interface.get(interface)
        if sockets is not None:
            sockets.pop(channel, None)
            if not sockets:
                del self.by_interface[interface]

    def forget(self, interface: bytes) -> dict[str, str]:
        """Its sockets, no longer kept: {reply channel: path}."""
        return self.by_interface.pop(interface, {})

    def total(self) -> int:
        return sum(map(len, self.by_interface.values()))


def abandoned_disconnect(channel: str, path: str) -> list[bytes]:
    """The websocket.disconnect event of a socket whose interface died: code 1006 (no
    close frame), ``abandoned``, no session (it died with the interface), and nothing
    to acknowledge it to."""
    return [wire.encode({"channel": "websocket.disconnect", "reply_channel": channel,
                         "path": path, "code": 1006, "abandoned": True}), b""]


def notice(action: str, group: str, channel: str, info: Any) -> bytes:
    """What the group gets when an announced member joins or leaves (a text message)."""
    return wire.encode({"type": action, "group": group, "member": channel, "info": info})
