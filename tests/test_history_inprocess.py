"""Group history in the in-memory test server (zchannels.testing), with the demo chat
consumer: what a test of an application that recovers can rely on -- positions on
every message, a reconnect with ``?since=`` / ``Last-Event-ID`` / a long-poll's
``since`` gets what was missed, and a position the history cannot cover gets the
``recovery_failed`` notice."""
import json

from harness import DEMO_CONSUMERS
from zchannels.core import config
from zchannels import group_send
from zchannels.core.stats import counters
from zchannels.testing import TestServer

SETTINGS = config.parse({"history": {"groups": [{"pattern": "chat.*", "size": 3}]}})


def chat(server, since=None):
    query = f"&since={since}" if since else ""
    ws = server.websocket(f"/ws/chat/room?name=a{query}")
    assert ws.accepted
    return ws


def events(ws):
    found = []
    while not ws.receive_nothing():
        found.append(ws.receive_json())
    return found


def say(text):
    group_send("chat.room", text=json.dumps({"type": "message", "user": "x", "text": text}))


def test_a_websocket_recovers_what_it_missed_or_is_told_it_cannot():
    with TestServer([DEMO_CONSUMERS], config=SETTINGS) as server:
        ws = chat(server)
        last = events(ws)[-1]["pos"]  # its own join
        ws.close()
        say("one")
        say("two")
        again = chat(server, since=last)
        got = events(again)
        assert [e["type"] for e in got] == ["leave", "message", "message", "join"]
        epoch, _, offset = last.rpartition(":")
        assert [e["pos"] for e in got] == [f"{epoch}:{int(offset) + i}" for i in range(1, 5)]
        for text in ("3", "4", "5", "6"):  # only 3 kept: "leave" ... "two" are gone
            say(text)
        again.close()
        late = chat(server, since=got[-1]["pos"])
        notice = events(late)[0]
        assert (notice["type"], notice["reason"]) == ("recovery_failed", "evicted")


def test_an_event_stream_and_a_long_poll_recover_from_their_position():
    with TestServer([DEMO_CONSUMERS], config=SETTINGS) as server:
        stream = server.http("GET", "/sse/chat/room")
        say("one")
        first = stream.receive_event()
        say("two")
        again = server.http("GET", "/sse/chat/room", headers={"Last-Event-ID": first.id})
        missed = again.receive_event()
        assert json.loads(missed.data)["text"] == "two"
        assert missed.id.endswith(":2")
        poll = server.http("GET", f"/poll/chat/room?since={first.id}")
        assert poll.status == 200 and poll.json()["text"] == "two"
        assert poll.headers["ZChannels-Position"] == missed.id


def test_a_member_added_again_from_a_position_gets_nothing_twice():
    with TestServer([DEMO_CONSUMERS], config=SETTINGS) as server:
        ws = chat(server)
        first = events(ws)[-1]["pos"]
        say("one")
        assert [e["text"] for e in events(ws)] == ["one"]
        recovery = server.layer.group_add("chat.room", ws.reply_channel, since=first)
        assert recovery.added and recovery.missed == 0 and ws.receive_nothing()


def test_a_client_that_floods_its_room_is_limited_here_as_in_the_broker():
    """The history budgets of the broker hold in the test server too: what one
    connection adds per second is limited (on the fake clock), and another room's
    member recovers exactly."""
    settings = config.parse({"history": {
        "groups": [{"pattern": "chat.*", "size": 1000}], "max_bytes": 20_000,
        "connection_messages_per_second": 5, "connection_bytes_per_second": 0}})
    with TestServer([DEMO_CONSUMERS], config=settings) as server:
        victim = server.websocket("/ws/chat/victim?name=v")
        last = events(victim)[-1]["pos"]
        victim.close()
        group_send("chat.victim", text=json.dumps({"type": "message", "text": "missed"}))
        attacker = server.websocket("/ws/chat/attacker1?name=a")
        events(attacker)
        over_rate = counters.get("history_over_rate", 0)
        for i in range(30):
            attacker.send(f"{i:04d}" + "x" * 2000)
        got = events(attacker)  # every message went out live, with its position
        assert [e["text"][:4] for e in got] == [f"{i:04d}" for i in range(30)]
        assert [int(e["pos"].rpartition(":")[2]) for e in got] == list(range(2, 32))
        assert counters["history_over_rate"] - over_rate == 25
        back = server.websocket(f"/ws/chat/victim?name=v&since={last}")
        assert [e["type"] for e in events(back)] == ["leave", "message", "join"]
