"""The broker's presence and its abandoned disconnects, driven step by step over real
ZeroMQ sockets (tests/broker_rig.py): an interface that goes has its WebSockets'
disconnects put into the pool's input once each; one that comes back is told to drop
them, and is taken back once it says it has."""
import time

import pytest
import zmq

from broker_rig import broker_rig
from zchannels.broker import broker as broker_module
from zchannels.wire import frames as wire
from zchannels.core.stats import counters


@pytest.fixture
def rig(monkeypatch):
    monkeypatch.setattr(broker_module, "SETTLE", 0.0)
    with broker_rig("zp") as rig:
        yield rig


def interface(rig, name):
    sock = rig.peer(zmq.DEALER, rig.config.broker_interfaces, name)
    sock.send_multipart([wire.PING, b"{}"])
    rig.run_until(lambda: name in rig.broker.known)
    assert sock.recv_multipart() == [wire.PING, wire.PONG]
    return sock


def tell(rig, sock, **header):
    before = rig.broker.websockets.total(), rig.broker.presence.total()
    sock.send_multipart([wire.PRESENCE, wire.encode(header)])
    rig.run_until(lambda: (rig.broker.websockets.total(), rig.broker.presence.total())
                  != before)


def worker(rig):
    """A worker of the pool, free for one event."""
    sock = rig.peer(zmq.DEALER, rig.config.pools[0].endpoint_out, b"w1")
    sock.send(b"R0")
    rig.run_until(lambda: b"w1" in rig.broker.pools[0].ready)
    return sock


def test_a_gone_interface_s_sockets_get_one_abandoned_disconnect_each(rig):
    a = interface(rig, b"ia")
    b = interface(rig, b"ib")
    tell(rig, a, changes=[], opened=[["ia!1", "/ws/x"], ["ia!2", "/ws/y"]])
    tell(rig, a, changes=[["room", "ia!1", True, {"u": 1}, True]])
    tell(rig, b, changes=[], opened=[["ib!1", "/ws/x"]])
    tell(rig, a, changes=[], closed=["ia!2"])  # closed normally: its own disconnect ran
    w1 = worker(rig)
    a.close(linger=0)
    rig.sockets.remove(a)
    rig.run_until(lambda: b"ia" not in rig.broker.known)
    rig.run_until(lambda: b"w1" not in rig.broker.pools[0].ready)  # handed the event
    verb, header, payload = w1.recv_multipart()
    assert (verb, payload) == (wire.TO_WORKER_EVENT, b"")
    assert wire.decode(header) == {"channel": "websocket.disconnect", "reply_channel": "ia!1",
                                   "path": "/ws/x", "code": 1006, "abandoned": True}
    w1.send(b"R1")
    for _ in range(20):
        rig.broker.step(rig.broker.poll())
    with pytest.raises(zmq.Again):  # only that one: ia!2 had closed, ib!1 is alive
        w1.recv_multipart()
    assert counters["abandoned_disconnects"] == 1 and counters["interfaces_gone"] == 1
    assert rig.broker.presence.size("room") == 0
    # The announced member's join, then its leave, went to the group (to ib too).
    told = [b.recv_multipart() for _ in range(2)]
    assert [frames[:2] for frames in told] == [[wire.FROM_GROUP, b"room"]] * 2
    assert [wire.decode(frames[3])["type"] for frames in told] == ["join", "leave"]


def test_an_abandoned_interface_that_comes_back_must_drop_its_sockets_first(rig):
    a = interface(rig, b"ia")
    interface(rig, b"ib")
    tell(rig, a, changes=[], opened=[["ia!1", "/ws/x"]])
    a.close(linger=0)
    rig.sockets.remove(a)
    rig.run_until(lambda: b"ia" not in rig.broker.known)
    # Back (a partition healed): the same id says hello with its old sockets.
    back = rig.peer(zmq.DEALER, rig.config.broker_interfaces, b"ia")
    back.send_multipart([wire.PING, b"{}"])
    back.send_multipart([wire.PRESENCE, wire.encode({"changes": [], "reset": True,
                                                      "opened": [["ia!1", "/ws/x"]]})])
    rig.run_until(lambda: counters.get("dropped_presence", 0) == 1)
    assert back.recv_multipart() == [wire.PING, wire.ABANDONED]
    assert b"ia" not in rig.broker.known and rig.broker.websockets.total() == 0
    back.send_multipart([wire.PING, wire.HELLO_ABANDONED])
    rig.run_until(lambda: b"ia" in rig.broker.known)
    assert back.recv_multipart() == [wire.PING, wire.PONG]


def test_a_group_message_that_finds_an_interface_gone_makes_its_members_leave_once(rig):
    """Issue 21, item 2: a group message's fan-out may find a dead interface before the
    broker's own probe does. It runs the same routine as the probe (and as a bounced
    operation): the members leave (announced, behind the message), the WebSockets'
    disconnects run, and the probe that follows does not run them again."""
    a = interface(rig, b"ia")
    b = interface(rig, b"ib")
    tell(rig, a, changes=[["room", "ia!1", True, {"u": 1}, True]], opened=[["ia!1", "/ws/x"]])
    assert wire.decode(b.recv_multipart()[3])["type"] == "join"
    w1 = worker(rig)
    a.close(linger=0)
    rig.sockets.remove(a)
    message = [b"room", wire.encode({"op": wire.OP_SEND, "kind": wire.KIND_TEXT}), b"hi"]
    # The broker is not stepped: its monitor and probe do not run, only the fan-out.
    sent = 0
    deadline = time.monotonic() + 5
    while not counters.get("unreachable_interface"):
        assert time.monotonic() < deadline, "the closed interface stayed reachable"
        rig.broker.group(list(message))
        sent += 1
        time.sleep(0.01)
    assert counters.get("interfaces_gone") == 1 and b"ia" not in rig.broker.known
    assert rig.broker.presence.size("room") == 0
    told = [b.recv_multipart() for _ in range(sent + 1)]
    assert [frames[3] for frames in told[:sent]] == [b"hi"] * sent
    assert wire.decode(told[-1][3]) == {"type": "leave", "group": "room", "member": "ia!1",
                                        "info": {"u": 1}}
    # Now the broker runs: the disconnect goes to the worker, once, and the probe that
    # follows the closed connection finds nothing more to do.
    rig.run_until(lambda: b"w1" not in rig.broker.pools[0].ready)
    verb, header, _ = w1.recv_multipart()
    assert verb == wire.TO_WORKER_EVENT and wire.decode(header)["reply_channel"] == "ia!1"
    w1.send(b"R1")
    end = time.monotonic() + broker_module.PROBE_AFTER_DISCONNECT + 0.3
    rig.run_until(lambda: time.monotonic() > end)
    with pytest.raises(zmq.Again):
        w1.recv_multipart()
    assert counters["interfaces_gone"] == 1 and counters["abandoned_disconnects"] == 1
