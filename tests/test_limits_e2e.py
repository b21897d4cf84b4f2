"""Per-interface connection limit, per-connection rate limit, and clients that never
finish their request headers."""
import asyncio

from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

import pytest

from harness import checked_system, http_request, read, run

LIMITS = {"max_connections": 5, "rate_limit": 20.0, "rate_burst": 10,
          "handshake_timeout": 1.0}


@pytest.fixture(scope="module")
def system():
    with checked_system(interfaces=1, server=LIMITS) as running:
        yield running


def test_connections_beyond_max_get_503_then_room_frees_up(system):
    async def scenario():
        open_ones = [await system.connect("/ws/echo") for _ in range(5)]
        try:
            await system.connect("/ws/echo")
            raise AssertionError("a sixth connection was accepted")
        except HTTPClientError as e:
            assert e.code == 503
            assert e.response.headers["Retry-After"] == "1"
        status, headers, _ = await asyncio.to_thread(http_request, system.port, "GET", "/hello")
        assert (status, headers["Retry-After"]) == (503, "1")
        open_ones.pop().close()
        for _ in range(50):  # the server notices the close
            try:
                ws = await system.connect("/ws/echo")
                break
            except HTTPClientError:
                await asyncio.sleep(0.05)
        ws.write_message("again")
        assert await read(ws) == "again"
        for each in open_ones + [ws]:
            each.close()
    run(scenario())
    assert system.settled_counters("interface")["refused_max_connections"] >= 2


def test_a_client_over_the_rate_limit_is_closed_with_1008(system):
    async def scenario():
        flood = await system.connect("/ws/echo")
        polite = await system.connect("/ws/echo")
        for i in range(40):
            flood.write_message(f"f{i}")
        echoes = []
        while (message := await read(flood)) is not None:
            echoes.append(message)
        assert flood.close_code == 1008 and flood.close_reason == "rate limit exceeded"
        # Only messages within the burst reached a consumer, in order; the answers of
        # those still queued at the close could not follow the close frame.
        assert echoes == [f"f{i}" for i in range(len(echoes))] and 1 <= len(echoes) <= 10
        for i in range(15):  # 10 a second: under the limit of 20
            polite.write_message(f"p{i}")
            assert await read(polite) == f"p{i}"
            await asyncio.sleep(0.1)
        polite.close()
    run(scenario())
    assert system.settled_counters("interface")["rate_limited"] == 1


def test_a_client_that_never_sends_its_headers_is_dropped(system):
    async def scenario():
        reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        ws = await websocket_connect(system.url("/ws/echo"))  # others are unaffected
        ws.write_message("still here")
        assert await read(ws) == "still here"
        ws.close()
    run(scenario())
