"""The broker as history keeper, driven step by step over real ZeroMQ sockets: group
messages of a group with history go out with their position, others exactly as
before; a join with ``since`` reaches the interface as one message, the missed
messages behind the add, ahead of everything sent after it."""

import pytest
import zmq

from broker_rig import broker_rig, run_until, settle
from runtime import broker as broker_module
from runtime import wire
from runtime.stats import counters

SEND = b'{"op":"send","kind":"text"}'
HISTORY = {"groups": [{"pattern": "room.*", "size": 100}]}


@pytest.fixture
def setup(monkeypatch):
    monkeypatch.setattr(broker_module, "SETTLE", 0.0)
    with broker_rig("zh", history=HISTORY) as rig:
        broker = rig.broker

        def interface(name, hello=True):
            sock = rig.peer(zmq.DEALER, rig.config.router_interfaces, name)
            if hello:
                sock.send_multipart([wire.PING, b"{}"])
                rig.run_until(lambda: name in broker.known)
                assert sock.recv_multipart() == [wire.PING, wire.PONG]
            return sock

        client = rig.peer(zmq.DEALER, rig.config.router_clients, b"c1")
        yield broker, interface, client, rig


def group_send(broker, client, group, text):
    before = counters.get("group_messages", 0)
    client.send_multipart([wire.VERB_GROUP, group, SEND, text])
    run_until(broker, lambda: counters.get("group_messages", 0) == before + 1)


def join(client, since, req=1):
    header = wire.encode({"op": "group_add", "group": "room.a", "req": req, "conn": 5,
                          "since": since})
    client.send_multipart([wire.VERB_HISTORY, b"i1", header])


def test_group_messages_carry_positions_only_where_history_is_kept(setup):
    broker, interface, client, _ = setup
    i1 = interface(b"i1")
    settle(broker)
    group_send(broker, client, b"room.a", b"one")
    group_send(broker, client, b"other", b"two")
    group_send(broker, client, b"room.a", b"three")
    first = i1.recv_multipart()
    epoch = first[4].split(b":")[0]
    assert first == [wire.FROM_GROUP, b"room.a", SEND, b"one", epoch + b":1"]
    assert i1.recv_multipart() == [wire.FROM_GROUP, b"other", SEND, b"two"]
    assert i1.recv_multipart() == [wire.FROM_GROUP, b"room.a", SEND, b"three", epoch + b":2"]


def test_a_join_with_since_brings_what_was_missed_between_the_old_and_the_new(setup):
    broker, interface, client, _ = setup
    i1 = interface(b"i1")
    settle(broker)
    for text in (b"m1", b"m2", b"m3"):
        group_send(broker, client, b"room.a", text)
    epoch = [i1.recv_multipart()[4] for _ in range(3)][0].split(b":")[0].decode()
    join(client, f"{epoch}:1")
    group_send(broker, client, b"room.a", b"m4")  # after the join: live, behind it
    joined = i1.recv_multipart()
    assert joined[0] == b"c1"
    header = wire.decode(joined[1])
    assert header["history"] == {"ok": True, "missed": 2, "position": f"{epoch}:3",
                                 "key": "pos"}
    assert header["since"] == f"{epoch}:1" and header["req"] == 1
    assert joined[2:] == [SEND, b"m2", f"{epoch}:2".encode(), SEND, b"m3",
                          f"{epoch}:3".encode()]
    assert i1.recv_multipart() == [wire.FROM_GROUP, b"room.a", SEND, b"m4",
                                   f"{epoch}:4".encode()]


def test_a_join_from_another_epoch_is_told_why_and_where_the_group_is(setup):
    broker, interface, client, _ = setup
    i1 = interface(b"i1")
    settle(broker)
    join(client, "old:7")
    run_until(broker, lambda: counters.get("to_interfaces", 0) == 1)
    joined = i1.recv_multipart()
    assert len(joined) == 2
    result = wire.decode(joined[1])["history"]
    assert (result["ok"], result["reason"]) == (False, "epoch")
    assert result["position"].endswith(":0")
    assert counters["history_recovery_failed"] == 1


def test_a_join_for_a_gone_interface_is_bounced_like_any_group_add(setup):
    broker, interface, client, _ = setup
    interface(b"i1")
    settle(broker)
    header = wire.encode({"op": "group_add", "group": "room.a", "req": 3, "conn": 5,
                          "since": ""})
    client.send_multipart([wire.VERB_HISTORY, b"i-gone", header])
    run_until(broker, lambda: client.poll(0))
    bounce = client.recv_multipart()
    assert bounce[:2] == [wire.TO_WORKER_BOUNCE, b"i-gone"]
    assert wire.decode(bounce[2])["req"] == 3


def test_after_a_start_a_join_is_judged_in_order_with_the_held_group_messages(setup):
    broker, interface, client, _ = setup
    i1 = interface(b"i1", hello=False)
    run_until(broker, lambda: broker.connected == 1)
    client.send_multipart([wire.VERB_GROUP, b"room.a", SEND, b"held"])
    join(client, "")
    client.send_multipart([wire.VERB_GROUP, b"room.a", SEND, b"after"])
    run_until(broker, lambda: len(broker.startup or ()) == 3)
    i1.send_multipart([wire.PING, b"{}"])
    settle(broker)
    assert i1.recv_multipart() == [wire.PING, wire.PONG]
    held = i1.recv_multipart()
    assert held[3] == b"held" and held[4].endswith(b":1")
    joined = i1.recv_multipart()
    assert wire.decode(joined[1])["history"]["position"] == held[4].decode()
    assert i1.recv_multipart()[3:] == [b"after", held[4][:-1] + b"2"]


def test_a_malformed_join_is_garbage(setup):
    broker, interface, client, _ = setup
    interface(b"i1")
    settle(broker)
    client.send_multipart([wire.VERB_HISTORY, b"i1", b'{"op":"group_add","group":"g"}'])
    run_until(broker, lambda: counters.get("garbage", 0) == 1)


# -- budgets (docs/operations.md#history-budgets) -------------------------------------------

LIMITED = {"groups": [{"pattern": "room.*", "size": 100}],
           "connection_messages_per_second": 2, "connection_bytes_per_second": 0,
           "message_max_bytes": 1000}


@pytest.fixture
def limited(monkeypatch):
    monkeypatch.setattr(broker_module, "SETTLE", 0.0)
    with broker_rig("zb", history=LIMITED) as rig:
        i1 = rig.peer(zmq.DEALER, rig.config.router_interfaces, b"i1")
        i1.send_multipart([wire.PING, b"{}"])
        rig.run_until(lambda: b"i1" in rig.broker.known)
        assert i1.recv_multipart() == [wire.PING, wire.PONG]
        settle(rig.broker)
        yield rig.broker, i1, rig.peer(zmq.DEALER, rig.config.router_clients, b"w1")


def test_what_one_connection_adds_to_history_is_limited_by_the_origin_frame(limited):
    broker, i1, worker = limited
    for text in (b"a1", b"a2", b"a3"):  # the third is over 2 messages per second
        worker.send_multipart([wire.VERB_GROUP, b"room.a", SEND, text, b"i1!5"])
    worker.send_multipart([wire.VERB_GROUP, b"room.a", SEND, b"b1", b"i1!6"])
    worker.send_multipart([wire.VERB_GROUP, b"room.a", SEND, b"p1"])  # no connection's
    run_until(broker, lambda: counters.get("group_messages", 0) == 5)
    got = [i1.recv_multipart() for _ in range(5)]
    epoch = got[0][4].split(b":")[0]
    # Every one went out, with its position and without the origin frame.
    assert got == [[wire.FROM_GROUP, b"room.a", SEND, text, b"%s:%d" % (epoch, n)]
                   for n, text in enumerate((b"a1", b"a2", b"a3", b"b1", b"p1"), 1)]
    assert counters["history_over_rate"] == 1 and counters["history_kept"] == 4
    result, frames = broker.history.recover(b"room.a", f"{epoch.decode()}:3")
    assert result["ok"] and frames[1::3] == [b"b1", b"p1"]
    assert broker.history.recover(b"room.a", f"{epoch.decode()}:2")[0]["reason"] == "evicted"


def test_a_delayed_group_message_keeps_its_origin_and_a_large_one_is_kept_out(limited):
    broker, i1, worker = limited
    worker.send_multipart([wire.VERB_LATER + b"1", wire.VERB_GROUP, b"room.a", SEND, b"d1",
                           b"i1!5"])
    worker.send_multipart([wire.VERB_GROUP, b"room.a", SEND, b"x" * 2000, b"i1!5"])
    run_until(broker, lambda: counters.get("group_messages", 0) == 2)
    assert [len(i1.recv_multipart()) for _ in range(2)] == [5, 5]
    assert counters["history_too_large"] == 1 and counters["history_kept"] == 1
    assert broker.history.allowances.left[b"i1!5"][1] == 1  # the delayed one took its share
    assert counters.get("garbage", 0) == 0
