"""The broker's relaying, driven step by step over real ZeroMQ sockets: operations for a
connection to its interface, the done that is also a credit, group messages to every
interface that said hello, bounces, and the hold after a start. (Credit dispatch and
redelivery: tests/test_poolqueue.py.)"""
import time

import pytest
import zmq

from broker_rig import broker_rig, run_until, settle
from zchannels.broker import broker as broker_module
from zchannels.wire import frames as wire
from zchannels.core.stats import counters


@pytest.fixture
def setup(monkeypatch):
    monkeypatch.setattr(broker_module, "SETTLE", 0.0)
    with broker_rig("zb") as rig:
        broker, config = rig.broker, rig.config

        def interface(name, hello=True):
            sock = rig.peer(zmq.DEALER, config.broker_interfaces, name)
            if not hello:
                return sock
            sock.send_multipart([wire.PING, b"{}"])
            rig.run_until(lambda: name in broker.known)
            assert sock.recv_multipart() == [wire.PING, wire.PONG]
            return sock

        def worker(name):
            return rig.peer(zmq.DEALER, broker.pools[0].pool.endpoint_out, name)

        def client(name):
            return rig.peer(zmq.DEALER, config.broker_clients, name)

        yield broker, interface, worker, client, rig


def test_an_operation_goes_to_the_interface_named_with_the_sender_in_front(setup):
    broker, interface, worker, *_ = setup
    i1 = interface(b"i1")
    settle(broker)
    w1 = worker(b"w1")
    w1.send_multipart([wire.VERB_TO, b"i1", b'{"op":"send","conn":3}', b"hello"])
    run_until(broker, lambda: counters.get("to_interfaces", 0) == 1)
    assert i1.recv_multipart() == [b"w1", b'{"op":"send","conn":3}', b"hello"]


def test_a_reply_with_its_done_is_one_message_and_frees_the_worker(setup):
    broker, interface, worker, *_ = setup
    i1 = interface(b"i1")
    settle(broker)
    w1 = worker(b"w1")
    w1.send(b"R0")
    run_until(broker, lambda: b"w1" in broker.pools[0].ready)
    del broker.pools[0].ready[b"w1"]  # as if it had been handed an event
    broker.pools[0].dispatched[b"w1"] = 1
    done = b'{"op":"done","conn":3,"seq":1,"sent":1}'
    w1.send_multipart([b"D1", b"i1", b'{"op":"send","conn":3}', b"echo", done])
    run_until(broker, lambda: b"w1" in broker.pools[0].ready)
    assert i1.recv_multipart() == [b"w1", b'{"op":"send","conn":3}', b"echo", done]
    assert counters["to_interfaces"] == 1


def test_a_group_message_goes_once_to_every_interface_that_said_hello(setup):
    broker, interface, worker, client, _ = setup
    i1, i2 = interface(b"i1"), interface(b"i2")
    settle(broker)
    client(b"c1").send_multipart([wire.VERB_GROUP, b"room", b'{"op":"send"}', b"hi"])
    run_until(broker, lambda: counters.get("group_messages", 0) == 1)
    for sock in (i1, i2):
        assert sock.recv_multipart() == [wire.FROM_GROUP, b"room", b'{"op":"send"}', b"hi"]
        assert not sock.poll(100), "exactly once"


def test_messages_for_a_gone_interface_are_bounced_to_the_sender(setup):
    broker, interface, worker, *_ = setup
    interface(b"i1")
    settle(broker)
    w1 = worker(b"w1")
    header = b'{"op":"group_add","group":"g","req":7,"conn":1}'
    w1.send_multipart([wire.VERB_TO, b"i-gone", header])
    run_until(broker, lambda: counters.get("unreachable_interface", 0) == 1)
    assert w1.recv_multipart() == [wire.TO_WORKER_BOUNCE, b"i-gone", header]


def test_an_interface_answer_reaches_the_worker_that_asked(setup):
    broker, interface, worker, *_ = setup
    i1 = interface(b"i1")
    settle(broker)
    w1 = worker(b"w1")
    w1.send_multipart([wire.VERB_TO, b"i1", b'{"op":"group_add","req":1}'])
    run_until(broker, lambda: counters.get("to_interfaces", 0) == 1)
    sender, _ = i1.recv_multipart()
    i1.send_multipart([sender, b'{"req":1,"ok":true}'])
    run_until(broker, lambda: w1.poll(0))
    assert w1.recv_multipart() == [wire.TO_WORKER_ANSWER, b"i1", b'{"req":1,"ok":true}']


def test_after_a_start_everything_for_interfaces_is_held_in_order_until_they_are_back(setup):
    broker, interface, worker, client, _ = setup
    i1 = interface(b"i1", hello=False)  # connected, not yet said hello
    run_until(broker, lambda: broker.connected == 1)
    c1 = client(b"c1")
    c1.send_multipart([wire.VERB_GROUP, b"room", b'{"op":"send"}', b"first"])
    c1.send_multipart([wire.VERB_TO, b"i1", b'{"op":"send","conn":1}', b"second"])
    run_until(broker, lambda: len(broker.startup or ()) == 2)
    i1.send_multipart([wire.PING, b"{}"])
    settle(broker)
    assert i1.recv_multipart() == [wire.PING, wire.PONG]
    assert i1.recv_multipart() == [wire.FROM_GROUP, b"room", b'{"op":"send"}', b"first"]
    assert i1.recv_multipart() == [b"c1", b'{"op":"send","conn":1}', b"second"]


def test_garbage_from_senders_is_counted_and_nothing_else_moves(setup):
    broker, interface, worker, client, _ = setup
    i1 = interface(b"i1")
    settle(broker)
    w1 = worker(b"w1")
    w1.send_multipart([b"X", b"i1", b"{}"])  # unknown verb
    w1.send_multipart([wire.VERB_TO, b"i1"])  # too few frames
    w1.send_multipart([wire.VERB_GROUP, b"", b"{}", b""])  # a group message without a group
    client(b"c1").send_multipart([b"D1", b"i1", b"{}"])  # a credit from no pool's worker
    run_until(broker, lambda: counters.get("garbage", 0) == 4)
    assert not i1.poll(100)


def test_a_delayed_group_message_goes_out_when_it_is_due_not_before(setup):
    broker, interface, worker, client, _ = setup
    i1 = interface(b"i1")
    settle(broker)
    sent = time.monotonic()
    client(b"c1").send_multipart([b"W300", wire.VERB_GROUP, b"room", b'{"op":"send"}', b"later"])
    run_until(broker, lambda: counters.get("delayed_accepted", 0) == 1)
    assert not i1.poll(0) and broker.delayed
    run_until(broker, lambda: not broker.delayed, timeout=5.0)
    assert i1.poll(2000)
    arrived = time.monotonic()
    assert i1.recv_multipart() == [wire.FROM_GROUP, b"room", b'{"op":"send"}', b"later"]
    assert 0.3 <= arrived - sent < 0.3 + 0.1
    assert counters["delayed_released"] == 1 and not broker.delayed


def test_a_delayed_channel_message_joins_its_pool_queue_when_due(setup):
    broker, interface, worker, client, _ = setup
    w1 = worker(b"w1")
    w1.send(b"R0")
    run_until(broker, lambda: b"w1" in broker.pools[0].ready)
    client(b"c1").send_multipart([b"W100", wire.VERB_TO_POOL, b"default",
                                  b'{"channel":"tasks.x"}', b"job"])
    run_until(broker, lambda: counters.get("dispatched", 0) == 1, timeout=5.0)
    assert w1.recv_multipart() == [wire.TO_WORKER_EVENT, b'{"channel":"tasks.x"}', b"job"]


def test_delayed_messages_that_cannot_be_kept_are_counted(setup, monkeypatch):
    broker, interface, worker, client, _ = setup
    monkeypatch.setattr(broker_module, "MAX_DELAYED", 1)
    c1 = client(b"c1")
    c1.send_multipart([b"W5000", wire.VERB_GROUP, b"room", b"{}", b"kept"])
    c1.send_multipart([b"W5000", wire.VERB_GROUP, b"room", b"{}", b"one too many"])
    c1.send_multipart([b"W5000", wire.VERB_TO_POOL, b"no-such-pool", b"{}", b""])
    run_until(broker, lambda: counters.get("delayed_refused", 0) == 1
              and counters.get("garbage", 0) == 1)
    assert len(broker.delayed) == 1


def test_the_senders_remembered_for_answers_are_bounded_oldest_first(setup, monkeypatch):
    broker, interface, worker, client, _ = setup
    monkeypatch.setattr(broker_module, "MAX_PEERS", 2)
    i1 = interface(b"i1")
    settle(broker)
    for name in (b"c1", b"c2", b"c3"):
        client(name).send_multipart([wire.VERB_TO, b"i1", b'{"op":"send","conn":1}'])
    run_until(broker, lambda: counters.get("to_interfaces", 0) == 3)
    assert list(broker.peers) == [b"c2", b"c3"]
    for _ in range(3):
        i1.recv_multipart()
