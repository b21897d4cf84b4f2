"""End to end: the class-based consumers of runtime/api/generic.py in a real system (the
test consumers are in tests/consumers/generic.py, under /test/generic/...)."""
import json

import pytest

from harness import http_request, read, read_until_closed, refused_status, run, wait_until

pytestmark = pytest.mark.e2e


def test_websocket_consumer_groups_session_and_disconnect(system):
    async def scenario():
        ann = await system.connect("/test/generic/room/r1", subprotocols=["x", "gen.v1"])
        assert ann.selected_subprotocol == "gen.v1"
        assert await read(ann) == "welcome to r1 (r1)"
        bob = await system.connect("/test/generic/room/r1")
        assert bob.selected_subprotocol is None
        assert await read(bob) == "welcome to r1 (r1)"
        elsewhere = await system.connect("/test/generic/room/r2")
        assert await read(elsewhere) == "welcome to r2 (r2)"
        # Both members of r1 hear each other (groups joined on connect); r2 does not.
        ann.write_message("hi from ann")
        bob.write_message("hi from bob")
        # Two connections' messages: either may go first, but the broker sends every
        # group message to every interface in one order, so both members see the same.
        seen = [[await read(ws), await read(ws)] for ws in (ann, bob)]
        assert seen[0] == seen[1], seen
        assert set(seen[0]) == {"r1: hi from ann", "r1: hi from bob"}
        ann.write_message(b"\x00\x01", binary=True)
        assert await read(ann) == b"\x00\x01"
        # The session travels between events, whichever of the 2 workers runs them.
        for _ in range(3):
            bob.write_message("count")
        assert [await read(bob) for _ in range(3)] == ["count 2", "count 3", "count 4"]
        elsewhere.write_message("only r2")
        assert await read(elsewhere) == "r2: only r2"
        bob.write_message("bye")
        assert await read_until_closed(bob) == []
        assert (bob.close_code, bob.close_reason) == (4000, "bye")
        assert await read(ann) == "r1: someone left"  # bob left the group when he closed
        ann.close(4001)
        elsewhere.close()
        assert await refused_status(system.url("/test/generic/room/r1?reject=1")) == 403

    run(scenario())
    def disconnects():
        return {tuple(r[1:]) for r in system.records() if r[0] == "generic-disconnect"}
    wait_until(lambda: len(disconnects()) >= 4, 5, "four disconnects")
    assert disconnects() == {("r1", "4001", "2"), ("r1", "4000", "5"), ("r2", "1006", "1"),
                             ("r1", "1006", "None")}


def test_json_consumer_echoes_and_closes_1007_on_a_bad_frame(system):
    before = system.settled_counters("worker").get("json_invalid", 0)

    async def scenario():
        ws = await system.connect("/test/generic/json")
        ws.write_message(json.dumps({"n": [1, "two"]}))
        assert json.loads(await read(ws)) == {"echo": {"n": [1, "two"]}}
        ws.write_message("{not json")
        assert await read_until_closed(ws) == []
        assert (ws.close_code, ws.close_reason) == (1007, "invalid JSON")
        binary = await system.connect("/test/generic/json")
        binary.write_message(b"{}", binary=True)
        assert await read_until_closed(binary) == []
        assert (binary.close_code, binary.close_reason) == (1007, "expected JSON text")

    run(scenario())
    wait_until(lambda: system.settled_counters("worker").get("json_invalid", 0) == before + 2,
               5, "json_invalid to count both frames")
    assert "JsonEcho on /test/generic/json: invalid JSON" in system.all_logs()


def test_demultiplexer_two_streams_over_one_socket(system):
    def envelope(stream, payload):
        return json.dumps({"stream": stream, "payload": payload})

    async def scenario():
        ann = await system.connect("/test/generic/mux/m1")
        bob = await system.connect("/test/generic/mux/m1")
        for ws in (ann, bob):  # the chat stream's connect greets, wrapped in its stream
            assert json.loads(await read(ws)) == {"stream": "chat", "payload": {"joined": "m1"}}
        ann.write_message(envelope("echo", "ping"))
        assert json.loads(await read(ann)) == {"stream": "echo", "payload": {"echo": "ping"}}
        ann.write_message(envelope("chat", "hello all"))
        for ws in (ann, bob):  # a group message of the chat stream, wrapped too
            assert json.loads(await read(ws)) == {"stream": "chat",
                                                  "payload": {"said": "hello all"}}
        bob.write_message(envelope("nope", 1))
        assert await read_until_closed(bob) == []
        assert (bob.close_code, bob.close_reason) == (1007, "unknown stream")
        ann.write_message(envelope("echo", "still here"))
        assert json.loads(await read(ann))["payload"] == {"echo": "still here"}
        ann.close(4002)

    run(scenario())
    wait_until(lambda: {("chat", "m1", "4002"), ("echo", "m1", "4002"), ("-", "m1", "4002")}
               <= {tuple(r[1:]) for r in system.records() if r[0] == "generic-mux-disconnect"},
               5, "the disconnect to reach both streams and the demultiplexer")


def test_http_consumer_methods_and_405(system):
    port = system.port
    status, headers, body = http_request(port, "GET", "/test/generic/http/42")
    assert (status, headers["X-Item"], body) == (200, "42", b"item 42\n")
    status, _, body = http_request(port, "POST", "/test/generic/http/42", body=b"payload")
    assert (status, body) == (201, b"got payload")
    status, headers, body = http_request(port, "DELETE", "/test/generic/http/42")
    assert (status, headers["Allow"], body) == (405, "GET, POST, HEAD, OPTIONS",
                                                b"method not allowed\n")
    status, headers, body = http_request(port, "OPTIONS", "/test/generic/http/42")
    assert (status, headers["Allow"], body) == (200, "GET, POST, HEAD, OPTIONS", b"")
    status, headers, body = http_request(port, "HEAD", "/test/generic/http/42")
    assert (status, headers["X-Item"], body) == (200, "42", b"")
