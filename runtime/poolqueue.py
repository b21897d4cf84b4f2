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

The queue remembers the one message each worker holds. When a worker's
connection drops (it was killed, or crashed) while it holds one, the message is
handed to another worker with ``"redelivered": true`` in its header -- once: a
message whose second worker dies too is dropped and counted
(``dropped_after_redelivery``), so a message that kills every worker it touches
cannot loop. A worker that stops cleanly says BYE with its count first, so what
it finished is not run again. The disconnect is seen through a socket monitor;
each message from a worker carries the file descriptor of its connection
(``SRCFD``), which ties the monitor's fd to a worker.
"""
from __future__ import annotations

import logging
from collections import deque

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import wire
from .exceptions import BadMessage

from .config import Config
from .process import Service
from .stats import counters

log = logging.getLogger("runtime.poolqueue")

READY = b"R"  # a worker's request for one message, followed by its count of messages
# handled so far: a READY that crossed a message on its way to the worker is stale
BYE = b"B"  # a stopping worker's last word, followed by the same count: take no more
BATCH = 512
REDELIVERED = "redelivered"  # header key of a message handed on after its worker died


class PoolQueue(Service):
    def __init__(self, config: Config, pool_name: str) -> None:
        self.pool = config.pool(pool_name)
        super().__init__(config, f"queue-{self.pool.name}")
        # Free workers, longest-waiting first; a dict so a repeated READY counts once.
        self.ready: dict[bytes, None] = {}
        self.dispatched: dict[bytes, int] = {}  # messages sent to each worker
        self.held: list[bytes] | None = None  # taken from the input, no worker took it yet
        self.holding: dict[bytes, list[bytes]] = {}  # the message each busy worker holds
        self.redeliveries: deque[list[bytes]] = deque()  # go before anything new
        # Which connection (file descriptor) each worker's messages came in on.
        self.worker_on_fd: dict[int, bytes] = {}
        self.fd_of_worker: dict[bytes, int] = {}
        self.stale_disconnects: dict[int, int] = {}
        self.incoming = self.socket(zmq.PULL)
        self.incoming.rcvhwm = self.pool.capacity
        self.incoming.bind(self.pool.endpoint_in)
        self.workers = self.socket(zmq.ROUTER)
        self.workers.router_mandatory = 1  # a worker that has gone is an error, not a sink
        self.monitor = self.workers.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.monitor.linger = 0
        self.sockets.insert(0, self.monitor)
        self.workers.bind(self.pool.endpoint_out)
        # Input is read only while some worker is free: backpressure by pausing reads.
        self.poller.register(self.incoming, zmq.POLLIN)
        self.poller.register(self.workers, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.workers_only = zmq.Poller()
        self.workers_only.register(self.workers, zmq.POLLIN)
        self.workers_only.register(self.monitor, zmq.POLLIN)
        counters.gauges["free_workers"] = lambda: len(self.ready)
        counters.gauges["busy_workers"] = lambda: len(self.holding)

    def run(self) -> None:
        log.info("queue for pool %s up: in %s, workers at %s, capacity %d", self.pool.name,
                 self.pool.endpoint_in, self.pool.endpoint_out, self.pool.capacity)
        self.serve()

    def poll(self) -> dict[zmq.Socket, int]:
        taking = self.ready and self.held is None and not self.redeliveries
        poller = self.poller if taking else self.workers_only
        return dict(poller.poll(self.POLL_INTERVAL_MS))

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.workers in ready:
            self.from_workers(self.workers)
        # After the workers' messages: a READY from a new connection that reuses a
        # dead worker's fd may come before the monitor reports that fd closed.
        if self.monitor in ready:
            self.from_monitor(self.monitor)
        while self.redeliveries and self.ready:
            self.dispatch(self.workers, self.redeliveries.popleft(), front=True)
        if self.held is not None and self.ready:
            held, self.held = self.held, None
            self.dispatch(self.workers, held)
        if self.incoming in ready:
            self.from_senders(self.incoming, self.workers)

    def closing(self) -> None:
        # What is still queued now will not run: count it, do not lose it silently.
        lost = (1 if self.held is not None else 0) + len(self.redeliveries)
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
                parts = workers.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [part.bytes for part in parts]
            worker = frames[0]
            word = frames[1] if len(frames) == 2 else b""
            if word[:1] not in (READY, BYE) or not word[1:].isdigit():
                counters.incr("garbage")
                log.warning("dropped a malformed message from worker %r (%d frames)",
                            worker, len(frames))
                continue
            self.seen_on(worker, parts[1].get(zmq.SRCFD))
            # It has handled everything sent to it, or this READY is stale.
            finished = int(word[1:]) >= self.dispatched.get(worker, 0)
            if finished:
                self.holding.pop(worker, None)
            if word[:1] == BYE:
                # It stopped without taking what it was last sent: that never ran, so it
                # goes to another worker as it is.
                unread = None if finished else self.holding.pop(worker, None)
                if unread is not None:
                    self.redeliveries.appendleft(unread)
                self.forget(worker)
            elif finished:
                self.ready[worker] = None

    def seen_on(self, worker: bytes, fd: int) -> None:
        """Note the connection a worker speaks on."""
        previous = self.worker_on_fd.get(fd)
        if previous is not None and previous != worker:
            # The fd was closed and reused before the monitor told us: the worker that
            # had it is gone, and the monitor's report of it is still to come.
            self.stale_disconnects[fd] = self.stale_disconnects.get(fd, 0) + 1
            self.worker_gone(previous)
        old_fd = self.fd_of_worker.get(worker)
        if old_fd is not None and old_fd != fd:  # reconnected (the queue restarted)
            self.worker_on_fd.pop(old_fd, None)
        self.worker_on_fd[fd] = worker
        self.fd_of_worker[worker] = fd

    def from_monitor(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            fd = int(event["value"])
            if self.stale_disconnects.get(fd):
                self.stale_disconnects[fd] -= 1
                continue
            worker = self.worker_on_fd.get(fd)
            if worker is not None:
                self.worker_gone(worker)

    def forget(self, worker: bytes) -> None:
        self.ready.pop(worker, None)
        self.dispatched.pop(worker, None)
        fd = self.fd_of_worker.pop(worker, None)
        if fd is not None and self.worker_on_fd.get(fd) == worker:
            del self.worker_on_fd[fd]

    def worker_gone(self, worker: bytes) -> None:
        """A worker's connection dropped: hand on the message it held, once."""
        frames = self.holding.pop(worker, None)
        self.forget(worker)
        if frames is None:
            return
        try:
            header = wire.decode(frames[0])
        except BadMessage:
            header = None
        if header is None:
            counters.incr("garbage")
            log.warning("worker %r died holding a malformed message; dropped", worker)
        elif header.get(REDELIVERED):
            counters.incr("dropped_after_redelivery")
            log.error("worker %r died holding a %s message that had already lost a worker "
                      "(%s); dropped, not handed on again", worker, header.get("channel"),
                      header.get("reply_channel") or "no reply channel")
        else:
            header[REDELIVERED] = True
            counters.incr("redelivered")
            log.warning("worker %r died holding a %s message (%s); handing it to another "
                        "worker", worker, header.get("channel"),
                        header.get("reply_channel") or "no reply channel")
            self.redeliveries.append([wire.encode(header), *frames[1:]])

    def from_senders(self, incoming: zmq.Socket, workers: zmq.Socket) -> None:
        for _ in range(BATCH):
            if not self.ready or self.held is not None or self.redeliveries:
                return
            try:
                frames = incoming.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.dispatch(workers, frames)

    def dispatch(self, workers: zmq.Socket, frames: list[bytes], front: bool = False) -> None:
        """Give one message to the longest-free worker; hold it if every one has gone
        (a redelivery goes back to the `front` of the redeliveries)."""
        while self.ready:
            worker = next(iter(self.ready))
            del self.ready[worker]
            try:
                workers.send_multipart([worker, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:
                # EHOSTUNREACH: it disconnected (stopped or died) since it said READY.
                counters.incr("gone_workers")
                self.forget(worker)
                continue
            self.dispatched[worker] = self.dispatched.get(worker, 0) + 1
            self.holding[worker] = frames
            counters.incr("dispatched")
            return
        if front:
            self.redeliveries.appendleft(frames)
        else:
            self.held = frames


def run(config: Config, pool_name: str) -> None:
    PoolQueue(config, pool_name).run()
