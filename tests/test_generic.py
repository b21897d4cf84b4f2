"""Unit tests for runtime/api/generic.py, the class-based consumers: registration, group
names, the JSON and demultiplexer framing, HTTP method dispatch. No sockets: the
classes run on real `Message`s whose layer is a fake that records what would be sent."""
from __future__ import annotations

import importlib.util
import json
import logging
import os

import pytest

import zchannels
from zchannels import (HttpConsumer, JsonWebsocketConsumer, Message, WebsocketConsumer,
                       WebsocketDemultiplexer)
from zchannels.api import connection as layer_module, routing
from zchannels.api.routing import Registry
from zchannels.core.stats import counters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPLY = "itest!7"


class FakeLayer:
    """Records what consumers do instead of sending it anywhere."""

    def __init__(self):
        self.calls = []

    def to_interface(self, reply_channel, header, payload=None):
        self.calls.append(("to_interface", str(reply_channel), header, payload))

    def group_add(self, group, reply_channel, since=None, *, info=None, announce=False):
        self.calls.append(("group_add", group, str(reply_channel)))
        if info is not None or announce:
            self.calls.append(("presence", info, announce))
        return True

    def group_discard(self, group, reply_channel):
        self.calls.append(("group_discard", group, str(reply_channel)))
        return True

    def group_send(self, group, text=None, bytes=None, close=None, **sse_and_delay):
        self.calls.append(("group_send", group, text, bytes, close))

    def sent(self):
        """What went to the connection itself: (op, kind or code, payload)."""
        return [(call[2]["op"], call[2].get("kind", call[2].get("code")), call[3])
                for call in self.calls if call[0] == "to_interface"]


@pytest.fixture
def fake():
    layer = FakeLayer()
    layer_module.set_current(layer)
    yield layer
    layer_module.set_current(None)


def event(fake, channel, path, payload=b"", **content):
    content.setdefault("reply_channel", REPLY)
    return Message({"channel": channel, "path": path, **content}, payload, fake)


def run(registry, fake, channel, path, payload=b"", **content):
    """Dispatch one event through `registry` as a worker would; returns the message."""
    message = event(fake, channel, path, payload, **content)
    found = registry.match(channel, path)
    assert found is not None, f"no route for {channel} {path}"
    func, kwargs = found
    func(message, **kwargs)
    return message


def text(fake, registry, path, frame, **content):
    return run(registry, fake, "websocket.receive", path, frame.encode(), kind="text",
               **content)


# --- registration ----------------------------------------------------------------------

def test_public_names():
    for name in ("WebsocketConsumer", "JsonWebsocketConsumer", "WebsocketDemultiplexer",
                 "HttpConsumer"):
        assert name in zchannels.__all__
        assert getattr(zchannels, name).__module__ == "zchannels.api.generic"


def test_register_adds_one_ordinary_route_per_channel():
    class Room(WebsocketConsumer):
        pass

    registry = Registry()
    Room.register("/ws/room/<room>", registry=registry)
    assert [(r.channel, r.path.pattern) for r in registry.routes] == [
        ("websocket.connect", r"^/ws/room/(?P<room>[^/]+)$"),
        ("websocket.receive", r"^/ws/room/(?P<room>[^/]+)$"),
        ("websocket.disconnect", r"^/ws/room/(?P<room>[^/]+)$")]
    assert registry.routes[1].func.__qualname__.endswith("Room.websocket_receive")
    assert registry.handles_path("/ws/room/x", ["websocket.connect"])


def test_register_defaults_to_the_global_registry():
    class Room(WebsocketConsumer):
        pass

    saved = list(routing.registry.routes)
    try:
        Room.register("^/ws/regex/(?P<n>[0-9]+)$")
        assert len(routing.registry.routes) == len(saved) + 3
        assert routing.registry.match("websocket.connect", "/ws/regex/12")[1] == {"n": "12"}
    finally:
        routing.registry.routes[:] = saved


def test_a_new_instance_per_event_and_path_groups_as_attributes(fake):
    seen = []

    class Room(WebsocketConsumer):
        def connect(self):
            self.remembered = True
            seen.append((self.room, self.kwargs))

        def receive(self, text=None, bytes=None):
            seen.append((getattr(self, "remembered", False), text, bytes))

    registry = Registry()
    Room.register("/ws/room/<room>", registry=registry)
    run(registry, fake, "websocket.connect", "/ws/room/lobby")
    text(fake, registry, "/ws/room/lobby", "hi")
    run(registry, fake, "websocket.receive", "/ws/room/lobby", b"\x00", kind="bytes")
    # State kept on self is gone by the next event: it belongs in the session.
    assert seen == [("lobby", {"room": "lobby"}), (False, "hi", None), (False, None, b"\x00")]


@pytest.mark.parametrize("path", ["/ws/<send>", "/ws/<message>", "/ws/<kwargs>",
                                  "/ws/<session>", "/ws/<groups>", "/ws/<connect>"])
def test_a_placeholder_may_not_hide_an_attribute(path):
    class Room(WebsocketConsumer):
        pass

    with pytest.raises(ValueError, match="would hide"):
        Room.register(path, registry=Registry())


@pytest.mark.parametrize("template", ["chat.{nope}", "chat.{0}", "chat.{room", "", "a\nb{room}"])
def test_group_templates_are_checked_against_the_path(template):
    class Room(WebsocketConsumer):
        groups = [template]

    registry = Registry()
    with pytest.raises(ValueError, match="groups"):
        Room.register("/ws/<room>", registry=registry)
    assert registry.routes == []


def test_groups_must_be_a_list_not_a_string():
    class Room(WebsocketConsumer):
        groups = "chat.{room}"

    with pytest.raises(TypeError, match="list of names"):
        Room.register("/ws/<room>", registry=Registry())


# --- WebsocketConsumer -------------------------------------------------------------------

class Chat(WebsocketConsumer):
    groups = ["chat.{room}", "everyone"]

    def connect(self):
        if self.message.query.get("deny"):
            self.reject()
            return
        self.session["name"] = self.message.query["name"][0]
        self.accept("v2")
        self.group_send(f"chat.{self.room}", text=f"{self.session['name']} joined")

    def receive(self, text=None, bytes=None):
        if bytes is not None:
            self.close(1003, "text only")
        else:
            self.send(text=f"{self.session['name']}: {text}")

    def disconnect(self, code):
        self.group_send(f"chat.{self.room}", text=f"{self.session['name']} left ({code})")


@pytest.fixture
def chat():
    registry = Registry()
    Chat.register("/chat/<room>", registry=registry)
    return registry


def test_groups_are_joined_before_connect_runs(fake, chat):
    message = run(chat, fake, "websocket.connect", "/chat/lobby", query_string="name=ann")
    assert fake.calls == [
        ("group_add", "chat.lobby", REPLY),
        ("group_add", "everyone", REPLY),
        ("to_interface", REPLY, {"op": "accept", "subprotocol": "v2"}, None),
        ("group_send", "chat.lobby", "ann joined", None, None)]
    assert message.session == {"name": "ann"} and message.session.modified


def test_reject(fake, chat):
    run(chat, fake, "websocket.connect", "/chat/lobby", query_string="deny=1")
    assert fake.sent() == [("reject", None, None)]


def test_receive_send_close_and_the_session(fake, chat):
    text(fake, chat, "/chat/lobby", "hi", session={"name": "ann"})
    run(chat, fake, "websocket.receive", "/chat/lobby", b"\x01", kind="bytes",
        session={"name": "ann"})
    assert fake.sent() == [("send", "text", b"ann: hi"), ("close", 1003, None)]


def test_disconnect_gets_the_code_and_leaves_no_group_itself(fake, chat):
    run(chat, fake, "websocket.disconnect", "/chat/lobby", code=4001, session={"name": "ann"})
    run(chat, fake, "websocket.disconnect", "/chat/lobby", session={"name": "bo"})
    # No group_discard: the interface has already removed the closed socket.
    assert fake.calls == [("group_send", "chat.lobby", "ann left (4001)", None, None),
                          ("group_send", "chat.lobby", "bo left (1006)", None, None)]


@pytest.mark.parametrize("room, why", [("r" * 196, "longer than 200 bytes"),
                                       ("a\x85b", "control characters")])
def test_a_group_name_from_the_path_that_cannot_be_used_closes_4400_logged_and_counted(
        fake, chat, caplog, room, why):
    """Issue 21, item 6: the client's mistake, not a consumer error: nothing joined,
    connect() not run, a WARNING, the counter, and the close code."""
    before = counters.get("invalid_group_names", 0)
    message = run(chat, fake, "websocket.connect", f"/chat/{room}", query_string="name=ann")
    assert fake.calls == [("to_interface", REPLY, {
        "op": "close", "code": 4400,
        "reason": "group name from the path not allowed: at most 200 bytes, printable "
                  "characters"}, None)]
    assert not message.session.modified  # connect() did not run
    assert counters["invalid_group_names"] == before + 1
    [line] = [r for r in caplog.records if r.name == "zchannels.generic"]
    assert line.levelno == logging.WARNING and why in line.getMessage()
    assert "with 4400" in line.getMessage()


def test_group_names_can_be_overridden(fake):
    class Dynamic(WebsocketConsumer):
        def group_names(self):
            return [f"user.{self.message.query['id'][0]}"]

    registry = Registry()
    Dynamic.register("/dyn", registry=registry)
    run(registry, fake, "websocket.connect", "/dyn", query_string="id=9")
    assert fake.calls == [("group_add", "user.9", REPLY)]


# --- JsonWebsocketConsumer ----------------------------------------------------------------

class Echo(JsonWebsocketConsumer):
    def receive_json(self, content):
        self.send_json({"echo": content, "room": self.room})


@pytest.fixture
def echo():
    registry = Registry()
    Echo.register("/json/<room>", registry=registry)
    return registry


def test_json_round_trip(fake, echo):
    text(fake, echo, "/json/r", '{"a": [1, 2.5, null, "é"]}')
    text(fake, echo, "/json/r", '"just a string"')
    assert [json.loads(p) for _, _, p in fake.sent()] == [
        {"echo": {"a": [1, 2.5, None, "é"]}, "room": "r"}, {"echo": "just a string", "room": "r"}]
    assert fake.sent()[0][2] == b'{"echo":{"a":[1,2.5,null,"\\u00e9"]},"room":"r"}'


@pytest.mark.parametrize("frame, reason", [
    ('{"unterminated', b"invalid JSON"), ("", b"invalid JSON"), ("NaN", b"invalid JSON"),
    ('{"x": Infinity}', b"invalid JSON"), ("[" * 100000, b"invalid JSON"),
    (b"\x00binary", b"expected JSON text")])
def test_a_frame_that_is_not_json_closes_1007_logged_and_counted(fake, echo, caplog, frame,
                                                                  reason):
    before = counters.get("json_invalid", 0)
    if isinstance(frame, bytes):
        run(echo, fake, "websocket.receive", "/json/r", frame, kind="bytes")
    else:
        text(fake, echo, "/json/r", frame)
    assert [(c[2]["op"], c[2]["code"], c[2]["reason"].encode()) for c in fake.calls] == [
        ("close", 1007, reason)]
    assert counters["json_invalid"] == before + 1
    [line] = [r for r in caplog.records if r.name == "zchannels.generic"]
    assert line.levelno == logging.WARNING and "closing with 1007" in line.getMessage()


def test_send_json_refuses_nan(fake):
    consumer = Echo(event(fake, "websocket.receive", "/json/r"), room="r")
    with pytest.raises(ValueError):
        consumer.send_json(float("nan"))


# --- WebsocketDemultiplexer ---------------------------------------------------------------

calls: list[tuple] = []


class Talk(JsonWebsocketConsumer):
    groups = ["talk.{room}"]

    def connect(self):
        calls.append(("talk.connect", self.stream, self.room))
        self.send_json("hello")

    def receive_json(self, content):
        self.group_send_json(f"talk.{self.room}", {"said": content})

    def disconnect(self, code):
        calls.append(("talk.disconnect", code))


class Ping(JsonWebsocketConsumer):
    def connect(self):
        calls.append(("ping.connect", self.stream))
        if self.session.get("deny"):
            self.reject()

    def receive_json(self, content):
        self.send_json({"pong": content})

    def disconnect(self, code):
        calls.append(("ping.disconnect", code))


class Last(JsonWebsocketConsumer):
    def connect(self):
        calls.append(("last.connect",))


class Mux(WebsocketDemultiplexer):
    consumers = {"talk": Talk, "ping": Ping, "last": Last}

    def connect(self):
        calls.append(("mux.connect",))

    def disconnect(self, code):
        calls.append(("mux.disconnect", code))


@pytest.fixture
def mux():
    calls.clear()
    registry = Registry()
    Mux.register("/mux/<room>", registry=registry)
    return registry


def frame(stream, payload):
    return json.dumps({"stream": stream, "payload": payload})


def test_demultiplexer_routes_each_stream_and_wraps_what_it_sends(fake, mux):
    text(fake, mux, "/mux/r", frame("ping", [1, 2]))
    text(fake, mux, "/mux/r", frame("talk", "hi"))
    assert [json.loads(p) for _, _, p in fake.sent()] == [
        {"stream": "ping", "payload": {"pong": [1, 2]}}]
    [group_send] = [c for c in fake.calls if c[0] == "group_send"]
    assert group_send[1] == "talk.r"
    assert json.loads(group_send[2]) == {"stream": "talk", "payload": {"said": "hi"}}


def test_demultiplexer_connects_itself_then_every_stream(fake, mux):
    run(mux, fake, "websocket.connect", "/mux/r")
    assert calls == [("mux.connect",), ("talk.connect", "talk", "r"), ("ping.connect", "ping"),
                     ("last.connect",)]
    assert ("group_add", "talk.r", REPLY) in fake.calls
    assert [json.loads(p) for _, _, p in fake.sent()] == [{"stream": "talk", "payload": "hello"}]


def test_a_stream_that_rejects_stops_the_connects_after_it(fake, mux):
    run(mux, fake, "websocket.connect", "/mux/r", session={"deny": True})
    assert calls == [("mux.connect",), ("talk.connect", "talk", "r"), ("ping.connect", "ping")]
    assert fake.sent()[-1] == ("reject", None, None)


def test_demultiplexer_disconnects_every_stream_then_itself(fake, mux):
    run(mux, fake, "websocket.disconnect", "/mux/r", code=1001)
    assert calls == [("talk.disconnect", 1001), ("ping.disconnect", 1001),
                     ("mux.disconnect", 1001)]


@pytest.mark.parametrize("bad, reason", [
    (frame("nope", 1), "unknown stream"), (frame("x" * 5000, 1), "unknown stream"),
    ('{"payload": 1}', 'expected {"stream": name, "payload": ...}'),
    ('{"stream": "ping"}', 'expected {"stream": name, "payload": ...}'),
    ('{"stream": 3, "payload": 1}', 'expected {"stream": name, "payload": ...}'),
    ('["ping", 1]', 'expected {"stream": name, "payload": ...}'),
    ("not json", "invalid JSON")])
def test_demultiplexer_closes_1007_for_a_bad_envelope_or_unknown_stream(fake, mux, bad, reason):
    before = counters.get("json_invalid", 0)
    text(fake, mux, "/mux/r", bad)
    assert [(c[2]["op"], c[2]["code"], c[2]["reason"]) for c in fake.calls] == [
        ("close", 1007, reason)]
    assert counters["json_invalid"] == before + 1


def test_demultiplexer_registration_checks_its_streams():
    class Empty(WebsocketDemultiplexer):
        pass

    class NotJson(WebsocketDemultiplexer):
        consumers = {"x": Chat}

    class BadGroups(WebsocketDemultiplexer):
        consumers = {"talk": Talk}

    with pytest.raises(ValueError, match="consumers is empty"):
        Empty.register("/m", registry=Registry())
    with pytest.raises(TypeError, match="JsonWebsocketConsumer subclass"):
        NotJson.register("/m", registry=Registry())
    with pytest.raises(ValueError, match="talk.{room}"):
        BadGroups.register("/m/<other>", registry=Registry())


# --- HttpConsumer ---------------------------------------------------------------------------

class Item(HttpConsumer):
    def get(self):
        self.respond(f"item {self.item}")

    def post(self):
        self.respond(self.message.body, status=201)


@pytest.fixture
def item():
    registry = Registry()
    Item.register("/items/<item>", registry=registry)
    return registry


def request(fake, registry, method, path, body=b""):
    run(registry, fake, "http.request", path, body, method=method)
    [(_, _, header, payload)] = fake.calls
    fake.calls.clear()
    return header["status"], dict(header["headers"]), payload


def test_http_methods_are_dispatched(fake, item):
    assert request(fake, item, "GET", "/items/7") == (
        200, {"Content-Type": "text/plain; charset=utf-8"}, b"item 7")
    assert request(fake, item, "POST", "/items/7", b"x")[::2] == (201, b"x")
    assert request(fake, item, "HEAD", "/items/7")[0] == 200  # runs get


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "TRACE", "RESPOND", "HTTP_REQUEST",
                                    "GET_ALLOWED", "", "get "])
def test_a_method_not_defined_is_405_with_allow(fake, item, method):
    status, headers, body = request(fake, item, method, "/items/7")
    assert (status, headers["Allow"], body) == (405, "GET, POST, HEAD, OPTIONS",
                                                b"method not allowed\n")


def test_options_answers_allow_unless_turned_off(fake, item):
    assert request(fake, item, "OPTIONS", "/items/7")[:2] == (
        200, {"Allow": "GET, POST, HEAD, OPTIONS", "Content-Type": "application/octet-stream"})

    class Quiet(HttpConsumer):
        options = None

        def head(self):
            self.respond(status=204)

        def delete(self):
            self.respond(status=204)

    registry = Registry()
    Quiet.register("/q", registry=registry)
    assert request(fake, registry, "OPTIONS", "/q")[:2] == (405, {
        "Allow": "DELETE, HEAD", "Content-Type": "text/plain; charset=utf-8"})
    assert request(fake, registry, "GET", "/q")[0] == 405


def test_http_disconnect_is_routed_only_if_defined(fake):
    gone = []

    class Stream(HttpConsumer):
        def get(self):
            self.start_events()
            self.group_add(f"feed.{self.feed}")

        def disconnect(self):
            gone.append(self.feed)

    registry = Registry()
    Stream.register("/feed/<feed>", registry=registry)
    Item.register("/items/<item>", registry=registry)
    assert [r.channel for r in registry.routes] == ["http.request", "http.disconnect",
                                                    "http.request"]
    run(registry, fake, "http.request", "/feed/news", method="GET")
    assert fake.calls[0][2]["mode"] == "sse" and fake.calls[1] == ("group_add", "feed.news",
                                                                   REPLY)
    run(registry, fake, "http.disconnect", "/feed/news")
    assert gone == ["news"]


def test_http_consumer_delegates_every_response_method(fake):
    consumer = Item(event(fake, "http.request", "/items/1"), item="1")
    consumer.start_response(202, content_type="text/csv", body="a")
    consumer.send_body("b")
    consumer.end()
    consumer.send_event("d", event="e", id=1)
    consumer.hold(5, content_type="application/json")
    assert [c[2]["op"] for c in fake.calls] == ["start", "body", "body", "send", "hold"]


# --- the demo chat: the class and the functions do the same -------------------------------

def load(path):
    """Import a consumer file; return the routes it registered in the global registry."""
    saved = list(routing.registry.routes)
    routing.registry.clear()
    try:
        spec = importlib.util.spec_from_file_location("zc_test_" + os.path.basename(path)[:-3],
                                                      path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        registry = Registry()
        registry.routes[:] = routing.registry.routes
        return registry
    finally:
        routing.registry.routes[:] = saved


def chat_transcript(registry):
    """The same events through `registry`: what each event's consumer did, in order."""
    fake = FakeLayer()
    layer_module.set_current(fake)
    transcript = []

    def step(channel, payload=b"", **content):
        message = run(registry, fake, channel, "/ws/chat/lobby", payload, **content)
        transcript.append(list(fake.calls))
        fake.calls.clear()
        return message
    try:
        session = dict(step("websocket.connect", query_string="name=%20ann%20").session)
        step("websocket.connect")  # a guest
        for frame in ("plain", '{"text": "json"}', '  {"text": 1}', '{"broken'):
            step("websocket.receive", frame.encode(), kind="text", session=session)
        step("websocket.receive", b"\x00", kind="bytes", session=session)
        # no disconnect consumer: the runtime tells the room of the leave (announce)
        return transcript, session
    finally:
        layer_module.set_current(None)


def test_the_chat_class_does_what_the_chat_functions_do():
    by_class = load(os.path.join(ROOT, "consumers", "chat.py"))
    by_functions = load(os.path.join(ROOT, "consumers", "_chat_functions.py"))
    assert {r.channel for r in by_functions.routes} <= {r.channel for r in by_class.routes}
    (class_calls, class_session), (function_calls, function_session) = (
        chat_transcript(by_class), chat_transcript(by_functions))
    assert class_session == function_session == {"name": "ann"}
    assert class_calls[0] == [("group_add", "chat.lobby", REPLY),
                              ("presence", {"user": "ann"}, True),  # announced, with its name
                              ("to_interface", REPLY, {"op": "accept"}, None)]
    assert class_calls[1][1] == ("presence", {"user": "guest-7"}, True)
    # The class joins its groups before connect() accepts; the functions accept first.
    for connect in function_calls[:2]:
        connect[:] = connect[1:] + connect[:1]
    assert class_calls == function_calls
    assert [call[0][0] for call in class_calls[2:]] == ["group_send", "group_send", "to_interface",
                                                        "to_interface", "to_interface"]


def test_the_chat_class_and_functions_refuse_a_room_that_cannot_name_a_group_alike(caplog):
    """A room of 196 characters ("chat." + 196 = 201 bytes): 4400, nothing joined."""
    transcripts = []
    for path in ("chat.py", "_chat_functions.py"):
        registry = load(os.path.join(ROOT, "consumers", path))
        fake = FakeLayer()
        layer_module.set_current(fake)
        try:
            run(registry, fake, "websocket.connect", "/ws/chat/" + "r" * 196)
        finally:
            layer_module.set_current(None)
        transcripts.append(fake.calls)
    assert transcripts[0] == transcripts[1]
    assert [call[2] for call in transcripts[0]] == [
        {"op": "close", "code": 4400, "reason": "group name from the path not allowed: at "
                                                "most 200 bytes, printable characters"}]
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2
