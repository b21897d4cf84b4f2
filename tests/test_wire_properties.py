"""Properties of the wire format (runtime/wire/frames.py), checked with hypothesis."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zchannels.wire import frames as wire
from zchannels.core.exceptions import BadMessage

# Headers are small ujson objects: keys are strings; values are JSON scalars, lists, objects.
# Surrogates cannot be UTF-8 encoded, and ujson keeps 64-bit integers only.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
HEADERS = st.dictionaries(TEXT, VALUES, max_size=8)

FAST = settings(max_examples=200, deadline=None)


@FAST
@given(HEADERS)
def test_encode_then_decode_gives_the_header_back(header):
    assert wire.decode(wire.encode(header)) == header


@FAST
@given(st.binary(max_size=200) | TEXT.map(str.encode))
def test_decode_returns_a_dict_or_raises_bad_message(frame):
    try:
        header = wire.decode(frame)
    except BadMessage:
        return
    assert isinstance(header, dict)


@FAST
@given(st.lists(st.sampled_from([b"[", b"{", b'"a":', b"]", b"}", b",", b"1", b'"x"',
                                 b"null", b"\xff", b"\\u", b" "]), max_size=60).map(b"".join))
def test_decode_of_json_like_garbage_raises_only_bad_message(frame):
    try:
        assert isinstance(wire.decode(frame), dict)
    except BadMessage:
        pass


@pytest.mark.parametrize("frame", [b"[" * 100_000, b'{"a":' * 100_000, b"1e999", b"NaN"])
def test_decode_of_pathological_frames_raises_bad_message(frame):
    with pytest.raises(BadMessage):
        wire.decode(frame)


INTERFACE_IDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                        max_size=20).filter(lambda s: wire.REPLY_SEPARATOR not in s)


@FAST
@given(INTERFACE_IDS, st.integers(0, 10**12))
def test_a_reply_channel_name_splits_back_into_its_parts(interface_id, conn):
    name = wire.reply_channel_name(interface_id, conn)
    assert wire.split_reply_channel(name) == (interface_id.encode(), conn)


@FAST
@given(st.text(max_size=30) | st.integers() | st.none() | st.binary(max_size=10))
def test_split_reply_channel_raises_only_value_error(name):
    try:
        interface_id, conn = wire.split_reply_channel(name)
    except ValueError:
        return
    # Accepted: "<non-empty id without !>!<ASCII digits>".
    text_id, _, digits = name.partition(wire.REPLY_SEPARATOR)
    assert interface_id == text_id.encode() and interface_id
    assert digits.isascii() and digits.isdigit() and int(digits) == conn


@FAST
@given(st.text(max_size=250) | st.integers() | st.none() | st.binary(max_size=10))
def test_check_name_accepts_exactly_short_printable_non_empty_strings(name):
    valid = (isinstance(name, str) and name != "" and name.isprintable()
             and len(name.encode("utf-8", "surrogatepass")) <= wire.MAX_NAME_BYTES)
    try:
        result = wire.check_name(name, "group")
    except ValueError:
        assert not valid
    else:
        assert valid and result == name


@FAST
@given(st.integers(-10, 70000) | st.booleans() | st.floats() | st.none() | TEXT,
       st.text(max_size=130))
def test_check_close_accepts_exactly_the_sendable_codes(code, reason):
    sendable = (type(code) is int and (code in wire.SENDABLE_CLOSE_CODES
                                       or 3000 <= code <= 4999))
    valid = sendable and len(reason.encode("utf-8", "surrogatepass")) <= 123
    try:
        assert wire.check_close(code, reason) == code
    except ValueError:
        assert not valid
    else:
        assert valid


@FAST
@given(st.one_of(st.none(), TEXT), st.one_of(st.none(), st.binary(max_size=20)))
def test_payload_of_takes_exactly_one_of_text_and_bytes(text, data):
    if (text is None) == (data is None):
        with pytest.raises(ValueError):
            wire.payload_of(text, data)
        return
    kind, payload = wire.payload_of(text, data)
    if text is not None:
        assert (kind, payload.decode()) == (wire.KIND_TEXT, text)
    else:
        assert (kind, payload) == (wire.KIND_BYTES, data)
