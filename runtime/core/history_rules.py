"""Which groups keep history, and how much: the ``[history]`` table of the config
(docs/consumers.md#history-and-recovery, docs/operations.md#history-budgets). Read by
the config, the broker that keeps the history, the interfaces that splice positions
in, and the worker that recovers on ``group_add``. No I/O.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from zchannels.core.exceptions import ConfigError

DEFAULT_KEY = "pos"  # the JSON key the position is spliced in as
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # all groups' history together
DEFAULT_MAX_GROUPS = 10_000  # groups whose history is kept at once
DEFAULT_GROUP_MAX_BYTES = 1024 * 1024  # one group's history
DEFAULT_GROUP_MAX_MESSAGES = 10_000  # one group's history; a rule's size may only lower it
DEFAULT_MESSAGE_MAX_BYTES = 64 * 1024  # a larger message (header + payload) is not kept
DEFAULT_CONNECTION_BYTES_PER_SECOND = 128 * 1024  # one connection adds to history (0: off)
DEFAULT_CONNECTION_MESSAGES_PER_SECOND = 100.0  # the same, in messages (0: off)
MAX_CACHED_NAMES = 100_000  # group names whose rule is remembered (then forgotten at once)

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")


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
    """The ``[history]`` table: the rules, first match wins, and the bounds
    (docs/operations.md#history-budgets)."""

    groups: tuple[HistoryRule, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    max_groups: int = DEFAULT_MAX_GROUPS
    group_max_bytes: int = DEFAULT_GROUP_MAX_BYTES
    group_max_messages: int = DEFAULT_GROUP_MAX_MESSAGES
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
    connection_bytes_per_second: float = DEFAULT_CONNECTION_BYTES_PER_SECOND
    connection_messages_per_second: float = DEFAULT_CONNECTION_MESSAGES_PER_SECOND

    @property
    def enabled(self) -> bool:
        return any(rule.keeps for rule in self.groups)


# [history] keys: whole numbers > 0, and rates (numbers >= 0; 0: no limit).
_COUNTS = ("max_bytes", "max_groups", "group_max_bytes", "group_max_messages",
           "message_max_bytes")
_RATES = ("connection_bytes_per_second", "connection_messages_per_second")


def parse_config(raw: Any, source: str) -> HistoryConfig:
    """The ``[history]`` table of the config file (missing: no history)."""
    if raw is None:
        return HistoryConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: history must be a table ([history])")
    known = ("groups", *_COUNTS, *_RATES)
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"{source}: [history] has no key(s) {sorted(unknown)}; known keys: "
                          f"{', '.join(known)}")
    limits: dict[str, Any] = {}
    for key in _COUNTS:
        value = raw.get(key, getattr(HistoryConfig, key))
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{source}: [history] {key} must be a whole number greater "
                              f"than 0, not {value!r}")
        limits[key] = value
    for key in _RATES:
        value = raw.get(key, getattr(HistoryConfig, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 <= value < float("inf"):
            raise ConfigError(f"{source}: [history] {key} must be a number >= 0 (0: no "
                              f"limit), not {value!r}")
        limits[key] = float(value)
    if limits["message_max_bytes"] > limits["group_max_bytes"]:
        raise ConfigError(f"{source}: [history] message_max_bytes "
                          f"({limits['message_max_bytes']}) is larger than group_max_bytes "
                          f"({limits['group_max_bytes']}): such a message could never be kept")
    tables = raw.get("groups", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: history.groups must be a list of tables "
                          "([[history.groups]])")
    rules = tuple(_parse_rule(t, f"{source}: [[history.groups]] #{i + 1}")
                  for i, t in enumerate(tables))
    for i, rule in enumerate(rules):
        if rule.size > limits["group_max_messages"]:
            raise ConfigError(f"{source}: [[history.groups]] #{i + 1} size ({rule.size}) is "
                              f"larger than [history] group_max_messages "
                              f"({limits['group_max_messages']}); raise that, or lower size")
    return HistoryConfig(groups=rules, **limits)


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
