"""The broker crashes and comes back: open connections carry on by themselves."""
import asyncio
import time

import pytest

from harness import checked_system, join_member, read, run, wait_until

pytestmark = pytest.mark.e2e

HOLD = 1.0  # seconds a consumer holds its event; the broker is killed meanwhile
OUTAGE = 0.5  # seconds the broker stays down once the held consumer has sent its messages


@pytest.fixture
def system():
    with checked_system() as running:
        yield running


def ledger_even(system, at_least):
    """Every message the workers sent through the broker has reached an interface, and
    there were at least `at_least` of them (so neither side's stats file is stale)."""
    workers, interfaces = system.counters("worker"), system.counters("interface")
    return (workers and interfaces and workers.get("to_broker", 0) >= at_least
            and workers.get("to_broker", 0) == interfaces.get("from_broker", 0))


def steady(read, what, timeout=10.0):
    """What `read` returns once it is not None and the same twice, half a second
    apart: counts that the processes' stats files no longer change."""
    def settled():
        first = read()
        if first is None:
            return None
        time.sleep(0.5)
        return (first,) if read() == first else None
    return wait_until(settled, timeout, what)[0]


def relayed(system):
    """How many messages the workers sent through the broker, if all have arrived."""
    workers = system.settled_counters("worker")
    arrived = system.settled_counters("interface").get("from_broker", 0)
    return workers.get("to_broker", 0) if workers.get("to_broker", 0) == arrived else None


def group_sent(system):
    """How many group messages the workers sent, if each interface received them all."""
    sends = system.settled_counters("worker").get("group_sends", 0)
    received = [system.settled_counters(f"interface-{k}").get("group_received", 0)
                for k in range(2)]
    return sends if received == [sends, sends] else None


def records_of(system, kind):
    return [r for r in system.records() if r[0] == kind]


def worker_count(system, counter):
    return (system.counters("worker") or {}).get(counter, 0)


def test_replies_made_while_the_broker_was_down_arrive_after_it_restarts(system):
    """A consumer that is running when the broker dies sends its reply, and the worker
    the event's done and its credit, while no broker runs: the worker queues them and
    flushes them the moment a new broker binds, usually before the interfaces have
    reconnected. They must be held for the interfaces, not bounced: a lost done would
    stall the connection until event_timeout. An event a client sends during the
    outage waits at its interface and is answered once the broker is back."""
    async def scenario():
        held = await system.connect("/test/hold")
        echo = await system.connect("/ws/echo")
        held.write_message("0")
        assert await read(held) == "held False"
        echo.write_message("before")
        assert await read(echo) == "before"
        # An event's done follows its reply through the broker: kill the broker only
        # once they have all arrived (the loss ledger is even: two connects' dones, two
        # replies with their dones), or a connection would wait for event_timeout. What
        # a killed broker loses is tested in test_faults_e2e.
        await asyncio.to_thread(wait_until, lambda: ledger_even(system, 4), 10,
                                "the connects' dones, the replies and their dones to arrive")
        base = await asyncio.to_thread(steady, lambda: relayed(system),
                                       "nothing more on the way to the interfaces")
        held.write_message(str(HOLD))
        await asyncio.to_thread(wait_until, lambda: len(records_of(system, "hold")) == 2, 10,
                                "a worker to take the held event")
        system.kill("broker")
        echo.write_message("during")  # waits at its interface while no broker runs
        # The held consumer returns while no broker runs: its reply, and its done with
        # the worker's credit, are sent (queued in the worker) during the outage...
        await asyncio.to_thread(wait_until, lambda: worker_count(system, "to_broker") > base,
                                HOLD + 10, "the worker to send the reply during the outage")
        await asyncio.sleep(OUTAGE)
        # ... and none of them has reached an interface.
        assert system.counters("interface")["from_broker"] == base
        await asyncio.to_thread(system.restart, "broker")
        assert await read(held, timeout=10) == "held False"  # not redelivered: it finished
        assert await read(echo, timeout=10) == "during"
        for i in range(20):
            echo.write_message(f"after {i}")
            assert await read(echo) == f"after {i}"
            held.write_message("0")
            assert await read(held) == "held False"
        held.close()
        echo.close()
        # The reply and done of "during" and of the held event, and one message at
        # least for each of the 40 round trips after: none lost.
        return base + 42

    at_least = run(scenario())
    wait_until(lambda: ledger_even(system, at_least), 10,
               "every message the workers sent to arrive at an interface")
    assert len(records_of(system, "hold")) == 2 + 20, "no held event ran twice"
    counts = system.settled_counters("broker")
    assert counts.get("unreachable_interface", 0) == 0
    assert counts.get("dropped_interface_full", 0) == 0
    assert counts.get("redelivered", 0) == 0


def test_group_sends_made_while_the_broker_was_down_arrive_after_it_restarts(system):
    """A group send a worker makes while no broker runs waits in the worker, reaches
    the new broker usually before the interfaces have reconnected, and is sent on only
    once they have said hello: the broker sends group messages to the interfaces it
    knows, and a new broker knows none at first, so it would reach nobody."""
    async def scenario():
        member, _ = await join_member(system, "outage")
        sender = await system.connect("/test/hold-send/outage")
        sender.write_message("0 before the outage")
        assert await read(sender) == "sent"
        assert await read(member) == "before the outage"
        # The member's hello and "before the outage", each received by both interfaces.
        sends = await asyncio.to_thread(steady, lambda: group_sent(system),
                                        "every group message to reach both interfaces")
        assert sends >= 2
        received = system.settled_counters("interface")["group_received"]
        sender.write_message(f"{HOLD} during the outage")
        await asyncio.to_thread(wait_until, lambda: len(records_of(system, "hold-send")) == 2,
                                10, "a worker to take the held event")
        system.kill("broker")
        # The consumer makes its group send, and answers, while no broker runs.
        await asyncio.to_thread(wait_until,
                                lambda: worker_count(system, "group_sends") == sends + 1,
                                HOLD + 10, "the worker to make the group send during the outage")
        await asyncio.sleep(OUTAGE)
        assert system.counters("interface")["group_received"] == received
        await asyncio.to_thread(system.restart, "broker")
        assert await read(member, timeout=10) == "during the outage"
        assert await read(sender, timeout=10) == "sent"
        sender.write_message("0 after")
        assert await read(sender) == "sent"
        assert await read(member) == "after"
        member.close()
        sender.close()

    run(scenario())
    assert len(records_of(system, "hold-send")) == 3, "no held event ran twice"
    counts = system.settled_counters("broker")
    assert counts.get("unreachable_interface", 0) == 0
    assert counts.get("dropped_interface_full", 0) == 0
