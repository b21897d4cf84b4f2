"""Behaviour scenarios written once and run twice: in-process against
`zchannels.testing.TestServer` (tests/test_behaviour_inprocess.py) and against real
processes (tests/test_behaviour_e2e.py), so the in-memory layer cannot drift from
the real system.

Each scenario is a plain synchronous function of a `backend` with the small API
below: the subset of `zchannels.testing` a test needs, which the e2e backend
implements over real sockets. Timeouts are seconds on the fake clock in-process and
real seconds end to end; the scenarios use the defaults.

``backend.websocket(path)`` -> a socket: ``accepted``, ``status`` (101 or 403),
``send(text=... | bytes=...)``, ``receive()`` (str or bytes; TimeoutError, or
`zchannels.testing.WebSocketClosed` once closed), ``receive_json()``,
``wait_closed()`` (the close code), ``close(code)``.

``backend.http(method, path, body=b"", headers=None, wait=True)`` -> a response:
``status``, ``headers`` (case-insensitive ``get``), ``body``, ``text``, ``json()``,
``wait(timeout)`` (until complete), ``receive_event()`` (a Server-Sent Event),
``close()``. With ``wait=False`` it returns before the response has started (for
long-polls).

``backend.expect_error(pattern)``: an error the scenario provokes on purpose.

The consumers are the demo's (consumers/) and the test ones (tests/consumers/).
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Any, Callable

from zchannels.testing import WebSocketClosed

Scenario = Callable[[Any], None]
SCENARIOS: list[Scenario] = []

_unique = itertools.count(1)


def scenario(func: Scenario) -> Scenario:
    SCENARIOS.append(func)
    return func


def unique(prefix: str) -> str:
    """A room or group name no other scenario uses (the e2e system is shared)."""
    return f"{prefix}{os.getpid()}x{next(_unique)}"


def chat_event(kind: str, user: str, text: str | None = None) -> dict[str, str]:
    """A chat message, or (no text) a join or leave as `received` shows it."""
    return {"type": kind, "user": user} if text is None else \
        {"type": kind, "user": user, "text": text}


def received(ws: Any) -> dict[str, Any]:
    """The next chat event; a presence notice (join, leave: the runtime's, with the
    member's reply channel and its info) as its type and user."""
    event = ws.receive_json()
    if event.get("type") in ("join", "leave"):
        assert set(event) == {"type", "group", "member", "info"}, event
        assert event["group"].startswith("chat.") and "!" in event["member"], event
        return {"type": event["type"], "user": event["info"]["user"]}
    return event


def assert_closed(ws: Any) -> None:
    try:
        frame = ws.receive()
    except WebSocketClosed:
        return
    raise AssertionError(f"expected the socket closed, received {frame!r}")


# -- WebSocket ----------------------------------------------------------------------------

@scenario
def echo_text_and_binary(backend):
    ws = backend.websocket("/ws/echo")
    assert ws.accepted and ws.status == 101
    frames = ["hello", b"\x00\xff binary", "unicode ✓", b"", "x" * 70000]
    for frame in frames:
        ws.send(**({"text": frame} if isinstance(frame, str) else {"bytes": frame}))
    assert [ws.receive() for _ in frames] == frames  # in order, text stays str
    ws.close()


@scenario
def chat_room_with_three_members(backend):
    room = unique("room")
    ann = backend.websocket(f"/ws/chat/{room}?name=ann")
    assert received(ann) == chat_event("join", "ann")
    bob = backend.websocket(f"/ws/chat/{room}?name=bob")
    for ws in (ann, bob):
        assert received(ws) == chat_event("join", "bob")
    cy = backend.websocket(f"/ws/chat/{room}?name=cy")
    for ws in (ann, bob, cy):
        assert received(ws) == chat_event("join", "cy")

    # Two members' messages have no order between them (different connections): each
    # is awaited everywhere before the next one.
    bob.send(text="hi all")  # a plain string
    for ws in (ann, bob, cy):
        assert received(ws) == chat_event("message", "bob", "hi all")
    ann.send(text=json.dumps({"text": "json too"}))  # or {"text": ...}
    for ws in (ann, bob, cy):
        assert received(ws) == chat_event("message", "ann", "json too")

    cy.close()  # leaves the room before its disconnect consumer announces it
    for ws in (ann, bob):
        assert received(ws) == chat_event("leave", "cy")
    ann.send(text="two left")
    for ws in (ann, bob):
        assert received(ws) == chat_event("message", "ann", "two left")

    other = backend.websocket(f"/ws/chat/{unique('room')}")  # no name: guest-<n>
    joined = received(other)
    assert joined["type"] == "join" and joined["user"].startswith("guest-")
    for ws in (ann, bob, other):
        ws.close()


@scenario
def chat_closes_1007_on_broken_json_and_1003_on_binary(backend):
    room = unique("room")
    ann = backend.websocket(f"/ws/chat/{room}?name=ann")
    received(ann)
    bob = backend.websocket(f"/ws/chat/{room}?name=bob")
    received(bob)
    received(ann)

    bob.send(text='{"text": unquoted}')
    assert bob.wait_closed() == 1007
    assert_closed(bob)
    assert received(ann) == chat_event("leave", "bob")

    ann.send(bytes=b"\x01")
    assert ann.wait_closed() == 1003


@scenario
def task_on_a_named_channel_answers_the_client(backend):
    ws = backend.websocket("/test/task")
    ws.send(text="make me loud")
    words = ws.receive().split()
    # tasks.upper answers through the reply channel in the message: text, then the
    # submitting and the answering process ids.
    assert words[:3] == ["MAKE", "ME", "LOUD"] and len(words) == 5
    assert all(word.isdigit() for word in words[3:])

    by_name = backend.websocket("/test/task-by-name")  # reply_channel(name) in the task
    by_name.send(text="as bytes")
    assert by_name.receive() == b"as bytes"


@scenario
def session_persists_across_a_connections_events(backend):
    first = backend.websocket("/test/session")
    for expected in ("1", "2", "3"):
        first.send(text="count")
        assert first.receive() == expected
    second = backend.websocket("/test/session")  # a session is per connection
    second.send(text="count")
    assert second.receive() == "1"
    first.send(text="count")
    assert first.receive() == "4"


@scenario
def consumer_exception_closes_with_1011(backend):
    backend.expect_error("boom requested by the test")
    backend.expect_error("connect failed on purpose")
    ws = backend.websocket("/test/fail")
    ws.send(text="fine?")
    assert ws.receive() == "fine"
    ws.send(text="boom")
    assert ws.wait_closed() == 1011

    # A connect consumer that raises: the handshake completes, then 1011.
    failed = backend.websocket("/test/fail-connect")
    assert failed.accepted
    assert failed.wait_closed() == 1011


@scenario
def unknown_websocket_path_closes_with_4404(backend):
    ws = backend.websocket("/no/consumer/here")
    assert ws.accepted  # the handshake completes: a browser sees the code
    assert ws.wait_closed() == 4404


@scenario
def rejected_handshake_is_403(backend):
    ws = backend.websocket("/test/reject")
    assert not ws.accepted
    assert ws.status == 403


@scenario
def group_membership_is_immediate_and_ends_with_the_socket(backend):
    group = unique("group")
    first = backend.websocket(f"/test/member/{group}")
    rc = first.receive()[3:]
    assert first.receive() == f"hello {rc} True"  # added, and at once reached
    second = backend.websocket(f"/test/member/{group}")
    rc2 = second.receive()[3:]
    assert second.receive() == f"hello {rc2} True"
    assert first.receive() == f"hello {rc2} True"
    first.close()
    sender = backend.websocket(f"/test/send/{group}")
    sender.send(text="after first left")
    assert sender.receive() == "sent"
    assert second.receive() == "after first left"


# -- HTTP ---------------------------------------------------------------------------------

@scenario
def http_hello(backend):
    response = backend.http("GET", "/hello")
    assert response.status == 200
    assert response.headers.get("content-type") == "text/plain; charset=utf-8"
    assert response.body == b"hello\n"


@scenario
def http_request_fields_and_body(backend):
    response = backend.http("POST", "/test/http/echo?a=1&b=x&a=2", body=b"payload \x00\xff",
                            headers={"X-Test": "yes"})
    assert response.status == 200
    assert response.headers.get("X-Body-Length") == "10"
    seen = response.json()
    assert (seen["method"], seen["path"], seen["query"]) == \
        ("POST", "/test/http/echo", {"a": ["1", "2"], "b": ["x"]})
    assert seen["body"] == "payload \x00\xff" and seen["headers"]["x-test"] == "yes"


@scenario
def http_without_consumer_is_404_and_exception_is_500(backend):
    backend.expect_error("secret-detail-42")
    missing = backend.http("GET", "/no/consumer/here")
    assert missing.status == 404
    assert missing.body == b"404 Not Found: no consumer for this path\n"
    failed = backend.http("GET", "/test/http/boom")
    assert failed.status == 500
    assert b"secret" not in failed.body  # the traceback stays in the log


@scenario
def server_sent_events_from_a_group(backend):
    group = unique("events")
    stream = backend.http("GET", f"/test/http/events/{group}")
    assert stream.status == 200
    assert stream.headers.get("content-type") == "text/event-stream; charset=utf-8"
    # Sent after group_add returned: from here on the stream is a member.
    assert tuple(stream.receive_event()) == ("welcome", "hello", "0")
    sender = backend.websocket(f"/test/send/{group}")
    for text in ("one", "two\nlines"):
        sender.send(text=text)
        assert sender.receive() == "sent"
        assert stream.receive_event().data == text
    stream.close()


@scenario
def long_poll_released_by_a_group_message_or_timing_out(backend):
    group = unique("poll")
    poll = backend.http("GET", f"/test/http/hold/{group}?timeout=10", wait=False)
    sender = backend.websocket(f"/test/send/{group}")
    # A real client cannot see when the hold has joined the group: send until the
    # poll is answered (in-process, the first message does it).
    for _ in range(100):
        sender.send(text="released")
        assert sender.receive() == "sent"
        try:
            poll.wait(0.05)
            break
        except TimeoutError:
            continue
    assert (poll.status, poll.body) == (200, b"released")
    assert poll.headers.get("content-type") == "text/plain"

    idle = backend.http("GET", f"/test/http/hold/{unique('poll')}?timeout=0.3", wait=False)
    idle.wait(5)
    assert (idle.status, idle.body) == (204, b"")
