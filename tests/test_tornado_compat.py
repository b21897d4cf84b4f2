"""zchannels.interface.compat against real Tornado objects: one test per borrowed
internal, so that a Tornado upgrade which changes one fails here, by name, before
anything else notices. No Tornado object is mocked."""
from __future__ import annotations

import asyncio
import configparser
import contextlib
import logging
import os
import re
import socket
import struct
import zlib
from typing import Any, AsyncIterator

import pytest
import tornado
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from tornado.iostream import IOStream, StreamClosedError

from harness import run
from rawws import WAIT, deflated, masked_frame, raw_websocket, read_close_frame, read_frame
from zchannels.core.stats import counters
from zchannels.interface.compat import (LingeringClose, close_frame_problem, error_reason,
                                        headers_written, inflate_messages, is_finished,
                                        LazyInflater, lingering_close, response_status,
                                        unsent_bytes)

pytestmark = pytest.mark.timeout(60)

MEGABYTE = 1024 * 1024
SETUP_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "setup.cfg")


# --- helpers ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serving(handlers: list[Any], **settings: Any) -> AsyncIterator[int]:
    """A real Tornado application on a 127.0.0.1 port the kernel chose; yields the port."""
    server = tornado.httpserver.HTTPServer(tornado.web.Application(handlers, **settings))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    try:
        yield sockets[0].getsockname()[1]
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), WAIT)


async def fetch(port: int, path: str) -> tornado.httpclient.HTTPResponse:
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False,
                                  request_timeout=WAIT)
    finally:
        client.close()


def drain(sock: socket.socket) -> int:
    """Read everything waiting on a non-blocking socket; the number of bytes."""
    total = 0
    while True:
        try:
            chunk = sock.recv(MEGABYTE)
        except BlockingIOError:
            return total
        if not chunk:
            return total
        total += len(chunk)








class Echo(tornado.websocket.WebSocketHandler):
    """Wired as zchannels.websocket.ConsumerSocket is: Tornado's protocol, lingering."""

    def initialize(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        return lingering_close(super().get_websocket_protocol())

    def open(self) -> None:
        self.seen["protocol"] = type(self.ws_connection)

    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        self.seen["closed"] = True


# --- IOStream -----------------------------------------------------------------------------

def test_unsent_bytes_is_what_tornado_buffered_and_zero_once_closed():
    async def scenario() -> None:
        ours, peer = socket.socketpair()  # the peer does not read until told to
        peer.setblocking(False)
        stream = IOStream(ours)
        try:
            assert unsent_bytes(stream) == 0
            sent = stream.write(b"x" * MEGABYTE)
            buffered = unsent_bytes(stream)
            assert 0 < buffered < MEGABYTE  # the kernel took some, Tornado keeps the rest
            # Without yielding to the loop Tornado cannot write more, so what the peer
            # can read now is exactly what the kernel took.
            received = drain(peer)
            assert received + buffered == MEGABYTE
            while not sent.done():  # Tornado writes the rest as the peer reads
                await asyncio.sleep(0.005)
                received += drain(peer)
            await asyncio.wait_for(sent, WAIT)
            assert unsent_bytes(stream) == 0 and received + drain(peer) == MEGABYTE

            cut_short = stream.write(b"y" * MEGABYTE)
            assert unsent_bytes(stream) > 0
            stream.close()  # Tornado drops its buffer (None) with the stream
            assert unsent_bytes(stream) == 0
            with pytest.raises(StreamClosedError):
                await asyncio.wait_for(cut_short, WAIT)
        finally:
            stream.close()
            peer.close()

    run(scenario())
    assert unsent_bytes(None) == 0


# --- RequestHandler -----------------------------------------------------------------------

def test_headers_written_only_once_flushed():
    seen: dict[str, bool] = {}

    class Handler(tornado.web.RequestHandler):
        def get(self) -> None:
            seen["before"] = headers_written(self)
            self.write("part one, ")
            seen["after write"] = headers_written(self)  # only buffered so far
            self.flush()
            seen["after flush"] = headers_written(self)
            self.finish("part two")

    async def scenario() -> tornado.httpclient.HTTPResponse:
        async with serving([(r"/", Handler)]) as port:
            return await fetch(port, "/")

    response = run(scenario())
    assert response.code == 200 and response.body == b"part one, part two"
    assert seen == {"before": False, "after write": False, "after flush": True}


def test_is_finished_after_finish_or_send_error():
    seen: dict[str, bool] = {}

    class Finishing(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("body")
            self.flush()
            seen["flushed"] = is_finished(self)
            self.finish()
            seen["finished"] = is_finished(self)

    class Refusing(tornado.web.RequestHandler):
        def get(self) -> None:
            seen["before error"] = is_finished(self)
            self.send_error(413, reason="Payload Too Large")
            seen["after error"] = is_finished(self)

    async def scenario() -> tuple[int, int]:
        async with serving([(r"/finish", Finishing), (r"/refuse", Refusing)]) as port:
            return (await fetch(port, "/finish")).code, (await fetch(port, "/refuse")).code

    assert run(scenario()) == (200, 413)
    assert seen == {"flushed": False, "finished": True,
                    "before error": False, "after error": True}


def test_response_status_follows_set_status_and_send_error():
    seen: dict[str, int] = {}

    class Handler(tornado.web.RequestHandler):
        def get(self) -> None:
            seen["default"] = response_status(self)
            self.set_status(204)
            seen["set"] = response_status(self)
            self.send_error(503)

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            seen["in write_error"] = response_status(self)
            self.finish()

    async def scenario() -> int:
        async with serving([(r"/", Handler)]) as port:
            return (await fetch(port, "/")).code

    assert run(scenario()) == 503
    assert seen == {"default": 200, "set": 204, "in write_error": 503}


def test_error_reason_is_the_reason_the_client_sees():
    seen: dict[str, str] = {}

    class Handler(tornado.web.RequestHandler):
        def get(self, how: str) -> None:
            if how == "given":
                self.send_error(413, reason="Payload Too Large")
            elif how == "raised":
                raise tornado.web.HTTPError(503, "pool is full", reason="Worker Pool Full")
            else:
                self.send_error(404)

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            seen[self.path_args[0]] = reason = error_reason(self)
            self.finish(f"{status_code} {reason}\n")  # as the interface's handlers do

    async def scenario() -> dict[str, tuple[int, str, bytes]]:
        async with serving([(r"/(\w+)", Handler)]) as port:
            answers = {}
            for how in ("given", "raised", "standard"):
                response = await fetch(port, f"/{how}")
                answers[how] = (response.code, response.reason, response.body)
            return answers

    with contextlib.ExitStack() as quiet:  # Tornado logs the HTTPError; not a failure here
        quiet.enter_context(_level("tornado.general", logging.ERROR))
        quiet.enter_context(_level("tornado.access", logging.CRITICAL))
        answers = run(scenario())
    assert seen == {"given": "Payload Too Large", "raised": "Worker Pool Full",
                    "standard": "Not Found"}
    assert answers == {
        "given": (413, "Payload Too Large", b"413 Payload Too Large\n"),
        "raised": (503, "Worker Pool Full", b"503 Worker Pool Full\n"),
        "standard": (404, "Not Found", b"404 Not Found\n"),
    }


@contextlib.contextmanager
def _level(name: str, level: int) -> Any:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


# --- WebSocketProtocol13 ------------------------------------------------------------------

def test_over_size_message_is_closed_with_1009_the_client_can_see():
    """A client still writing a frame over the limit reads the close frame. Stock
    Tornado resets the connection there: the client gets ConnectionResetError (1006)."""
    seen: dict[str, Any] = {}

    async def scenario() -> tuple[int, bytes]:
        async with serving([(r"/ws", Echo, {"seen": seen})],
                           websocket_max_message_size=64 * 1024) as port:
            reader, writer = await raw_websocket(port, "/ws")
            try:
                writer.write(masked_frame(0x2, b"x" * MEGABYTE))  # one frame, 16x the limit
                close = await read_close_frame(reader)
                await asyncio.wait_for(writer.drain(), WAIT)  # the server read it all
                writer.write(masked_frame(0x8, struct.pack("!H", close[0])))
                return close
            finally:
                writer.close()

    assert run(scenario()) == (1009, b"message too big")
    assert seen["protocol"] is LingeringClose


def test_lingering_ends_after_linger_seconds_if_the_client_never_closes():
    async def scenario() -> tuple[tuple[int, bytes], bytes, float]:
        async with serving([(r"/ws", Echo, {"seen": {}})],
                           websocket_max_message_size=1024) as port:
            reader, writer = await raw_websocket(port, "/ws")
            try:
                writer.write(masked_frame(0x2, b"x" * (4 * 1024)))
                close = await read_close_frame(reader)
                start = asyncio.get_running_loop().time()
                rest = await asyncio.wait_for(reader.read(), LingeringClose.LINGER + WAIT)
                return close, rest, asyncio.get_running_loop().time() - start
            finally:
                writer.close()

    close, rest, waited = run(scenario())
    assert close == (1009, b"message too big")
    assert rest == b""  # an orderly end of stream, not a reset
    assert LingeringClose.LINGER - 0.5 <= waited <= LingeringClose.LINGER + 2.5


def test_text_message_that_is_not_utf8_is_closed_with_1007(caplog):
    """Stock Tornado drops the connection without a close frame."""
    seen: dict[str, Any] = {}
    before = counters.get("invalid_utf8", 0)

    async def scenario() -> tuple[tuple[int, bytes], bytes]:
        async with serving([(r"/ws", Echo, {"seen": seen})]) as port:
            reader, writer = await raw_websocket(port, "/ws")
            try:
                writer.write(masked_frame(0x1, b"\xff\xfe not utf-8"))
                close = await read_close_frame(reader)
                writer.write(masked_frame(0x8, struct.pack("!H", close[0])))  # echo the close
                rest = await asyncio.wait_for(reader.read(), WAIT)
                return close, rest
            finally:
                writer.close()

    with caplog.at_level(logging.WARNING, logger="zchannels.interface"):
        close, rest = run(scenario())
    assert close == (1007, b"text message is not valid UTF-8")
    assert rest == b""
    assert seen["protocol"] is LingeringClose
    assert counters.get("invalid_utf8", 0) == before + 1
    assert [r.getMessage() for r in caplog.records if r.name == "zchannels.interface"] == \
        ["a text message that is not UTF-8: closing with 1007"]


# --- permessage-deflate: Tornado inflates, as agreed outside it ---------------------------

class Inflating(Echo):
    """Echo with compression agreed as ConsumerSocket agrees it (zchannels.interface.deflate),
    Tornado's own negotiation off."""

    def open(self) -> None:
        super().open()
        inflate_messages(self, keep_context=True)






def exchange(frames: list[bytes], replies: int, **settings: Any) -> list[tuple[int, bytes]]:
    async def scenario() -> list[tuple[int, bytes]]:
        async with serving([(r"/ws", Inflating, {"seen": {}})], **settings) as port:
            reader, writer = await raw_websocket(port, "/ws")
            try:
                writer.write(b"".join(frames))
                return [await read_frame(reader) for _ in range(replies)]
            finally:
                writer.close()
    return run(scenario())


def test_inflate_messages_makes_tornado_inflate_compressed_text_and_binary():
    text = ("hello compressed world " * 50).encode()
    binary = bytes(range(256)) * 20
    got = exchange([masked_frame(0x1, deflated(text), rsv=0x40),
                    masked_frame(0x2, deflated(binary), rsv=0x40),
                    masked_frame(0x1, b"plain too")], replies=3)
    assert got == [(0x81, text), (0x82, binary), (0x81, b"plain too")]


def test_a_client_that_keeps_its_context_gets_one_inflater_made_when_first_needed():
    """Context takeover: the second message refers to the first one's bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    text = ("the same words again " * 20).encode()
    first = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    second = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(second) < len(first) / 2  # it really refers back
    got = exchange([masked_frame(0x1, first[:-4], rsv=0x40),
                    masked_frame(0x1, second[:-4], rsv=0x40)], replies=2)
    assert got == [(0x81, text), (0x81, text)]
    inflater = LazyInflater(keep_context=True, max_message_size=MEGABYTE)
    assert inflater._decompressor is None  # nothing made for an idle connection


def test_a_compressed_message_that_inflates_past_the_limit_is_closed_with_1009():
    bomb = deflated(b"\0" * (64 * MEGABYTE))  # about 64 KB on the wire
    assert len(bomb) < 100 * 1024
    got = exchange([masked_frame(0x2, bomb, rsv=0x40)], replies=1,
                   websocket_max_message_size=MEGABYTE)
    assert got[0][0] == 0x88 and struct.unpack("!H", got[0][1][:2])[0] == 1009


def test_a_ping_between_fragments_of_a_compressed_message_leaves_it_compressed():
    """Stock Tornado takes the ping's RSV1 (clear) for the message's and echoes the
    compressed bytes as if they were the text."""
    text = ("fragmented " * 40).encode()
    body = deflated(text)
    got = exchange([masked_frame(0x1, body[:10], fin=False, rsv=0x40),
                    masked_frame(0x9, b"ping"),
                    masked_frame(0x0, body[10:])], replies=2)
    assert got == [(0x8A, b"ping"), (0x81, text)]


def test_a_control_frame_with_rsv1_is_a_protocol_error():
    before = counters.get("invalid_frames", 0)
    got = exchange([masked_frame(0x9, b"ping", rsv=0x40)], replies=1)
    assert got[0][0] == 0x88 and struct.unpack("!H", got[0][1][:2])[0] == 1002
    assert counters.get("invalid_frames", 0) == before + 1


# --- the version bound --------------------------------------------------------------------

@pytest.mark.parametrize("payload, expected", [
    (b"", None),
    (struct.pack("!H", 1000) + b"bye", None),
    (struct.pack("!H", 1011), None),
    (struct.pack("!H", 3000), None),
    (struct.pack("!H", 4999), None),
    (b"\x03", (1002, "close frame with a one-byte body")),
    (struct.pack("!H", 0), (1002, "invalid close code 0")),
    (struct.pack("!H", 999), (1002, "invalid close code 999")),
    (struct.pack("!H", 1004), (1002, "invalid close code 1004")),
    (struct.pack("!H", 1005), (1002, "invalid close code 1005")),
    (struct.pack("!H", 1006), (1002, "invalid close code 1006")),
    (struct.pack("!H", 1016), (1002, "invalid close code 1016")),
    (struct.pack("!H", 2999), (1002, "invalid close code 2999")),
    (struct.pack("!H", 5000), (1002, "invalid close code 5000")),
    (struct.pack("!H", 1000) + b"\xff", (1007, "close reason is not valid UTF-8")),
])
def test_close_frame_problems_follow_rfc_6455(payload, expected):
    assert close_frame_problem(payload) == expected


@pytest.mark.parametrize("code, answer", [(1000, 1000), (4000, 4000), (1005, 1002),
                                          (2999, 1002)])
def test_an_invalid_close_code_is_answered_with_1002_a_valid_one_echoed(code, answer):
    """Stock Tornado echoes whatever code the client sent."""
    seen: dict[str, Any] = {}
    before = counters.get("invalid_close", 0)

    async def scenario() -> tuple[tuple[int, bytes], bytes]:
        async with serving([(r"/ws", Echo, {"seen": seen})]) as port:
            reader, writer = await raw_websocket(port, "/ws")
            try:
                writer.write(masked_frame(0x8, struct.pack("!H", code)))
                close = await read_close_frame(reader)
                rest = await asyncio.wait_for(reader.read(), WAIT)  # the server hangs up
                return close, rest
            finally:
                writer.close()

    (received, _), rest = run(scenario())
    assert received == answer and rest == b""
    assert counters.get("invalid_close", 0) == before + (answer == 1002)


def tornado_bound() -> list[tuple[str, tuple[int, ...]]]:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    for line in parser["options"]["install_requires"].splitlines():
        match = re.fullmatch(r"tornado\s*([^;#]*)", line.strip())
        if match:
            return [(clause.group(1), tuple(int(p) for p in clause.group(2).split(".")))
                    for clause in re.finditer(r"(>=|<=|==|<|>)\s*([\d.]+)", match.group(1))]
    raise AssertionError(f"no tornado requirement in {SETUP_CFG}")


def test_installed_tornado_is_within_the_bound_these_tests_ran_on():
    bound = tornado_bound()
    ops = {op for op, _ in bound}
    assert ">=" in ops and "<" in ops, f"tornado needs a lower and an upper bound: {bound}"
    installed = tornado.version_info[:3]
    compare = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
               ">": lambda a, b: a > b, "==": lambda a, b: a == b}
    for op, version in bound:
        padded = version + (0,) * (3 - len(version))
        assert compare[op](installed, padded), (
            f"Tornado {tornado.version} is outside setup.cfg's tornado{op}"
            f"{'.'.join(map(str, version))}: run tests/test_tornado_compat.py on it, "
            "then move the bound")
