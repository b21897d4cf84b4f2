"""What the group calls answer a consumer: `Recovery` (``group_add(..., since=)``) and
`Member` (``group_members``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

from zchannels.wire.positions import REASON_CLOSED, REASON_UNREACHABLE


class Member(NamedTuple):
    """One member of a group: its reply channel, and the info it joined with."""

    reply_channel: str
    info: Any


@dataclass(frozen=True)
class Recovery:
    """What ``group_add(..., since=position)`` returns. True (as a bool) when the
    connection was added to the group, like plain ``group_add``.

    `recovered`: every message the group sent after `since` was delivered, in order,
    before anything live (`missed` of them); else `reason` says why not, and the client
    was sent a ``recovery_failed`` notice. `position`: the group's position at the
    moment the connection joined (None: the group keeps no history)."""

    added: bool
    recovered: bool
    missed: int = 0
    position: str | None = None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.added

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> "Recovery":
        """From the interface's answer to the request (``{"ok": ..., "history": ...}``)."""
        added = bool(answer.get("ok"))
        result = answer.get("history")
        if not isinstance(result, Mapping):
            why = REASON_UNREACHABLE if answer.get("bounced") else REASON_CLOSED
            return cls(added, False, reason=None if added else why)
        missed, reason, current = result.get("missed", 0), result.get("reason"), \
            result.get("position")
        if not added:
            reason = REASON_CLOSED
        return cls(added, bool(result.get("ok")) and added,
                   missed if isinstance(missed, int) else 0,
                   current if isinstance(current, str) else None,
                   reason if isinstance(reason, str) else None)
