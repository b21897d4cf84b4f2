"""A worker killed in the middle of an event: the event goes to another worker, once."""
import asyncio

import pytest

from harness import checked_system, read, run, wait_until

pytestmark = pytest.mark.e2e

EVENT_TIMEOUT = 3.0  # seconds: how long the poison test waits for its 1011


@pytest.fixture(scope="module")
def system():
    with checked_system(
            # a message that killed two workers is dropped (poolqueue) and its
            # connection closed for its event timeout (interface)
            r"had already lost a worker",
            r"did not finish within|presumed lost with its worker",
            server={"event_timeout": EVENT_TIMEOUT}) as running:
        yield running


def test_the_event_of_a_killed_worker_is_redelivered_and_order_holds(system):
    async def scenario():
        ws = await system.connect("/test/crash")
        with system.supervised("worker-"):
            ws.write_message("before")
            ws.write_message("crash 1")
            ws.write_message("after 1")
            ws.write_message("crash 2")
            ws.write_message("after 2")
            answers = [await read(ws, timeout=10) for _ in range(5)]
        ws.close()
        return answers

    answers = run(scenario(), timeout=60)
    assert answers == ["before", "redelivered crash 1", "after 1", "redelivered crash 2",
                       "after 2"]
    counts = system.settled_counters("broker")
    assert counts["redelivered"] == 2
    assert counts.get("dropped_after_redelivery", 0) == 0
    assert len(system.restarts) == 2
    # Each crash ran twice: first on the worker it killed, then redelivered elsewhere.
    crashes = [r for r in system.records() if r[0] == "crash" and r[2] == "crash"]
    assert [(r[3], r[5]) for r in crashes] == [("1", "0"), ("1", "1"), ("2", "0"),
                                                ("2", "1")]
    assert crashes[0][4] != crashes[1][4] and crashes[2][4] != crashes[3][4]
    interface = system.settled_counters("interface")
    assert interface.get("late_acks", 0) == 0 and interface.get("event_timeouts", 0) == 0


def test_an_application_channel_message_of_a_killed_worker_is_redelivered(system):
    async def scenario():
        ws = await system.connect("/test/crash")
        with system.supervised("worker-"):
            ws.write_message("task x")
            answer = await read(ws, timeout=10)
        ws.close()
        return answer

    before = system.settled_counters("broker").get("redelivered", 0)
    assert run(scenario(), timeout=60) == "redelivered task x"
    assert system.settled_counters("broker")["redelivered"] == before + 1


def test_a_poison_event_is_dropped_after_two_workers_and_its_connection_closed(system):
    async def scenario():
        ws = await system.connect("/test/crash")
        bystander = await system.connect("/test/crash")
        with system.supervised("worker-"):
            ws.write_message("poison")
            assert await read(ws, timeout=EVENT_TIMEOUT + 10) is None
            # The pool works on: the workers were restarted.
            bystander.write_message("still here")
            answer = await read(bystander, timeout=10)
            assert answer == "still here", (answer, bystander.close_code, bystander.close_reason)
        bystander.close()
        return ws.close_code

    queue_before = system.settled_counters("broker")
    restarts_before = len(system.restarts)
    assert run(scenario(), timeout=60) == 1011
    counts = system.settled_counters("broker")
    assert counts["dropped_after_redelivery"] == \
        queue_before.get("dropped_after_redelivery", 0) + 1
    assert counts["redelivered"] == queue_before["redelivered"] + 1, "handed on once only"
    wait_until(lambda: system.settled_counters("interface").get("event_timeouts", 0) >= 1,
               10, "the interface to count the event timeout")
    poison = [r for r in system.records() if r[0] == "crash" and r[2] == "poison"]
    assert [r[4] for r in poison] == ["0", "1"]
    # Exactly the two workers it reached died, and were replaced.
    replaced = [old for _, old, _ in system.restarts[restarts_before:]]
    assert sorted(replaced) == sorted(int(r[3]) for r in poison), system.restarts


def test_a_worker_stopped_cleanly_finishes_its_event_and_causes_no_redelivery(system):
    """SIGTERM: the worker finishes the event it holds, says BYE, and exits; the queue
    hands nothing on, so the consumer runs once."""
    before = system.settled_counters("broker").get("redelivered", 0)

    async def scenario():
        ws = await system.connect("/test/hold")
        ws.write_message("1.0")
        holding = await asyncio.to_thread(
            wait_until, lambda: [r for r in system.records() if r[0] == "hold"], 10,
            "a worker to take the held event")
        name = next(n for n, p in system.processes.items() if p.pid == int(holding[0][2]))
        system.processes[name].terminate()
        answer = await read(ws, timeout=10)
        await asyncio.to_thread(system.processes[name].wait, 10)
        ws.close()
        return answer, name

    answer, name = run(scenario(), timeout=30)
    assert answer == "held False"
    assert system.processes[name].returncode == 0
    system.restart(name)
    assert len([r for r in system.records() if r[0] == "hold"]) == 1, "it ran once"
    assert system.settled_counters("broker").get("redelivered", 0) == before
