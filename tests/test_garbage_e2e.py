"""Garbage in: random ZeroMQ messages on every bound socket, broken WebSocket frames,
malformed HTTP. Each is logged and dropped (and counted, where it reaches the
runtime's own code), every process survives, and well-behaved clients see nothing."""
import asyncio
import importlib.util
import json
import os
import random
import sys

import pytest
import zmq

from harness import ROOT, checked_system, join_member, read, run, wait_until

pytestmark = pytest.mark.e2e

_spec = importlib.util.spec_from_file_location("fuzz", os.path.join(ROOT, "scripts", "fuzz.py"))
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz"] = fuzz  # dataclasses look their module up there
_spec.loader.exec_module(fuzz)


@pytest.fixture(scope="module")
def system():
    with checked_system() as running:
        yield running


def pids(system):
    return {name: proc.pid for name, proc in system.processes.items()
            if proc.poll() is None}


async def good_traffic(system, rounds):
    """Echo round trips and chat messages that must all come back, in order."""
    echo = await system.connect("/ws/echo")
    member, _ = await join_member(system, "garbage-room")
    sender = await system.connect("/test/send/garbage-room")
    for i in range(rounds):
        echo.write_message(f"echo {i}")
        assert await read(echo) == f"echo {i}"
        sender.write_message(f"group {i}")
        assert await read(sender) == "sent"
        assert await read(member) == f"group {i}"
        await asyncio.sleep(0.01)
    for ws in (echo, member, sender):
        ws.close()


def test_random_messages_on_every_zeromq_socket_are_counted_and_disturb_nothing(system):
    endpoints = fuzz.zmq_endpoints(system.run_dir)
    assert set(endpoints) == {"router-workers", "router-interfaces", "forwarder.in",
                              "forwarder.out", "pool-default.in", "pool-default.out"}
    before = pids(system)
    attacker = fuzz.ZmqAttacker(endpoints, random.Random(5))
    tally = fuzz.Tally()

    async def scenario():
        traffic = asyncio.ensure_future(good_traffic(system, 60))
        while not traffic.done():
            attacker.burst(tally, 20)
            await asyncio.sleep(0.02)
        await traffic

    try:
        run(scenario(), timeout=60)
    finally:
        attacker.close()
    assert all(tally.sent.get(f"zmq {name}", 0) >= 100 for name in endpoints), tally.sent
    assert pids(system) == before, "no process died or restarted"
    for role in ("router", "forwarder", "queue"):
        assert system.settled_counters(role).get("garbage", 0) > 0, role
    # Workers write their stats only when a count changed.
    wait_until(lambda: (system.counters("worker") or {}).get("garbage", 0) > 0, 5,
               "the workers to count garbage")
    # Still serving afterwards.
    run(good_traffic(system, 3))


def test_wrong_types_in_well_formed_headers_to_a_real_interface_are_dropped(system):
    """A peer that knows an interface's id (it is in run_dir/ready) sends headers of
    the right shape with the wrong types for a connection that exists."""
    async def scenario():
        ws = await system.connect("/test/inspect")
        info = json.loads(await read(ws))
        interface_id, conn = info["reply_channel"].split("!")
        context = zmq.Context()
        peer = context.socket(zmq.DEALER)
        peer.linger = 0
        peer.connect(f"ipc://{system.run_dir}/router-workers")
        wrong = [{"op": "send", "conn": [int(conn)]}, {"op": "send", "conn": int(conn),
                                                         "kind": ["text"]},
                 {"op": ["send"], "conn": int(conn)}, {"op": "done", "conn": {}, "seq": []},
                 {"op": {}, "conn": int(conn)}, {"op": "send", "conn": str(conn)},
                 {"op": "group_add", "conn": int(conn), "group": ["g"], "req": {}},
                 {"op": "close", "conn": int(conn), "code": 99999, "reason": ["r"]}]
        for header in wrong:
            peer.send_multipart([interface_id.encode(), json.dumps(header).encode(), b"x"])
        await asyncio.sleep(0.5)
        peer.close()
        context.term()
        ws.close()

    before = system.settled_counters("interface").get("garbage", 0)
    run(scenario())
    run(good_traffic(system, 3))
    assert system.settled_counters("interface")["garbage"] >= before + 7


async def raw_exchange(port, data, eof=False, read_bytes=4096, timeout=5.0):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if eof:
        writer.write_eof()
    try:
        answer = await asyncio.wait_for(reader.read(read_bytes), timeout)
    except ConnectionResetError:
        answer = b""
    writer.close()
    return answer


def test_invalid_utf8_in_a_text_frame_closes_with_1007_and_disturbs_no_one(system):
    async def scenario():
        bystander = await system.connect("/ws/echo")
        reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
        writer.write(fuzz.handshake("127.0.0.1", system.port, "/ws/echo", random.Random(1)))
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        payload = b"\xff\xfe not utf-8"
        key = b"\x01\x02\x03\x04"
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        writer.write(bytes([0x81, 0x80 | len(payload)]) + key + masked)
        close = await asyncio.wait_for(reader.read(64), 5)
        writer.close()
        bystander.write_message("still fine")
        assert await read(bystander) == "still fine"
        bystander.close()
        return close

    before = system.settled_counters("interface").get("invalid_utf8", 0)
    close = run(scenario())
    # An unmasked close frame from the server, with code 1007 (invalid payload data);
    # Tornado alone would drop the TCP connection without one.
    assert close[:1] == b"\x88" and int.from_bytes(close[2:4], "big") == 1007, close
    assert system.settled_counters("interface")["invalid_utf8"] == before + 1


@pytest.mark.parametrize("request_bytes, statuses", [
    (b"GARBAGE\r\n\r\n", {b"400", b""}),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n",
     {b"431", b"400", b""}),
    (b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", {b"400", b""}),
    (b"GET /ws/echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Version: 13\r\n\r\n", {b"400"}),  # no Sec-WebSocket-Key
])
@pytest.mark.parametrize("eof", [False, True], ids=["open", "half-closed"])
def test_malformed_http_gets_an_error_or_a_close_and_disturbs_no_one(system, request_bytes,
                                                                      statuses, eof):
    """Also with the client half-closing right after its request: the upgrade request
    then reached the interface with its socket already gone (it used to raise)."""
    before = pids(system)
    if eof:
        statuses = statuses | {b""}

    async def scenario():
        bystander = await system.connect("/ws/echo")
        answer = await raw_exchange(system.port, request_bytes, eof=eof)
        bystander.write_message("still fine")
        assert await read(bystander) == "still fine"
        bystander.close()
        return answer

    answer = run(scenario())
    status = answer[9:12] if answer.startswith(b"HTTP/1.") else b""
    assert status in statuses, answer[:200]
    assert pids(system) == before


def test_a_tls_hello_to_the_plain_port_is_closed_when_the_client_stops(system):
    """Bytes that never end a request line are waited for, like any slow request, until
    the client gives up (half-closes) or Tornado's idle_connection_timeout passes (an
    hour by default; see docs/operations.md)."""
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)
    assert run(raw_exchange(system.port, hello, eof=True)) == b""
    run(good_traffic(system, 2))
