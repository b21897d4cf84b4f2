"""What this interface tells the broker about its group memberships and its open
WebSockets (`zchannels.broker.presence`).

Each change of the table goes out as it is made, on the link's one pipe to the
broker and ahead of the answer the worker waits for; after a reconnect, the whole
table (a snapshot that replaces what the broker had of this interface, in case the
broker restarted and knows nothing). The info a member joined with is kept here
only for those snapshots. The open WebSockets are told as they open and close, so
that the broker can run their disconnect consumers if this interface dies.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from zchannels.interface.clients import Client
from zchannels.interface.groups import GroupTable

SNAPSHOT_CHUNK = 1000  # memberships per message of a snapshot

Change = list[Any]  # [group, reply channel, joined, info, announce]


class PresenceReporter:
    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self.send = send
        # (group, connection) -> (info, announce), for the members that have either
        self.info: dict[tuple[bytes, int], tuple[Any, bool]] = {}
        # connection -> (reply channel, path): the open WebSockets
        self.sockets: dict[int, tuple[str, str]] = {}

    def joined(self, client: Client, group: bytes, info: Any, announce: bool) -> None:
        if info is None and not announce:
            self.info.pop((group, client.id), None)
        else:
            self.info[(group, client.id)] = (info, announce)
        self.send({"changes": [[group.decode(), client.reply_channel, True, info, announce]]})

    def left(self, client: Client, groups: Iterable[bytes]) -> None:
        changes = self._leaves(client, groups)
        if changes:
            self.send({"changes": changes})

    def _leaves(self, client: Client, groups: Iterable[bytes]) -> list[Change]:
        changes: list[Change] = []
        for group in groups:
            self.info.pop((group, client.id), None)
            changes.append([group.decode(), client.reply_channel, False, None, False])
        return changes

    def opened(self, client: Client, path: str) -> None:
        """A WebSocket is open: if this interface dies, its disconnect must still run."""
        self.sockets[client.id] = (client.reply_channel, path)
        self.send({"changes": [], "opened": [[client.reply_channel, path]]})

    def closed(self, client: Client, groups: Iterable[bytes]) -> None:
        """A client closed: the groups it was in, and the socket, in one message."""
        header: dict[str, Any] = {"changes": self._leaves(client, groups)}
        if self.sockets.pop(client.id, None) is not None:
            header["closed"] = [client.reply_channel]
        if header["changes"] or "closed" in header:
            self.send(header)

    def abandoned(self) -> None:
        """The broker ran the disconnects of every open socket (it took this interface
        for dead): forget them and their memberships, without telling it again."""
        self.info.clear()
        self.sockets.clear()

    def snapshot(self, table: GroupTable[Client]) -> None:
        """Every membership and open socket, replacing what the broker had of this
        interface."""
        chunk: list[Change] = []
        first = True
        for group in table:
            name = group.decode()
            for client in table.members(group) or ():
                info, announce = self.info.get((group, client.id), (None, False))
                chunk.append([name, client.reply_channel, True, info, announce])
                if len(chunk) >= SNAPSHOT_CHUNK:
                    self.send({"changes": chunk, "reset": first})
                    chunk, first = [], False
        opened = [list(socket) for socket in self.sockets.values()]
        for start in range(0, max(len(opened), 1), SNAPSHOT_CHUNK):
            self.send({"changes": chunk, "reset": first,
                       "opened": opened[start:start + SNAPSHOT_CHUNK]})
            chunk, first = [], False

