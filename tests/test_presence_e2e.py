"""Presence end to end: group_members and group_size from any process, across
interfaces, announced joins and leaves, and what a dead interface or a restarted
broker does to the view (docs/consumers.md#presence)."""
from __future__ import annotations

import asyncio
from collections import Counter
import contextlib
import json
import time

import pytest
import zmq

from harness import checked_system, read, run, wait_until
from zchannels.api.client import Client
from zchannels.core.config import load

BOUND = 2.0  # seconds: the documented bound for a close to leave the view, and more


@pytest.fixture(scope="module")
def system():
    with checked_system() as running:
        yield running


async def member(system, group: str, name: str, announce: bool = False):
    ws = await system.connect(f"/test/presence/{group}?name={name}"
                              f"&announce={int(announce)}")
    first = await read(ws)
    assert first.startswith("rc:"), first
    return ws, first[3:]


async def ask(ws, question: str):
    ws.write_message(question)
    return json.loads(await read(ws))


async def members_on_both_interfaces(system, group: str, count: int):
    """`count` members (ws, reply channel, name) on two interfaces at least: the kernel
    spreads new connections over them, so more are made until it has, and the extras
    are closed. Returns once the group holds exactly the ones kept."""
    made = []
    while True:
        name = f"m{len(made)}"
        made.append((*await member(system, group, name), name))
        kept = made[-count:]
        if len(made) >= count and len({system.interface_name_of(rc) for _, rc, _ in kept}) == 2:
            break
        assert len(made) < 60, "the kernel put 60 connections on one interface"
    for ws, _, _ in made[:-count]:
        ws.close()
    await asyncio.to_thread(wait_until, lambda: len(outside_members(system, group)) == count,
                            BOUND, "the extra members to leave")
    return kept


def outside_members(system, group: str) -> list[list]:
    """group_members from a process that is not a worker (zchannels.api.client)."""
    config = load(system.config_path, environ={"ZCHANNELS_RUN_DIR": system.run_dir})
    with Client(config) as client:
        return sorted([list(m) for m in client.group_members(group)])


def test_three_members_on_two_interfaces_listed_with_their_names_from_any_worker(system):
    group = "room-three"

    async def scenario():
        joined = await members_on_both_interfaces(system, group, 3)
        expected = sorted([rc, {"name": name}] for _, rc, name in joined)
        # Asked by consumers of all three (any worker), and from outside the workers.
        for ws, _, _ in joined:
            assert sorted(await ask(ws, "members")) == expected
            assert await ask(ws, "size") == 3
        assert await asyncio.to_thread(outside_members, system, group) == expected
        # One closes: gone from the view within the bound.
        (gone, gone_rc, _), (stays, _, _) = joined[0], joined[1]
        gone.close()
        deadline = time.monotonic() + BOUND
        while gone_rc in {rc for rc, _ in await ask(stays, "members")}:
            assert time.monotonic() < deadline, f"{gone_rc} still listed after {BOUND}s"
            await asyncio.sleep(0.05)
        assert await ask(stays, "size") == 2
        for ws, _, _ in joined[1:]:
            ws.close()
    run(scenario())


def test_announced_members_are_told_to_the_group_on_join_and_leave(system):
    group = "room-announced"

    async def scenario():
        ann, ann_rc = await member(system, group, "ann", announce=True)
        assert json.loads(await read(ann)) == {"type": "join", "group": group,
                                               "member": ann_rc, "info": {"name": "ann"}}
        quiet, quiet_rc = await member(system, group, "quiet")  # not announced
        bob, bob_rc = await member(system, group, "bob", announce=True)
        for ws in (ann, quiet, bob):
            assert json.loads(await read(ws))["member"] == bob_rc
        quiet.close()  # its leave is not told either
        bob.close()
        assert json.loads(await read(ann)) == {"type": "leave", "group": group,
                                               "member": bob_rc, "info": {"name": "bob"}}
        assert sorted(rc for rc, _ in await ask(ann, "members")) == [ann_rc]
        ann.close()
    run(scenario())


def test_info_over_4_kib_is_refused_at_group_add(system):
    async def scenario():
        ws, _ = await member(system, "room-big", "x")
        answer = await ask(ws, "too big")
        ws.close()
        return answer
    assert run(scenario()).startswith("refused: group_add info is 5002 bytes")


def test_a_killed_interface_leaves_the_view_and_its_announced_members_are_told_gone():
    with checked_system() as system:
        group = "room-kill"

        async def scenario():
            members = []
            while len({system.interface_name_of(rc) for _, rc in members}) < 2 \
                    or len(members) < 4:
                members.append(await member(system, group, f"m{len(members)}", announce=True))
                assert len(members) < 60
            victims = {rc for _, rc in members if system.interface_name_of(rc) == "interface-1"}
            survivors = [(ws, rc) for ws, rc in members if rc not in victims]
            watcher = survivors[0][0]
            # Drain the join notices the watcher has had so far.
            while True:
                try:
                    await read(watcher, 0.5)
                except asyncio.TimeoutError:
                    break
            system.kill("interface-1")
            told = set()
            while told != victims:
                notice = json.loads(await read(watcher, BOUND + 3))
                assert notice["type"] == "leave", notice
                told.add(notice["member"])
            assert {rc for rc, _ in await ask(watcher, "members")} == \
                {rc for _, rc in survivors}
            for ws, _ in survivors:
                ws.close()
            return system.settled_counters("broker")
        counters = run(scenario(), timeout=60)
        assert counters.get("interfaces_gone", 0) == 1


def test_a_restarted_broker_learns_the_members_again_from_the_interfaces():
    with checked_system() as system:
        group = "room-restart"

        async def scenario():
            joined = await members_on_both_interfaces(system, group, 2)
            before = sorted(await ask(joined[0][0], "members"))
            assert len(before) == 2
            system.kill("broker")  # a crash: its view of who is where dies with it
            system.restart("broker")
            deadline = time.monotonic() + 5
            while True:
                try:
                    after = sorted(await ask(joined[0][0], "members"))
                except asyncio.TimeoutError:
                    after = None
                if after == before:
                    break
                assert time.monotonic() < deadline, f"after the restart: {after}"
                await asyncio.sleep(0.1)
            for ws, _, _ in joined:
                ws.close()
        run(scenario(), timeout=60)


def test_the_online_demo_answers_who_and_count(system):
    async def scenario():
        ann = await system.connect("/ws/online/demo?name=ann")
        bob = await system.connect("/ws/online/demo?name=bob")
        bob.write_message("count")  # bob's own join has returned before its receive runs
        assert await read(bob) == "2"
        ann.write_message("who")
        assert json.loads(await read(ann)) == ["ann", "bob"]
        ann.write_message("nonsense")
        assert await read(ann) is None and ann.close_code == 1003
        bob.close()
    run(scenario())


def test_a_killed_interface_s_websockets_get_their_disconnect_once_marked_abandoned():
    """Promise 9 when an interface dies: the broker runs the disconnect consumers of its
    open WebSockets on the surviving workers, once each, with abandoned set."""
    with checked_system() as system:
        async def scenario():
            sockets = []
            while len({system.interface_name_of(rc) for _, rc in sockets}) < 2 \
                    or len(sockets) < 10:
                ws = await system.connect("/test/abandon")
                sockets.append((ws, (await read(ws))[3:]))
                assert len(sockets) < 80
            victims = {rc for _, rc in sockets if system.interface_name_of(rc) == "interface-1"}
            survivor_ws, survivor_rc = next((ws, rc) for ws, rc in sockets
                                            if rc not in victims)
            system.kill("interface-1")

            def abandoned_ran():
                lines = [r for r in system.records() if r[0] == "X"]
                return lines if {r[1] for r in lines} >= victims else None
            lines = await asyncio.to_thread(wait_until, abandoned_ran, BOUND + 3,
                                            "the victims' disconnects")
            await asyncio.sleep(0.5)  # time for a second run, if there were one
            lines = [r for r in system.records() if r[0] == "X"]
            assert sorted(r[1] for r in lines) == sorted(victims)  # once each, only them
            assert all(r[2:] == ["True", "1006", "{}"] for r in lines), lines
            survivor_ws.close(1000)  # a normal close: not abandoned
            normal = await asyncio.to_thread(
                wait_until, lambda: [r for r in system.records()
                                     if r[0] == "X" and r[1] == survivor_rc], 5,
                "the survivor's own disconnect")
            assert normal[0][2:4] == ["False", "1000"]
            for ws, _ in sockets:
                ws.close()
            return system.settled_counters("broker")
        counters = run(scenario(), timeout=60)
        assert counters.get("abandoned_disconnects", 0) >= 1


@contextlib.contextmanager
def stray_connection(system):
    """A peer connected to the broker's socket for the interfaces that never says hello,
    as an interface that supervisord is restarting is for a moment (or any stray
    client). The broker counts it among its connections, so after an interface dies it
    still counts as many connections as interfaces: the count alone does not reveal
    the death."""
    config = load(system.config_path, environ={"ZCHANNELS_RUN_DIR": system.run_dir})
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(config.broker_interfaces)
        assert monitor.poll(5000), "the stray peer did not connect to the broker"
        yield
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        context.term()


async def room_member(system, group: str, name: str):
    """A member of a chat room (tests/consumers/presence.py, /test/room/): (ws, reply
    channel), once its own join has been told to it."""
    ws = await system.connect(f"/test/room/{group}?name={name}")
    first = await read(ws)
    assert first.startswith("rc:"), first
    while True:
        event = json.loads(await read(ws))
        if event["type"] == "join" and event["member"] == first[3:]:
            return ws, first[3:]


def members_leave_when_their_interface_is_killed(system, group: str, busy: bool):
    """Chat room members on both interfaces; interface-1 is SIGKILLed (with `busy`,
    while a member on interface-0 chats every 50 ms). Within the bound, its members'
    leaves must reach the others, group_members and the broker's presence_members
    must drop them, and each one's disconnect must have run once, abandoned. Returns
    (victims, broker counters)."""
    async def scenario():
        members = []
        while sum(system.interface_name_of(rc) == "interface-1" for _, rc in members) < 3 \
                or sum(system.interface_name_of(rc) == "interface-0" for _, rc in members) < 2:
            members.append(await room_member(system, group, f"m{len(members)}"))
            assert len(members) < 80, "the kernel put every connection on one interface"
        victims = {rc for _, rc in members if system.interface_name_of(rc) == "interface-1"}
        survivors = [(ws, rc) for ws, rc in members if rc not in victims]
        (chatter, _), (watcher, _) = survivors[0], survivors[1]
        stop = asyncio.Event()

        async def chat():  # a steady chat on the surviving interface
            n = 0
            while busy and not stop.is_set():
                chatter.write_message(f"line {n}")
                n += 1
                await asyncio.sleep(0.05)
        chatting = asyncio.create_task(chat())
        try:
            while busy:  # the room is busy: the watcher gets the chat
                if json.loads(await read(watcher))["type"] == "message":
                    break
            system.kill("interface-1")
            killed = time.monotonic()
            told = set()
            while told != victims:
                remaining = killed + BOUND - time.monotonic()
                assert remaining > 0, (f"{len(victims) - len(told)} of {len(victims)} "
                                       f"leaves not told within {BOUND}s of the kill")
                try:
                    event = json.loads(await read(watcher, remaining))
                except asyncio.TimeoutError:
                    continue
                if event["type"] == "leave":
                    assert event["member"] in victims, event
                    told.add(event["member"])
            listed = await asyncio.to_thread(outside_members, system, group)
            assert {rc for rc, _ in listed} == {rc for _, rc in survivors}

            def disconnects_ran():
                lines = [r for r in system.records() if r[0] == "X"]
                return lines if {r[1] for r in lines} >= victims else None
            await asyncio.to_thread(wait_until, disconnects_ran,
                                    killed + BOUND - time.monotonic(), "the disconnects")
        finally:
            stop.set()
            await chatting
        await asyncio.sleep(0.5)  # time for a second run of a disconnect, if there were one
        ran = [r[1:] for r in system.records() if r[0] == "X"]
        # Once each, only them, each marked abandoned. Different connections' disconnects
        # run on whichever worker is free, in no promised order: compared as a multiset.
        assert Counter(map(tuple, ran)) == Counter((rc, "True") for rc in victims)
        counters = await asyncio.to_thread(system.settled_counters, "broker")
        assert counters.get("presence_members") == len(survivors)
        for ws, _ in survivors:
            ws.close()
        return victims, counters
    return run(scenario(), timeout=60)


def test_a_killed_interface_of_a_busy_room_leaves_when_a_group_message_finds_it_gone():
    """Issue 21, item 2: an interface SIGKILLed while its room chats. With the death
    hidden from the broker's count of connections, the fan-out of the next chat message
    (EHOSTUNREACH) is the first to find it gone: its members must leave the presence
    view, announced to the others, and each of its WebSockets' disconnects run once."""
    with checked_system() as system, stray_connection(system):
        victims, counters = members_leave_when_their_interface_is_killed(
            system, "room-busy", busy=True)
    assert counters.get("interfaces_gone", 0) == 1
    assert counters.get("abandoned_disconnects", 0) == len(victims)  # once each


def test_a_killed_interface_of_an_idle_room_leaves_though_the_count_hides_its_death():
    """The same with nothing sent to the room: the broker looks for the gone interface
    after any connection closed, not only when it counts fewer connections than
    interfaces."""
    with checked_system() as system, stray_connection(system):
        victims, counters = members_leave_when_their_interface_is_killed(
            system, "room-idle", busy=False)
    assert counters.get("interfaces_gone", 0) == 1
    assert counters.get("abandoned_disconnects", 0) == len(victims)
