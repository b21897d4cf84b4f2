"""A pool's queue: every sender PUSHes to it, and it hands each message to a free worker.

Dispatch is credit-based (the ZeroMQ guide's load-balancing broker): a worker
connects a DEALER to the queue's ROUTER and says READY whenever it is free, and
each message goes to the worker that has been free longest, one at a time. A
worker busy in a slow consumer is never handed more, so no message waits behind
it while another worker is idle -- which plain PUSH/PULL round-robin cannot
promise, since every IPC hop's kernel buffer holds a hundred or more small
messages whatever the high-water marks say.

When no worker is free the queue stops reading its input, so messages wait in
the input socket, up to ``capacity``; beyond it senders' non-blocking sends fail
and the work is refused visibly (WebSocket close 1013, HTTP 503, `ChannelFull`).
"""
from __future__ import annotations

import logging

import zmq

from .config import Config
from .process import Service
from .stats import counters

log = logging.getLogger("runtime.poolqueue")

READY = b"R"  # a worker's request for one message, followed by its count of messages
# handled so far: a READY that crossed a message on its way to the worker is stale
BATCH = 512


class PoolQueue(Service):
    def __init__(self, config: Config, pool_name: str) -> None:
        self.pool = config.pool(pool_name)
        super().__init__(config, f"queue-{self.pool.name}")
        # Free workers, longest-waiting first; a dict so a repeated READY counts once.
        self.ready: dict[bytes, None] = {}
        self.dispatched: dict[bytes, int] = {}  # messages sent to each worker
        self.held: list[bytes] | None = None  # taken from the input, no worker took it yet
        self.incoming = self.socket(zmq.PULL)
        self.incoming.rcvhwm = self.pool.capacity
        self.incoming.bind(self.pool.endpoint_in)
        self.workers = self.socket(zmq.ROUTER)
        self.workers.router_mandatory = 1  # a worker that has gone is an error, not a sink
        self.workers.bind(self.pool.endpoint_out)
        # Input is read only while some worker is free: backpressure by pausing reads.
        self.poller.register(self.incoming, zmq.POLLIN)
        self.poller.register(self.workers, zmq.POLLIN)
        self.workers_only = zmq.Poller()
        self.workers_only.register(self.workers, zmq.POLLIN)
        counters.gauges["free_workers"] = lambda: len(self.ready)

    def run(self) -> None:
        log.info("queue for pool %s up: in %s, workers at %s, capacity %d", self.pool.name,
                 self.pool.endpoint_in, self.pool.endpoint_out, self.pool.capacity)
        self.serve()

    def poll(self) -> dict[zmq.Socket, int]:
        poller = self.poller if self.ready and self.held is None else self.workers_only
        return dict(poller.poll(self.POLL_INTERVAL_MS))

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.workers in ready:
            self.from_workers(self.workers)
        if self.held is not None and self.ready:
            held, self.held = self.held, None
            self.dispatch(self.workers, held)
        if self.incoming in ready:
            self.from_senders(self.incoming, self.workers)

    def closing(self) -> None:
        # What is still queued now will not run: count it, do not lose it silently.
        lost = 1 if self.held is not None else 0
        while self.incoming.poll(0):
            self.incoming.recv_multipart()
            lost += 1
        if lost:
            counters.incr("dropped_at_stop", lost)
            log.warning("stopping with %d message(s) queued for pool %s; they are lost",
                        lost, self.pool.name)

    def from_workers(self, workers: zmq.Socket) -> None:
        for _ in range(BATCH):
            try:
                frames = workers.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2 and frames[1][:1] == READY and frames[1][1:].isdigit():
                # Free only if it has handled everything sent to it.
                if int(frames[1][1:]) >= self.dispatched.get(frames[0], 0):
                    self.ready[frames[0]] = None
            else:
                counters.incr("garbage")
                log.warning("dropped a malformed message from worker %r (%d frames)",
                            frames[0], len(frames))

    def from_senders(self, incoming: zmq.Socket, workers: zmq.Socket) -> None:
        for _ in range(BATCH):
            if not self.ready or self.held is not None:
                return
            try:
                frames = incoming.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.dispatch(workers, frames)

    def dispatch(self, workers: zmq.Socket, frames: list[bytes]) -> None:
        """Give one message to the longest-free worker; hold it if every one has gone."""
        while self.ready:
            worker = next(iter(self.ready))
            del self.ready[worker]
            try:
                workers.send_multipart([worker, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:
                # EHOSTUNREACH: it disconnected (stopped or died) since it said READY.
                counters.incr("gone_workers")
                self.dispatched.pop(worker, None)
                continue
            self.dispatched[worker] = self.dispatched.get(worker, 0) + 1
            counters.incr("dispatched")
            return
        self.held = frames


def run(config: Config, pool_name: str) -> None:
    PoolQueue(config, pool_name).run()
