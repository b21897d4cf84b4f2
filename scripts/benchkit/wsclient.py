"""A lean asyncio WebSocket client for load generation.

One `asyncio.Protocol` per connection, callbacks instead of a Future per message,
frames masked once with Tornado's C masking function when it is built, and only as
much parsing as a load client needs: data frames, close, ping (answered with pong).
The load generator must not be what is measured.

With ``deflate=True`` a connection offers permessage-deflate (RFC 7692) with
``server_no_context_takeover``, as zchannels always answers, so that any server
compresses each message on its own; it then inflates what arrives compressed (RSV1)
and can send `deflated_frame`s. A message compressed on its own inflates to the same
bytes for every member of a room, so a client process inflates each distinct one once
(`inflate`, a small cache). Each connection counts the bytes it read and wrote after
the handshake (`bytes_in`, `bytes_out`): frames, headers included, as on the socket.
"""
from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from typing import Callable
from urllib.parse import urlsplit

try:
    from tornado.speedups import websocket_mask as _mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover (Tornado ships the C extension on Linux wheels)
    from tornado.util import _websocket_mask_python as _mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HANDSHAKE_LIMIT = 16384  # bytes of response headers before we give up
_CLIENT_MASK = os.urandom(4)
RSV1 = 0x40  # the frame's message is compressed (permessage-deflate)
DEFLATE_OFFER = "permessage-deflate; server_no_context_takeover"
SYNC_TAIL = b"\x00\x00\xff\xff"  # every compressed message ends so; not sent (RFC 7692 7.2.1)
CLIENT_LEVEL = 1  # zlib level of what the client compresses (as the servers under test)
CLIENT_MEM_LEVEL = 8
INFLATED_KEPT = 1024  # distinct compressed messages whose inflated bytes a process keeps
_inflated: dict[bytes, bytes] = {}


class HandshakeError(Exception):
    pass


def masked_frame(opcode: int, payload: bytes, mask: bytes | None = _CLIENT_MASK,
                 rsv: int = 0, fin: bool = True, length: int | None = None) -> bytes:
    """A complete client frame, ready to write as is: masked as RFC 6455 section 5.3
    requires (`mask` None: unmasked, which a server must refuse), `rsv` 0x40 is RSV1
    (permessage-deflate's "compressed"), `fin` False a fragment; `length` announces
    another payload length than the payload's (the fuzzer's lies). The one client-side
    frame builder of the bench, the tests (tests/rawws.py) and scripts/fuzz.py."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", first, bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + _mask(mask, payload)


def deflate(payload: bytes) -> bytes:
    """`payload` compressed on its own (no reference to any earlier message, so valid
    whatever context the server keeps), without the 4-byte tail."""
    compressor = zlib.compressobj(CLIENT_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS,
                                  CLIENT_MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(SYNC_TAIL) else data


def deflated_frame(opcode: int, payload: bytes, mask: bytes = _CLIENT_MASK) -> bytes:
    """A compressed client frame (RSV1 set) of `payload`, or a plain one when compressing
    would not make it smaller (RFC 7692 lets an endpoint send any message plain). Only for
    a connection that agreed to permessage-deflate; build it once and reuse it."""
    data = deflate(payload)
    if len(data) >= len(payload):
        return masked_frame(opcode, payload, mask)
    return masked_frame(opcode, data, mask, RSV1)


def inflate(data: bytes) -> bytes:
    """A message compressed on its own (server_no_context_takeover), inflated; each
    distinct one only once per process while it is among the last INFLATED_KEPT."""
    found = _inflated.get(data)
    if found is None:
        if len(_inflated) >= INFLATED_KEPT:
            _inflated.clear()
        found = _inflated[data] = zlib.decompressobj(-zlib.MAX_WBITS).decompress(
            data + SYNC_TAIL)
    return found


def extension_params(headers: bytes, name: str = "permessage-deflate") -> list[str] | None:
    """The parameters (lowercased, as written) the response's Sec-WebSocket-Extensions
    header gives extension `name`, or None when it does not name it."""
    for line in headers.split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() != "sec-websocket-extensions":
            continue
        for offer in value.split(","):
            ext, *params = (part.strip().lower() for part in offer.split(";"))
            if ext == name:
                return [p.replace(" ", "") for p in params if p]
    return None


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
    With `deflate`, it also fails unless the server agreed to permessage-deflate.
    """

    def __init__(self, host: str, port: int, path: str, deflate: bool = False) -> None:
        offer = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode()
        self.offered_deflate = deflate
        self.deflate = False  # agreed by the server
        # Set when the server did not agree to server_no_context_takeover: then its
        # messages refer to earlier ones and one inflater per connection must keep them.
        self.inflater: "zlib._Decompress | None" = None
        self.fragment_compressed = False
        self.bytes_in = 0  # bytes read after the handshake (frames, headers included)
        self.bytes_out = 0  # bytes written after the handshake
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
            if self.offered_deflate and not self._agree(bytes(self.buffer[:end])):
                return
            del self.buffer[:end + 4]
            self.handshaken = True
            self.bytes_in = len(self.buffer)
            if not self.opened.done():
                self.opened.set_result(None)
        else:
            self.bytes_in += len(data)
        self._parse_frames()

    def _agree(self, headers: bytes) -> bool:
        params = extension_params(headers)
        if params is None:
            self._fail_handshake("the server did not agree to permessage-deflate (for "
                                 "zchannels: compression = true in its config)")
            return False
        self.deflate = True
        if "server_no_context_takeover" not in params:
            self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        return True

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
            if b0 & RSV1 and not self.deflate:
                self.close(1002)  # the server compressed what it did not negotiate
                return
            self._frame(b0 & 0x80, b0 & 0x0F, payload, b0 & RSV1)
            if self.closed:
                return

    def _frame(self, fin: int, opcode: int, payload: bytes, compressed: int = 0) -> None:
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
            self.fragment_compressed = bool(compressed)
        if not fin:
            self.fragments.append(payload)
            return
        if self.fragments:
            self.fragments.append(payload)
            payload = b"".join(self.fragments)
            self.fragments = []
        if self.fragment_compressed:
            if self.inflater is not None:
                payload = self.inflater.decompress(payload + SYNC_TAIL)
            else:
                payload = inflate(payload)
        self.on_message(self.fragment_opcode, payload)

    def send_frame(self, frame: bytes) -> None:
        """Write a frame made by `masked_frame` (ignored once closed)."""
        if not self.closed and self.transport is not None:
            self.bytes_out += len(frame)
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


async def connect(url: str, timeout: float = 10.0, deflate: bool = False
                  ) -> WebSocketProtocol:
    """Open a WebSocket connection to a ws:// URL; HandshakeError or OSError on failure.
    With `deflate`, offer permessage-deflate and fail unless the server agrees."""
    host, port, path = parse_url(url)
    loop = asyncio.get_running_loop()

    async def opening() -> WebSocketProtocol:
        _, protocol = await loop.create_connection(
            lambda: WebSocketProtocol(host, port, path, deflate), host, port)
        await protocol.opened
        return protocol
    return await asyncio.wait_for(opening(), timeout)
