"""permessage-deflate (RFC 7692): what the interface agrees to, and how it compresses.

The server always compresses each message on its own (it answers every offer with
``server_no_context_takeover``, which RFC 7692 7.1.1.1 lets a server do even when
the client did not ask). A message's compressed frame then depends only on the
window size, not on the connection, so a group message is compressed once per
interface and the same bytes go to every member that negotiated the same window,
just as an uncompressed frame is built once. The price: no dictionary carried
from one message to the next (measured in docs/benchmarks.md).

One zlib stream per window size serves every message: ``Z_FULL_FLUSH`` after each
message ends it on a byte boundary with no reference to anything before, which is
exactly a stream that restarted. A client that asks for an 8-bit window (zlib can
no longer make one) gets stored blocks: valid deflate with no back-references.

What a client sends is inflated by Tornado's own decompressor (``compat``), with the
size limit applied to the inflated message: a zip bomb is closed with 1009.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from zchannels.core.config import Config
from zchannels.core.stats import counters

NAME = "permessage-deflate"
RSV1 = 0x40
SYNC_TAIL = b"\x00\x00\xff\xff"  # what every flushed message ends with; not sent (7.2.1)
_BITS = re.compile(r"[1-9][0-9]?")  # 1*DIGIT without leading zeros (7.1.2)


class Deflater:
    """Compresses whole messages, each independent of the others, for one window size."""

    __slots__ = ("level", "mem_level", "window_bits", "min_bytes", "_zlib")

    def __init__(self, level: int, mem_level: int, window_bits: int, min_bytes: int) -> None:
        # zlib cannot make an 8-bit window: stored blocks (level 0) respect any window.
        self.level = level if window_bits > 8 else 0
        self.mem_level = mem_level
        self.window_bits = window_bits
        self.min_bytes = max(min_bytes, 1)  # an empty message is never worth it
        self._zlib = zlib.compressobj(self.level, zlib.DEFLATED, -max(window_bits, 9),
                                      mem_level)

    def compress(self, payload: bytes) -> bytes | None:
        """The message's compressed payload, without the 4-byte tail; None when the
        message is below min_bytes or would not get smaller."""
        if len(payload) < self.min_bytes:
            return None
        data = self._zlib.compress(payload) + self._zlib.flush(zlib.Z_FULL_FLUSH)
        counters.incr("deflated")
        counters.incr("deflate_bytes_in", len(payload))
        if data.endswith(SYNC_TAIL):
            data = data[:-4]
        if len(data) >= len(payload):
            counters.incr("deflate_not_smaller")
            return None
        counters.incr("deflate_bytes_out", len(data))
        return data


@dataclass(frozen=True)
class Agreement:
    """What one connection agreed to: the response header, the compressor for what the
    server sends, and whether the client keeps its context between messages (then the
    server's inflater must keep it too)."""

    response: str
    deflater: Deflater
    client_context: bool


_deflaters: dict[tuple[int, int, int, int], Deflater] = {}


def deflater(config: Config, window_bits: int) -> Deflater:
    """The process's one compressor for this window size (and the configured level)."""
    key = (config.compression_level, config.compression_mem_level, window_bits,
           config.compression_min_bytes)
    found = _deflaters.get(key)
    if found is None:
        found = _deflaters[key] = Deflater(*key)
    return found


def parse_offers(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """``Sec-WebSocket-Extensions`` as (extension, [(parameter, value or None)]) in the
    client's order of preference. Values may be quoted; names are case-insensitive."""
    offers = []
    for offer in header.split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if not name:
            continue
        parsed: list[tuple[str, str | None]] = []
        for param in params:
            key, sep, value = param.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            parsed.append((key.strip().lower(), value if sep else None))
        offers.append((name.lower(), parsed))
    return offers


def negotiate(header: str | None, config: Config) -> Agreement | None:
    """The first permessage-deflate offer the server can accept (7.1), or None: then the
    connection is not compressed."""
    if not config.compression or not header:
        return None
    for name, params in parse_offers(header):
        if name == NAME:
            agreement = _accept(params, config)
            if agreement is not None:
                return agreement
    return None


def _accept(params: list[tuple[str, str | None]], config: Config) -> Agreement | None:
    """An offer is declined (None) for a parameter that is unknown, repeated, or has
    an invalid value (7.1: the server must not accept such an offer)."""
    if len({key for key, _ in params}) != len(params):
        return None
    window = config.compression_window_bits
    client_context = True
    response = [NAME, "server_no_context_takeover"]
    for key, value in params:
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            if key == "client_no_context_takeover":
                client_context = False
                response.append(key)
        elif key == "server_max_window_bits":
            bits = _window_bits(value)
            if bits is None:
                return None
            window = min(window, bits)
            response.append(f"{key}={window}")
        elif key == "client_max_window_bits":
            # Without a value the client only says it understands the parameter: the
            # server may then bound the client's window (and so its inflater's memory).
            bits = 15 if value is None else _window_bits(value)
            if bits is None:
                return None
            if value is not None or config.compression_window_bits < 15:
                response.append(f"{key}={min(bits, config.compression_window_bits)}")
        else:
            return None
    return Agreement("; ".join(response), deflater(config, window), client_context)


def _window_bits(value: str | None) -> int | None:
    if value is None or not _BITS.fullmatch(value) or not 8 <= int(value) <= 15:
        return None
    return int(value)
