"""permessage-deflate end to end (RFC 7692): negotiated when the config enables it,
messages compressed both ways, limits applied to the inflated size, a group message
compressed once per interface, and a real Chromium chatting with it on."""
from __future__ import annotations

import asyncio
import json
import struct
import zlib

import pytest
from tornado.httpclient import AsyncHTTPClient

from harness import checked_system, read, run, wait_until
from rawws import WAIT, deflated, handshake, masked_frame, raw_websocket, read_frame

TOKEN = "compression-test-token-8e41c07d93a2f5b6"
MEMBERS = 1000


@pytest.fixture(scope="module")
def system():
    with checked_system(server={"compression": True, "max_message_bytes": 1024 * 1024,
                                "publish_token": TOKEN}) as running:
        yield running


def extensions_of(response: str) -> str | None:
    for line in response.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions":
            return value.strip()
    return None


def inflate(body: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff")


def test_a_client_that_offers_permessage_deflate_gets_it(system):
    async def scenario() -> str | None:
        reader, writer, response = await handshake(
            system.port, "/ws/echo",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
        writer.close()
        assert response.startswith("HTTP/1.1 101"), response
        return extensions_of(response)
    assert run(scenario()) == "permessage-deflate; server_no_context_takeover"


def test_without_compression_in_the_config_nothing_is_agreed():
    with checked_system(interfaces=1, workers=1) as plain:
        async def scenario() -> tuple[str | None, tuple[int, bytes]]:
            reader, writer, response = await handshake(
                plain.port, "/ws/echo", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
            try:
                assert response.startswith("HTTP/1.1 101"), response
                writer.write(masked_frame(0x1, b"x" * 100))
                return extensions_of(response), await read_frame(reader)
            finally:
                writer.close()
        agreed, echoed = run(scenario())
    assert agreed is None
    assert echoed == (0x81, b"x" * 100)  # uncompressed


@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_compressed_text_and_binary_round_trip_compressed(system, opcode):
    message = (b'{"type": "message", "user": "ann", "text": "' + b"la " * 200 + b'"}'
               if opcode == 0x1 else bytes(range(200)) * 30)

    async def scenario() -> list[tuple[int, bytes]]:
        reader, writer = await raw_websocket(
            system.port, "/ws/echo", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        try:
            writer.write(masked_frame(opcode, deflated(message), rsv=0x40))  # compressed
            writer.write(masked_frame(opcode, message))  # and not: both are allowed
            return [await read_frame(reader), await read_frame(reader)]
        finally:
            writer.close()

    for first, body in run(scenario()):
        assert first == 0x80 | 0x40 | opcode  # final, compressed
        assert len(body) < len(message)
        assert inflate(body) == message


def interface_rss_kib(system) -> dict[str, int]:
    result = {}
    for name, proc in system.processes.items():
        if system.role_of(name) == "interface":
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(line for line in f if line.startswith("VmRSS:"))
            result[name] = int(rss.split()[1])
    return result


def test_a_message_that_inflates_past_max_message_bytes_closes_1009(system):
    """A zip bomb: 1 GiB of zeros, about 1 MB on the wire, against a 1 MiB limit. The
    interface inflates at most the limit, so its memory does not follow the bomb."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * (16 * 1024 * 1024)
    bomb = b"".join(compressor.compress(chunk) for _ in range(64))
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 1024 * 1024 + 64 * 1024  # under the limit before inflating
    before = interface_rss_kib(system)

    async def scenario() -> tuple[int, bytes]:
        reader, writer = await raw_websocket(
            system.port, "/ws/echo", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        try:
            writer.write(masked_frame(0x2, bomb, rsv=0x40))
            await writer.drain()
            return await read_frame(reader)
        finally:
            writer.close()

    first, body = run(scenario())
    assert first == 0x88 and struct.unpack("!H", body[:2])[0] == 1009
    after = interface_rss_kib(system)
    grown = {name: after[name] - before[name] for name in after}
    # It held the compressed message (about 1 MB) and at most 1 MiB inflated; 1 GiB
    # inflated would show as hundreds of MB.
    assert all(kib < 32 * 1024 for kib in grown.values()), grown
    # the echo still answers on a fresh connection
    assert run(echo_compressed(system, "still here " * 10)) == "still here " * 10


async def echo_compressed(system, text: str) -> str | bytes | None:
    ws = await system.connect("/ws/echo", compression_options={})
    try:
        ws.write_message(text)
        return await read(ws)
    finally:
        ws.close()


def test_a_group_message_to_1000_compressed_members_is_compressed_once_per_interface(system):
    group = "zipped"
    text = json.dumps({"type": "message", "user": "ann", "text": "hello everyone " * 20})

    async def scenario() -> list[str | bytes | None]:
        members = []
        try:
            for start in range(0, MEMBERS, 100):  # 100 handshakes at a time
                batch = await asyncio.gather(*(
                    system.connect(f"/test/quiet/{group}", compression_options={})
                    for _ in range(start, min(start + 100, MEMBERS))))
                members += batch
                assert all(m == "joined True" for m in
                           await asyncio.gather(*(read(ws) for ws in batch)))
            assert all("permessage-deflate" in ws.headers.get("Sec-WebSocket-Extensions", "")
                       for ws in members)
            before = system.settled_counters("interface").get("deflated", 0)
            response = await AsyncHTTPClient().fetch(
                f"http://127.0.0.1:{system.port}/_zchannels/publish", method="POST",
                headers={"Authorization": f"Bearer {TOKEN}"},
                body=json.dumps({"group": group, "text": text}), request_timeout=WAIT)
            assert response.code == 202
            received = await asyncio.gather(*(read(ws, WAIT) for ws in members))
            wait_until(lambda: system.settled_counters("interface").get("deflated", 0)
                       > before, 5, "the interfaces' deflated counters to move")
            deflated_now = system.settled_counters("interface").get("deflated", 0)
            assert 1 <= deflated_now - before <= system.interfaces, (before, deflated_now)
            return received
        finally:
            for ws in members:
                ws.close()

    received = run(scenario(), timeout=120)
    assert received == [text] * MEMBERS


def test_chromium_chats_through_the_page_with_compression_on(system, browser):
    pages = [browser.new_page(), browser.new_page()]
    try:
        for name, page in zip(("ann", "bob"), pages):
            page.goto(f"http://127.0.0.1:{system.port}/")
            page.fill("#name", name)
            page.click("#join button")
            page.wait_for_function("document.getElementById('status').textContent"
                                   ".startsWith('connected')", timeout=WAIT * 1000)
            assert "permessage-deflate" in page.evaluate("socket.extensions")
        words = "compressed " * 20
        pages[0].fill("#text", words)
        pages[0].press("#text", "Enter")
        for page in pages:
            page.wait_for_function(
                "text => [...document.querySelectorAll('#log div')]"
                ".some(d => d.textContent === 'ann: ' + text)",
                arg=words, timeout=WAIT * 1000)
    finally:
        for page in pages:
            page.close()
