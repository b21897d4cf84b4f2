"""Issue 21's attack on history, end to end with real processes and the demo chat
(consumers/chat.py): anonymous clients send large messages as fast as they can to their
own rooms, together far beyond the broker's history budget, while another room has
history. A member of that room who comes back with the last position it saw still
recovers exactly (docs/operations.md#history-budgets).

Scaled down from the report (70 messages of 1 MB against 64 MiB): `max_bytes` is
256 KiB here and the other budgets are the shipped defaults, so the test runs in a few
seconds. Before the budgets, the flood emptied the victim room's history and the
member was told ``recovery_failed`` (reason ``epoch``).
"""
import asyncio
import json
import re
import subprocess
import sys
from urllib.parse import quote

import pytest

from harness import ROOT, System, json_events_until, publisher_for, read, run, wait_until

pytestmark = pytest.mark.e2e

HISTORY = [{"pattern": "chat.*", "size": 1000, "seconds": 600}]
MAX_BYTES = 256 * 1024  # [history] max_bytes for this system
ATTACKERS = 4  # connections, each flooding its own room
FLOOD = 12  # messages of FLOOD_BYTES each, as fast as the connection can send them
FLOOD_BYTES = 40_000  # under the default message_max_bytes (64 KiB)
TOO_LARGE_BYTES = 100_000  # over it: one per attacker, first
MISSED = 3  # messages sent to the victim room while its member is away
READ_TIMEOUT = 10.0  # seconds any client waits for its next message


def events_until(ws, done):
    """Chat events (parsed) as they come, until done(events)."""
    return json_events_until(ws, done, READ_TIMEOUT)


@pytest.fixture(scope="module")
def system():
    running = System(history=HISTORY)
    unexpected = []
    try:
        with open(running.config_path, "a") as f:  # after [[history.groups]]: valid TOML
            f.write(f"[history]\nmax_bytes = {MAX_BYTES}\n")
        running.start()
        yield running
        unexpected = running.unexpected_errors()
    finally:
        running.cleanup()
    assert not unexpected, "processes logged unexpected errors:\n" + "\n".join(unexpected)


@pytest.fixture
def publisher(system):
    """A connection in the test process: group_send to the rooms as any other process may."""
    with publisher_for(system) as connection:
        yield connection


async def flood(system, index):
    """One anonymous client: a message too large to keep, then FLOOD large ones, to its
    own room; returns once every one of them came back to it (live)."""
    ws = await system.connect(f"/ws/chat/attacker{index}")
    await events_until(ws, lambda ev: ev and ev[-1]["type"] == "join")
    texts = [f"{index}:big:" + "y" * TOO_LARGE_BYTES] + [
        f"{index}:{i}:" + "x" * FLOOD_BYTES for i in range(FLOOD)]
    for text in texts:
        ws.write_message(text)
    mine = set()
    while len(mine) < len(texts):
        event = json.loads(await read(ws, READ_TIMEOUT))
        if event.get("type") == "message":
            mine.add(event["text"])
    assert mine == set(texts)  # kept out of history is not kept from the members
    ws.close()


def offset(position):
    return int(position.rpartition(":")[2])


def test_a_flood_into_other_rooms_leaves_this_rooms_recovery_exact(system, publisher):
    room = "victim"

    async def scenario():
        ws = await system.connect(f"/ws/chat/{room}?name=v")
        joined = await events_until(ws, lambda ev: ev and ev[-1]["type"] == "join")
        last = joined[-1]["pos"]
        ws.close()
        await asyncio.to_thread(
            wait_until, lambda: system.settled_counters("interface").get("group_members") == 0,
            READ_TIMEOUT, "the member to have left")  # its leave comes before what it missed
        for i in range(MISSED):
            publisher.group_send(f"chat.{room}", text=json.dumps(
                {"type": "message", "user": "publisher", "text": f"m{i}"}))

        await asyncio.gather(*(flood(system, i) for i in range(ATTACKERS)))

        ws = await system.connect(f"/ws/chat/{room}?name=v&since={quote(last)}")
        events = await events_until(ws, lambda ev: ev and ev[-1]["type"] in (
            "join", "recovery_failed"))
        ws.close()
        return last, events

    last, events = run(scenario(), timeout=90)
    assert [e["type"] for e in events] == ["leave"] + ["message"] * MISSED + ["join"], events
    assert [e["text"] for e in events if e["type"] == "message"] == [
        f"m{i}" for i in range(MISSED)]
    assert [offset(e["pos"]) for e in events] == [
        offset(last) + i for i in range(1, MISSED + 3)]

    broker = system.settled_counters("broker")
    assert broker["history_bytes"] <= MAX_BYTES
    assert broker.get("history_groups_dropped", 0) == 0
    assert broker["history_too_large"] == ATTACKERS
    assert broker["history_over_rate"] >= 1  # 12 x 40 KB at once: over 128 KiB/s
    log = system.logs()["broker"]
    warnings = re.findall(r"WARNING .*kept \d+ group message\(s\) out of history", log)
    assert 1 <= len(warnings) <= 3, warnings  # counted, not one line per message


def test_the_fuzz_scripts_history_probes_get_answers_and_recovery_stays_exact(system):
    """scripts/fuzz --history against this system (a small max_bytes): random and
    awkward positions on every transport, some probes with a large message, and a client
    whose every recovery must be exact meanwhile."""
    result = subprocess.run(
        [sys.executable, "scripts/fuzz.py", "--port", str(system.port), "--frames", "0",
         "--echo", "0", "--chat", "0", "--history", "60", "--duration", "60", "--seed", "21"],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {line.split(":")[0].strip(): int(line.rsplit(":", 1)[1])
              for line in result.stdout.splitlines() if line.startswith("  history ")}
    assert sum(n for what, n in counts.items() if what.startswith("history probes ")) == 60
    assert {"history probes ws", "history probes sse", "history probes poll"} <= set(counts)
    assert counts.get("history recoveries exact", 0) >= 1, result.stdout
