"""History and recovery end to end, with real processes and the demo chat consumer
(consumers/chat.py): a client drops for 2 s while 200 messages are sent to its room,
comes back with the last position it saw, and gets exactly those 200, in order, then
the live ones -- over a WebSocket (``?since=``), a Server-Sent Events stream
(``Last-Event-ID``) and a long-poll (``?since=``). After a restart of the history
keeper (the broker) the same client is told that recovery failed, then gets the live
stream. What a client received is checked as it came, never sorted: its positions must
count up by one from the one it came back with.
"""
import asyncio
import http.client
import json
import signal
import threading
import time
from urllib.parse import quote

import pytest

from harness import (checked_system, http_request, json_events_until, publisher_for, run,
                     wait_until)

pytestmark = pytest.mark.e2e

HISTORY = [{"pattern": "chat.*", "size": 1000, "seconds": 600}]
MISSED = 200  # messages sent to the room while the client is away
DROP = 2.0  # seconds it is away
LIVE = 5  # messages after it came back
READ_TIMEOUT = 10.0  # seconds any client waits for its next message


def ws_events_until(ws, done):
    """Chat events (parsed) as they come, until done(events)."""
    return json_events_until(ws, done, READ_TIMEOUT)


@pytest.fixture(scope="module")
def system():
    with checked_system(history=HISTORY) as running:
        yield running


@pytest.fixture
def publisher(system):
    """A connection in the test process: group_send to the rooms as any other process may."""
    with publisher_for(system) as connection:
        yield connection


def say(layer, room, text):
    layer.group_send(f"chat.{room}", text=json.dumps(
        {"type": "message", "user": "publisher", "text": text}))


def say_while_away(layer, room):
    """MISSED messages over DROP seconds."""
    for i in range(MISSED):
        say(layer, room, f"m{i}")
        time.sleep(DROP / MISSED)


def offset(position):
    return int(position.rpartition(":")[2])


def epoch(position):
    return position.rpartition(":")[0]


def check_contiguous(who, since, positions):
    """Every position after `since` once, in order: no gap, no repeat."""
    expected = [f"{epoch(since)}:{offset(since) + i}" for i in range(1, len(positions) + 1)]
    assert positions == expected, f"{who}: positions {positions[:5]}... after {since}"


def texts(events):
    return [e["text"] for e in events if e.get("type") == "message"
            and e.get("user") == "publisher"]


EXPECTED = [f"m{i}" for i in range(MISSED)] + [f"live{i}" for i in range(LIVE)]


def restart_broker(system):
    proc = system.processes["broker"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    system.restart("broker")


# -- WebSocket ------------------------------------------------------------------------------

def test_a_websocket_client_gets_what_it_missed_in_order_then_live_or_is_told(system,
                                                                              publisher):
    room = "ws-recovery"

    async def scenario():
        ws = await system.connect(f"/ws/chat/{room}?name=a")
        joined = await ws_events_until(ws, lambda ev: ev and ev[-1]["type"] == "join")
        last = joined[-1]["pos"]
        ws.close()
        await asyncio.to_thread(say_while_away, publisher, room)

        ws = await system.connect(f"/ws/chat/{room}?name=a&since={quote(last)}")
        events = await ws_events_until(ws, lambda ev: ev and ev[-1]["type"] == "join")
        for i in range(LIVE):
            say(publisher, room, f"live{i}")
        events += await ws_events_until(ws, lambda ev: texts(ev)[-1:] == [f"live{LIVE - 1}"])
        check_contiguous("websocket", last, [e["pos"] for e in events])
        assert texts(events) == EXPECTED
        # Its own leave, broadcast after it was gone, is in what it missed too.
        assert [e["type"] for e in events].count("leave") == 1
        last = events[-1]["pos"]
        ws.close()

        await asyncio.to_thread(restart_broker, system)
        ws = await system.connect(f"/ws/chat/{room}?name=a&since={quote(last)}")
        events = await ws_events_until(ws, lambda ev: ev and ev[-1]["type"] == "join")
        notice = events[0]
        assert notice["type"] == "recovery_failed" and notice["reason"] == "epoch"
        assert notice["since"] == last and notice["group"] == f"chat.{room}"
        assert epoch(notice["position"]) != epoch(last) and notice["pos"] == notice["position"]
        say(publisher, room, "after")
        events += await ws_events_until(ws, lambda ev: texts(ev)[-1:] == ["after"])
        check_contiguous("websocket after the restart", notice["position"],
                         [e["pos"] for e in events[1:]])
        ws.close()

    run(scenario(), timeout=60)
    broker = system.settled_counters("broker")
    assert broker["history_recovery_failed"] >= 1 and broker["history_kept"] >= 2


# -- Server-Sent Events ---------------------------------------------------------------------

class EventStream:
    """GET an event stream; read its events one by one (each wait bounded)."""

    def __init__(self, port, path, last_event_id=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status

    def next(self):
        event = {"data": []}
        while True:
            line = self.response.readline()
            assert line, "the stream ended"
            line = line.decode().rstrip("\n")
            if not line:
                if event["data"]:
                    event["data"] = "\n".join(event["data"])
                    return event
                continue
            if line.startswith(":"):
                continue  # heartbeat
            field, _, value = line.partition(": ")
            if field == "data":
                event["data"].append(value)
            else:
                event[field] = value

    def until(self, done):
        events = []
        while not done(events):
            events.append(self.next())
        return events

    def close(self):
        self.response.close()
        self.conn.close()


def sse_texts(events):
    return texts([json.loads(e["data"]) for e in events])


def joined(system, members=1):
    """Once `members` clients are in a group (the interfaces' group_members gauge)."""
    wait_until(lambda: system.settled_counters("interface").get("group_members", 0)
               >= members, READ_TIMEOUT, "the client to join its room")


def test_an_event_stream_recovers_from_last_event_id_by_itself(system, publisher):
    room = "sse-recovery"
    path = f"/sse/chat/{room}"
    stream = EventStream(system.port, path)
    joined(system)
    say(publisher, room, "hello")
    last = stream.next()["id"]
    stream.close()
    say_while_away(publisher, room)

    stream = EventStream(system.port, path, last_event_id=last)
    events = stream.until(lambda ev: sse_texts(ev)[-1:] == [f"m{MISSED - 1}"])
    for i in range(LIVE):
        say(publisher, room, f"live{i}")
    events += stream.until(lambda ev: sse_texts(ev)[-1:] == [f"live{LIVE - 1}"])
    check_contiguous("event stream", last, [e["id"] for e in events])
    assert sse_texts(events) == EXPECTED
    last = events[-1]["id"]
    stream.close()

    restart_broker(system)
    stream = EventStream(system.port, path, last_event_id=last)
    notice = stream.next()
    assert notice["event"] == "recovery_failed"
    data = json.loads(notice["data"])
    assert data["reason"] == "epoch" and data["since"] == last
    assert notice["id"] == data["position"] and epoch(notice["id"]) != epoch(last)
    say(publisher, room, "after")
    events = stream.until(lambda ev: sse_texts(ev)[-1:] == ["after"])
    check_contiguous("event stream after the restart", notice["id"], [e["id"] for e in events])
    stream.close()


# -- long-poll ------------------------------------------------------------------------------

def poll(system, room, since=None):
    path = f"/poll/chat/{room}" + (f"?since={quote(since)}" if since else "")
    status, headers, body = http_request(system.port, "GET", path, timeout=30)
    assert status == 200, (status, body)
    event = json.loads(body)
    assert headers["ZChannels-Position"] == event["pos"]
    return event


def test_a_long_poll_that_carries_its_position_loses_nothing_between_polls(system,
                                                                           publisher):
    room = "poll-recovery"
    # The first poll has no position: it takes whatever comes first once it has joined.
    got = []
    first_poll = threading.Thread(target=lambda: got.append(poll(system, room)))
    first_poll.start()
    joined(system)
    say(publisher, room, "hello")
    first_poll.join(READ_TIMEOUT)
    last = got[0]["pos"]
    say_while_away(publisher, room)

    events = []
    while texts(events)[-1:] != [f"m{MISSED - 1}"]:
        events.append(poll(system, room, since=events[-1]["pos"] if events else last))
    live = threading.Thread(target=lambda: [time.sleep(0.3)] + [
        say(publisher, room, f"live{i}") for i in range(LIVE)])
    live.start()
    while texts(events)[-1:] != [f"live{LIVE - 1}"]:
        events.append(poll(system, room, since=events[-1]["pos"]))
    live.join(READ_TIMEOUT)
    check_contiguous("long-poll", last, [e["pos"] for e in events])
    assert texts(events) == EXPECTED

    restart_broker(system)
    notice = poll(system, room, since=events[-1]["pos"])
    assert notice["type"] == "recovery_failed" and notice["reason"] == "epoch"
    assert epoch(notice["position"]) != epoch(last)
    say(publisher, room, "after")
    after = poll(system, room, since=notice["position"])
    assert after["text"] == "after" and offset(after["pos"]) == offset(notice["position"]) + 1
