"""Unit tests for zchannels.api.message: what a consumer receives (Message, Session)
and how it answers (ReplyChannel), checked against a fake layer that records
what would be sent to the interface."""
from __future__ import annotations

import pytest

from zchannels.wire import frames as wire
from zchannels.api.message import Message, ReplyChannel, Session

NAME = "i3f9a!17"


class FakeLayer:
    """Records `to_interface` calls instead of sending them."""

    def __init__(self):
        self.calls = []

    def to_interface(self, reply_channel, header, payload=None):
        self.calls.append((str(reply_channel), header, payload))


@pytest.fixture
def layer():
    return FakeLayer()


@pytest.fixture
def reply(layer):
    return ReplyChannel(NAME, layer)


def _message(layer, payload=b"", **content):
    return Message({"channel": "websocket.receive", **content}, payload, layer)


# --- Message -------------------------------------------------------------------------------

def test_text_frame(layer):
    message = _message(layer, "héllo".encode(), kind=wire.KIND_TEXT)
    assert message.text == "héllo"
    assert message.bytes is None


def test_binary_frame(layer):
    message = _message(layer, b"\x00\xff", kind=wire.KIND_BYTES)
    assert message.bytes == b"\x00\xff"
    assert message.text is None


def test_no_payload_kind(layer):
    message = _message(layer, b"ignored")
    assert message.text is None and message.bytes is None
    assert message.payload == b"ignored"


def test_content_access(layer):
    message = _message(layer, path="/ws/chat/lobby", query_string="a=1")
    assert message.channel == "websocket.receive"
    assert message.path == "/ws/chat/lobby"
    assert message["query_string"] == "a=1"
    assert message.get("query_string") == "a=1"
    assert message.get("missing", 5) == 5
    with pytest.raises(KeyError):
        message["missing"]


def test_path_missing_is_none(layer):
    assert _message(layer).path is None


def test_missing_channel_is_a_key_error(layer):
    with pytest.raises(KeyError):
        Message({"path": "/ws"}, b"", layer)


def test_headers_lower_cased_and_repeated_ones_joined(layer):
    message = _message(layer, headers=[["Host", "example.com"], ["Cookie", "a=1"],
                                       ["X-Forwarded-For", "10.0.0.1"], ["cookie", "b=2"],
                                       ["COOKIE", "c=3"]])
    assert message.headers == {"host": "example.com", "cookie": "a=1,b=2,c=3",
                               "x-forwarded-for": "10.0.0.1"}


def test_no_headers(layer):
    assert _message(layer).headers == {}


def test_reply_channel(layer):
    message = _message(layer, reply_channel=NAME)
    assert message.reply_channel == ReplyChannel(NAME, layer)
    assert _message(layer).reply_channel is None
    assert _message(layer, reply_channel=None).reply_channel is None


def test_bad_reply_channel_is_rejected(layer):
    with pytest.raises(ValueError, match="is not a reply channel"):
        _message(layer, reply_channel="websocket.receive")


def test_repr(layer):
    assert repr(_message(layer, b"abc", reply_channel=NAME)) == \
        f"<Message websocket.receive {NAME} 3B>"


# --- Session -------------------------------------------------------------------------------

@pytest.mark.parametrize("session", [None, {}])
def test_session_empty_when_absent(layer, session):
    message = _message(layer, session=session)
    assert isinstance(message.session, Session)
    assert message.session == {} and not message.session.modified


def test_session_from_content_is_unmodified(layer):
    message = _message(layer, session={"user": "ann", "n": 1})
    assert message.session == {"user": "ann", "n": 1}
    assert message.session.modified is False
    assert message.session["user"] == "ann"
    assert message.session.get("n") == 1
    assert "user" in message.session and len(message.session) == 2
    assert list(message.session.items()) == [("user", "ann"), ("n", 1)]
    assert message.session.modified is False, "reading must not mark the session modified"


def _set(s):
    s["new"] = 1


def _delete(s):
    del s["user"]


def _ior(s):
    s |= {"new": 1}


@pytest.mark.parametrize("mutate, expected", [
    pytest.param(_set, {"user": "ann", "new": 1}, id="setitem"),
    pytest.param(_delete, {}, id="delitem"),
    pytest.param(lambda s: s.update(new=1), {"user": "ann", "new": 1}, id="update-kwargs"),
    pytest.param(lambda s: s.update({"user": "bob"}), {"user": "bob"}, id="update-dict"),
    pytest.param(lambda s: s.pop("user"), {}, id="pop"),
    pytest.param(lambda s: s.setdefault("new", 1), {"user": "ann", "new": 1}, id="setdefault"),
    pytest.param(lambda s: s.clear(), {}, id="clear"),
    pytest.param(lambda s: s.popitem(), {}, id="popitem"),
    pytest.param(_ior, {"user": "ann", "new": 1}, id="in-place-or"),
])
def test_session_mutations_mark_it_modified(mutate, expected):
    session = Session({"user": "ann"})
    assert session.modified is False
    mutate(session)
    assert session == expected
    assert session.modified is True


def test_modified_is_per_session():
    first = Session()
    first["a"] = 1
    assert first.modified and not Session().modified and not Session({"a": 1}).modified


# --- ReplyChannel --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "websocket.receive", "i3f9a", "i3f9a!", "!17",
                                  "i3f9a!x", None, 17])
def test_reply_channel_validates_names(layer, name):
    with pytest.raises(ValueError):
        ReplyChannel(name, layer)


def test_send_text(reply, layer):
    reply.send(text="héllo")
    assert layer.calls == [(NAME, {"op": wire.OP_SEND, "kind": wire.KIND_TEXT},
                            "héllo".encode())]


def test_send_bytes(reply, layer):
    reply.send(bytes=bytearray(b"\x00\x01"))
    assert layer.calls == [(NAME, {"op": wire.OP_SEND, "kind": wire.KIND_BYTES}, b"\x00\x01")]


@pytest.mark.parametrize("kwargs, error", [
    ({}, ValueError),
    ({"text": "a", "bytes": b"a"}, ValueError),
    ({"text": b"a"}, TypeError),
    ({"bytes": "a"}, TypeError),
])
def test_bad_send_sends_nothing(reply, layer, kwargs, error):
    with pytest.raises(error):
        reply.send(**kwargs)
    assert layer.calls == []


def test_accept(reply, layer):
    reply.accept()
    reply.accept(subprotocol="chat.v2")
    assert layer.calls == [(NAME, {"op": wire.OP_ACCEPT}, None),
                           (NAME, {"op": wire.OP_ACCEPT, "subprotocol": "chat.v2"}, None)]


def test_reject(reply, layer):
    reply.reject()
    assert layer.calls == [(NAME, {"op": wire.OP_REJECT}, None)]


def test_close_default(reply, layer):
    reply.close()
    assert layer.calls == [(NAME, {"op": wire.OP_CLOSE, "code": 1000, "reason": ""}, None)]


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 3000, 4000, 4999])
def test_close_with_sendable_code(reply, layer, code):
    reply.close(code, "bye")
    assert layer.calls == [(NAME, {"op": wire.OP_CLOSE, "code": code, "reason": "bye"}, None)]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000,
                                  65535, -1])
def test_close_with_unsendable_code(reply, layer, code):
    with pytest.raises(ValueError, match=f"close code {code} cannot be sent"):
        reply.close(code)
    assert layer.calls == []


@pytest.mark.parametrize("reason", ["x" * 123, "é" * 61 + "x"])
def test_close_reason_up_to_123_bytes(reply, layer, reason):
    reply.close(4000, reason)
    assert layer.calls[0][1]["reason"] == reason


@pytest.mark.parametrize("reason", ["x" * 124, "é" * 62])
def test_close_reason_over_123_bytes(reply, layer, reason):
    with pytest.raises(ValueError, match="123 bytes"):
        reply.close(4000, reason)
    assert layer.calls == []


def test_reply_channel_identity(layer):
    a, b = ReplyChannel(NAME, layer), ReplyChannel(NAME, FakeLayer())
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != ReplyChannel("i3f9a!18", layer)
    assert a != NAME
    assert str(a) == NAME
    assert repr(a) == f"ReplyChannel({NAME!r})"
