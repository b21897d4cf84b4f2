"""permessage-deflate's negotiation and the server's shared compressors (pure logic)."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given, strategies as st

from zchannels.core.config import parse
from zchannels.interface.clients import Outgoing
from zchannels.interface.deflate import Deflater, negotiate, parse_offers

ON = parse({"server": {"compression": True}})
OFF = parse({})


def inflate(data: bytes, window_bits: int = 15) -> bytes:
    """What a client that keeps no context inflates (RFC 7692 7.2.2)."""
    return zlib.decompressobj(-window_bits).decompress(data + b"\x00\x00\xff\xff")


def test_offers_are_parsed_in_order_with_quoted_values():
    assert parse_offers('permessage-deflate; client_max_window_bits, '
                        'Permessage-Deflate; server_max_window_bits="10", x-webkit') == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("permessage-deflate", [("server_max_window_bits", "10")]),
        ("x-webkit", []),
    ]


@pytest.mark.parametrize("offer, response, client_context", [
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover", True),
    # what browsers send: the parameter without a value is not echoed at the default
    ("permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover", True),
    ("permessage-deflate; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover", False),
    ("permessage-deflate; server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover", True),
    ("permessage-deflate; server_max_window_bits=10",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", True),
    ("permessage-deflate; client_max_window_bits=12",
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=12", True),
    # the first acceptable offer wins: the first one here has an unknown parameter
    ("permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=8",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=8", True),
])
def test_acceptable_offers(offer, response, client_context):
    agreement = negotiate(offer, ON)
    assert agreement is not None
    assert agreement.response == response
    assert agreement.client_context is client_context


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_max_window_bits",  # a value is required
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=010",  # no leading zeros
    "permessage-deflate; client_max_window_bits=x",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; mystery",
    "x-webkit-deflate-frame",
    "",
])
def test_offers_the_rfc_says_to_decline(offer):
    assert negotiate(offer, ON) is None


def test_nothing_is_agreed_when_compression_is_off():
    assert negotiate("permessage-deflate", OFF) is None


def test_a_smaller_configured_window_bounds_both_directions():
    config = parse({"server": {"compression": True, "compression_window_bits": 10}})
    agreement = negotiate("permessage-deflate; client_max_window_bits; "
                          "server_max_window_bits=12", config)
    assert agreement is not None
    assert agreement.response == ("permessage-deflate; server_no_context_takeover; "
                                  "client_max_window_bits=10; server_max_window_bits=10")
    assert agreement.deflater.window_bits == 10


def test_connections_with_the_same_window_share_one_compressor():
    a = negotiate("permessage-deflate", ON)
    b = negotiate("permessage-deflate; client_max_window_bits", ON)
    c = negotiate("permessage-deflate; server_max_window_bits=9", ON)
    assert a and b and c
    assert a.deflater is b.deflater and c.deflater is not a.deflater


@given(st.lists(st.binary(max_size=3000) | st.text(max_size=1000).map(str.encode),
                min_size=1, max_size=8),
       st.sampled_from([8, 9, 12, 15]))
def test_every_message_inflates_alone_whatever_came_before(messages, window_bits):
    """One zlib stream serves every message; each must still inflate on its own, with
    the window the client asked for (server_no_context_takeover)."""
    deflater = Deflater(6, 8, window_bits, min_bytes=1)
    for message in messages:
        data = deflater.compress(message)
        if data is None:
            continue  # not smaller: sent as it is
        assert len(data) < len(message)
        assert inflate(data, max(window_bits, 9)) == message


def test_an_eight_bit_window_gets_stored_blocks_that_reference_nothing():
    deflater = Deflater(6, 8, 8, min_bytes=1)
    assert deflater.level == 0
    # stored blocks are never smaller: such messages go out uncompressed
    assert deflater.compress(b"a" * 1000) is None


def test_small_messages_and_messages_that_do_not_shrink_go_out_plain():
    deflater = Deflater(6, 8, 15, min_bytes=32)
    assert deflater.compress(b"x" * 31) is None
    assert deflater.compress(bytes(range(256))) is None  # incompressible
    assert deflater.compress(b"x" * 32) is not None


def test_a_group_message_is_compressed_once_for_every_member_with_that_compressor():
    deflater = Deflater(6, 8, 15, min_bytes=1)
    message = Outgoing("text", b'{"type": "message", "text": "' + b"hi " * 50 + b'"}', {})
    first = message.frame(deflater)
    assert message.frame(deflater) is first
    assert first[0] == 0x80 | 0x40 | 0x1  # final, RSV1, text
    assert message.frame() == b"\x81" + bytes((126,)) + (len(message.payload)).to_bytes(2, "big") \
        + message.payload
    body = first[4:] if first[1] == 126 else first[2:]
    assert inflate(body) == message.payload
