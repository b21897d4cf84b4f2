"""Group history: the last messages of the groups configured to keep them, and
recovery from a position (docs/consumers.md#history-and-recovery).

The broker keeps it (`Keeper`), because every group message passes through it and it
sends everything for one interface through one ordered pipe. Every message of a group
with history gets a *position*, ``"<epoch>:<offset>"``: the offset counts the group's
messages from 1, and the epoch names one life of the group's history. A new epoch
starts whenever that history is lost: the broker restarted, or it dropped the
group's whole history to stay within its bounds. A client that comes back with the
last position it saw gets what it missed, or is told that recovery is not possible.

No I/O here: the broker, the interfaces and the in-memory test layer feed it bytes,
and `tests/test_history.py` checks every rule without a socket.
"""
from __future__ import annotations

import collections
import itertools
import secrets
import time
from typing import Any

from zchannels.core.history_rules import MAX_CACHED_NAMES, HistoryConfig, HistoryRule, Rules
from zchannels.core.stats import counters
from zchannels.wire.positions import (CLOSE_HEADER, REASON_EPOCH, REASON_EVICTED,
                                      REASON_INVALID, REASON_NO_HISTORY, parse_position,
                                      position, splice)

ENTRY_OVERHEAD = 120  # bytes a kept message costs beyond its header and payload
SWEEP_INTERVAL = 1.0  # seconds between looks for messages older than their rule allows


# -- the keeper ----------------------------------------------------------------------------

# A kept message: (offset, monotonic time it was kept, header frame, payload frame).
Entry = tuple[int, float, bytes, bytes]


class Ring:
    """One group's kept messages, oldest first, with consecutive offsets."""

    __slots__ = ("group", "rule", "epoch", "last", "entries", "bytes", "key")

    def __init__(self, group: bytes, rule: HistoryRule, epoch: str) -> None:
        self.group = group
        self.rule = rule
        self.epoch = epoch
        self.key = rule.key.encode()
        self.last = 0  # the offset of the newest message ever kept (0: none yet)
        self.entries: collections.deque[Entry] = collections.deque()
        self.bytes = 0

    @property
    def first(self) -> int:
        """The offset of the oldest message still kept (last + 1 when none is)."""
        return self.entries[0][0] if self.entries else self.last + 1

    def position(self) -> str:
        return position(self.epoch, self.last)


def entry_bytes(entry: Entry) -> int:
    return len(entry[2]) + len(entry[3]) + ENTRY_OVERHEAD


class Keeper:
    """Every group's history in the broker, bounded: per group by its rule (count and
    age), in all by `max_bytes` (the least recently written groups lose their oldest
    messages first) and `max_groups` (the least recently written group is dropped
    whole; its next message starts a new epoch)."""

    def __init__(self, config: HistoryConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.rules = Rules(config.groups)
        self.clock = clock
        # group -> its ring, least recently written first; and group name -> its ring or
        # False (no history): the one dict lookup a group message costs (see `stamp`).
        self.rings: collections.OrderedDict[bytes, Ring] = collections.OrderedDict()
        self.cache: dict[bytes, Ring | bool] = {}
        self.bytes = 0
        self.token = secrets.token_hex(4)  # this keeper's life: a restart changes epochs
        self._serial = itertools.count(1)
        self.swept = clock()

    # -- recording -----------------------------------------------------------------------

    def ring_for(self, group: bytes, create: bool = True) -> Ring | None:
        """The group's ring (made now if `create`), or None if it keeps no history."""
        ring = self.rings.get(group)
        if ring is not None:
            return ring
        rule = self.rules.rule_for(group)
        if rule is None:
            self._cache(group, False)
            return None
        if not create:
            return None
        if len(self.rings) >= self.config.max_groups:
            self.drop(next(iter(self.rings)))
        ring = self.rings[group] = Ring(group, rule, f"{self.token}{next(self._serial):x}")
        self._cache(group, ring)
        return ring

    def _cache(self, group: bytes, value: Ring | bool) -> None:
        if len(self.cache) >= MAX_CACHED_NAMES:
            self.cache.clear()
        self.cache[group] = value

    def stamp(self, frames: list[bytes], ring: Ring | bool | None) -> list[bytes]:
        """A group message ``[group, header, payload]`` the broker is about to send out:
        keep it if its group keeps history, and return the frames with its position
        appended; else the frames unchanged. `ring` is ``cache.get(group)``, looked up
        by the caller (None: not looked up before)."""
        if ring is None:
            ring = self.ring_for(frames[0])
            if ring is None:
                return frames
        assert isinstance(ring, Ring)
        if frames[1].startswith(CLOSE_HEADER):
            return frames  # a close is not history: it ends memberships, and is not replayed
        offset = self.keep(ring, frames[1], frames[2])
        return [*frames, b"%s:%d" % (ring.epoch.encode(), offset)]

    def keep(self, ring: Ring, header: bytes, payload: bytes) -> int:
        now = self.clock()
        ring.last += 1
        entry = (ring.last, now, header, payload)
        ring.entries.append(entry)
        size = entry_bytes(entry)
        ring.bytes += size
        self.bytes += size
        counters.incr("history_kept")
        self.rings.move_to_end(ring.group)
        rule = ring.rule
        if rule.size and len(ring.entries) > rule.size:
            self.evict(ring, len(ring.entries) - rule.size)
        if rule.seconds:
            self.expire(ring, now)
        if self.bytes > self.config.max_bytes:
            self.trim()
        return ring.last

    # -- bounds --------------------------------------------------------------------------

    def evict(self, ring: Ring, count: int) -> None:
        entries = ring.entries
        freed = 0
        for _ in range(min(count, len(entries))):
            freed += entry_bytes(entries.popleft())
        ring.bytes -= freed
        self.bytes -= freed
        counters.incr("history_evicted", count)

    def expire(self, ring: Ring, now: float) -> None:
        """Drop the ring's messages older than its rule's `seconds`."""
        oldest = now - ring.rule.seconds
        entries = ring.entries
        count = 0
        while entries and entries[0][1] < oldest:
            entry = entries.popleft()
            ring.bytes -= entry_bytes(entry)
            self.bytes -= entry_bytes(entry)
            count += 1
        if count:
            counters.incr("history_evicted", count)

    def trim(self) -> None:
        """Over max_bytes: the least recently written groups lose their oldest messages;
        one left with none is dropped whole (its offsets restart in a new epoch)."""
        while self.bytes > self.config.max_bytes and self.rings:
            group, ring = next(iter(self.rings.items()))
            while ring.entries and self.bytes > self.config.max_bytes:
                self.evict(ring, 1)
            if not ring.entries:
                self.drop(group)

    def drop(self, group: bytes) -> None:
        ring = self.rings.pop(group)
        self.bytes -= ring.bytes
        if ring.entries:
            counters.incr("history_evicted", len(ring.entries))
        counters.incr("history_groups_dropped")
        self.cache.pop(group, None)

    def sweep(self) -> None:
        """At most every SWEEP_INTERVAL: messages past their rule's age go, in groups that
        send nothing new too."""
        now = self.clock()
        if now - self.swept < SWEEP_INTERVAL:
            return
        self.swept = now
        for ring in self.rings.values():
            if ring.rule.seconds and ring.entries:
                self.expire(ring, now)

    # -- recovery ------------------------------------------------------------------------

    @staticmethod
    def nothing_kept() -> dict[str, Any]:
        """The result for a recovery when no group keeps history at all."""
        return failed(REASON_NO_HISTORY)

    def recover(self, group: bytes, since: Any) -> tuple[dict[str, Any], list[bytes]]:
        """What a connection that joins `group` now and last saw position `since` has
        missed: (result, frames). The result is ``{"ok": True, "missed": n,
        "position": ..., "key": ...}`` with n messages as (header, payload, position)
        frames, or ``{"ok": False, "reason": ..., "position": ..., "key": ...}``.
        ``since=""``: the client has no position yet; nothing to replay."""
        ring = self.ring_for(group)
        if ring is None:
            return failed(REASON_NO_HISTORY), []
        if ring.rule.seconds:
            self.expire(ring, self.clock())
        result: dict[str, Any] = {"position": ring.position(), "key": ring.rule.key}
        if since == "":
            result.update(ok=True, missed=0)
            counters.incr("history_recovered")
            return result, []
        parsed = parse_position(since)
        if parsed is None or parsed[0] == ring.epoch and parsed[1] > ring.last:
            reason = REASON_INVALID
        elif parsed[0] != ring.epoch:
            reason = REASON_EPOCH
        elif parsed[1] + 1 < ring.first:
            reason = REASON_EVICTED
        else:
            skip = parsed[1] + 1 - ring.first
            epoch = ring.epoch.encode()
            frames: list[bytes] = []
            for offset, _, header, payload in itertools.islice(ring.entries, skip, None):
                frames += (header, payload, b"%s:%d" % (epoch, offset))
            missed = len(frames) // 3
            result.update(ok=True, missed=missed)
            counters.incr("history_recovered")
            counters.incr("history_replayed", missed)
            return result, frames
        result.update(ok=False, reason=reason)
        counters.incr("history_recovery_failed")
        return result, []


def failed(reason: str) -> dict[str, Any]:
    counters.incr("history_recovery_failed")
    return {"ok": False, "reason": reason, "position": None, "key": ""}
