"""WebSocket pings: a peer that stops answering (a half-open TCP connection looks the
same) is closed and its disconnect consumer runs; a live one is left alone."""
import asyncio
import base64
import os

import pytest

from harness import checked_system, read, run, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system():
    with checked_system(server={"ping_interval": 0.5, "ping_timeout": 0.5}) as running:
        yield running


async def silent_websocket(port, path):
    """A client that completes the handshake, then never reads or answers anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


def test_a_peer_that_stops_answering_pings_is_closed_and_its_disconnect_runs(system):
    async def scenario():
        reader, writer = await silent_websocket(system.port, "/test/member/silent")
        live = await system.connect("/ws/echo")  # answers pings (Tornado's client does)
        await asyncio.to_thread(wait_until, lambda: [r for r in system.records()
                                                     if r[0] == "D" and r[2] == "silent"],
                                20, "the silent peer's disconnect consumer")
        await asyncio.sleep(1.0)  # two more ping intervals for the live one
        live.write_message("still here")
        assert await read(live) == "still here"
        live.close()
        writer.close()
    run(scenario(), timeout=40)
    assert system.settled_counters("interface")["ping_timeouts"] == 1
