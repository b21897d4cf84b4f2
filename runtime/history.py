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
import fnmatch
import itertools
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .exceptions import ConfigError
from .stats import counters

DEFAULT_KEY = "pos"  # the JSON key the position is spliced in as
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # all groups' history together
DEFAULT_MAX_GROUPS = 10_000  # groups whose history is kept at once
ENTRY_OVERHEAD = 120  # bytes a kept message costs beyond its header and payload
MAX_CACHED_NAMES = 100_000  # group names whose rule is remembered (then forgotten at once)
SWEEP_INTERVAL = 1.0  # seconds between looks for messages older than their rule allows

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

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")


# -- configuration -------------------------------------------------------------------------

@dataclass(frozen=True)
class HistoryRule:
    """The history of the groups whose name matches `pattern` (a glob, as pools use):
    the last `size` messages (0: no count limit) no older than `seconds` (0: no age
    limit). A rule with both 0 keeps nothing: an exception to a later rule."""

    pattern: str
    size: int = 0
    seconds: float = 0.0
    key: str = DEFAULT_KEY  # spliced into JSON-object text messages; "": not spliced

    @property
    def keeps(self) -> bool:
        return self.size > 0 or self.seconds > 0


@dataclass(frozen=True)
class HistoryConfig:
    """The ``[history]`` table: the rules, first match wins, and the bounds."""

    groups: tuple[HistoryRule, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    max_groups: int = DEFAULT_MAX_GROUPS

    @property
    def enabled(self) -> bool:
        return any(rule.keeps for rule in self.groups)


def parse_config(raw: Any, source: str) -> HistoryConfig:
    """The ``[history]`` table of the config file (missing: no history)."""
    if raw is None:
        return HistoryConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: history must be a table ([history])")
    unknown = set(raw) - {"groups", "max_bytes", "max_groups"}
    if unknown:
        raise ConfigError(f"{source}: [history] has no key(s) {sorted(unknown)}; known keys: "
                          "groups, max_bytes, max_groups")
    limits = {}
    for key in ("max_bytes", "max_groups"):
        value = raw.get(key, getattr(HistoryConfig, key))
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{source}: [history] {key} must be a whole number greater "
                              f"than 0, not {value!r}")
        limits[key] = value
    tables = raw.get("groups", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: history.groups must be a list of tables "
                          "([[history.groups]])")
    return HistoryConfig(groups=tuple(_parse_rule(t, f"{source}: [[history.groups]] #{i + 1}")
                                      for i, t in enumerate(tables)), **limits)


def _parse_rule(table: Any, where: str) -> HistoryRule:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - {"pattern", "size", "seconds", "key"}
    if unknown:
        raise ConfigError(f"{where} has no key(s) {sorted(unknown)}; known keys: pattern, "
                          "size, seconds, key")
    pattern, size = table.get("pattern"), table.get("size", 0)
    seconds, key = table.get("seconds", 0), table.get("key", DEFAULT_KEY)
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where} needs pattern = \"glob\" (a group name pattern)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"{where} size must be a whole number of messages >= 0, not {size!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not 0 <= seconds < float("inf"):
        raise ConfigError(f"{where} seconds must be a number >= 0, not {seconds!r}")
    if not isinstance(key, str) or (key and not _KEY.match(key)):
        raise ConfigError(f"{where} key must be \"\" or a name of letters, digits, _ . - "
                          f"(at most 32), not {key!r}")
    return HistoryRule(pattern, size, float(seconds), key)


class Rules:
    """Which rule applies to a group name: the first whose pattern matches, remembered
    per name (a bounded cache, emptied when full)."""

    def __init__(self, rules: Iterable[HistoryRule]) -> None:
        self.rules = tuple(rules)
        self.cache: dict[bytes, HistoryRule | None] = {}

    def rule_for(self, group: bytes) -> HistoryRule | None:
        """The rule that keeps `group`'s history, or None if none does."""
        try:
            return self.cache[group]
        except KeyError:
            pass
        name = group.decode(errors="replace")
        found = next((r for r in self.rules if fnmatch.fnmatchcase(name, r.pattern)), None)
        rule = found if found is not None and found.keeps else None
        if len(self.cache) >= MAX_CACHED_NAMES:
            self.cache.clear()
        self.cache[group] = rule
        return rule


# -- positions -----------------------------------------------------------------------------

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
