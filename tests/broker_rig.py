"""A broker in the test's own process, driven step by step, and peers that talk to it
over real ZeroMQ sockets (tests/test_broker.py, test_poolqueue.py, test_history_broker.py,
test_presence_broker.py); and a worker's layer with a real ROUTER standing in for the
broker (tests/test_layer.py, test_history_layer.py)."""
import contextlib
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

import zmq

from zchannels.core import config as config_module
from zchannels.broker.broker import Broker
from zchannels.worker.link import WorkerLink as Layer
from zchannels.core.stats import counters

RECEIVE_TIMEOUT_MS = 2000  # a missing message fails the test (zmq.Again), never hangs


class Rig:
    def __init__(self, broker: Broker, context: zmq.Context) -> None:
        self.broker = broker
        self.config = broker.config
        self.context = context
        self.sockets: list[zmq.Socket] = []

    def peer(self, kind: int, endpoint: str, name: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        if name is not None:
            sock.routing_id = name
        sock.rcvtimeo = RECEIVE_TIMEOUT_MS
        sock.connect(endpoint)
        self.sockets.append(sock)
        return sock

    def run_until(self, condition: Callable[[], Any], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            self.broker.step(self.broker.poll())


@contextlib.contextmanager
def broker_rig(prefix: str, **tables: Any) -> Iterator[Rig]:
    """`tables`: more of the config file, e.g. ``history={"groups": [...]}``."""
    run_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    config = config_module.parse({"server": {"run_dir": run_dir}, **tables}, environ={})
    broker = Broker(config)
    context = zmq.Context()
    rig = Rig(broker, context)
    counters.clear()
    try:
        yield rig
    finally:
        for sock in rig.sockets:
            sock.close(linger=0)
        context.term()
        for sock in broker.sockets:
            sock.close(linger=0)
        broker.context.term()
        shutil.rmtree(run_dir, ignore_errors=True)


def run_until(broker: Broker, condition: Callable[[], Any], timeout: float = 5.0) -> None:
    """Step `broker` until `condition` holds (fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        broker.step(broker.poll())


def settle(broker: Broker) -> None:
    """Until the broker sends to interfaces (after its start-up hold)."""
    run_until(broker, lambda: broker.startup is None)


@contextlib.contextmanager
def layer_with_broker(flusher: bool | None = None,
                      **tables: Any) -> Iterator[tuple[Layer, zmq.Socket]]:
    """A worker's layer and the ROUTER it talks to. `flusher` True: its flusher thread
    runs; False: the last operation is held for the done without a thread's timing in
    the way; None: neither. `tables`: more of the config file."""
    run_dir = tempfile.mkdtemp(prefix="zl", dir="/tmp")
    config = config_module.parse({"server": {"run_dir": run_dir}, **tables}, environ={})
    context = zmq.Context()
    broker = context.socket(zmq.ROUTER)
    broker.rcvtimeo = RECEIVE_TIMEOUT_MS
    broker.bind(config.broker_clients)
    layer = Layer(config, context, identity="w-test", endpoint=config.broker_clients)
    if flusher:
        layer.start_flusher()
    elif flusher is False:
        layer.holding = True
    try:
        yield layer, broker
    finally:
        layer.close()
        broker.close(linger=0)
        context.term()
        shutil.rmtree(run_dir, ignore_errors=True)
