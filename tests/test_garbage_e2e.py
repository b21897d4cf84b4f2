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
from zchannels.wire import frames as wire

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
    # Every socket the broker binds; it is the only process that binds one.
    assert set(endpoints) == {"broker-interfaces", "broker-clients", "pool-default.in",
                              "pool-default.out"}
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
    assert system.settled_counters("broker").get("garbage", 0) > 0
    # Workers write their stats only when a count changed.
    wait_until(lambda: (system.counters("worker") or {}).get("garbage", 0) > 0, 5,
               "the workers to count garbage")
    # Still serving afterwards.
    run(good_traffic(system, 3))


def ready_infos(system, role):
    """What each running process of `role` wrote to run_dir/ready."""
    ready = os.path.join(system.run_dir, "ready")
    infos = []
    for name in sorted(os.listdir(ready)):
        if name.rpartition(".")[0] == role:
            with open(os.path.join(ready, name)) as f:
                infos.append(json.load(f))
    return infos


def broker_garbage(interface_id, conn, worker_id):
    """Malformed messages the broker itself must count as garbage and drop, by the
    socket they arrive on (the frames a DEALER or PUSH sends, without its routing id).
    Each is addressed to a real connection, with a header that would write to it: were
    one relayed, the client would see it."""
    iface = interface_id.encode()
    header = json.dumps({"op": "send", "conn": conn, "kind": "text"}).encode()
    done = json.dumps({"op": "done", "conn": conn, "seq": None, "sent": 0}).encode()
    leak = b"garbage leaked"
    return {
        "broker-clients": [
            [b"X", iface, header, leak],  # an unknown verb
            [b"Tx", iface, header, leak],  # a malformed verb
            [b"T"],  # a T with too few frames
            [b"T", iface],
            [b"T", iface, header, leak, done, b"more"],  # a T with too many frames
            [b"G", b"", header, leak],  # a G without a group
            [b"G", b"garbage-room", header],  # a G with a wrong frame count
            [b"G", b"garbage-room", header, leak, b"more"],
            [b"Gx", b"garbage-room", header, leak],  # a malformed verb
            [b"D1", iface, done],  # a D from the clients socket: only workers give credit
            [b"D1", iface, header, leak, done],
            [b"R1"],  # credit from the clients socket
            [b"B1"],
            [b""],  # no verb at all
            [b"E", header, leak],  # what the broker sends a worker, not what it takes
            [b"A", iface, header],
            [b"U", iface, header],
        ],
        "pool-default.out": [
            [b"Rx"],  # credit with a malformed count
            [b"R"],
            [b"B-1"],
            [b"R1", b"more"],  # credit with a wrong frame count
            [b"D1", iface],  # a D with a wrong frame count
            [b"D1", iface, header, leak],
            [b"D1", iface, header, leak, done, b"more"],
            [b"T"],  # a T with too few frames
            [b"T", iface],
            [b"G", b"", header, leak],  # a G without a group
            [b"G", b"garbage-room", header],  # a G with a wrong frame count
            [b"Tx", iface, header, leak],  # malformed verbs
            [b"X"],
            [b"E", header, leak],
        ],
        "broker-interfaces": [
            [b"just one frame"],  # an interface sends [to, header]: two frames
            [worker_id.encode(), b"{}", b"more"],
            [b"", b"{}", b"more"],  # a hello with a wrong frame count
        ],
    }


def relayed_garbage(interface_id, conn, worker_id):
    """Malformed messages the broker relays as they are (it reads no header): the
    interface (or worker) that receives them counts them as garbage. Returns
    ({endpoint: [messages]}, garbage at the interface, garbage at the worker)."""
    iface = interface_id.encode()
    to_interface = [
        [b"T", iface, b"{"],  # a header that is not JSON
        [b"T", iface, b"[]", b"payload"],  # a header that is not an object
        [b"T", iface, json.dumps({"op": "send"}).encode(), b"payload"],  # no conn
        [b"T", iface, json.dumps({"conn": conn}).encode()],  # no op
        # An operation with its done: both malformed.
        [b"T", iface, b"null", b"payload", json.dumps({"op": "done"}).encode()],
    ]
    to_pool = [  # each handed to a worker as an event
        [b"only a header"],  # one frame
        [b"{", b"payload"],  # a header that is not JSON
        [b"[]", b"payload"],  # a header that is not an object
        [json.dumps({"channel": "garbage.x"}).encode(), b"", b"not a number"],  # its seq
        [json.dumps({"channel": "garbage.x"}).encode(), b"", b"1", b"more"],  # 4 frames
    ]
    to_worker = [[worker_id.encode(), b"not json"]]  # an answer the worker cannot read
    return ({"broker-clients": to_interface, "pool-default.in": to_pool,
             "broker-interfaces": to_worker}, 6, len(to_pool) + len(to_worker))


BROKER_UNMOVED = ("unreachable_interface", "unreachable_worker", "dropped_interface_full",
                  "dropped_bounces", "dropped_pongs", "gone_workers", "redelivered",
                  "dropped_after_redelivery", "group_messages")


def test_malformed_messages_of_every_hop_are_counted_as_garbage_and_disturb_nothing(system):
    """Messages of the wrong shape for the hop they arrive on (runtime/wire/frames.py): a
    malformed or unknown verb, a wrong frame count, a T with too few frames, a G without
    a group, a worker's D or credit from a process that is not a worker. Each is
    counted as garbage once, by the broker or, for what the broker relays without
    reading it, by the interface or worker that receives it; nothing else moves: no
    client sees any of it, no fake worker or interface is taken for real, and a normal
    echo and group send work afterwards."""
    before_pids = pids(system)
    [interface_info, *_] = ready_infos(system, "interface")
    [worker_info, *_] = ready_infos(system, "worker-default")
    worker_id = worker_info["identity"]

    async def scenario():
        # A client on the interface the garbage is addressed to.
        for _ in range(20):
            ws = await system.connect("/test/echo-rc")
            rc = (await read(ws))[3:]
            if rc.startswith(interface_info["id"] + "!"):
                break
            ws.close()
        else:
            raise AssertionError("20 connections, none on the first interface")
        conn = int(rc.split("!")[1])
        broker_before = await asyncio.to_thread(system.settled_counters, "broker")
        interface_before = await asyncio.to_thread(system.settled_counters, "interface")
        worker_before = await asyncio.to_thread(system.settled_counters, "worker")
        dropped = broker_garbage(interface_info["id"], conn, worker_id)
        relayed, at_interface, at_worker = relayed_garbage(interface_info["id"], conn,
                                                           worker_id)
        context = zmq.Context()
        try:
            for name, (endpoint, kind) in fuzz.zmq_endpoints(system.run_dir).items():
                peer = context.socket(kind)
                peer.linger = 1000
                if kind == zmq.DEALER:
                    peer.routing_id = b"garbage-" + name.encode()
                peer.connect(endpoint)
                for frames in dropped.get(name, []) + relayed.get(name, []):
                    peer.send_multipart(frames)
            expected = broker_before.get("garbage", 0) + sum(map(len, dropped.values()))
            await asyncio.to_thread(
                wait_until, lambda: (system.counters("broker") or {}).get("garbage") == expected,
                10, "the broker to count its garbage")
            await asyncio.to_thread(
                wait_until, lambda: (system.counters("interface") or {}).get("garbage") ==
                interface_before.get("garbage", 0) + at_interface,
                10, "the interface to count the garbage relayed to it")
            await asyncio.to_thread(
                wait_until, lambda: (system.counters("worker") or {}).get("garbage") ==
                worker_before.get("garbage", 0) + at_worker,
                10, "the workers to count the garbage relayed to them")
            await asyncio.sleep(0.5)  # anything counted twice, or relayed late, shows now
            broker_after = await asyncio.to_thread(system.settled_counters, "broker")
            interface_after = await asyncio.to_thread(system.settled_counters, "interface")
            worker_after = await asyncio.to_thread(system.settled_counters, "worker")
        finally:
            context.destroy(linger=0)
        # Not a word to the client: it reads its own echo next, nothing before it.
        ws.write_message("still clean")
        assert await read(ws) == "still clean"
        ws.close()
        return (broker_before, broker_after, interface_before, interface_after,
                worker_before, worker_after, expected, at_interface, at_worker,
                sum(map(len, relayed.values())), len(relayed["pool-default.in"]))

    (broker_before, broker_after, interface_before, interface_after, worker_before,
     worker_after, expected, at_interface, at_worker, relayed, to_pool) = run(scenario())
    assert broker_after["garbage"] == expected
    assert interface_after["garbage"] == interface_before.get("garbage", 0) + at_interface
    assert worker_after["garbage"] == worker_before.get("garbage", 0) + at_worker
    # The broker relayed exactly what it does not read, and nothing else.
    assert broker_after["to_interfaces"] == broker_before["to_interfaces"] + (
        relayed - to_pool - 1)
    assert broker_after["dispatched"] == broker_before["dispatched"] + to_pool
    for counter in BROKER_UNMOVED:
        assert broker_after.get(counter, 0) == broker_before.get(counter, 0), counter
    # No fake worker or interface was taken for real.
    assert broker_after["interfaces"] == broker_before["interfaces"] == 2
    wait_until(lambda: (system.counters("broker") or {}).get("free_workers") == 2, 5,
               "both workers, and only they, to be free")
    for counter in ("replies_lost", "dropped_to_closed", "late_acks", "event_timeouts"):
        assert interface_after.get(counter, 0) == interface_before.get(counter, 0), counter
    for counter in ("events", "late_answers", "unreachable_interface", "consumer_errors"):
        assert worker_after.get(counter, 0) == worker_before.get(counter, 0), counter
    assert pids(system) == before_pids, "no process died or restarted"
    # A normal echo and group send still work.
    run(good_traffic(system, 3))


def test_wrong_types_in_well_formed_headers_to_a_real_interface_are_dropped(system):
    """A peer that knows an interface's id (it is in run_dir/ready) sends operations of
    the right shape, with headers of the right shape but the wrong types, for a
    connection that exists, through the broker."""
    async def scenario():
        ws = await system.connect("/test/inspect")
        info = json.loads(await read(ws))
        interface_id, conn = info["reply_channel"].split("!")
        context = zmq.Context()
        peer = context.socket(zmq.DEALER)
        peer.linger = 0
        peer.connect(f"ipc://{system.run_dir}/broker-clients")
        wrong = [{"op": "send", "conn": [int(conn)]}, {"op": "send", "conn": int(conn),
                                                         "kind": ["text"]},
                 {"op": ["send"], "conn": int(conn)}, {"op": "done", "conn": {}, "seq": []},
                 {"op": {}, "conn": int(conn)}, {"op": "send", "conn": str(conn)},
                 {"op": "group_add", "conn": int(conn), "group": ["g"], "req": {}},
                 {"op": "close", "conn": int(conn), "code": 99999, "reason": ["r"]}]
        for header in wrong:
            peer.send_multipart([wire.VERB_TO, interface_id.encode(),
                                 json.dumps(header).encode(), b"x"])
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
        try:
            writer.write_eof()
        except OSError:  # the server answered a huge request and closed before our FIN
            pass
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
