"""Unit tests for zchannels.wire.frames: header encoding, reply channel names, name
validation and payload framing."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchannels.wire import frames as wire
from zchannels.core.exceptions import BadMessage, GroupError, InvalidGroupName, InvalidName

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Plain text, plus text drawn mostly from characters JSON encoders like to escape.
strings = st.one_of(st.text(), st.text(alphabet='/\\"\'<>&é€\u2028\U0001f600 ab\n\x00'))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), INT64,
              st.floats(allow_nan=False, allow_infinity=False), strings),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(strings, children, max_size=5)),
    max_leaves=20,
)
headers = st.dictionaries(strings, json_values, max_size=8)
interface_ids = st.text(min_size=1).filter(lambda s: wire.REPLY_SEPARATOR not in s)


# --- encode / decode -----------------------------------------------------------------------

@given(header=headers)
def test_encode_decode_round_trip(header):
    frame = wire.encode(header)
    assert isinstance(frame, bytes)
    assert wire.decode(frame) == header


def test_encode_keeps_slashes_and_unicode_unescaped():
    frame = wire.encode({"path": "/ws/chat/café", "emoji": "\U0001f600"})
    assert frame == '{"path":"/ws/chat/café","emoji":"\U0001f600"}'.encode()


@given(frame=st.binary(max_size=200))
def test_decode_garbage_raises_bad_message_or_returns_a_dict(frame):
    try:
        header = wire.decode(frame)
    except BadMessage as e:
        assert isinstance(e, ValueError)
        assert str(e).startswith("header is")
    else:
        assert isinstance(header, dict)


@pytest.mark.parametrize("frame", [b"", b"{", b'{"a":1}x', b"\xff\xfe", b'{"a":"\xff"}',
                                   b"[" * 10_000, b"{'a': 1}"])
def test_decode_invalid_json(frame):
    with pytest.raises(BadMessage, match="header is not JSON"):
        wire.decode(frame)


@pytest.mark.parametrize("frame, kind", [(b"[]", "list"), (b"[1, 2]", "list"), (b"1", "int"),
                                         (b"1.5", "float"), (b'"s"', "str"),
                                         (b"null", "NoneType"), (b"true", "bool")])
def test_decode_non_object_json(frame, kind):
    with pytest.raises(BadMessage, match=f"header is a JSON {kind}, not an object"):
        wire.decode(frame)


def test_bad_message_is_a_value_error():
    assert issubclass(BadMessage, ValueError)


# --- reply channel names -------------------------------------------------------------------

@given(interface_id=interface_ids, conn_id=st.integers(min_value=0))
def test_reply_channel_name_round_trip(interface_id, conn_id):
    name = wire.reply_channel_name(interface_id, conn_id)
    assert wire.split_reply_channel(name) == (interface_id.encode(), conn_id)


def test_reply_channel_name_format():
    assert wire.reply_channel_name("i3f9a", 17) == "i3f9a!17"
    assert wire.split_reply_channel("i3f9a!17") == (b"i3f9a", 17)


@pytest.mark.parametrize("name", ["", "i3f9a", "!17", "i3f9a!", "i3f9a!-1", "i3f9a!+1",
                                  "i3f9a!1.5", "i3f9a!x", "i3f9a! 1", "i3f9a!1 ", "a!b!1",
                                  "websocket.receive", "a!\u0661\u0662"])
def test_split_reply_channel_rejects_malformed_names(name):
    with pytest.raises(ValueError, match="is not a reply channel"):
        wire.split_reply_channel(name)


@pytest.mark.parametrize("name", [None, 17, b"i3f9a!17"])
def test_split_reply_channel_rejects_non_strings(name):
    with pytest.raises(ValueError, match="a reply channel is a string"):
        wire.split_reply_channel(name)


# --- channel and group names ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["chat", "websocket.receive", "room/42 with spaces",
                                  "x" * wire.MAX_NAME_BYTES,
                                  "é" * (wire.MAX_NAME_BYTES // 2)])
def test_check_name_accepts(name):
    assert wire.check_name(name, "group") is name


@pytest.mark.parametrize("name, message", [
    pytest.param("", "group name must be a non-empty string", id="empty"),
    pytest.param(None, "group name must be a non-empty string", id="none"),
    pytest.param(b"chat", "group name must be a non-empty string", id="bytes"),
    pytest.param(42, "group name must be a non-empty string", id="int"),
    pytest.param("x" * (wire.MAX_NAME_BYTES + 1), "longer than 200 bytes", id="too-long"),
    pytest.param("é" * (wire.MAX_NAME_BYTES // 2) + "x", "longer than 200 bytes",
                 id="too-long-in-utf-8"),
    pytest.param("chat\n", "contains control characters", id="newline"),
    pytest.param("a\x00b", "contains control characters", id="nul"),
    pytest.param("a\tb", "contains control characters", id="tab"),
])
def test_check_name_rejects(name, message):
    with pytest.raises(ValueError, match=message):
        wire.check_name(name, "group")


def test_a_name_that_cannot_be_used_raises_a_specific_error_that_says_the_limit():
    """Issue 21, item 6: a group name is a GroupError a consumer can catch (and still a
    ValueError); a channel name is not a GroupError."""
    with pytest.raises(InvalidGroupName, match="longer than 200 bytes") as raised:
        wire.check_name("x" * 201, "group")
    assert isinstance(raised.value, GroupError) and isinstance(raised.value, ValueError)
    with pytest.raises(InvalidName, match="channel name .* control characters") as raised:
        wire.check_name("a\x85", "channel")
    assert not isinstance(raised.value, GroupError)
    with pytest.raises(InvalidGroupName, match="not valid Unicode"):
        wire.check_name("a\ud800", "group")


# --- payload framing -----------------------------------------------------------------------

@given(text=st.text())
def test_payload_of_text_is_utf_8(text):
    assert wire.payload_of(text, None) == (wire.KIND_TEXT, text.encode("utf-8"))


@pytest.mark.parametrize("data", [b"\x00\xffraw", bytearray(b"\x00\xffraw"),
                                  memoryview(b"\x00\xffraw")])
def test_payload_of_bytes_like(data):
    kind, payload = wire.payload_of(None, data)
    assert kind == wire.KIND_BYTES
    assert type(payload) is bytes and payload == b"\x00\xffraw"


def test_payload_of_empty_values_are_still_given():
    assert wire.payload_of("", None) == (wire.KIND_TEXT, b"")
    assert wire.payload_of(None, b"") == (wire.KIND_BYTES, b"")


@pytest.mark.parametrize("text, data, error, message", [
    pytest.param("a", b"a", ValueError, "not both", id="both"),
    pytest.param("", b"", ValueError, "not both", id="both-empty"),
    pytest.param(None, None, ValueError, "give text= or bytes=", id="neither"),
    pytest.param(b"a", None, TypeError, "text must be str, not bytes", id="text-bytes"),
    pytest.param(1, None, TypeError, "text must be str, not int", id="text-int"),
    pytest.param(None, "a", TypeError, "bytes must be bytes-like, not str", id="bytes-str"),
    pytest.param(None, [1], TypeError, "bytes must be bytes-like, not list", id="bytes-list"),
])
def test_payload_of_errors(text, data, error, message):
    with pytest.raises(error, match=message):
        wire.payload_of(text, data)


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1008, 1011, 1013, 3000, 4404, 4999])
def test_check_close_accepts_sendable_codes(code):
    assert wire.check_close(code, "why") == code


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, True, "1000",
                                  None, 1000.0])
def test_check_close_rejects_codes_a_server_may_not_send(code):
    with pytest.raises(ValueError, match="cannot be sent"):
        wire.check_close(code)


def test_check_close_limits_the_reason_to_123_bytes():
    wire.check_close(1000, "é" * 61)
    with pytest.raises(ValueError, match="123 bytes"):
        wire.check_close(1000, "é" * 62)


@pytest.mark.parametrize("delay", [0, -1, 0.0, wire.MAX_DELAY + 1, True, "1", None])
def test_a_delay_outside_its_range_is_refused(delay):
    with pytest.raises(ValueError, match="delay must be seconds"):
        wire.check_delay(delay)


def test_a_delay_is_whole_milliseconds_and_at_least_one():
    assert wire.check_delay(0.5) == 500
    assert wire.check_delay(0.0001) == 1
    assert wire.check_delay(wire.MAX_DELAY) == int(wire.MAX_DELAY * 1000)
