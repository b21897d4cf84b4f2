"""A lean keep-alive HTTP/1.1 client for load generation: one request in flight per
connection, `Content-Length` and chunked bodies, reconnects when the server closes
(gunicorn's default sync workers close after every response)."""
from __future__ import annotations

import asyncio
from typing import Callable

HEADER_LIMIT = 65536  # bytes of response headers before the response counts as broken


class ResponseError(Exception):
    pass


class HttpProtocol(asyncio.Protocol):
    """Parses responses; calls `on_response(status, body, keep_alive)` for each and
    `on_lost()` when the connection goes away."""

    def __init__(self, on_response: Callable[[int, bytes, bool], None],
                 on_lost: Callable[[], None]) -> None:
        self.on_response = on_response
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[int, bool, int | None, bool] | None = None  # status, keep, length, chunked
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._parse():
            pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head is not None and self.head[2] == -1:  # a body delimited by the close
            status = self.head[0]
            self.head = None
            self.on_response(status, bytes(self.buffer), False)
        self.on_lost()

    def _parse(self) -> bool:
        buf = self.buffer
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > HEADER_LIMIT:
                    raise ResponseError("response headers too long")
                return False
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end + 4]
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ResponseError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            keep_alive = parts[0] == "HTTP/1.1"
            length, chunked = None, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    chunked = "chunked" in value
                elif name == "connection":
                    keep_alive = value != "close" if parts[0] == "HTTP/1.1" \
                        else value == "keep-alive"
            if length is None and not chunked and status not in (204, 304):
                keep_alive = False  # the body runs until the server closes
                length = -1
            self.head = (status, keep_alive, length, chunked)
        status, keep_alive, length, chunked = self.head
        if chunked:
            body = self._chunked_body()
            if body is None:
                return False
        elif length == -1:
            return False  # read to close: completed in connection_lost's caller
        else:
            n = length or 0
            if len(buf) < n:
                return False
            body = bytes(buf[:n])
            del buf[:n]
        self.head = None
        self.on_response(status, body, keep_alive)
        return True

    def _chunked_body(self) -> bytes | None:
        buf, pos = self.buffer, 0
        chunks: list[bytes] = []
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(bytes(buf[pos:end]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", end)
                if buf[end:end + 4] == b"\r\n\r\n":
                    trailer_end = end
                if trailer_end < 0:
                    return None
                del buf[:trailer_end + 4]
                return b"".join(chunks)
            if len(buf) < end + 2 + size + 2:
                return None
            chunks.append(bytes(buf[end + 2:end + 2 + size]))
            pos = end + 2 + size + 2


def request_bytes(host: str, port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "User-Agent: zchannels-bench\r\nAccept: */*\r\n\r\n").encode()
