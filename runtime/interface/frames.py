"""Server-to-client WebSocket frames, built by hand so that one message for a whole
group is framed once and the same bytes are written to every member."""
from __future__ import annotations

import struct
from typing import Any

from zchannels.wire import frames as wire

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODES: dict[object, int] = {wire.KIND_TEXT: OPCODE_TEXT, wire.KIND_BYTES: OPCODE_BINARY}


def frame(opcode: int, payload: bytes, rsv: int = 0) -> bytes:
    """A complete, unmasked server-to-client WebSocket frame; `rsv` 0x40 (RSV1) marks
    a payload compressed with permessage-deflate."""
    n = len(payload)
    first = 0x80 | rsv | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def frame_message(kind: Any, payload: bytes) -> bytes:
    """The frame of a message of `kind` ``text`` or ``bytes`` (anything else: binary)."""
    return frame(OPCODES.get(kind, OPCODE_BINARY), payload)
