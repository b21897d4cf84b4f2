"""The live dashboard in a real headless Chromium: it opens with its token, its
numbers move while load runs, and without the token it is a 403."""
import asyncio
import json

import pytest

from harness import (LoadThread, checked_system, dashboard_events,
                     http_request, read, wait_until)

pytestmark = pytest.mark.e2e

TOKEN = "dashboard-token-for-the-test_0123"
PATH = "/_zchannels/dashboard"
SOCKETS = 4
MESSAGES = 25  # per socket


@pytest.fixture(scope="module")
def system():
    with checked_system(server={"dashboard_token": TOKEN}) as running:
        yield running


def number(page, element_id):
    """The figure a tile shows, or None while it shows none."""
    text = (page.text_content(f"#{element_id}") or "").replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def wait_for(page, element_id, predicate, what, timeout=15.0):
    """Read the tile from Python (the page's CSP forbids evaluating strings) until
    `predicate` holds for its figure."""
    return wait_until(lambda: (lambda v: v is not None and predicate(v))(
        number(page, element_id)), timeout, what)


class Load(LoadThread):
    """Echo clients on a thread of their own: SOCKETS open WebSockets that each send
    MESSAGES messages (then `ready` is set), then stay open, one of them sending ten a
    second, until the block ends."""

    async def scenario(self):
        sockets = [await self.system.connect("/ws/echo") for _ in range(SOCKETS)]
        for n in range(MESSAGES):
            for ws in sockets:
                ws.write_message(str(n))
                assert await read(ws) == str(n)
        self.ready.set()
        n = 0
        while not self.done.is_set():  # a steady trickle: the rate stays above 0
            sockets[0].write_message(f"more {n}")
            assert await read(sockets[0]) == f"more {n}"
            n += 1
            await asyncio.sleep(0.1)
        for ws in sockets:
            ws.close()


def test_the_page_opens_with_its_token_and_moves_with_the_load(system, browser):
    page = browser.new_page()
    try:
        response = page.goto(f"http://127.0.0.1:{system.port}{PATH}?token={TOKEN}",
                             timeout=15_000)
        assert response.status == 200
        assert "token" not in page.url  # taken out of the address bar; a cookie keeps it
        # The stream is live and has drawn a first snapshot.
        wait_until(lambda: page.text_content("#state") == "live"
                   and number(page, "events-total") is not None, 15,
                   "the page's stream to deliver a first snapshot")
        before = number(page, "events-total")
        with Load(system) as load:
            assert load.ready.wait(30), "the load did not finish sending"
            assert load.error is None, load.error
            wait_for(page, "websockets", lambda v: v >= SOCKETS, "the open WebSockets")
            wait_for(page, "events-total", lambda v: v >= before + SOCKETS * (MESSAGES + 1),
                     "the events total to count the load")
            wait_for(page, "events-rate", lambda v: v > 0, "a non-zero events/s")
            rows = page.locator("#processes tr").count()
            assert rows == len(system.processes)
        wait_for(page, "websockets", lambda v: v == 0, "the WebSockets to be closed")
        # The charts are drawn on their canvases (pixels, not a blank bitmap).
        drawn = page.evaluate("""() => {
            const c = document.getElementById('chart-connections');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return data.some(v => v !== 0);
        }""")
        assert drawn
    finally:
        page.close()


def test_without_the_token_the_page_is_403(system, browser):
    page = browser.new_page()
    try:
        response = page.goto(f"http://127.0.0.1:{system.port}{PATH}", timeout=15_000)
        assert response.status == 403
        response = page.goto(f"http://127.0.0.1:{system.port}{PATH}?token=wrong",
                             timeout=15_000)
        assert response.status == 403
    finally:
        page.close()
    assert "dashboard refused to 127.0.0.1: no token" in system.all_logs()
    assert "dashboard refused to 127.0.0.1: wrong token" in system.all_logs()


def test_the_event_stream_needs_the_token_and_sends_json(system):
    status, _, _ = http_request(system.port, "GET", f"{PATH}/events")
    assert status == 403
    conn, response = dashboard_events(system, TOKEN)
    try:
        assert response.getheader("Content-Type").startswith("text/event-stream")
        line = b""
        while not line.startswith(b"data: "):
            line = response.readline()
        snapshot = json.loads(line[len(b"data: "):])
        assert {"websockets", "events", "pools", "processes"} <= set(snapshot)
        assert "default" in snapshot["pools"]
        roles = sorted(p["role"] for p in snapshot["processes"])
        assert roles == ["broker", "interface", "interface", "worker-default",
                         "worker-default"]
        assert all(p["rss_bytes"] > 0 for p in snapshot["processes"])
    finally:
        conn.close()


def test_an_open_stream_ends_cleanly_when_the_interface_stops():
    """The interface's stop ends the dashboard streams itself (no error in its log:
    checked_system fails on one) and still exits within its stop timeout."""
    with checked_system(workers=1, interfaces=1,
                        server={"dashboard_token": TOKEN}) as running:
        conn, response = dashboard_events(running, TOKEN)
        while not response.readline().startswith(b"data: "):
            pass
        interface = running.processes["interface-0"]
        interface.terminate()
        assert interface.wait(5) == 0
        assert response.read().strip() == b""  # the stream ended, with no error in it
        conn.close()
