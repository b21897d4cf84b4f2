"""Unit tests for zchannels.api.routing: path templates, the route registry and
loading consumer modules from directories."""
from __future__ import annotations

import sys
import textwrap

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
