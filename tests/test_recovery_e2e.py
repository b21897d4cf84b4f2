"""A relay that crashes and comes back: open connections carry on by themselves."""
import asyncio

import pytest

from harness import checked_system, join_member, read, run, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def system():
    with checked_system() as running:
        yield running


def ledger_even(system, at_least):
    """Every message the workers sent through the router has reached an interface, and
    there were at least `at_least` of them (so neither side's stats file is stale)."""
    workers, interfaces = system.counters("worker"), system.counters("interface")
    return (workers and interfaces and workers.get("to_router", 0) >= at_least
            and workers.get("to_router", 0) == interfaces.get("from_router", 0))


def test_replies_made_while_the_router_was_down_arrive_after_it_restarts(system):
    """The worker queues its reply and done acknowledgement while the router is away
    and flushes them the moment a new router binds, usually before the interface has
    reconnected. They must be held for the interface, not bounced: a lost
    acknowledgement would stall the connection until event_timeout."""
    async def scenario():
        ws = await system.connect("/ws/echo")
        ws.write_message("before")
        assert await read(ws) == "before"
        # The "done" of "before" follows its reply through the router: kill the router
        # only once it has arrived too (the loss ledger is even), or the connection would
        # wait for event_timeout. What a killed router loses is tested in test_faults_e2e.
        await asyncio.to_thread(wait_until, lambda: ledger_even(system, 3), 10,
                                "the connect's done, the reply and its done to arrive")
        system.kill("router")
        ws.write_message("during")  # answered by a worker while no router runs
        await asyncio.sleep(0.5)
        await asyncio.to_thread(system.restart, "router")
        assert await read(ws, timeout=10) == "during"
        for i in range(20):
            ws.write_message(f"after {i}")
            assert await read(ws) == f"after {i}"
        ws.close()

    run(scenario())
    counts = system.settled_counters("router")
    assert counts.get("unreachable_interface", 0) == 0


def test_group_sends_made_while_the_forwarder_was_down_arrive_after_it_restarts(system):
    """A group send queued by a worker during the outage is published only once the
    interfaces have subscribed to the new forwarder: an XPUB with no subscribers
    would discard it."""
    async def scenario():
        member, _ = await join_member(system, "outage")
        sender = await system.connect("/test/send/outage")
        system.kill("forwarder")
        sender.write_message("during the outage")
        assert await read(sender) == "sent"  # the consumer returned; its send is queued
        await asyncio.to_thread(system.restart, "forwarder")
        assert await read(member, timeout=10) == "during the outage"
        sender.write_message("after")
        assert await read(sender) == "sent"
        assert await read(member) == "after"
        member.close()
        sender.close()

    run(scenario())
