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
and `tests/test_history.py` and `tests/test_history_budget.py` check every rule
without a socket.
"""
from __future__ import annotations

import collections
import itertools
import logging
import secrets
import time
from typing import Any, Callable

from zchannels.core.history_rules import MAX_CACHED_NAMES, HistoryConfig, HistoryRule, Rules
from zchannels.core.stats import counters
from zchannels.wire.positions import (CLOSE_HEADER, REASON_EPOCH, REASON_EVICTED,
                                      REASON_INVALID, REASON_NO_HISTORY, parse_position,
                                      position)

log = logging.getLogger("zchannels.history")

ENTRY_OVERHEAD = 120  # bytes a kept message costs beyond its header and payload
SWEEP_INTERVAL = 1.0  # seconds between looks for messages older than their rule allows
MAX_SENDERS = 100_000  # connections whose allowance is remembered at once (then the oldest go)
REPORT_INTERVAL = 10.0  # seconds between warnings about messages kept out of history
# Why a message was kept out of history (also the counters).
TOO_LARGE = "history_too_large"  # larger than message_max_bytes
OVER_RATE = "history_over_rate"  # its connection added more than it may per second


# -- the keeper ----------------------------------------------------------------------------

# A kept message: (offset, monotonic time it was kept, header frame, payload frame).
Entry = tuple[int, float, bytes, bytes]


class Ring:
    """One group's kept messages, oldest first, with consecutive offsets."""

    __slots__ = ("group", "rule", "epoch", "last", "entries", "bytes", "key", "max_messages")

    def __init__(self, group: bytes, rule: HistoryRule, epoch: str, max_messages: int) -> None:
        self.group = group
        self.rule = rule
        self.epoch = epoch
        self.key = rule.key.encode()
        self.max_messages = max_messages  # the rule's size, or group_max_messages
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


class Allowances:
    """What each connection (by its reply channel) may still add to history: a bucket
    of bytes and one of messages, each holding one second's worth when full and filling
    at its rate (0: no limit of that kind). A message is kept while neither is empty;
    its bytes may overdraw the first, so a connection keeps at most about one second's
    worth plus one message at once, and its rate after that."""

    def __init__(self, bytes_per_second: float, messages_per_second: float) -> None:
        self.bytes_rate = bytes_per_second
        self.messages_rate = messages_per_second
        self.messages_full = max(messages_per_second, 1.0)  # room for one, at least
        self.limited = bool(bytes_per_second or messages_per_second)
        # connection -> [bytes left, messages left, monotonic time of the last look]
        self.left: dict[bytes, list[float]] = {}

    def take(self, origin: bytes, size: int, now: float) -> bool:
        """Whether `origin` may add a message of `size` bytes now; if so, it is taken
        from its allowance."""
        left = self.left.get(origin)
        if left is None:
            if len(self.left) >= MAX_SENDERS:
                del self.left[next(iter(self.left))]
            left = self.left[origin] = [self.bytes_rate, self.messages_full, now]
        else:
            self._refill(left, now)
        if (self.bytes_rate and left[0] <= 0) or (self.messages_rate and left[1] < 1):
            return False
        if self.bytes_rate:
            left[0] -= size
        if self.messages_rate:
            left[1] -= 1
        return True

    def _refill(self, left: list[float], now: float) -> bool:
        """Add what the time since the last look has earned; True if both are full."""
        elapsed = max(0.0, now - left[2])
        left[2] = now
        left[0] = min(self.bytes_rate, left[0] + elapsed * self.bytes_rate)
        left[1] = min(self.messages_full, left[1] + elapsed * self.messages_rate)
        return left[0] >= self.bytes_rate and left[1] >= self.messages_full

    def forget_full(self, now: float) -> None:
        """Forget the connections whose allowance is full again, as if never seen: the
        table holds only those that wrote lately."""
        for origin in [o for o, left in self.left.items() if self._refill(left, now)]:
            del self.left[origin]


class Keeper:
    """Every group's history in the broker, bounded so that no sender can take another
    group's history (docs/operations.md#history-budgets):

    - per group: its rule's `size` (else `group_max_messages`) and `seconds`, and
      `group_max_bytes`: beyond them the group loses its own oldest messages;
    - in all, `max_bytes`: while over it, the groups over their *share* (max_bytes
      divided equally among the groups with history now) lose their oldest messages,
      the least recently written of them first. A group within its share loses nothing
      to another group's volume;
    - `max_groups`: the least recently written group is dropped whole (its next
      message starts a new epoch);
    - a message larger than `message_max_bytes`, or beyond what its connection may add
      per second, is kept out: it gets its position and goes out live, but as a
      history has no gaps the group's older messages go with it (a recovery from
      before it fails, "evicted"). Counted, and logged at most every REPORT_INTERVAL.
    """

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
        # Each group's share of max_bytes, for `shared_by` rings, and the rings over it,
        # least recently written first. Stale when the number of rings has changed since:
        # worked out again only when max_bytes is exceeded (`trim`), so a new group costs
        # nothing until then.
        self.share = config.max_bytes
        self.shared_by = 0
        self.over: collections.OrderedDict[bytes, Ring] = collections.OrderedDict()
        self.allowances = Allowances(config.connection_bytes_per_second,
                                     config.connection_messages_per_second)
        self.kept_out: collections.Counter[str] = collections.Counter()  # not yet reported
        # The newest of them, for the warning: (why, bytes, origin, group).
        self.last_kept_out: tuple[str, int, bytes | None, bytes] | None = None
        self.reported = -REPORT_INTERVAL  # when the last warning went out
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
        ring = self.rings[group] = Ring(group, rule, f"{self.token}{next(self._serial):x}",
                                        rule.size or self.config.group_max_messages)
        self._cache(group, ring)
        return ring

    def _cache(self, group: bytes, value: Ring | bool) -> None:
        if len(self.cache) >= MAX_CACHED_NAMES:
            self.cache.clear()
        self.cache[group] = value

    def stamp(self, frames: list[bytes], ring: Ring | bool | None,
              origin: bytes | None = None) -> list[bytes]:
        """A group message ``[group, header, payload]`` the broker is about to send out:
        keep it if its group keeps history, and return the frames with its position
        appended; else the frames unchanged. `ring` is ``cache.get(group)``, looked up
        by the caller (None: not looked up before). `origin`: the reply channel of the
        connection whose event sent it (None: not sent for a connection)."""
        if ring is None:
            ring = self.ring_for(frames[0])
            if ring is None:
                return frames
        assert isinstance(ring, Ring)
        header, payload = frames[1], frames[2]
        if header.startswith(CLOSE_HEADER):
            return frames  # a close is not history: it ends memberships, and is not replayed
        size = len(header) + len(payload)
        now = self.clock()
        if size > self.config.message_max_bytes:
            offset = self.keep_out(ring, TOO_LARGE, size, origin, now)
        elif origin is not None and self.allowances.limited \
                and not self.allowances.take(origin, size, now):
            offset = self.keep_out(ring, OVER_RATE, size, origin, now)
        else:
            offset = self.keep(ring, header, payload, now)
        return [*frames, b"%s:%d" % (ring.epoch.encode(), offset)]

    def keep(self, ring: Ring, header: bytes, payload: bytes, now: float | None = None) -> int:
        if now is None:
            now = self.clock()
        ring.last += 1
        entry = (ring.last, now, header, payload)
        ring.entries.append(entry)
        size = entry_bytes(entry)
        ring.bytes += size
        self.bytes += size
        counters.incr("history_kept")
        self.rings.move_to_end(ring.group)
        if len(ring.entries) > ring.max_messages:
            self.evict(ring, len(ring.entries) - ring.max_messages)
        while ring.bytes > self.config.group_max_bytes and len(ring.entries) > 1:
            self.evict(ring, 1)
        if ring.rule.seconds:
            self.expire(ring, now)
        if ring.bytes > self.share and not self.stale:
            self.over[ring.group] = ring
            self.over.move_to_end(ring.group)
        if self.bytes > self.config.max_bytes:
            self.trim()
        return ring.last

    def keep_out(self, ring: Ring, why: str, size: int, origin: bytes | None,
                 now: float) -> int:
        """A message that is not kept (`why`): it still takes the next offset, and the
        group's older messages go, since a recovery can never skip a message."""
        ring.last += 1
        if ring.entries:
            self.evict(ring, len(ring.entries))
        self.rings.move_to_end(ring.group)
        counters.incr(why)
        self.kept_out[why] += 1
        self.last_kept_out = (why, size, origin, ring.group)
        self.report(now)
        return ring.last

    def report(self, now: float) -> None:
        """One warning for the messages kept out since the last, at most every
        REPORT_INTERVAL: a flood is counted, not logged line by line."""
        if not self.kept_out or now - self.reported < REPORT_INTERVAL:
            return
        assert self.last_kept_out is not None
        why, size, origin, group = self.last_kept_out
        sender = "a process (not for a connection)" if origin is None \
            else f"connection {origin.decode(errors='replace')}"
        log.warning("kept %d group message(s) out of history (%s), each with the older "
                    "messages of its group; the last: %d bytes from %s to group %r (%s). "
                    "(At most one such warning every %g s; "
                    "docs/operations.md#history-budgets)", sum(self.kept_out.values()),
                    ", ".join(f"{k} {n}" for k, n in sorted(self.kept_out.items())),
                    size, sender, group.decode(errors="replace"), why, REPORT_INTERVAL)
        self.kept_out.clear()
        self.reported = now

    # -- bounds --------------------------------------------------------------------------

    def evict(self, ring: Ring, count: int) -> None:
        entries = ring.entries
        count = min(count, len(entries))
        freed = 0
        for _ in range(count):
            freed += entry_bytes(entries.popleft())
        ring.bytes -= freed
        self.bytes -= freed
        counters.incr("history_evicted", count)
        if ring.bytes <= self.share:
            self.over.pop(ring.group, None)

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
            if ring.bytes <= self.share:
                self.over.pop(ring.group, None)

    @property
    def stale(self) -> bool:
        """Whether the number of rings has changed since the share was worked out (a
        ring dropped for a new one leaves `over` right: the new one holds nothing)."""
        return len(self.rings) != self.shared_by

    def reshare(self) -> None:
        """Each group's share of max_bytes now, and which rings are over it."""
        self.shared_by = len(self.rings)
        self.share = share = self.config.max_bytes // max(1, self.shared_by)
        self.over = collections.OrderedDict(
            (group, ring) for group, ring in self.rings.items() if ring.bytes > share)

    def trim(self) -> None:
        """Over max_bytes: the groups over their share lose their oldest messages, the
        least recently written first, until all together are within max_bytes. One is
        always over its share then (were none, all would be within max_bytes). A group
        emptied so keeps its offsets and epoch: a client that saw its last message
        still recovers."""
        if self.stale:
            self.reshare()
        over, share, limit = self.over, self.share, self.config.max_bytes
        while self.bytes > limit and over:
            group, ring = over.popitem(last=False)
            while ring.bytes > share and self.bytes > limit:
                self.evict(ring, 1)
            if ring.bytes > share:  # within max_bytes before within its share: still over
                over[group] = ring
                over.move_to_end(group, last=False)

    def drop(self, group: bytes) -> None:
        """Only ever for a new ring to take its place (`ring_for`): the number of rings,
        and so the share, stays the same."""
        ring = self.rings.pop(group)
        self.over.pop(group, None)
        self.bytes -= ring.bytes
        if ring.entries:
            counters.incr("history_evicted", len(ring.entries))
        counters.incr("history_groups_dropped")
        self.cache.pop(group, None)

    def sweep(self) -> None:
        """At most every SWEEP_INTERVAL: messages past their rule's age go, in groups that
        send nothing new too; connections whose allowance is full again are forgotten;
        messages kept out since the last warning are reported."""
        now = self.clock()
        if now - self.swept < SWEEP_INTERVAL:
            return
        self.swept = now
        for ring in self.rings.values():
            if ring.rule.seconds and ring.entries:
                self.expire(ring, now)
        if self.allowances.left:
            self.allowances.forget_full(now)
        self.report(now)

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
