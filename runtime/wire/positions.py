"""Positions in a group's history, ``"<epoch>:<offset>"``, as they travel: spliced into
JSON text messages, in the ``recovery_failed`` notice, and in an HTTP header. The broker
gives them out (`zchannels.broker.history`), the interfaces and consumers read them.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

CLOSE_HEADER = b'{"op":"close"'  # how wire.group_message's close header starts
RECOVERY_FAILED = "recovery_failed"  # the "type" of the notice a client gets
POSITION_HEADER = "ZChannels-Position"  # a long-poll answer's position (HTTP header)
# Why a recovery failed (the notice's and the Recovery's `reason`).
REASON_EPOCH = "epoch"  # the history was lost since (the broker restarted, or dropped it)
REASON_EVICTED = "evicted"  # messages after the position are no longer kept (too old)
REASON_INVALID = "invalid"  # not a position this group ever gave out
REASON_NO_HISTORY = "no_history"  # no [[history.groups]] rule keeps this group's history
REASON_CLOSED = "closed"  # the connection had closed (it was not added either)
REASON_UNREACHABLE = "unreachable"  # its interface has gone (it was not added either)


def position(epoch: str, offset: int) -> str:
    return f"{epoch}:{offset}"


def parse_position(value: Any) -> tuple[str, int] | None:
    """``"<epoch>:<offset>"`` -> (epoch, offset); None if it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    epoch, sep, offset = value.rpartition(":")
    if not sep or not epoch or not (offset.isascii() and offset.isdigit()):
        return None
    return epoch, int(offset)


def splice(payload: bytes, key: bytes, pos: bytes) -> bytes:
    """``{"pos":"<epoch>:<offset>", ...rest}`` for a payload that is a JSON object (its
    first character, after white space, is ``{``); any other payload unchanged. The
    rest of the payload is not parsed: it stays whatever it was."""
    if payload[:1] != b"{":
        stripped = payload.lstrip()
        if stripped[:1] != b"{":
            return payload
        payload = stripped
    field = b'{"%s":"%s"' % (key, pos)
    rest = payload[1:]
    if rest[:1] == b"}" or (rest[:1].isspace() and rest.lstrip()[:1] == b"}"):
        return field + rest.lstrip()
    return field + b"," + rest


def notice(group: str, since: str, result: Mapping[str, Any]) -> bytes:
    """The text message that tells a client its recovery failed: JSON, with the
    group's position now under the rule's key (so a client that reads positions from
    every message picks it up) and as ``position``."""
    body: dict[str, Any] = {}
    key, current = result.get("key") or "", result.get("position")
    if key and current is not None:
        body[key] = current
    body.update(type=RECOVERY_FAILED, group=group, since=since,
                reason=result.get("reason"), position=current)
    return json.dumps(body, separators=(",", ":")).encode()
