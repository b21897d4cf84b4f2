"""The group memberships of one interface's own connections.

Each interface knows only its own sockets; a group that spans interfaces is
simply present in each of their tables. Membership lives here and nowhere else,
so a connection that closes leaves every group at once (`leave_all`), with no
expiry timers and no dead members elsewhere to clean up.
"""
from __future__ import annotations

from typing import Generic, Iterator, Protocol, TypeVar


class Member(Protocol):
    groups: set[bytes]  # the groups this connection is in, kept in step by GroupTable


M = TypeVar("M", bound=Member)


class GroupTable(Generic[M]):
    def __init__(self) -> None:
        self._members: dict[bytes, set[M]] = {}

    def add(self, group: bytes, member: M) -> None:
        self._members.setdefault(group, set()).add(member)
        if not member.groups:
            # Members may share one empty set until they join something (a set is
            # 216 bytes, and most connections of a large server are in no group).
            member.groups = {group}
        else:
            member.groups.add(group)

    def discard(self, group: bytes, member: M) -> bool:
        """Remove `member` from `group`; False if it was not in it."""
        members = self._members.get(group)
        if members is None or member not in members:
            return False
        self._remove(group, members, member)
        return True

    def leave_all(self, member: M) -> None:
        for group in member.groups:
            members = self._members.get(group)
            if members is not None:
                self._remove(group, members, member, keep_member_set=True)
        if member.groups:
            member.groups = set()

    def members(self, group: bytes) -> set[M] | None:
        return self._members.get(group)

    def _remove(self, group: bytes, members: set[M], member: M,
                keep_member_set: bool = False) -> None:
        members.discard(member)
        if not keep_member_set:
            member.groups.discard(group)
        if not members:
            del self._members[group]

    def __len__(self) -> int:
        """The number of groups with at least one member here."""
        return len(self._members)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._members)

    def member_count(self) -> int:
        """Memberships in all: a connection in two groups counts twice."""
        return sum(map(len, self._members.values()))
