"""Which groups keep history, and how much: the ``[history]`` table of the config
(docs/consumers.md#history-and-recovery). Read by the config, the broker that keeps the
history, the interfaces that splice positions in, and the worker that recovers on
``group_add``. No I/O.
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
