"""A lean asyncio WebSocket client for load generation.

One `asyncio.Protocol` per connection, callbacks instead of a Future per message,
frames masked once with Tornado's C masking function when it is built, and only as
much parsing as a load client needs: data frames, close, ping (answered with pong).
The load generator must not be what is measured.
"""
from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Callable
from urllib.parse import urlsplit

try:
    from tornado.speedups import websocket_mask as _mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover (Tornado ships the C extension on Linux wheels)
    from tornado.util import _websocket_mask_python as _mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HANDSHAKE_LIMIT = 16384  # bytes of response headers before we give up
_CLIENT_MASK = os.urandom(4)


class HandshakeError(Exception):
    pass


def masked_frame(opcode: int, payload: bytes, mask: bytes = _CLIENT_MASK) -> bytes:
    """A complete client frame (FIN set, masked), ready to write as is."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + _mask(mask, payload)


def parse_url(url: str) -> tuple[str, int, str]:
    """(host, port, path with query) of a ws:// or http:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "http"):
        raise ValueError(f"only ws:// and http:// URLs are supported, not {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname or "127.0.0.1", parts.port or 80, path


class WebSocketProtocol(asyncio.Protocol):
    """One client connection. Set `on_message(opcode, payload)` and `on_close(code)`.

    `opened` resolves once the server answered 101 (or fails with HandshakeError).
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.handshaken = False
        self.closed = False
        self.close_code: int | None = None
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0
        self.on_message: Callable[[int, bytes], None] = lambda opcode, payload: None
        self.on_close: Callable[[int | None], None] = lambda code: None

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > HANDSHAKE_LIMIT:
                    self._fail_handshake("response headers too long")
                return
            status_line = bytes(self.buffer[:self.buffer.find(b"\r\n")])
            if not status_line.startswith(b"HTTP/1.1 101"):
                self._fail_handshake(status_line.decode("latin-1"))
                return
            del self.buffer[:end + 4]
            self.handshaken = True
            if not self.opened.done():
                self.opened.set_result(None)
        self._parse_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(f"connection lost: {exc}"))
        if not was_closed:
            self.on_close(self.close_code)

    # -- frames ----------------------------------------------------------------

    def _parse_frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = (buf[2] << 8) | buf[3]
                start = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                start = 10
            if b1 & 0x80:  # a masked server frame is a protocol error; skip the key anyway
                start += 4
            end = start + n
            if len(buf) < end:
                return
            payload = bytes(buf[start:end])
            del buf[:end]
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
            if self.closed:
                return

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode >= OP_CLOSE:
            if opcode == OP_PING:
                self.send_frame(masked_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 \
                    else 1005
                self.close()
            return
        if opcode != OP_CONT:
            self.fragment_opcode = opcode
        if not fin:
            self.fragments.append(payload)
            return
        if self.fragments:
            self.fragments.append(payload)
            payload = b"".join(self.fragments)
            self.fragments = []
        self.on_message(self.fragment_opcode, payload)

    def send_frame(self, frame: bytes) -> None:
        """Write a frame made by `masked_frame` (ignored once closed)."""
        if not self.closed and self.transport is not None:
            self.transport.write(frame)

    def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        if self.transport is not None and self.handshaken:
            self.transport.write(masked_frame(OP_CLOSE, struct.pack("!H", code)))
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self.on_close(self.close_code)

    def _fail_handshake(self, why: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(why))
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def connect(url: str, timeout: float = 10.0) -> WebSocketProtocol:
    """Open a WebSocket connection to a ws:// URL; HandshakeError or OSError on failure."""
    host, port, path = parse_url(url)
    loop = asyncio.get_running_loop()

    async def opening() -> WebSocketProtocol:
        _, protocol = await loop.create_connection(lambda: WebSocketProtocol(host, port, path),
                                                   host, port)
        await protocol.opened
        return protocol
    return await asyncio.wait_for(opening(), timeout)
