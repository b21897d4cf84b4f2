"""One pool inside the broker: its input, its workers, and who holds what.

Dispatch is credit-based (the ZeroMQ guide's load-balancing broker): a worker
connects a DEALER to the pool's ROUTER and gives one credit whenever it is free,
and each message goes to the worker that has been free longest, one at a time. A
worker busy in a slow consumer is never handed more, so no message waits behind
it while another worker is idle -- which plain PUSH/PULL round-robin cannot
promise, since every IPC hop's kernel buffer holds a hundred or more small
messages whatever the high-water marks say. The credit rides on what a worker
sends anyway: the "done" of the event it has just finished (``D<n>``), or a bare
``R<n>`` after a message that needs no done, at start, and every second while idle.

When no worker is free the broker stops reading the pool's input, so messages
wait in the input socket, up to ``capacity``; beyond it senders' non-blocking
sends fail and the work is refused visibly (WebSocket close 1013, HTTP 503,
`ChannelFull`).

The pool remembers the one message each worker holds. When a worker's
connection drops (it was killed, or crashed) while it holds one, the message is
handed to another worker with ``"redelivered": true`` in its header -- once: a
message whose second worker dies too is dropped and counted
(``dropped_after_redelivery``), so a message that kills every worker it touches
cannot loop. A worker that stops cleanly says BYE with its count first, so what
it finished is not run again. The disconnect is seen through a socket monitor;
each credit from a worker carries the file descriptor of its connection
(``SRCFD``), which ties the monitor's fd to a worker.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from zchannels.wire import frames as wire
from zchannels.wire import transport
from zchannels.core.config import Config, PoolConfig
from zchannels.core.exceptions import BadMessage
from zchannels.core.stats import counters, labelled

log = logging.getLogger("zchannels.poolqueue")

READY = wire.VERB_READY
BYE = wire.VERB_BYE
BATCH = 512  # messages taken from the input per turn
REDELIVERED = "redelivered"  # header key of a message handed on after its worker died
EVENT = [wire.TO_WORKER_EVENT]


class Pool:
    def __init__(self, pool: PoolConfig, socket: Callable[[int], zmq.Socket],
                 config: Config) -> None:
        self.pool = pool
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
        self.incoming = socket(zmq.PULL)
        self.incoming.rcvhwm = pool.capacity
        transport.bind(self.incoming, pool.endpoint_in, config)
        self.workers = socket(zmq.ROUTER)
        self.workers.router_mandatory = 1  # a worker that has gone is an error, not a sink
        self.monitor = self.workers.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.monitor.linger = 0
        transport.bind(self.workers, pool.endpoint_out, config)
        # For the metrics: what this pool holds now, and what it handed out.
        self.dispatched_counter = labelled("pool_dispatched", pool=pool.name)
        counters.gauges.update({
            labelled("pool_free_workers", pool=pool.name): lambda: len(self.ready),
            labelled("pool_busy_workers", pool=pool.name): lambda: len(self.holding),
            labelled("pool_backlog", pool=pool.name):
                lambda: len(self.redeliveries) + (self.held is not None),
            labelled("pool_capacity", pool=pool.name): lambda: pool.capacity,
        })

    def taking(self) -> bool:
        """Whether to read the input now: only while a worker is free to take it."""
        return bool(self.ready) and self.held is None and not self.redeliveries

    def credit(self, worker: bytes, word: bytes, fd: int) -> bool:
        """A READY (``R<n>``) or BYE (``B<n>``) from `worker`; False if it is garbage."""
        if word[:1] not in (READY, BYE) or not word[1:].isdigit():
            return False
        self.seen_on(worker, fd)
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
        return True

    def seen_on(self, worker: bytes, fd: int) -> None:
        """Note the connection a worker speaks on."""
        previous = self.worker_on_fd.get(fd)
        if previous is not None and previous != worker:
            # The fd was closed and reused before the monitor told us: the worker that
            # had it is gone, and the monitor's report of it is still to come.
            self.stale_disconnects[fd] = self.stale_disconnects.get(fd, 0) + 1
            self.worker_gone(previous)
        old_fd = self.fd_of_worker.get(worker)
        if old_fd is not None and old_fd != fd:  # reconnected (the broker restarted)
            self.worker_on_fd.pop(old_fd, None)
        self.worker_on_fd[fd] = worker
        self.fd_of_worker[worker] = fd

    def from_monitor(self) -> None:
        monitor = self.monitor
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

    def release(self) -> None:
        """Hand out what waits inside the broker: redeliveries first, then a held message."""
        while self.redeliveries and self.ready:
            self.dispatch(self.redeliveries.popleft(), front=True)
        if self.held is not None and self.ready:
            held, self.held = self.held, None
            self.dispatch(held)

    def from_senders(self) -> None:
        recv = self.incoming.recv_multipart
        for _ in range(BATCH):
            if not self.taking():
                return
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.dispatch(frames)

    def dispatch(self, frames: list[bytes], front: bool = False) -> None:
        """Give one message to the longest-free worker; hold it if every one has gone
        (a redelivery goes back to the `front` of the redeliveries)."""
        while self.ready:
            worker = next(iter(self.ready))
            del self.ready[worker]
            try:
                self.workers.send_multipart([worker, *EVENT, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:
                # EHOSTUNREACH: it disconnected (stopped or died) since it said READY.
                counters.incr("gone_workers")
                self.forget(worker)
                continue
            self.dispatched[worker] = self.dispatched.get(worker, 0) + 1
            self.holding[worker] = frames
            counters.incr("dispatched")
            counters.incr(self.dispatched_counter)
            counters.incr("zmq_sent")
            return
        if front:
            self.redeliveries.appendleft(frames)
        else:
            self.held = frames

    def drop_queued(self) -> int:
        """At stop: what is still queued will not run. How many that is."""
        lost = (1 if self.held is not None else 0) + len(self.redeliveries)
        while self.incoming.poll(0):
            self.incoming.recv_multipart()
            lost += 1
        return lost
