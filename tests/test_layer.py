"""What a worker's layer puts on the wire, read by a real ROUTER standing in for the
broker: the consumer's last operation for its own connection rides with the done and
the credit, and is never held while the consumer goes on running."""
import time

import pytest

from broker_rig import layer_with_broker

from zchannels.wire import frames as wire
from zchannels.api.message import ReplyChannel

ROUTE = (b"i1", 5)
DONE = b'{"op":"done","conn":5}'


@pytest.fixture
def held():
    with layer_with_broker(flusher=False) as pair:
        yield pair


@pytest.fixture
def flushing():
    with layer_with_broker(flusher=True) as pair:
        yield pair


def test_a_reply_and_the_done_and_the_credit_are_one_message(held):
    layer, broker = held
    layer.begin_event(ROUTE)
    ReplyChannel("i1!5", layer).send(text="echo")
    layer.end_event(DONE, handled=3)
    assert broker.recv_multipart() == [
        b"w-test", b"D3", b"i1", b'{"op":"send","kind":"text","conn":5}', b"echo", DONE]
    assert not broker.poll(100), "nothing else was sent"


def test_only_the_last_operation_rides_with_the_done_and_order_holds(held):
    layer, broker = held
    layer.begin_event(ROUTE)
    reply = ReplyChannel("i1!5", layer)
    reply.send(text="one")
    reply.send(text="two")
    layer.end_event(DONE, handled=1)
    first = broker.recv_multipart()
    assert first[1:3] == [wire.VERB_TO, b"i1"] and first[-1] == b"one"
    second = broker.recv_multipart()
    assert second[1] == b"D1" and second[4:] == [b"two", DONE]


def test_a_reply_is_not_held_while_the_consumer_keeps_running(flushing):
    layer, broker = flushing
    layer.begin_event(ROUTE)
    ReplyChannel("i1!5", layer).send(text="working...")
    started = time.monotonic()
    time.sleep(0.3)  # the consumer computes (or waits) before it returns
    assert broker.poll(0), "the reply went out while the consumer was still running"
    frames = broker.recv_multipart()
    assert frames[1] == wire.VERB_TO and frames[-1] == b"working..."
    layer.end_event(DONE, handled=1)
    assert broker.recv_multipart() == [b"w-test", b"D1", b"i1", DONE]
    assert time.monotonic() - started < 2.0


def test_a_reply_is_not_held_during_pure_computation_either(flushing):
    layer, broker = flushing
    layer.begin_event(ROUTE)
    ReplyChannel("i1!5", layer).send(text="working...")
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # holds the GIL but for the switch interval
        pass
    assert broker.poll(0), "the flusher got its turn within the switch interval"
    layer.end_event(DONE, handled=1)


def test_another_layer_call_sends_the_held_operation_first(held):
    layer, broker = held
    layer.begin_event(ROUTE)
    ReplyChannel("i1!5", layer).send(text="to me")
    layer.group_send("room", text="to all")
    first, second = broker.recv_multipart(), broker.recv_multipart()
    assert first[1] == wire.VERB_TO and first[-1] == b"to me"
    assert second[1:] == [wire.VERB_GROUP, b"room", b'{"op":"send","kind":"text"}', b"to all"]
    layer.end_event(DONE, handled=1)
    assert broker.recv_multipart()[1:] == [b"D1", b"i1", DONE]
