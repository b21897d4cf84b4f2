"""Which consumer handles a message: channel name plus an optional path pattern.

Consumers declare themselves with the `consumer` decorator in a module dropped
into ``consumers/``; a worker imports every such module at start. A path is
either a template (``/ws/chat/<room>``, each ``<name>`` matching one path
segment) or, starting with ``^``, a regular expression; named groups are passed
to the consumer as keyword arguments. The first declared match wins.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

log = logging.getLogger("zchannels.routing")

Consumer = Callable[..., Any]

_PLACEHOLDER = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def compile_path(path: str) -> re.Pattern[str]:
    """``/ws/chat/<room>`` -> ``^/ws/chat/(?P<room>[^/]+)$``; ``^...`` is used as given."""
    if path.startswith("^"):
        try:
            return re.compile(path)
        except re.error as e:
            raise ValueError(f"bad path regular expression {path!r}: {e}") from None
    if not path.startswith("/"):
        raise ValueError(f"path template {path!r} must start with '/' (or '^' for a regex)")
    parts, end = [], 0
    for m in _PLACEHOLDER.finditer(path):
        parts.append(re.escape(path[end:m.start()]))
        parts.append(f"(?P<{m.group(1)}>[^/]+)")
        end = m.end()
    parts.append(re.escape(path[end:]))
    try:
        return re.compile("^" + "".join(parts) + "$")
    except re.error as e:  # e.g. the same <name> twice
        raise ValueError(f"bad path template {path!r}: {e}") from None


@dataclass(frozen=True)
class Route:
    channel: str
    path: re.Pattern[str] | None
    func: Consumer

    def match(self, channel: str, path: str | None) -> dict[str, str] | None:
        if channel != self.channel:
            return None
        if self.path is None:
            return {}
        if path is None:
            return None
        m = self.path.match(path)
        return m.groupdict() if m else None


class Registry:
    """An ordered list of routes."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, channel: str, func: Consumer, path: str | None = None) -> None:
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"consumer channel must be a non-empty string, not {channel!r}")
        if not callable(func):
            raise TypeError(f"consumer for {channel!r} is not callable: {func!r}")
        self.routes.append(Route(channel, compile_path(path) if path else None, func))

    def consumer(self, channel: str, path: str | None = None) -> Callable[[Consumer], Consumer]:
        """Decorator: ``@consumer("websocket.receive", path="/ws/echo")``."""
        def register(func: Consumer) -> Consumer:
            self.add(channel, func, path)
            return func
        return register

    def match(self, channel: str, path: str | None) -> tuple[Consumer, dict[str, str]] | None:
        for route in self.routes:
            kwargs = route.match(channel, path)
            if kwargs is not None:
                return route.func, kwargs
        return None

    def handles_path(self, path: str | None, channels: Iterable[str]) -> bool:
        """Does any route for one of `channels` accept `path`?"""
        return any(self.match(channel, path) is not None for channel in channels)

    def channels(self) -> set[str]:
        return {route.channel for route in self.routes}

    def clear(self) -> None:
        self.routes.clear()


# The registry that `zchannels.consumer` fills and workers dispatch from.
registry = Registry()
consumer = registry.consumer


def load_consumers(directories: Iterable[str]) -> list[str]:
    """Import every ``*.py`` (not starting with ``_``) in `directories`, in name order.

    The modules' ``@consumer`` decorators fill the global `registry`. An import
    error is not swallowed: a worker that cannot load its consumers must fail
    loudly at start, not serve half an application.
    """
    loaded = []
    seen: dict[str, str] = {}
    for directory in directories:
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"consumers directory {directory!r} does not exist")
        # Helper modules (``_name.py``, never loaded as consumers) are importable
        # from the consumer modules beside them.
        directory = os.path.abspath(directory)
        if directory not in sys.path:
            sys.path.append(directory)
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".py") or name.startswith(("_", ".")):
                continue
            stem = name[:-3]
            path = os.path.join(directory, name)
            if stem in seen:
                raise ValueError(f"two consumer modules named {stem!r}: {seen[stem]} and {path}")
            seen[stem] = path
            module_name = f"zchannels_consumers.{stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            before = len(registry.routes)
            spec.loader.exec_module(module)
            log.info("loaded %s: %d consumer(s)", path, len(registry.routes) - before)
            loaded.append(path)
    return loaded
