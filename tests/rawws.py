"""A WebSocket client made of bytes, for tests that send what no library would: masked
frames with any bits set, compressed payloads, fragments around control frames."""
from __future__ import annotations

import asyncio
import struct
import zlib

from benchkit.wsclient import masked_frame  # noqa: F401 (the tests' frame builder)

WAIT = 10.0  # seconds: the bound on any single wait


async def handshake(port: int, path: str, extra: str = ""
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    """Open a WebSocket with `extra` header lines ("Name: value\\r\\n"); the response's
    head as text (status line and headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    return reader, writer, response.decode("latin-1")


async def raw_websocket(port: int, path: str, extra: str = ""
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer, response = await handshake(port, path, extra)
    assert response.startswith("HTTP/1.1 101"), response
    return reader, writer


async def read_close_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame, which must be a close frame: its code and reason."""
    header = await asyncio.wait_for(reader.readexactly(2), WAIT)
    assert header[0] == 0x88 and header[1] < 126, header  # final, close, unmasked
    payload = await asyncio.wait_for(reader.readexactly(header[1]), WAIT)
    return struct.unpack("!H", payload[:2])[0], payload[2:]


def deflated(data: bytes) -> bytes:
    """`data` compressed as a client compresses one message (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next unfragmented server frame: its first byte and its payload."""
    header = await asyncio.wait_for(reader.readexactly(2), WAIT)
    n = header[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), WAIT))[0]
    elif n == 127:
        n = struct.unpack("!Q", await asyncio.wait_for(reader.readexactly(8), WAIT))[0]
    return header[0], await asyncio.wait_for(reader.readexactly(n), WAIT)
