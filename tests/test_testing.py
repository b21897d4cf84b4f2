"""zchannels.testing: the rules of the in-memory layer and its clients that the shared
scenarios (tests/behaviour.py) do not reach: ordering, the fake clock, bounds,
sessions, handshakes, streams, errors."""
import json

import pytest

from harness import DEMO_CONSUMERS
from zchannels import ChannelFull, UnknownChannel, group_send, reply_channel, send
from zchannels.core import config
from zchannels.api import routing
from zchannels.core.exceptions import NotInConsumer
from zchannels.api.sender import current
from zchannels.testing import TestServer, WebSocketClosed

DEMO = [DEMO_CONSUMERS]


def make(*routes, **options):
    """A TestServer over a registry of (channel, path, function) routes."""
    registry = routing.Registry()
    for channel, path, func in routes:
        registry.add(channel, func, path)
    return TestServer(registry, **options)


# -- ordering and the run queue ----------------------------------------------------------

def test_named_channel_runs_after_the_consumer_returns_first_in_first_out():
    log = []

    def receive(message):
        send("work.a", {"n": 1})
        send("work.b", {"n": 2})
        log.append("receive returns")

    def work(message):
        log.append(f"{message.channel} {message['n']}")
        if message["n"] == 1:
            send("work.b", {"n": 3})  # queued behind n=2

    with make(("websocket.receive", "/w", receive), ("work.a", None, work),
              ("work.b", None, work)) as server:
        server.websocket("/w").send(text="go")
        assert log == ["receive returns", "work.a 1", "work.b 2", "work.b 3"]


def test_a_connections_events_run_one_at_a_time_and_the_disconnect_last():
    log = []

    def connect(message):
        log.append("connect")
        message.reply_channel.send(text="before")
        send("side.task", {"to": message.reply_channel.name})  # queued: runs after this
        log.append("connect returns")

    def task(message):
        log.append("task")

    def disconnect(message):
        log.append(f"disconnect {message['code']}")

    with make(("websocket.connect", "/o", connect), ("side.task", None, task),
              ("websocket.disconnect", "/o", disconnect)) as server:
        ws = server.websocket("/o")
        assert ws.receive() == "before"
        ws.close(4000)
        assert log == ["connect", "connect returns", "task", "disconnect 4000"]


def test_consumers_that_feed_each_other_forever_are_stopped():
    def ping(message):
        send("pong", {})

    def pong(message):
        send("ping", {})

    server = make(("ping", None, ping), ("pong", None, pong))
    with pytest.raises(RuntimeError, match="keep sending"):
        server.send("ping")


# -- groups ---------------------------------------------------------------------------

def test_membership_is_immediate_shared_by_clients_and_ends_when_closed():
    def join(message):
        assert current().group_add("room", message.reply_channel) is True
        group_send("room", text=f"in {message.reply_channel}")  # reaches itself at once

    with make(("websocket.connect", "/j", join)) as server:
        a, b = server.websocket("/j"), server.websocket("/j")
        assert a.receive() == f"in {a.reply_channel}"
        assert a.receive() == f"in {b.reply_channel}"
        assert server.layer.members("room") == [a.reply_channel, b.reply_channel]
        a.close()
        assert server.layer.members("room") == [b.reply_channel]
        assert server.layer.group_add("room", a.reply_channel) is False  # it is gone
        assert server.layer.group_discard("room", b.reply_channel) is True
        assert server.layer.group_discard("room", b.reply_channel) is False
        assert server.layer.members("room") == []


def test_group_close_closes_every_member_and_runs_their_disconnects():
    gone = []
    with make(("websocket.connect", "/c", lambda m: current().group_add("c", m.reply_channel)),
              ("websocket.disconnect", "/c", lambda m: gone.append(m["code"]))) as server:
        sockets = [server.websocket("/c") for _ in range(3)]
        server.group_send("c", close=4001)
        assert [ws.close_code for ws in sockets] == [4001] * 3
        assert gone == [4001] * 3
        with pytest.raises(WebSocketClosed):
            sockets[0].receive()


def test_servers_do_not_share_groups():
    with TestServer(DEMO) as one, TestServer(DEMO) as two:
        a = one.websocket("/ws/chat/lobby?name=a")
        b = two.websocket("/ws/chat/lobby?name=b")
        assert a.receive_json()["info"] == {"user": "a"}
        assert b.receive_json()["info"] == {"user": "b"}
        assert a.receive_nothing(timeout=1)


# -- bounds ---------------------------------------------------------------------------

def test_channel_full_when_the_pools_queue_is_at_capacity():
    outcome = []

    def burst(message):
        for n in range(3):
            try:
                send("slow.task", {"n": n})
            except ChannelFull:
                outcome.append(f"full at {n}")

    with make(("websocket.receive", "/b", burst), ("slow.task", None,
                                                   lambda m: outcome.append(m["n"])),
              capacity=2) as server:
        server.websocket("/b").send(text="go")
        assert outcome == ["full at 2", 0, 1]
        assert server.layer.counters["channel_full"] == 1


def test_unknown_channel_when_no_pool_serves_it():
    settings = config.parse({"pools": {"web": {"channels": ["websocket.*", "http.*"]}}})
    with make(config=settings) as server:
        with pytest.raises(UnknownChannel):
            server.send("tasks.nobody")


def test_too_big_a_message_closes_with_1009():
    settings = config.parse({"server": {"max_message_bytes": 10}})
    with TestServer(DEMO, config=settings) as server:
        ws = server.websocket("/ws/echo")
        ws.send(text="short")
        assert ws.receive() == "short"
        ws.send(text="far too long")
        assert ws.close_code == 1009


# -- the fake clock ------------------------------------------------------------------------

def test_delayed_messages_wait_for_the_fake_clock():
    answers = []

    def later(message):
        send("due", {"n": 1}, delay=5)
        group_send("late", text="group, later", delay=2)

    with make(("websocket.receive", "/d", later), ("due", None,
                                                   lambda m: answers.append(server.clock))
              ) as server:
        ws = server.websocket("/d")
        member = server.websocket("/d")
        ws.send(text="go")
        server.layer.group_add("late", member.reply_channel)  # a member when it is due
        assert answers == [] and member.receive_nothing()
        assert member.receive(timeout=3) == "group, later"  # waiting moves the clock
        assert server.clock == 2.0
        server.advance(2.9)
        assert answers == []
        server.advance(0.1)
        assert answers == [5.0]


def test_receive_times_out_on_the_fake_clock_without_waiting():
    with TestServer(DEMO) as server:
        ws = server.websocket("/ws/echo")
        with pytest.raises(TimeoutError):
            ws.receive(timeout=3600)
        assert server.clock == 3600


# -- sessions --------------------------------------------------------------------------

def test_session_is_stored_only_when_modified_and_as_json():
    seen = []

    def connect(message):
        message.session["items"] = (1, 2)  # a tuple comes back a list, as in production

    def receive(message):
        seen.append(dict(message.session))
        if message.text == "drop":
            message.session.clear()
        else:
            message.session.get("items")  # reading does not store

    with make(("websocket.connect", "/s", connect), ("websocket.receive", "/s", receive)
              ) as server:
        ws = server.websocket("/s")
        for text in ("read", "drop", "after"):
            ws.send(text=text)
        assert seen == [{"items": [1, 2]}, {"items": [1, 2]}, {}]


def test_a_session_that_is_not_json_closes_with_1011():
    def receive(message):
        message.session["bad"] = object()

    with make(("websocket.receive", "/s", receive)) as server:
        server.expect_error("not JSON-serialisable")
        ws = server.websocket("/s")
        ws.send(text="x")
        assert ws.close_code == 1011


# -- handshakes ----------------------------------------------------------------------------

def test_reject_is_403_and_the_disconnect_runs_with_1006():
    codes = []
    with make(("websocket.connect", "/r", lambda m: m.reply_channel.reject()),
              ("websocket.disconnect", "/r", lambda m: codes.append(m["code"]))) as server:
        ws = server.websocket("/r")
        assert (ws.accepted, ws.status, ws.close_code) == (False, 403, None)
        assert codes == [1006]
        with pytest.raises(WebSocketClosed):
            ws.send(text="x")


def test_messages_before_accept_are_held_and_close_in_connect_opens_first():
    def connect(message):
        message.reply_channel.send(text="early")
        message.reply_channel.close(4002, "go away")
        message.reply_channel.send(text="after the close")  # dropped

    with make(("websocket.connect", "/e", connect)) as server:
        ws = server.websocket("/e")
        assert ws.accepted
        assert (ws.close_code, ws.close_reason) == (4002, "go away")
        assert ws.receive() == "early"
        with pytest.raises(WebSocketClosed) as closed:
            ws.receive()
        assert closed.value.code == 4002


def test_subprotocols_headers_query_and_origins():
    def connect(message):
        offered = message["subprotocols"]
        message.reply_channel.accept(subprotocol=offered[-1])
        message.reply_channel.send(text=f"{message.headers.get('x-user')} {message.query}")

    settings = config.parse({"server": {"allowed_origins": ["https://good.example"]}})
    with make(("websocket.connect", "/p", connect), config=settings) as server:
        ws = server.websocket("/p?a=1", headers={"X-User": "zed"}, subprotocols=["v1", "v2"])
        assert ws.subprotocol == "v2"
        assert ws.receive() == "zed {'a': ['1']}"
        good = server.websocket("/p", headers={"Origin": "https://good.example"},
                                subprotocols=["v1"])
        assert good.accepted
        evil = server.websocket("/p", headers={"Origin": "https://evil.example"})
        assert evil.status == 403


# -- HTTP ---------------------------------------------------------------------------------

def test_a_streamed_response_is_readable_part_by_part():
    def stream(message):
        reply = message.reply_channel
        reply.start_response(content_type="text/plain", headers=[("X-Parts", "3")])
        send("more.parts", {"to": reply.name}, delay=1)
        reply.send_body("part 0\n")

    def more(message):
        reply = reply_channel(message["to"])
        reply.send_body("part 1\n")
        reply.send_body("part 2\n", more=False)

    with make(("http.request", "/s", stream), ("more.parts", None, more)) as server:
        response = server.http("GET", "/s")
        assert (response.status, response.headers["x-parts"]) == (200, "3")
        assert response.receive() == b"part 0\n"
        assert not response.complete
        assert response.receive(timeout=2) == b"part 1\n"  # the clock moved to the task
        assert response.receive() == b"part 2\n"
        assert response.receive() == b"" and response.complete
        assert response.body == b"part 0\npart 1\npart 2\n"


def test_server_sent_events_from_the_chat_and_binary_is_dropped():
    with TestServer(DEMO) as server:
        events = server.http("GET", "/sse/chat/lobby")
        ann = server.websocket("/ws/chat/lobby?name=ann")
        joined = json.loads(events.receive_event().data)  # the runtime's presence notice
        assert (joined["type"], joined["info"]) == ("join", {"user": "ann"})
        server.group_send("chat.lobby", bytes=b"\x00")
        server.group_send("chat.lobby", text="x", event="note", id=7)
        assert tuple(events.receive_event()) == ("x", "note", "7")
        assert server.layer.counters["sse_binary_dropped"] == 1
        events.close()
        assert server.layer.members("chat.lobby") == [ann.reply_channel]


def test_long_poll_released_by_a_group_message_or_its_timeout():
    with TestServer(DEMO) as server:
        poll = server.http("GET", "/poll/chat/lobby")
        assert poll.status is None and not poll.complete  # held
        server.websocket("/ws/chat/lobby?name=zed")
        assert poll.status == 200 and poll.json()["info"] == {"user": "zed"}
        assert poll.headers["content-type"] == "application/json"
        idle = server.http("GET", "/poll/chat/lobby")
        idle.wait()  # 25 s on the fake clock
        assert (idle.status, idle.body, server.clock) == (204, b"", 25.0)


def test_no_response_is_504_after_http_timeout_and_an_exception_500():
    settings = config.parse({"server": {"http_timeout": 2.0}})
    with make(("http.request", "/silent", lambda m: None),
              ("http.request", "/boom", lambda m: 1 / 0), config=settings) as server:
        server.expect_error("ZeroDivisionError")
        silent = server.http("GET", "/silent")
        assert (silent.status, server.clock) == (504, 2.0)
        boom = server.http("GET", "/boom")
        assert (boom.status, boom.body) == (500, b"500 consumer failed\n")
        assert [e.exception.__class__ for e in server.errors] == [ZeroDivisionError]


def test_an_exception_after_the_headers_cuts_the_response_short():
    def half(message):
        message.reply_channel.start_response()
        message.reply_channel.send_body("half")
        raise RuntimeError("mid-stream")

    with make(("http.request", "/h", half)) as server:
        server.expect_error("mid-stream")
        response = server.http("GET", "/h")
        assert (response.status, response.body, response.aborted) == (200, b"half", True)


def test_wsgi_fallback_and_404_without_it():
    with TestServer(DEMO, wsgi_app="demo_wsgi:application") as server:
        assert server.http("GET", "/app/hello").body == b"hello from WSGI\n"
        echoed = server.http("POST", "/app/echo", body="round trip",
                             headers={"Content-Type": "text/x-test"})
        assert (echoed.body, echoed.headers["content-type"]) == (b"round trip", "text/x-test")
        assert server.http("GET", "/hello").body == b"hello\n"  # consumers come first
    with TestServer(DEMO) as server:
        assert server.http("GET", "/app/hello").status == 404


def test_too_large_a_body_is_413_without_a_consumer():
    settings = config.parse({"server": {"max_body_bytes": 4}})
    with make(("http.request", "/b", lambda m: 1 / 0), config=settings) as server:
        assert server.http("POST", "/b", body=b"12345").status == 413


# -- errors and the process's layer ----------------------------------------------------------

def test_an_undeclared_consumer_error_fails_the_with_block():
    with pytest.raises(AssertionError, match="consumers failed"):
        with make(("websocket.receive", "/f", lambda m: 1 / 0)) as server:
            server.websocket("/f").send(text="x")


def test_the_layer_is_current_inside_the_with_block_only():
    with pytest.raises(NotInConsumer):
        current()
    with TestServer(DEMO) as server:
        ws = server.websocket("/ws/chat/lobby?name=ann")
        ws.receive_json()
        group_send("chat.lobby", text="from the test itself")  # runtime's own function
        assert ws.receive() == "from the test itself"
    with pytest.raises(NotInConsumer):
        current()


def test_loading_consumers_leaves_the_global_registry_alone():
    before = list(routing.registry.routes)
    server = TestServer(DEMO)
    assert routing.registry.routes == before
    assert server.registry.match("http.request", "/hello") is not None
