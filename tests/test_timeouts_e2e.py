"""Consumers that overrun: the event timeout and the handshake timeout."""
import pytest
from tornado.httpclient import HTTPClientError

from harness import System, read, read_until_closed, run, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system():
    with System(server={"event_timeout": 1.0, "handshake_timeout": 1.0}) as running:
        running.expect_error(r"consumer for websocket.receive did not finish within 1s")
        yield running
        unexpected = running.unexpected_errors()
    assert not unexpected, "\n".join(unexpected)


def test_overrunning_consumer_closes_1011_and_its_late_ack_is_ignored(system):
    async def scenario():
        ws = await system.connect("/test/slow")
        ws.write_message("2.5")
        assert await read_until_closed(ws, timeout=10) == []
        return ws.close_code, ws.close_reason

    assert run(scenario()) == (1011, "consumer timed out")
    # The consumer finishes later; its acknowledgement names an event that is no
    # longer in flight, and is counted, not applied.
    counts = wait_until(lambda: (c := system.counters("interface")) and
                        c.get("late_acks", 0) >= 1 and c, 10, "the late ack to be counted")
    assert counts["event_timeouts"] == 1


def test_connect_consumer_that_does_not_decide_in_time_gets_504(system):
    async def scenario():
        with pytest.raises(HTTPClientError) as raised:
            await system.connect("/test/slow-connect")
        return raised.value.code

    assert run(scenario()) == 504
