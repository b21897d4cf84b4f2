"""Which consumer handles a message: channel name plus an optional path pattern.

Consumers declare themselves with the `consumer` decorator in a module dropped
into ``consumers/``; a worker imports every such module at start. A path is
either a template (``/ws/chat/<room>``, ``/ws/game/<int:game>``: Django's path
converters, each ``<name>`` matching one path segment) or, starting with ``^``, a
regular expression; named groups are passed to the consumer as keyword arguments,
converted by their converter (``<int:n>`` arrives as an ``int``). The first
declared match wins.

Route tables nest as Django's URLconfs do: a `Router` holds routes relative to
where it is included, and ``include("/ws/chat", router)`` copies them, prefixed,
into the registry at that point of the declaration order. Every mistake in a path
(an unknown converter, a malformed template, two parameters of one name) is a
`ValueError` when the route is declared, never a 4404 later.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys
import types
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

log = logging.getLogger("zchannels.routing")

Consumer = Callable[..., Any]


# -- converters: Django's, with Django's regexes ---------------------------------------------

class Converter(Protocol):
    """What a path converter is (Django's protocol): the `regex` of one parameter,
    `to_python` from the matched text (ValueError: the route does not match), and
    `to_url` back."""

    regex: str

    def to_python(self, value: str) -> Any: ...
    def to_url(self, value: Any) -> str: ...


class StringConverter:
    """``<str:name>``, and ``<name>``: one path segment, as a str."""

    regex = "[^/]+"

    def to_python(self, value: str) -> Any:
        return value

    def to_url(self, value: Any) -> str:
        return value


class IntConverter:
    """``<int:name>``: digits, as an int (zero or more)."""

    regex = "[0-9]+"

    def to_python(self, value: str) -> Any:
        return int(value)

    def to_url(self, value: Any) -> str:
        return str(value)


class SlugConverter(StringConverter):
    """``<slug:name>``: ASCII letters, digits, hyphens and underscores."""

    regex = "[-a-zA-Z0-9_]+"


class UUIDConverter:
    """``<uuid:name>``: a lower-case, hyphenated UUID, as a `uuid.UUID`."""

    regex = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

    def to_python(self, value: str) -> Any:
        return uuid.UUID(value)

    def to_url(self, value: Any) -> str:
        return str(value)


class PathConverter(StringConverter):
    """``<path:name>``: the rest of the path, slashes included (not empty)."""

    regex = ".+"


DEFAULT_CONVERTERS: Mapping[str, Converter] = types.MappingProxyType({
    "int": IntConverter(),
    "path": PathConverter(),
    "slug": SlugConverter(),
    "str": StringConverter(),
    "uuid": UUIDConverter(),
})
_STR = DEFAULT_CONVERTERS["str"]
_REGISTERED: dict[str, Converter] = {}

# Django's: <converter:name> or <name>; whitespace inside is refused below, as Django does.
_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<parameter>[^>]+)>")


def register_converter(converter: type, type_name: str) -> None:
    """Make ``<type_name:...>`` available in path templates, as Django's
    ``django.urls.register_converter(converter, type_name)``: `converter` is a class
    with a `regex` and the methods `to_python` (raise ValueError for "no match") and
    `to_url`; one instance serves every route. Call it before the routes that use it
    (at the top of the consumer module). The five built-in names cannot be replaced,
    nor can a name registered by another class."""
    if not isinstance(type_name, str) or not type_name or any(
            c in ":<>" or c.isspace() for c in type_name):
        raise ValueError(f"a converter name is a non-empty string without ':', '<', '>' "
                         f"or whitespace, not {type_name!r}")
    if not isinstance(converter, type):
        raise TypeError(f"register_converter takes the converter class (as Django's does), "
                        f"not {converter!r}")
    if type_name in DEFAULT_CONVERTERS:
        raise ValueError(f"converter {type_name!r} is built in and cannot be replaced; "
                         "register yours under another name")
    known = _REGISTERED.get(type_name)
    if known is not None and _class_name(type(known)) != _class_name(converter):
        # The same class again is a module imported twice (zchannels.testing does that).
        raise ValueError(f"converter {type_name!r} is already registered by "
                         f"{_class_name(type(known))}")
    _REGISTERED[type_name] = _checked_converter(converter(), type_name)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _checked_converter(converter: Any, type_name: str) -> Converter:
    where = f"converter {type_name!r} ({_class_name(type(converter))})"
    regex = getattr(converter, "regex", None)
    if not isinstance(regex, str) or not regex:
        raise TypeError(f"{where} needs a regex: a non-empty str")
    try:
        compiled = re.compile(regex)
    except re.error as e:
        raise ValueError(f"{where}: bad regex {regex!r}: {e}") from None
    if compiled.groupindex:
        raise ValueError(f"{where}: its regex {regex!r} may not have named groups")
    for method in ("to_python", "to_url"):
        if not callable(getattr(converter, method, None)):
            raise TypeError(f"{where} needs a {method} method")
    return converter


def get_converters() -> dict[str, Converter]:
    """The converters a path template can name: the built-in five and the registered
    ones (Django's registered converters are looked up when a name is not here)."""
    return {**DEFAULT_CONVERTERS, **_REGISTERED}


def get_converter(type_name: str) -> Converter:
    """The converter named ``type_name``: built in, registered with
    `register_converter`, or -- if Django is installed -- registered with Django's
    ``register_converter``. ValueError for an unknown name."""
    found = DEFAULT_CONVERTERS.get(type_name) or _REGISTERED.get(type_name)
    if found is not None:
        return found
    django_converter = _django_converter(type_name)
    if django_converter is not None:
        return django_converter
    raise ValueError(f"unknown path converter {type_name!r}: the known ones are "
                     f"{', '.join(sorted(get_converters()))}; register yours with "
                     f"zchannels.register_converter(YourConverter, {type_name!r})")


def _django_converter(type_name: str) -> Converter | None:
    # Only for a name that is not ours: a project without Django never imports it.
    try:
        from django.urls.converters import get_converters as django_converters
    except ImportError:
        return None
    found = django_converters().get(type_name)
    return None if found is None else _checked_converter(found, type_name)


# -- paths -----------------------------------------------------------------------------------

def _template_regex(template: str) -> tuple[str, dict[str, Converter]]:
    """A template's regex (not anchored) and its parameters' converters, by name."""
    parts, converters, end = [], {}, 0
    for m in _PARAMETER.finditer(template):
        if any(c.isspace() for c in m.group(0)):
            raise ValueError(f"path template {template!r}: no whitespace inside "
                             f"{m.group(0)!r}")
        name = m.group("parameter")
        if not name.isidentifier():
            raise ValueError(f"path template {template!r}: {name!r} in {m.group(0)!r} is not "
                             "a valid Python identifier")
        if name in converters:
            raise ValueError(f"path template {template!r} names <{name}> twice")
        type_name = m.group("converter")
        try:
            converter = _STR if type_name is None else get_converter(type_name)
        except ValueError as e:
            raise ValueError(f"path template {template!r}: {e}") from None
        literal = template[end:m.start()]
        _check_literal(template, literal)
        parts += [re.escape(literal), f"(?P<{name}>{converter.regex})"]
        converters[name] = converter
        end = m.end()
    _check_literal(template, template[end:])
    parts.append(re.escape(template[end:]))
    return "".join(parts), converters


def _check_literal(template: str, literal: str) -> None:
    for bracket in "<>":
        if bracket in literal:
            raise ValueError(f"path template {template!r}: unmatched {bracket!r} (a "
                             "parameter is <name> or <converter:name>)")


@dataclass(frozen=True)
class PathPattern:
    """A compiled path: its regex, and the converter of every named group (a regex's
    groups are plain strings)."""

    regex: re.Pattern[str]
    parameters: Mapping[str, Converter]


def parse_path(path: str) -> PathPattern:
    """``/ws/game/<int:game>`` -> ``^/ws/game/(?P<game>[0-9]+)$`` with an int converter
    for ``game``; ``^...`` is used as given (its groups are strings). ValueError for
    any mistake: an unknown converter, a malformed template or regex."""
    if not isinstance(path, str):
        raise TypeError(f"a path is a str, not {path!r}")
    if path.startswith("^"):
        try:
            regex = re.compile(path)
        except re.error as e:
            raise ValueError(f"bad path regular expression {path!r}: {e}") from None
        return PathPattern(regex, {name: _STR for name in regex.groupindex})
    if not path.startswith("/"):
        raise ValueError(f"path template {path!r} must start with '/' (or '^' for a regex)")
    body, converters = _template_regex(path)
    try:
        return PathPattern(re.compile("^" + body + "$"), converters)
    except re.error as e:  # a converter's regex that breaks the whole
        raise ValueError(f"bad path template {path!r}: {e}") from None


def compile_path(path: str) -> re.Pattern[str]:
    """``/ws/chat/<room>`` -> ``^/ws/chat/(?P<room>[^/]+)$``; ``^...`` is used as given."""
    return parse_path(path).regex


def _prefix_regex(prefix: str) -> tuple[str, dict[str, Converter]]:
    """What `include` puts before a table's paths: a template without its trailing
    ``/`` (the table's paths start with one), or a regex as written."""
    if not isinstance(prefix, str):
        raise TypeError(f"an include prefix is a str, not {prefix!r}")
    if prefix.startswith("^"):
        if prefix.endswith(("$", "\\Z", "/")):
            raise ValueError(f"include prefix {prefix!r}: a regex prefix may not end with "
                             "'$' or '/' (the included paths start with '/')")
        pattern = parse_path(prefix)
        return prefix[1:], dict(pattern.parameters)
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"include prefix {prefix!r} must start with '/' (or '^' for a regex)")
    return _template_regex(prefix.rstrip("/"))


# -- routes ------------------------------------------------------------------------------------

_identity = StringConverter.to_python


@dataclass(frozen=True)
class Route:
    channel: str
    path: re.Pattern[str] | None
    func: Consumer
    #: name -> converter of every named group of `path`
    parameters: Mapping[str, Converter] = field(default_factory=dict, hash=False)
    #: the path as declared (a template, a regex, with the prefixes it was included under)
    source: str | None = None
    #: the converters that change the matched text, applied on every match
    converters: tuple[tuple[str, Converter], ...] = field(init=False, repr=False,
                                                          compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "converters", tuple(
            (name, converter) for name, converter in self.parameters.items()
            if getattr(type(converter), "to_python", None) is not _identity))

    def match(self, channel: str, path: str | None) -> dict[str, Any] | None:
        if channel != self.channel:
            return None
        if self.path is None:
            return {}
        if path is None:
            return None
        m = self.path.match(path)
        if m is None:
            return None
        kwargs: dict[str, Any] = m.groupdict()
        for name, converter in self.converters:
            try:
                kwargs[name] = converter.to_python(kwargs[name])
            except ValueError:  # Django's rule: the converter says this is no match
                return None
        return kwargs


@dataclass(frozen=True)
class PathEntry:
    """One entry of a route list, made by `path` (Django's ``path()``)."""

    route: str
    target: Any
    channel: str | None = None


def path(route: str, target: Any, *, channel: str | None = None) -> PathEntry:
    """A route list entry, as Django's ``path(route, view)``: `target` is a class-based
    consumer (``path("/<int:room>", Chat)``: all its channels), a consumer function
    with its `channel` (``path("/echo", echo, channel="websocket.receive")``), or a
    nested table -- a `Router`, a list of entries, a module -- included at `route`
    (``path("/ws/chat", chat_routes)``)."""
    return PathEntry(route, target, channel)


class Registry:
    """An ordered list of routes; the first that matches wins.

    The global `registry` is the one workers dispatch from; ``Registry(entries)``
    starts with `path` entries. A registry checks each route completely when it is
    added; a `Router` is a table to include elsewhere."""

    #: Run the consumers' ``check_route`` hook when a route is added (a `Router`
    #: waits until it is included: its paths are not whole yet).
    checks_consumers = True

    def __init__(self, entries: Iterable[PathEntry] = ()) -> None:
        self.routes: list[Route] = []
        self.included_at: list[str] = []  # where this table has been included
        self.extend(entries)

    def add(self, channel: str, func: Consumer, path: str | None = None) -> None:
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"consumer channel must be a non-empty string, not {channel!r}")
        if not callable(func):
            raise TypeError(f"consumer for {channel!r} is not callable: {func!r}")
        if path:
            pattern = parse_path(path)
            route = Route(channel, pattern.regex, func, pattern.parameters, path)
        else:
            route = Route(channel, None, func)
        self._append(route)

    def _append(self, route: Route) -> None:
        if self.included_at:
            raise ValueError(f"this Router was already included at {self.included_at[0]!r}: "
                             f"declare its routes ({route.source or route.channel!r}) before "
                             "including it")
        check = getattr(route.func, "check_route", None) if self.checks_consumers else None
        if check is not None and route.source is not None:
            check(route.source, route.parameters)
        self.routes.append(route)

    def consumer(self, channel: str, path: str | None = None) -> Callable[[Consumer], Consumer]:
        """Decorator: ``@consumer("websocket.receive", path="/ws/echo")``."""
        def register(func: Consumer) -> Consumer:
            self.add(channel, func, path)
            return func
        return register

    def extend(self, entries: Iterable[PathEntry]) -> None:
        """Add `path` entries, in order."""
        if isinstance(entries, (str, bytes, PathEntry)):
            raise TypeError(f"route entries are a list of path(...), not {entries!r}")
        for entry in entries:
            if not isinstance(entry, PathEntry):
                raise TypeError(f"a route entry is made by zchannels.path(...), not {entry!r}")
            self._add_entry(entry)

    def _add_entry(self, entry: PathEntry) -> None:
        target, where = entry.target, f"path({entry.route!r}, {entry.target!r})"
        table = _table_or_none(target)
        register = getattr(target, "register", None)
        if table is not None or (isinstance(target, type) and callable(register)):
            if entry.channel is not None:
                raise TypeError(f"{where}: channel= is for a consumer function; a class or "
                                "a table routes its own channels")
            if table is not None:
                self.include(entry.route, table)
            else:
                assert register is not None
                register(entry.route, registry=self)
        elif callable(target):
            if entry.channel is None:
                raise TypeError(f"{where}: a consumer function needs its channel: "
                                f"path(..., channel=\"websocket.receive\")")
            self.add(entry.channel, target, entry.route)
        else:
            raise TypeError(f"{where}: the target is a class-based consumer, a consumer "
                            "function with channel=, a Router, a list of path(...) or a "
                            "module")

    def include(self, prefix: str, table: Any) -> None:
        """Add every route of `table`, in its order, with `prefix` before its paths (a
        template, ``"/ws/chat"`` or ``"/ws/<int:version>/"``: its trailing ``/`` is the
        one the table's paths start with; or a ``^regex``). `table` is a `Router` (or
        any `Registry`), a list of `path` entries, or a module (or its dotted name)
        with a ``router`` or ``urlpatterns``. A route of the table without a path is
        an error: under a prefix it would match no named-channel message."""
        body, prefix_parameters = _prefix_regex(prefix)
        source = _table(table)
        if source is self:
            raise ValueError("a route table cannot include itself")
        if source is registry:
            raise ValueError("the workers' registry cannot be included in another table")
        added = []
        for route in source.routes:
            if route.path is None:
                raise ValueError(f"include({prefix!r}, ...): the route of {route.channel!r} "
                                 f"to {_name_of(route.func)} has no path (the prefix itself "
                                 "is \"/\"); a named-channel consumer is declared with "
                                 "zchannels.consumer")
            pattern = route.path.pattern
            assert pattern.startswith("^")  # templates compile so, regexes are written so
            full = _joined(prefix, route.source or "")
            try:
                regex = re.compile("^" + body + pattern[1:])
            except re.error as e:  # e.g. the prefix and the route name the same parameter
                raise ValueError(f"include({prefix!r}, ...): the route {route.source!r} "
                                 f"does not fit under the prefix: {e}") from None
            added.append(Route(route.channel, regex, route.func,
                               {**prefix_parameters, **route.parameters}, full))
        for route in added:
            self._append(route)
        source.included_at.append(prefix)

    def match(self, channel: str, path: str | None) -> tuple[Consumer, dict[str, Any]] | None:
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
        self.included_at.clear()


class Router(Registry):
    """A route table to include elsewhere (Channels' ``URLRouter``, a Django app's
    ``urls.py``): ``Router([path(...), ...])``, or filled with ``@router.consumer`` and
    ``Cls.register(path, registry=router)``; then ``include(prefix, router)``.

    Its paths are relative to the prefix, and start with ``/``. What can only be
    checked on the whole path (a class-based consumer's group templates and
    attribute names) is checked when it is included in the registry. Including copies
    the routes as they are then: a route added to the router later would be lost, so
    that is an error."""

    checks_consumers = False


def _table_or_none(target: Any) -> Registry | None:
    if isinstance(target, Registry):
        return target
    if isinstance(target, (list, tuple)):
        return Router(target)
    if isinstance(target, types.ModuleType):
        return _module_table(target)
    return None


def _table(target: Any) -> Registry:
    if isinstance(target, str):
        try:
            target = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"include: cannot import the route module {target!r}: {e}") \
                from e
    table = _table_or_none(target)
    if table is None:
        raise TypeError(f"include takes a Router, a list of path(...) or a module, not "
                        f"{target!r}")
    return table


def _module_table(module: types.ModuleType) -> Registry:
    for attribute in ("router", "urlpatterns"):
        value = getattr(module, attribute, None)
        if value is not None:
            table = _table_or_none(value)
            if table is None or isinstance(value, types.ModuleType):
                raise TypeError(f"{module.__name__}.{attribute} is not a Router or a list "
                                f"of path(...): {value!r}")
            return table
    raise ValueError(f"module {module.__name__} has neither a router nor urlpatterns to "
                     "include")


def _joined(prefix: str, path: str) -> str:
    """The declared path of an included route, for messages."""
    if prefix.startswith("^") or path.startswith("^"):
        return f"{prefix} + {path}"
    return prefix.rstrip("/") + path


def _name_of(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


# The registry that `zchannels.consumer` fills and workers dispatch from.
registry = Registry()
consumer = registry.consumer
include = registry.include


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

