"""Unit tests for zchannels.api.routing: path templates, the route registry and
loading consumer modules from directories."""
from __future__ import annotations

import re
import sys
import textwrap
import uuid

import pytest

from zchannels.api import routing
from zchannels.api.routing import Registry, compile_path, load_consumers


def handler(message, **kwargs):
    return kwargs


def other_handler(message, **kwargs):
    return kwargs


# --- compile_path --------------------------------------------------------------------------

@pytest.mark.parametrize("template, path, kwargs", [
    ("/ws/echo", "/ws/echo", {}),
    ("/ws/chat/<room>", "/ws/chat/lobby", {"room": "lobby"}),
    ("/ws/chat/<room>", "/ws/chat/caf%C3%A9 x", {"room": "caf%C3%A9 x"}),
    ("/<a>/x/<b_2>", "/1/x/two", {"a": "1", "b_2": "two"}),
    ("/files/<name>.txt", "/files/notes.txt", {"name": "notes"}),
    ("/a.b", "/a.b", {}),
    ("/x+(y)?[z]", "/x+(y)?[z]", {}),
])
def test_template_matches(template, path, kwargs):
    m = compile_path(template).match(path)
    assert m is not None
    assert m.groupdict() == kwargs


@pytest.mark.parametrize("template, path", [
    ("/ws/chat/<room>", "/ws/chat/a/b"),  # one segment only
    ("/ws/chat/<room>", "/ws/chat/"),  # a segment is not empty
    ("/ws/chat/<room>", "/ws/chat"),
    ("/ws/chat/<room>", "/ws/chat/lobby/"),  # anchored at the end
    ("/ws/chat/<room>", "/prefix/ws/chat/lobby"),  # anchored at the start
    ("/ws/echo", "/ws/echo/"),
    ("/a.b", "/aXb"),  # '.' is literal
    ("/x+", "/xx"),  # '+' is literal
    ("/<a>", "/"),
])
def test_template_does_not_match(template, path):
    assert compile_path(template).match(path) is None


def test_regex_is_used_as_given():
    pattern = compile_path(r"^/api/(?P<id>\d+)")
    assert pattern.pattern == r"^/api/(?P<id>\d+)"
    assert pattern.match("/api/42").groupdict() == {"id": "42"}
    assert pattern.match("/api/42/more") is not None  # no '$' was given
    assert pattern.match("/api/x") is None


@pytest.mark.parametrize("template, message", [
    pytest.param("ws/echo", "must start with '/'", id="relative"),
    pytest.param("", "must start with '/'", id="empty"),
    pytest.param("^/ws/(", "bad path regular expression", id="regex-unbalanced"),
    pytest.param("^/ws/[", "bad path regular expression", id="regex-bad-class"),
    pytest.param("^/(?P<a>x)/(?P<a>y)", "bad path regular expression", id="regex-duplicate"),
    pytest.param("/<room>/<room>", "room", id="template-duplicate-placeholder"),
])
def test_bad_templates_raise_value_error(template, message):
    with pytest.raises(ValueError, match=message):
        compile_path(template)


# --- Registry ------------------------------------------------------------------------------

@pytest.fixture
def reg():
    return Registry()


def test_first_match_wins(reg):
    reg.add("websocket.receive", handler, "/ws/chat/<room>")
    reg.add("websocket.receive", other_handler, "/ws/chat/<name>")
    reg.add("websocket.receive", other_handler)
    assert reg.match("websocket.receive", "/ws/chat/lobby") == (handler, {"room": "lobby"})
    assert reg.match("websocket.receive", "/elsewhere") == (other_handler, {})


def test_specific_route_after_catch_all_is_shadowed(reg):
    reg.add("websocket.receive", other_handler)
    reg.add("websocket.receive", handler, "/ws/echo")
    assert reg.match("websocket.receive", "/ws/echo") == (other_handler, {})


def test_kwargs_come_from_named_groups(reg):
    reg.add("websocket.connect", handler, r"^/api/(?P<version>v\d)/(?P<item>\w+)$")
    assert reg.match("websocket.connect", "/api/v2/books") == (
        handler, {"version": "v2", "item": "books"})


@pytest.mark.parametrize("channel", ["websocket.receiv", "websocket.receive.x",
                                     "WEBSOCKET.RECEIVE", "websocket.*", ""])
def test_channel_must_match_exactly(reg, channel):
    reg.add("websocket.receive", handler)
    assert reg.match(channel, "/ws") is None


@pytest.mark.parametrize("path", ["/", "/ws/echo", "/anything/at/all", None])
def test_route_without_path_matches_any_path(reg, path):
    reg.add("chat.message", handler)
    assert reg.match("chat.message", path) == (handler, {})


def test_route_with_path_does_not_match_a_missing_path(reg):
    reg.add("websocket.receive", handler, "/ws/echo")
    assert reg.match("websocket.receive", None) is None
    assert reg.match("websocket.receive", "/ws/other") is None


def test_handles_path(reg):
    reg.add("websocket.connect", handler, "/ws/chat/<room>")
    reg.add("websocket.receive", handler, "/ws/echo")
    reg.add("chat.message", handler)
    ws = ("websocket.connect", "websocket.receive", "websocket.disconnect")
    assert reg.handles_path("/ws/chat/lobby", ws)
    assert reg.handles_path("/ws/echo", ws)
    assert not reg.handles_path("/ws/nothing", ws)
    assert not reg.handles_path("/ws/echo", ["websocket.disconnect"])
    assert reg.handles_path("/ws/nothing", ["chat.message"])
    assert not reg.handles_path("/ws/echo", [])


def test_decorator_registers_and_returns_the_function(reg):
    @reg.consumer("websocket.receive", path="/ws/<room>")
    def receive(message, room):
        return room

    assert receive(None, room="r") == "r"
    assert reg.match("websocket.receive", "/ws/lobby") == (receive, {"room": "lobby"})
    assert reg.channels() == {"websocket.receive"}


def test_empty_path_means_no_path(reg):
    reg.add("chat.message", handler, "")
    assert reg.routes[0].path is None


@pytest.mark.parametrize("channel, func, error", [
    ("", handler, ValueError),
    (None, handler, ValueError),
    (b"chat", handler, ValueError),
    ("chat", "not callable", TypeError),
    ("chat", None, TypeError),
])
def test_add_rejects_bad_routes(reg, channel, func, error):
    with pytest.raises(error):
        reg.add(channel, func)
    assert reg.routes == []


def test_add_rejects_bad_path_without_registering(reg):
    with pytest.raises(ValueError):
        reg.add("chat", handler, "no-slash")
    assert reg.routes == []


def test_channels_and_clear(reg):
    reg.add("a", handler)
    reg.add("b", handler, "/x")
    reg.add("a", other_handler, "/y")
    assert reg.channels() == {"a", "b"}
    reg.clear()
    assert reg.routes == [] and reg.match("a", "/y") is None


def test_module_level_consumer_uses_the_global_registry():
    assert routing.consumer.__self__ is routing.registry


# --- load_consumers ------------------------------------------------------------------------

@pytest.fixture
def global_registry():
    """The global registry and module table, emptied before and restored after."""
    saved_routes = list(routing.registry.routes)
    routing.registry.clear()
    saved_modules = {k for k in sys.modules if k.startswith("zchannels_consumers.")}
    yield routing.registry
    routing.registry.clear()
    routing.registry.routes.extend(saved_routes)
    for name in [k for k in sys.modules if k.startswith("zchannels_consumers.")]:
        if name not in saved_modules:
            del sys.modules[name]


def _module(directory, name, body):
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _registering(channel):
    return f"""
        from zchannels.api.routing import registry

        def handle(message):
            pass

        registry.add({channel!r}, handle)
    """


def test_load_consumers_in_name_order_skipping_private_files(tmp_path, global_registry):
    b = _module(tmp_path, "b_mod.py", _registering("b"))
    a = _module(tmp_path, "a_mod.py", _registering("a"))
    c = _module(tmp_path, "c.py", """
        from zchannels import consumer

        @consumer("c", path="/c/<x>")
        def handle(message, x):
            pass
    """)
    poison = 'raise RuntimeError("must not be imported")\n'
    _module(tmp_path, "_private.py", poison)
    _module(tmp_path, "__init__.py", poison)
    _module(tmp_path, ".hidden.py", poison)
    _module(tmp_path, "notes.txt", poison)
    _module(tmp_path, "data.pyc", poison)

    assert load_consumers([str(tmp_path)]) == [a, b, c]
    assert [r.channel for r in global_registry.routes] == ["a", "b", "c"]
    func, kwargs = global_registry.match("c", "/c/7")
    assert kwargs == {"x": "7"}
    assert func.__module__ == "zchannels_consumers.c"
    assert sys.modules["zchannels_consumers.a_mod"].__file__ == a


def _directory(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return path


def test_load_consumers_across_directories_in_given_order(tmp_path, global_registry):
    first, second = _directory(tmp_path, "z_first"), _directory(tmp_path, "a_second")
    z = _module(first, "zz.py", _registering("zz"))
    a = _module(second, "aa.py", _registering("aa"))
    assert load_consumers([str(first), str(second)]) == [z, a]
    assert [r.channel for r in global_registry.routes] == ["zz", "aa"]


def test_empty_directory_loads_nothing(tmp_path, global_registry):
    assert load_consumers([str(tmp_path)]) == []


@pytest.mark.parametrize("body, error, message", [
    pytest.param("import zchannels_no_such_module_xyz\n", ModuleNotFoundError,
                 "zchannels_no_such_module_xyz", id="missing-import"),
    pytest.param("def broken(:\n", SyntaxError, None, id="syntax-error"),
    pytest.param('raise RuntimeError("boom at import")\n', RuntimeError, "boom at import",
                 id="runtime-error"),
    pytest.param(_registering(""), ValueError, "non-empty string", id="bad-registration"),
])
def test_import_errors_propagate(tmp_path, global_registry, body, error, message):
    _module(tmp_path, "a_ok.py", _registering("ok"))
    _module(tmp_path, "b_broken.py", body)
    _module(tmp_path, "c_later.py", _registering("later"))
    with pytest.raises(error, match=message):
        load_consumers([str(tmp_path)])
    assert [r.channel for r in global_registry.routes] == ["ok"]


def test_missing_directory_raises(tmp_path, global_registry):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_consumers([str(missing)])
    assert str(missing) in str(info.value)


def test_file_instead_of_directory_raises(tmp_path, global_registry):
    path = _module(tmp_path, "echo.py", _registering("x"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_consumers([path])


def test_duplicate_module_names_across_directories_raise(tmp_path, global_registry):
    one, two = _directory(tmp_path, "one"), _directory(tmp_path, "two")
    first = _module(one, "chat.py", _registering("one"))
    second = _module(two, "chat.py", _registering("two"))
    with pytest.raises(ValueError, match="two consumer modules named 'chat'") as info:
        load_consumers([str(one), str(two)])
    assert first in str(info.value) and second in str(info.value)
    assert [r.channel for r in global_registry.routes] == ["one"]


# --- path converters (Django's) ---------------------------------------------------------------

UUID = "6f1c2a4e-9b3d-4c5e-8f70-123456789abc"


@pytest.mark.parametrize("template, path, kwargs", [
    ("/a/<int:n>", "/a/42", {"n": 42}),
    ("/a/<int:n>", "/a/007", {"n": 7}),
    ("/a/<str:s>", "/a/x y%20z", {"s": "x y%20z"}),
    ("/a/<s>", "/a/x-1", {"s": "x-1"}),
    ("/a/<slug:s>", "/a/my-slug_1", {"s": "my-slug_1"}),
    ("/a/<uuid:u>", f"/a/{UUID}", {"u": uuid.UUID(UUID)}),
    ("/a/<path:p>", "/a/x/y/z.txt", {"p": "x/y/z.txt"}),
    ("/<slug:s>/<int:n>/<path:rest>", "/x/3/a/b", {"s": "x", "n": 3, "rest": "a/b"}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_converters_give_typed_kwargs(reg, template, path, kwargs):
    reg.add("websocket.connect", handler, template)
    found = reg.match("websocket.connect", path)
    assert found == (handler, kwargs)
    assert [type(v) for v in found[1].values()] == [type(v) for v in kwargs.values()]


@pytest.mark.parametrize("template, path", [
    ("/a/<int:n>", "/a/-1"),
    ("/a/<int:n>", "/a/4.2"),
    ("/a/<int:n>", "/a/"),
    ("/a/<int:n>", "/a/1/"),
    ("/a/<str:s>", "/a/x/y"),
    ("/a/<slug:s>", "/a/caf%C3%A9"),
    ("/a/<slug:s>", "/a/a.b"),
    ("/a/<uuid:u>", f"/a/{UUID.upper()}"),
    ("/a/<uuid:u>", f"/a/{UUID.replace('-', '')}"),
    ("/a/<path:p>", "/a/"),
])
def test_converters_refuse_what_django_refuses(reg, template, path):
    reg.add("websocket.connect", handler, template)
    assert reg.match("websocket.connect", path) is None


def test_the_built_in_converters_are_djangos():
    from django.urls import converters as django
    ours = routing.get_converters()
    assert sorted(ours) == sorted(django.DEFAULT_CONVERTERS) == [
        "int", "path", "slug", "str", "uuid"]
    for name, theirs in django.DEFAULT_CONVERTERS.items():
        assert ours[name].regex == theirs.regex, name
        for text in ("0", "42", UUID, "a-b"):
            if re.fullmatch(theirs.regex, text):
                assert ours[name].to_python(text) == theirs.to_python(text)
                value = theirs.to_python(text)
                assert ours[name].to_url(value) == theirs.to_url(value)


def test_a_plain_parameter_is_still_one_segment_as_a_str(reg):
    reg.add("websocket.receive", handler, "/ws/chat/<room>")
    assert reg.routes[0].path.pattern == r"^/ws/chat/(?P<room>[^/]+)$"
    assert reg.match("websocket.receive", "/ws/chat/12") == (handler, {"room": "12"})


class FourDigitYear:
    regex = "[0-9]{4}"

    def to_python(self, value):
        year = int(value)
        if year < 1900:
            raise ValueError("too early")
        return year

    def to_url(self, value):
        return "%04d" % value


@pytest.fixture(autouse=True)
def converters():
    """Each test starts with the built-in converters only (another test file may have
    loaded a consumer module that registers one), and what it registers is gone after."""
    saved = dict(routing._REGISTERED)
    routing._REGISTERED.clear()
    yield routing.register_converter
    routing._REGISTERED.clear()
    routing._REGISTERED.update(saved)


def test_a_custom_converter_registered_like_djangos(reg, converters):
    converters(FourDigitYear, "yyyy")
    reg.add("websocket.connect", handler, "/archive/<yyyy:year>")
    assert reg.match("websocket.connect", "/archive/2024") == (handler, {"year": 2024})
    assert reg.match("websocket.connect", "/archive/24") is None
    converters(FourDigitYear, "yyyy")  # the same class again (a module imported twice)


def test_to_python_raising_value_error_is_no_match_and_the_next_route_is_tried(
        reg, converters):
    converters(FourDigitYear, "yyyy")
    reg.add("websocket.connect", handler, "/archive/<yyyy:year>")
    reg.add("websocket.connect", other_handler, "/archive/<int:number>")
    assert reg.match("websocket.connect", "/archive/2024") == (handler, {"year": 2024})
    assert reg.match("websocket.connect", "/archive/1850") == (other_handler, {"number": 1850})
    assert reg.handles_path("/archive/1850", ["websocket.connect"])
    reg.routes.pop()
    assert reg.match("websocket.connect", "/archive/1850") is None
    assert not reg.handles_path("/archive/1850", ["websocket.connect"])


def test_another_error_of_to_python_is_not_hidden(reg, converters):
    class Broken:
        regex = "[a-z]+"

        def to_python(self, value):
            raise KeyError(value)

        def to_url(self, value):
            return value

    converters(Broken, "broken")
    reg.add("websocket.connect", handler, "/b/<broken:x>")
    with pytest.raises(KeyError):
        reg.match("websocket.connect", "/b/x")


class NoToUrl:
    regex = "[a-z]+"

    def to_python(self, value):
        return value


class NamedGroup(FourDigitYear):
    regex = "(?P<inner>[0-9]{4})"


class BadRegex(FourDigitYear):
    regex = "[0-9"


@pytest.mark.parametrize("converter, name, error, message", [
    (FourDigitYear, "int", ValueError, "built in"),
    (FourDigitYear(), "yyyy", TypeError, "the converter class"),
    (NoToUrl, "lower", TypeError, "to_url"),
    (NamedGroup, "named", ValueError, "named groups"),
    (BadRegex, "bad", ValueError, "bad regex"),
    (FourDigitYear, "a:b", ValueError, "converter name"),
    (FourDigitYear, "", ValueError, "converter name"),
])
def test_bad_converters_are_refused(converters, converter, name, error, message):
    with pytest.raises(error, match=message):
        converters(converter, name)
    assert name not in routing._REGISTERED


class Lower(NoToUrl):
    def to_url(self, value):
        return value


def test_a_name_registered_by_another_class_is_refused(converters):
    converters(FourDigitYear, "yyyy")
    with pytest.raises(ValueError, match="'yyyy' is already registered by .*FourDigitYear"):
        converters(Lower, "yyyy")
    assert isinstance(routing.get_converter("yyyy"), FourDigitYear)


def test_a_converter_registered_with_django_is_accepted(reg):
    from django.urls import converters as django
    django.register_converter(FourDigitYear, "zc_test_year")
    try:
        reg.add("websocket.connect", handler, "/d/<zc_test_year:year>")
        assert reg.match("websocket.connect", "/d/2001") == (handler, {"year": 2001})
        assert reg.match("websocket.connect", "/d/1066") is None
    finally:
        del django.REGISTERED_CONVERTERS["zc_test_year"]
        django.get_converters.cache_clear()


@pytest.mark.parametrize("template, message", [
    pytest.param("/items/<intt:id>", "unknown path converter 'intt'", id="unknown"),
    pytest.param("/items/<Int:id>", "unknown path converter 'Int'", id="case"),
    pytest.param("/items/<int :id>", "whitespace", id="space"),
    pytest.param("/items/<int: id>", "whitespace", id="space-after"),
    pytest.param("/items/<1id>", "not a valid Python identifier", id="not-identifier"),
    pytest.param("/items/<int:>", "not a valid Python identifier", id="no-name"),
    pytest.param("/items/<:id>", "not a valid Python identifier", id="no-converter"),
    pytest.param("/items/<id", "unmatched '<'", id="unclosed"),
    pytest.param("/items/id>", "unmatched '>'", id="unopened"),
    pytest.param("/items/<>", "unmatched '<'", id="empty"),
    pytest.param("/<int:id>/<str:id>", "names <id> twice", id="twice"),
])
def test_bad_templates_are_errors_at_registration(reg, template, message):
    with pytest.raises(ValueError, match=message):
        reg.add("websocket.connect", handler, template)
    assert reg.routes == []


def test_the_unknown_converter_error_says_what_is_known_and_how_to_add_one(reg):
    with pytest.raises(ValueError) as info:
        reg.add("websocket.connect", handler, "/items/<intt:id>")
    assert str(info.value) == (
        "path template '/items/<intt:id>': unknown path converter 'intt': the known ones "
        "are int, path, slug, str, uuid; register yours with "
        "zchannels.register_converter(YourConverter, 'intt')")


def test_an_unknown_converter_fails_the_decorator_at_import(reg):
    with pytest.raises(ValueError, match="unknown path converter"):
        @reg.consumer("websocket.connect", path="/ws/<integer:id>")
        def connect(message, id):
            pass
    assert reg.routes == []


# --- typed kwargs in class-based consumers ----------------------------------------------------

class _Sent:
    def __init__(self):
        self.sent = []

    def to_interface(self, reply_channel, header, payload=b""):
        self.sent.append(payload)


def test_a_class_based_consumer_gets_typed_attributes_and_str_group_names(reg):
    from zchannels import WebsocketConsumer
    from zchannels.api.message import Message
    seen = []

    class Game(WebsocketConsumer):
        groups = ["game.{game:05d}.{player}"]

        def receive(self, text=None, bytes=None):
            seen.append((self.game, self.player, self.kwargs, self.group_names()))

    Game.register("/ws/game/<int:game>/<uuid:player>", registry=reg)
    message = Message({"channel": "websocket.receive", "kind": "text",
                       "path": f"/ws/game/12/{UUID}", "reply_channel": "i1!1"}, b"hi",
                      _Sent())
    func, kwargs = reg.match("websocket.receive", message.path)
    func(message, **kwargs)
    player = uuid.UUID(UUID)
    assert seen == [(12, player, {"game": 12, "player": player}, [f"game.00012.{UUID}"])]


def test_group_templates_are_tried_with_the_converters_types(reg):
    from zchannels import WebsocketConsumer

    class Padded(WebsocketConsumer):
        groups = ["game.{game:05d}"]

    Padded.register("/ws/int/<int:game>", registry=reg)  # fits an int
    with pytest.raises(ValueError, match="does not fit path '/ws/str/<game>'"):
        Padded.register("/ws/str/<game>", registry=reg)  # a str has no 'd' format


# --- nested route tables ----------------------------------------------------------------------

def third_handler(message, **kwargs):
    return kwargs


def test_include_prefixes_a_router_at_that_point_of_the_order(reg):
    rooms = routing.Router()
    rooms.add("websocket.connect", handler, "/<int:room>/")
    rooms.add("websocket.connect", other_handler, "/<slug:name>")
    reg.add("websocket.connect", third_handler, "/ws/before")
    reg.include("/ws/chat/", rooms)
    reg.add("websocket.connect", third_handler, "/ws/after")
    assert [r.source for r in reg.routes] == [
        "/ws/before", "/ws/chat/<int:room>/", "/ws/chat/<slug:name>", "/ws/after"]
    assert reg.match("websocket.connect", "/ws/chat/12/") == (handler, {"room": 12})
    assert reg.match("websocket.connect", "/ws/chat/lobby") == (other_handler,
                                                                {"name": "lobby"})
    assert reg.match("websocket.connect", "/12/") is None  # only under the prefix
    assert reg.match("websocket.connect", "/ws/chat/a/b") is None


@pytest.mark.parametrize("prefix", ["/ws/chat", "/ws/chat/"])
def test_the_prefix_trailing_slash_is_optional(reg, prefix):
    reg.include(prefix, [routing.path("/", handler, channel="websocket.connect"),
                         routing.path("/<int:n>", other_handler, channel="websocket.connect")])
    assert reg.match("websocket.connect", "/ws/chat/") == (handler, {})
    assert reg.match("websocket.connect", "/ws/chat/3") == (other_handler, {"n": 3})
    assert reg.match("websocket.connect", "/ws/chat") is None


def test_first_match_wins_across_nested_tables(reg, converters):
    converters(FourDigitYear, "yyyy")
    inner = routing.Router([routing.path("/<yyyy:year>", handler, channel="websocket.connect"),
                            routing.path("/<int:n>", other_handler,
                                         channel="websocket.connect")])
    reg.add("websocket.connect", third_handler, "/a/b/0")  # before: wins over the table
    reg.include("/a", routing.Router([routing.path("/b", inner)]))
    reg.add("websocket.connect", third_handler, "/a/b/<int:late>")  # after: shadowed
    assert reg.match("websocket.connect", "/a/b/0") == (third_handler, {})
    assert reg.match("websocket.connect", "/a/b/2024") == (handler, {"year": 2024})
    # The converter says no: the table's next route, then the routes after the table.
    assert reg.match("websocket.connect", "/a/b/1850") == (other_handler, {"n": 1850})
    assert reg.match("websocket.connect", "/a/b/9") == (other_handler, {"n": 9})


def test_a_prefix_with_parameters_passes_them_too(reg):
    reg.include("/api/v<int:version>/", [
        routing.path("/items/<uuid:item>", handler, channel="websocket.connect"),
        routing.path(r"^/raw/(?P<rest>.*)$", other_handler, channel="websocket.connect")])
    assert reg.match("websocket.connect", f"/api/v2/items/{UUID}") == (
        handler, {"version": 2, "item": uuid.UUID(UUID)})
    assert reg.match("websocket.connect", "/api/v3/raw/x/y") == (
        other_handler, {"version": 3, "rest": "x/y"})
    assert reg.routes[1].source == r"/api/v<int:version>/ + ^/raw/(?P<rest>.*)$"


def test_a_regex_prefix(reg):
    reg.include(r"^/v(?P<version>[12])", [routing.path("/<int:n>", handler,
                                                       channel="websocket.connect")])
    assert reg.match("websocket.connect", "/v2/5") == (handler, {"version": "2", "n": 5})
    assert reg.match("websocket.connect", "/v3/5") is None


def test_class_based_consumers_in_a_table(reg):
    from zchannels import WebsocketConsumer

    class Room(WebsocketConsumer):
        groups = ["chat.{version}.{room}"]  # the prefix's parameter: checked at include

    rooms = routing.Router([routing.path("/<int:room>", Room)])
    reg.include("/ws/v<int:version>/rooms", rooms)
    assert [r.channel for r in reg.routes] == [
        "websocket.connect", "websocket.receive", "websocket.disconnect"]
    func, kwargs = reg.match("websocket.receive", "/ws/v1/rooms/7")
    assert kwargs == {"version": 1, "room": 7}
    assert func.__qualname__.endswith("Room.websocket_receive")


def test_the_consumers_checks_run_on_the_whole_path_when_a_table_is_included(reg):
    from zchannels import WebsocketConsumer

    class Room(WebsocketConsumer):
        groups = ["chat.{version}.{room}"]

    rooms = routing.Router()
    Room.register("/<int:room>", registry=rooms)  # a table's path is not whole yet
    with pytest.raises(ValueError, match=r"Room.groups: 'chat.{version}.{room}' does not fit "
                                         r"path '/ws/rooms/<int:room>'"):
        reg.include("/ws/rooms", rooms)
    with pytest.raises(ValueError, match="<send> would hide"):
        reg.include("/ws/<send>", routing.Router([routing.path("/<int:room>", Room)]))
    assert reg.routes == []


def test_include_takes_a_module_or_its_dotted_name(reg, tmp_path, monkeypatch):
    (tmp_path / "zc_chat_routes.py").write_text(textwrap.dedent("""
        from zchannels import path

        def connect(message, room):
            pass

        urlpatterns = [path("/<int:room>", connect, channel="websocket.connect")]
    """))
    (tmp_path / "zc_game_routes.py").write_text(textwrap.dedent("""
        from zchannels import Router

        router = Router()

        @router.consumer("websocket.connect", path="/<slug:game>")
        def connect(message, game):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import zc_game_routes
    reg.include("/chat", "zc_chat_routes")
    reg.include("/game", zc_game_routes)
    assert reg.match("websocket.connect", "/chat/4")[1] == {"room": 4}
    assert reg.match("websocket.connect", "/game/go")[1] == {"game": "go"}
    monkeypatch.delitem(sys.modules, "zc_chat_routes")
    monkeypatch.delitem(sys.modules, "zc_game_routes")


def test_the_module_level_include_fills_the_global_registry(global_registry):
    routing.include("/ws/x", [routing.path("/<int:n>", handler, channel="websocket.connect")])
    assert global_registry.match("websocket.connect", "/ws/x/1") == (handler, {"n": 1})


@pytest.mark.parametrize("prefix, table, error, message", [
    pytest.param("/ws", [routing.path("/x", handler)], TypeError, "needs its channel",
                 id="no-channel"),
    pytest.param("/ws", [routing.path("/x", routing.Router(), channel="a")], TypeError,
                 "channel= is for a consumer function", id="channel-for-a-table"),
    pytest.param("/ws", [routing.path("/x", 42)], TypeError, "the target is",
                 id="bad-target"),
    pytest.param("/ws", [("/x", handler)], TypeError, "made by zchannels.path", id="tuple"),
    pytest.param("/ws", 42, TypeError, "include takes", id="not-a-table"),
    pytest.param("/ws", "zchannels_no_such_routes", ValueError, "cannot import",
                 id="missing-module"),
    pytest.param("/ws", "zchannels.core", ValueError, "neither a router nor urlpatterns",
                 id="module-without-routes"),
    pytest.param("ws", [], ValueError, "must start with '/'", id="relative-prefix"),
    pytest.param("/ws/<intt:x>", [], ValueError, "unknown path converter", id="prefix-converter"),
    pytest.param("^/ws$", [], ValueError, "may not end with", id="regex-prefix-end"),
    pytest.param("^/ws(", [], ValueError, "bad path regular expression", id="regex-prefix-bad"),
    pytest.param("/ws/<int:n>", [routing.path("/<n>", handler, channel="a")], ValueError,
                 "does not fit under the prefix", id="same-name-twice"),
    pytest.param("/ws", [routing.path("<int:n>/", handler, channel="a")], ValueError,
                 "must start with '/'", id="relative-route"),
])
def test_bad_includes_are_errors_and_add_nothing(reg, prefix, table, error, message):
    reg.add("websocket.connect", handler, "/kept")
    with pytest.raises(error, match=message):
        reg.include(prefix, table)
    assert [r.source for r in reg.routes] == ["/kept"]


def test_a_table_route_without_a_path_cannot_be_included(reg):
    table = routing.Router()
    table.add("websocket.connect", handler, "/x")
    table.add("thumbnails.make", other_handler)
    with pytest.raises(ValueError, match="the route of 'thumbnails.make' to other_handler has "
                                         "no path .*; a named-channel consumer is declared "
                                         "with zchannels.consumer"):
        reg.include("/ws", table)
    assert reg.routes == []


def test_a_route_added_to_a_table_after_it_was_included_is_an_error(reg):
    table = routing.Router()
    reg.include("/ws", table)
    with pytest.raises(ValueError, match="already included at '/ws': declare its routes"):
        table.add("websocket.connect", handler, "/late")


def test_a_table_cannot_include_itself_nor_the_workers_registry(reg):
    with pytest.raises(ValueError, match="itself"):
        reg.include("/x", reg)
    with pytest.raises(ValueError, match="workers' registry"):
        reg.include("/x", routing.registry)


def test_the_public_names():
    import zchannels
    for name in ("Router", "path", "include", "register_converter"):
        assert name in zchannels.__all__
        assert getattr(zchannels, name) is getattr(routing, name)
    assert routing.include.__self__ is routing.registry


def test_group_templates_of_a_custom_converter_take_any_spec(reg, converters):
    from zchannels import WebsocketConsumer
    converters(FourDigitYear, "yyyy")

    class Archive(WebsocketConsumer):
        # Its values' type is unknown at registration: any spec or attribute is let by.
        groups = ["archive.{year:04d}.{year.real}"]

    Archive.register("/ws/archive/<yyyy:year>", registry=reg)
    assert len(reg.routes) == 3


def test_a_table_may_be_included_under_several_prefixes(reg):
    table = routing.Router([routing.path("/<int:n>", handler, channel="websocket.connect")])
    reg.include("/a", table)
    reg.include("/b/<slug:s>", table)
    assert reg.match("websocket.connect", "/a/1") == (handler, {"n": 1})
    assert reg.match("websocket.connect", "/b/x/2") == (handler, {"s": "x", "n": 2})
    assert table.included_at == ["/a", "/b/<slug:s>"]
