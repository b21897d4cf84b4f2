"""No traceback from input (issue 21, item 6): what a quick fuzz of paths, names and
parameters against the real server found, each answered with a 4xx or a documented
close code and logged at WARNING at most (`checked_system` fails on any ERROR line or
traceback), while the clients beside it carry on."""
from __future__ import annotations

import json

import pytest

from harness import checked_system, http_request, read, run
from rawws import handshake, read_close_frame

pytestmark = pytest.mark.e2e

CLOSE_BAD_PATH = 4400
ROOM_196 = "r" * 196  # "chat." + 196 = 201 bytes: one more than a group name may have


@pytest.fixture(scope="module")
def system():
    with checked_system(history=[{"pattern": "chat.*", "size": 100}]) as running:
        yield running


@pytest.mark.parametrize("path", ["/static/index.html%00.txt", "/static/a%00",
                                  "/static/%00/index.html"])
def test_a_nul_in_a_static_path_is_400_not_a_traceback(system, path):
    status, _, body = http_request(system.port, "GET", path)
    assert status == 400, body
    status, _, _ = http_request(system.port, "GET", "/static/index.html")
    assert status == 200


async def refused_close(system, path: str) -> tuple[int, bytes]:
    """The close frame a WebSocket to `path` gets, sent as raw bytes (UTF-8)."""
    reader, writer, response = await handshake(system.port, path)
    try:
        assert response.startswith("HTTP/1.1 101"), response
        return await read_close_frame(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("path", [
    pytest.param(f"/ws/chat/{ROOM_196}", id="chat-room-196"),
    pytest.param(f"/ws/chat/{'x' * 2000}?name=ann", id="chat-room-2000"),
    pytest.param("/ws/chat/a\x85b", id="chat-room-control-character"),
    pytest.param(f"/ws/online/{ROOM_196}", id="online-room-196"),
])
def test_a_room_that_cannot_name_a_group_closes_4400_and_the_room_next_door_chats_on(
        system, path):
    before = system.settled_counters("worker")

    async def scenario():
        ann = await system.connect("/ws/chat/next-door?name=ann")
        code, reason = await refused_close(system, path)
        ann.write_message("still here")
        while True:  # her own join first, then her message
            event = json.loads(await read(ann))
            if event["type"] == "message":
                break
        ann.close()
        return code, reason, event
    code, reason, event = run(scenario())
    assert code == CLOSE_BAD_PATH
    assert reason == (b"group name from the path not allowed: at most 200 bytes, "
                      b"printable characters")
    assert event["text"] == "still here"
    after = system.settled_counters("worker")
    assert after.get("consumer_errors", 0) == before.get("consumer_errors", 0)
    assert after.get("invalid_group_names", 0) == before.get("invalid_group_names", 0) + 1
    assert "closing" in system.all_logs() and " with 4400" in system.all_logs()


@pytest.mark.parametrize("kind", ["sse", "poll"])
def test_an_sse_or_long_poll_room_that_cannot_name_a_group_is_400(system, kind):
    before = system.settled_counters("worker")
    status, _, body = http_request(system.port, "GET", f"/{kind}/chat/{ROOM_196}")
    assert status == 400
    assert body.startswith(b"room name not allowed: at most 195 bytes")
    after = system.settled_counters("worker")
    assert after.get("consumer_errors", 0) == before.get("consumer_errors", 0)
    assert after.get("invalid_group_names", 0) == before.get("invalid_group_names", 0) + 1
