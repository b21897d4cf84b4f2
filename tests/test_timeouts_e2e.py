"""Consumers that overrun: the event timeout and the handshake timeout."""
import asyncio

import pytest
from harness import checked_system, read_until_closed, refused_status, run, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system():
    with checked_system(r"consumer for websocket.receive did not finish within 2s",
                        r"no answer for websocket.receive after 4s; presumed lost",
                        server={"event_timeout": 2.0, "handshake_timeout": 1.0}) as running:
        yield running


def test_overrunning_consumer_closes_1011_but_the_disconnect_waits_for_it(system):
    async def scenario():
        ws = await system.connect("/test/slow")
        ws.write_message("3")
        ws.write_message("0")  # queued behind the slow one: dropped with the close
        started = asyncio.get_running_loop().time()
        assert await read_until_closed(ws, timeout=10) == []
        return ws.close_code, ws.close_reason, asyncio.get_running_loop().time() - started

    code, reason, waited = run(scenario())
    assert (code, reason) == (1011, "consumer timed out")
    assert waited < 2.9, "the client is told at the timeout, not when the consumer ends"
    # Promise 1 still holds: the disconnect consumer runs only after the slow one returned.
    records = wait_until(lambda: [r[0] for r in system.records()] if len(system.records()) >= 2
                         else None, 10, "both consumers")
    assert records == ["slow-end", "slow-disconnect"]
    counts = system.settled_counters("interface")
    assert counts["event_timeouts"] == 1
    assert counts["receives_dropped_on_close"] == 1
    assert counts.get("late_acks", 0) == 0
    assert counts.get("events_abandoned", 0) == 0


def test_connect_consumer_that_does_not_decide_in_time_gets_504(system):
    assert run(refused_status(system.url("/test/slow-connect"))) == 504


def test_event_presumed_lost_after_twice_the_timeout_releases_the_disconnect(system):
    """A consumer that never answers (as if its worker died) holds the connection's
    disconnect for 2 x event_timeout at most; its answer, if it ever comes, is ignored."""
    async def scenario():
        ws = await system.connect("/test/slow")
        ws.write_message("5")
        assert await read_until_closed(ws, timeout=10) == []
        return ws.close_code

    before = len(system.records())
    assert run(scenario()) == 1011
    records = wait_until(lambda: [r[0] for r in system.records()[before:]]
                         if len(system.records()) >= before + 2 else None, 10,
                         "the disconnect, then the slow consumer's end")
    assert records == ["slow-disconnect", "slow-end"]
    counts = wait_until(lambda: (c := system.settled_counters("interface"))
                        .get("late_acks", 0) == 1 and c, 5, "the late ack to be counted")
    assert counts["events_abandoned"] == 1
