"""What ``group_add(..., since=)`` puts on the wire and returns, read by a real ROUTER
standing in for the broker: a join with history goes as ``H``; a plain one as before;
an HTTP request's ``Last-Event-ID`` is used by itself, for groups with history only."""
import threading

import pytest

from broker_rig import layer_with_broker

from zchannels.wire import frames as wire
from zchannels.api.results import Recovery
from zchannels.api.message import Message

HISTORY = {"groups": [{"pattern": "chat.*", "size": 10}]}


@pytest.fixture
def pair():
    with layer_with_broker(history=HISTORY) as made:
        yield made


def answered(layer, broker, call, history=None):
    """Run `call` (which waits for an answer) while the broker answers it: (what the
    broker received, what the call returned)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    frames = broker.recv_multipart()
    request = wire.decode(frames[3])
    answer = {"req": request["req"], "ok": True}
    if history is not None:
        answer["history"] = history
    broker.send_multipart([frames[0], wire.TO_WORKER_ANSWER, frames[2], wire.encode(answer)])
    thread.join(5)
    assert not thread.is_alive()
    return frames[1:], result[0]


def test_a_join_with_since_goes_as_h_and_returns_a_recovery(pair):
    layer, broker = pair
    history = {"ok": True, "missed": 3, "position": "e:9", "key": "pos"}
    frames, result = answered(layer, broker,
                              lambda: layer.group_add("chat.a", "i1!5", since="e:6"), history)
    assert frames[0] == wire.VERB_HISTORY and frames[1] == b"i1"
    assert wire.decode(frames[2]) == {"op": "group_add", "group": "chat.a", "req": 1,
                                      "conn": 5, "since": "e:6"}
    assert result == Recovery(True, True, 3, "e:9", None) and result


def test_a_plain_join_is_unchanged(pair):
    layer, broker = pair
    frames, result = answered(layer, broker, lambda: layer.group_add("chat.a", "i1!5"))
    assert frames[0] == wire.VERB_TO and "since" not in wire.decode(frames[2])
    assert result is True


def event_stream_request(layer, last_event_id):
    return Message({"channel": "http.request", "reply_channel": "i1!7",
                    "headers": [["Host", "x"], ["Last-Event-ID", last_event_id]]}, b"", layer)


def test_last_event_id_recovers_by_itself_in_groups_with_history_only(pair):
    layer, broker = pair
    message = event_stream_request(layer, "e:4")
    assert message.reply_channel.since == "e:4"
    history = {"ok": False, "reason": "epoch", "position": "f:0", "key": "pos"}
    frames, result = answered(layer, broker,
                              lambda: layer.group_add("chat.a", message.reply_channel), history)
    assert frames[0] == wire.VERB_HISTORY and wire.decode(frames[2])["since"] == "e:4"
    assert result == Recovery(True, False, 0, "f:0", "epoch") and result
    frames, result = answered(layer, broker,
                              lambda: layer.group_add("news", message.reply_channel))
    assert frames[0] == wire.VERB_TO and result is True


def test_a_bounced_join_is_not_added_and_says_why(pair):
    layer, broker = pair
    result = []
    thread = threading.Thread(target=lambda: result.append(
        layer.group_add("chat.a", "i1!5", since="e:1")))
    thread.start()
    frames = broker.recv_multipart()
    broker.send_multipart([frames[0], wire.TO_WORKER_BOUNCE, b"i1", frames[3]])
    thread.join(5)
    assert not result[0] and result[0].reason == "unreachable"


def test_a_consumers_group_send_to_a_group_with_history_names_its_connection(pair):
    layer, broker = pair
    layer.group_send("chat.a", text="outside any event")
    layer.begin_event((b"i1", 7))
    layer.group_send("chat.a", text="for i1!7")
    layer.group_send("news", text="no history: nothing to limit")
    layer.group_send("chat.a", text="later", delay=5)
    layer.begin_event(None)
    got = [broker.recv_multipart()[1:] for _ in range(4)]
    assert got[0][:2] == [wire.VERB_GROUP, b"chat.a"] and len(got[0]) == 4
    assert got[1][:2] == [wire.VERB_GROUP, b"chat.a"] and got[1][3:] == [b"for i1!7", b"i1!7"]
    assert got[2][:2] == [wire.VERB_GROUP, b"news"] and len(got[2]) == 4
    assert got[3][1:3] == [wire.VERB_GROUP, b"chat.a"] and got[3][-1] == b"i1!7"
