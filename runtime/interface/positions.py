"""The interface's side of group history (`runtime/broker/history.py` is the broker's).

A group message of a group that keeps history comes with its position. Its payload,
if it is a JSON object, gets the position spliced in under the rule's key -- once
for all the interface's members, before the WebSocket frame is built -- and its
Server-Sent Event id is the position, so an EventSource that reconnects sends it
back as ``Last-Event-ID``. A join that asked to recover (``group_add(..., since=)``)
arrives with what the connection missed, which is delivered at once, before anything
live; or with the reason it cannot be had, which the client is told in a
``recovery_failed`` message.
"""
from __future__ import annotations

import logging
from typing import Any

from zchannels.wire import frames as wire
from zchannels.wire.positions import RECOVERY_FAILED, notice, splice
from zchannels.core.history_rules import HistoryRule, Rules
from zchannels.core.stats import counters
from zchannels.interface.clients import Client, Outgoing

log = logging.getLogger("zchannels.interface")


class Positions:
    def __init__(self, rules: tuple[HistoryRule, ...]) -> None:
        self.rules = Rules(rules)

    def message(self, group: bytes, header: dict[str, Any], payload: bytes,
                position: bytes) -> Outgoing:
        """A live group message with its position, for every local member."""
        rule = self.rules.rule_for(group)
        return positioned(rule.key if rule is not None else "", header, payload, position)

    def recovered(self, client: Client | None, header: dict[str, Any], result: Any,
                  frames: list[bytes], member: bool = False) -> dict[str, Any] | None:
        """The connection was just added (None: it was not): deliver the messages it
        missed, ``(header, payload, position)`` frames, or the recovery_failed notice.
        Returns the result for the worker's answer. A connection that was a `member`
        already has had the group's messages live: it gets nothing more."""
        if not isinstance(result, dict):
            counters.incr("garbage")
            log.warning("dropped a join with a malformed history result: %.200r", result)
            return None
        if client is None:
            return result  # it had closed: nothing to tell it
        if member:
            return {**result, "missed": 0} if result.get("ok") else result
        key = result.get("key")
        key = key if isinstance(key, str) else ""
        if not result.get("ok"):
            current = result.get("position")
            text = notice(str(header.get("group")), str(header.get("since")), result)
            client.deliver(Outgoing(wire.KIND_TEXT, text, {
                "op": wire.OP_SEND, "kind": wire.KIND_TEXT, "event": RECOVERY_FAILED,
                "id": current, "position": current}))
            return result
        for i in range(0, len(frames) - 2, 3):
            if client.pipeline.closed:  # a long-poll answered by the first one, say
                break
            try:
                missed = wire.decode(frames[i])
            except ValueError:
                counters.incr("garbage")
                continue
            if missed.get("op") == wire.OP_SEND:
                client.deliver(positioned(key, missed, frames[i + 1], frames[i + 2]))
        return result


def positioned(key: str, header: dict[str, Any], payload: bytes, position: bytes) -> Outgoing:
    pos = position.decode(errors="replace")
    if key and header.get("kind") == wire.KIND_TEXT:
        payload = splice(payload, key.encode(), position)
    header["id"] = pos  # the Server-Sent Event id: Last-Event-ID when it reconnects
    header["position"] = pos  # a long-poll's answer carries it in a header
    return Outgoing(header.get("kind"), payload, header)
