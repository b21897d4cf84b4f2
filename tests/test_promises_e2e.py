"""Promises 1-3 of the architecture, checked against real processes under concurrency."""
import asyncio
import collections

import pytest

from harness import join_member, read, run, wait_until

pytestmark = pytest.mark.e2e

CONNECTIONS = 40
MESSAGES = 20
MEMBERS = 500


def test_events_of_one_connection_run_in_order_and_never_overlap(system):
    """The connect consumer accepts, then keeps running; the client sends at once.
    No receive may start before connect returned, none out of order, and the
    disconnect comes last -- whichever of the two workers runs each event."""
    async def client(i):
        ws = await system.connect("/test/order")
        sent = [f"{i}-{n}" for n in range(MESSAGES)]
        for text in sent:
            ws.write_message(text)
        assert [await read(ws, 10) for _ in sent] == sent
        ws.close()

    async def scenario():
        await asyncio.gather(*(client(i) for i in range(CONNECTIONS)))

    run(scenario(), timeout=60)
    expected_lines = CONNECTIONS * (MESSAGES + 2) * 2
    wait_until(lambda: len([r for r in system.records() if r[0] in "SE"]) >= expected_lines,
               15, "every disconnect consumer to finish")

    per_connection = collections.defaultdict(list)
    pids = set()
    for fields in system.records():
        if fields[0] in ("S", "E"):
            per_connection[fields[1]].append(tuple(fields[0:3]) + tuple(fields[4:]))
            pids.add(fields[3])
    assert len(per_connection) == CONNECTIONS
    for rc, events in per_connection.items():
        expected = [("S", rc, "connect"), ("E", rc, "connect")]
        for n in range(MESSAGES):
            text = events[2][3].split("-")[0] + f"-{n}"
            expected += [("S", rc, "receive", text), ("E", rc, "receive", text)]
        expected += [("S", rc, "disconnect"), ("E", rc, "disconnect")]
        assert events == expected, f"events of {rc} out of order"
    assert len(pids) >= 2, "both workers should have run events"


def test_new_member_receives_a_group_send_made_right_after_group_add(system):
    """Each new member's connect consumer does group_add and immediately group_send;
    the member must receive it, every time."""
    semaphore = asyncio.Semaphore(20)

    async def member(i):
        async with semaphore:
            ws, _ = await join_member(system, f"g{i % 25}")
            ws.close()

    async def scenario():
        await asyncio.gather(*(member(i) for i in range(MEMBERS)))

    run(scenario(), timeout=120)


def test_closed_connections_leave_their_groups_and_are_never_sent_to(system):
    def interface_counts():
        counts = system.settled_counters("interface")
        return (counts.get("group_deliveries", 0), counts.get("dropped_to_closed", 0),
                counts.get("dropped_to_closing", 0))

    async def scenario():
        members = [await join_member(system, "dead") for _ in range(10)]
        leaving, staying = members[:5], members[5:]
        for ws, _ in leaving:
            ws.close()
        await asyncio.gather(*(ws.read_message() for ws, _ in leaving))  # close completed
        gone = {rc for _, rc in leaving}
        # The disconnect consumer's group_discard finds nothing: the interface had
        # already dropped the membership when the socket closed.
        def discarded():
            return {r[1]: r[3] for r in system.records() if r[0] == "D" and r[2] == "dead"}
        await asyncio.to_thread(wait_until, lambda: set(discarded()) == gone, 10,
                                "the disconnect consumers of the closed members")
        assert set(discarded().values()) == {"False"}
        before = await asyncio.to_thread(interface_counts)
        sender = await system.connect("/test/send/dead")
        sender.write_message("after the close")
        assert await read(sender) == "sent"
        for ws, _ in staying:
            while (message := await read(ws)) != "after the close":
                assert message.startswith("hello ")
        sender.close()
        after = await asyncio.to_thread(interface_counts)
        for ws, _ in staying:
            ws.close()
        return before, after

    before, after = run(scenario())
    assert after[0] == before[0] + 5, "the group send went to exactly the 5 live members"
    assert after[1:] == before[1:], "nothing was written to a closed socket"


def test_group_discard_stops_delivery_to_that_member(system):
    async def scenario():
        (leaver, _), (stayer, _) = [await join_member(system, "discard") for _ in range(2)]
        leaver.write_message("discard")
        while (message := await read(leaver)) != "discarded True":
            assert message.startswith("hello ")
        sender = await system.connect("/test/send/discard")
        sender.write_message("members only")
        assert await read(sender) == "sent"
        assert await read(stayer) == "members only"
        with pytest.raises(asyncio.TimeoutError):
            await read(leaver, timeout=0.5)
        leaver.write_message("discard")  # not a member any more
        assert await read(leaver) == "discarded False"
        for ws in (leaver, stayer, sender):
            ws.close()

    run(scenario())
