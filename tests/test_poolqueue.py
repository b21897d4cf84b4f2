"""A pool's credit-based dispatch inside the broker, driven step by step over real ZeroMQ
sockets."""
import json
import time
from functools import partial

import pytest
import zmq

from broker_rig import broker_rig
from zchannels.core.stats import counters


class DrivenPool:
    """The broker's one pool, with the broker's poll and step to drive it."""

    def __init__(self, broker):
        self.broker = broker
        self.pool_state = broker.pools[0]

    def __getattr__(self, name):
        return getattr(self.pool_state, name)

    def poll(self):
        return self.broker.poll()

    def step(self, ready):
        self.broker.step(ready)


@pytest.fixture
def queue():
    with broker_rig("zq") as rig:
        pool_queue = DrivenPool(rig.broker)
        sender = rig.peer(zmq.PUSH, pool_queue.pool.endpoint_in)
        yield pool_queue, sender, partial(rig.peer, zmq.DEALER, pool_queue.pool.endpoint_out)


def run_until(pool_queue, condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        pool_queue.step(pool_queue.poll())


def free_worker(pool_queue, worker, name):
    """A worker DEALER named `name` that has said READY and is on the free list."""
    sock = worker(name)
    sock.send(b"R0")
    run_until(pool_queue, lambda: name in pool_queue.ready)
    return sock


def test_a_message_waits_for_a_free_worker_and_goes_to_it(queue):
    pool_queue, sender, worker = queue
    sender.send_multipart([b'{"channel": "x"}', b"payload"])
    for _ in range(5):  # nobody is free: the input is not even read
        pool_queue.step(pool_queue.poll())
    assert pool_queue.held is None and counters.get("dispatched", 0) == 0
    w1 = worker(b"w1")
    w1.send(b"R0")
    run_until(pool_queue, lambda: counters.get("dispatched", 0) == 1)
    assert w1.poll(2000) and w1.recv_multipart() == [b"E", b'{"channel": "x"}', b"payload"]
    assert b"w1" not in pool_queue.ready


def test_a_ready_that_crossed_a_message_is_ignored(queue):
    pool_queue, sender, worker = queue
    w1 = free_worker(pool_queue, worker, b"w1")
    sender.send_multipart([b"{}", b"first"])
    run_until(pool_queue, lambda: pool_queue.dispatched.get(b"w1") == 1)
    w1.send(b"R0")  # the idle heartbeat, sent before "first" arrived
    sender.send_multipart([b"{}", b"second"])
    for _ in range(5):
        pool_queue.step(pool_queue.poll())
    assert b"w1" not in pool_queue.ready
    assert pool_queue.dispatched[b"w1"] == 1, "second must wait for a really free worker"
    w1.send(b"R1")  # handled "first": now free
    run_until(pool_queue, lambda: pool_queue.dispatched.get(b"w1") == 2)
    assert [w1.recv_multipart()[2] for _ in range(2)] == [b"first", b"second"]


def test_a_worker_that_left_after_ready_is_dropped_from_the_free_list(queue):
    pool_queue, sender, worker = queue
    gone = free_worker(pool_queue, worker, b"gone")
    gone.close(linger=0)
    run_until(pool_queue, lambda: b"gone" not in pool_queue.ready)  # the monitor saw it
    sender.send_multipart([b"{}", b"for someone"])
    w2 = worker(b"w2")
    w2.send(b"R0")
    run_until(pool_queue, lambda: counters.get("dispatched", 0) == 1)
    assert w2.poll(2000) and w2.recv_multipart() == [b"E", b"{}", b"for someone"]
    assert "redelivered" not in counters  # it held nothing


def test_a_free_worker_that_cannot_be_reached_is_skipped(queue):
    """The race the monitor cannot close: a worker that vanished after its READY and
    before the queue heard of it. The send fails (ROUTER_MANDATORY) and the message
    waits for the next worker."""
    pool_queue, sender, worker = queue
    pool_queue.ready[b"ghost"] = None  # said READY, connection already gone
    sender.send_multipart([b"{}", b"for someone"])
    run_until(pool_queue, lambda: pool_queue.held is not None)
    assert counters["gone_workers"] == 1
    w2 = worker(b"w2")
    w2.send(b"R0")
    run_until(pool_queue, lambda: counters.get("dispatched", 0) == 1)
    assert w2.poll(2000) and w2.recv_multipart() == [b"E", b"{}", b"for someone"]


def test_the_message_of_a_worker_that_dies_goes_to_another_marked_redelivered(queue):
    pool_queue, sender, worker = queue
    w1 = free_worker(pool_queue, worker, b"w1")
    sender.send_multipart([b'{"channel":"x"}', b"work", b"7"])
    run_until(pool_queue, lambda: pool_queue.dispatched.get(b"w1") == 1)
    assert w1.poll(2000) and w1.recv_multipart() == [b"E", b'{"channel":"x"}', b"work", b"7"]
    w2 = free_worker(pool_queue, worker, b"w2")
    w1.close(linger=0)  # dies holding "work"
    run_until(pool_queue, lambda: counters.get("redelivered", 0) == 1)
    assert w2.poll(2000)
    verb, header, payload, seq = w2.recv_multipart()
    assert verb == b"E"
    assert json.loads(header) == {"channel": "x", "redelivered": True}
    assert (payload, seq) == (b"work", b"7"), "payload and seq travel unchanged"
    # It kills its second worker too: dropped and counted, not handed on again.
    w3 = free_worker(pool_queue, worker, b"w3")
    w2.close(linger=0)
    run_until(pool_queue, lambda: counters.get("dropped_after_redelivery", 0) == 1)
    for _ in range(5):
        pool_queue.step(pool_queue.poll())
    assert not w3.poll(200), "a message that killed two workers is not handed on"
    assert counters["redelivered"] == 1


def test_a_worker_that_finished_its_message_and_dies_causes_no_redelivery(queue):
    pool_queue, sender, worker = queue
    w1 = free_worker(pool_queue, worker, b"w1")
    sender.send_multipart([b"{}", b"work"])
    run_until(pool_queue, lambda: pool_queue.dispatched.get(b"w1") == 1)
    assert w1.poll(2000) and w1.recv_multipart()[2] == b"work"
    w1.send(b"R1")
    run_until(pool_queue, lambda: b"w1" in pool_queue.ready)
    w1.close(linger=0)
    run_until(pool_queue, lambda: b"w1" not in pool_queue.ready)
    assert "redelivered" not in counters and pool_queue.holding == {}


def test_bye_hands_on_only_what_the_worker_did_not_take(queue):
    pool_queue, sender, worker = queue
    w1 = free_worker(pool_queue, worker, b"w1")
    sender.send_multipart([b"{}", b"unread"])
    run_until(pool_queue, lambda: pool_queue.dispatched.get(b"w1") == 1)
    w1.send(b"B0")  # stopping; it had handled nothing when it said so
    run_until(pool_queue, lambda: len(pool_queue.redeliveries) == 1)
    w2 = worker(b"w2")
    w2.send(b"R0")
    run_until(pool_queue, lambda: counters.get("dispatched", 0) == 2)
    assert w2.recv_multipart() == [b"E", b"{}", b"unread"], "never ran: handed on unmarked"
    w2.send(b"B1")  # it finished it, then stopped
    run_until(pool_queue, lambda: b"w2" not in pool_queue.dispatched)
    w2.close(linger=0)
    for _ in range(5):
        pool_queue.step(pool_queue.poll())
    assert "redelivered" not in counters and pool_queue.holding == {}


def test_garbage_from_a_worker_is_counted_and_ignored(queue):
    pool_queue, sender, worker = queue
    w1 = worker(b"w1")
    w1.send_multipart([b"R", b"extra"])
    w1.send(b"Rnot-a-number")
    run_until(pool_queue, lambda: counters.get("garbage", 0) == 2)
    assert pool_queue.ready == {}
