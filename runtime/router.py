"""The router: carries replies, acknowledgements and membership changes from workers to
the interface that owns the socket, and the interfaces' answers back.

It is stateless. Two ROUTER sockets: workers connect DEALERs to one, interfaces
to the other, each with its own routing id. A worker addresses a message with
the interface id it read from the reply channel (``<interface>!<conn>``), so
the router only swaps the first two frames (destination, sender) and passes it
on; it never parses a header. ROUTER_MANDATORY turns "no such peer" into an
error instead of a silent drop: a message for an interface that is gone is
bounced to the worker that sent it (so a waiting ``group_add`` learns at once)
and counted.

Except just after a (re)start: then the workers' DEALERs, which queued their
replies while the router was away, reconnect and flush them at once, often
before the interfaces' DEALERs have reconnected. For STARTUP_GRACE seconds a
message for an interface the router does not know yet is held (in order, per
interface, bounded) and retried, instead of bounced: bouncing a done
acknowledgement would leave its connection stuck until event_timeout.
"""
from __future__ import annotations

import collections
import logging
import time

import zmq

from . import wire
from .config import Config
from .process import Service
from .stats import counters

log = logging.getLogger("runtime.router")

BATCH = 512  # messages moved from one side before looking at the other
STARTUP_GRACE = 3.0  # seconds after start in which interfaces may still be reconnecting
RETRY_INTERVAL_MS = 20  # how often held messages are retried


class Router(Service):
    def __init__(self, config: Config) -> None:
        super().__init__(config, "router")
        self.workers = self._bind(config.router_workers)
        self.interfaces = self._bind(config.router_interfaces)
        self.poller.register(self.workers, zmq.POLLIN)
        self.poller.register(self.interfaces, zmq.POLLIN)
        self.started = time.monotonic()
        # Messages waiting for their interface to reconnect, per interface, in order.
        self.held: dict[bytes, collections.deque[list[bytes]]] = {}
        self.held_count = 0
        counters.gauges["held"] = lambda: self.held_count

    def run(self) -> None:
        log.info("router up: workers at %s, interfaces at %s",
                 self.config.router_workers, self.config.router_interfaces)
        self.serve()

    def _bind(self, endpoint: str) -> zmq.Socket:
        sock = self.socket(zmq.ROUTER)
        sock.router_mandatory = 1
        sock.sndhwm = sock.rcvhwm = self.config.router_hwm
        sock.bind(endpoint)
        return sock

    def poll(self) -> dict[zmq.Socket, int]:
        timeout = RETRY_INTERVAL_MS if self.held else self.POLL_INTERVAL_MS
        return dict(self.poller.poll(timeout))

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.held:
            self.release_held()
        if self.workers in ready:
            self.from_workers()
        if self.interfaces in ready:
            self.from_interfaces()

    def from_workers(self) -> None:
        for _ in range(BATCH):
            try:
                frames = self.workers.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 3 or not frames[1]:
                counters.incr("garbage")
                log.warning("dropped a malformed message from worker %r (%d frames)",
                            frames[0], len(frames))
                continue
            frames[0], frames[1] = frames[1], frames[0]  # [interface, worker, ...]
            waiting = self.held.get(frames[0])
            if waiting is not None:
                if self.held_count >= self.config.router_hwm:
                    self.bounce(frames, zmq.EHOSTUNREACH)
                else:
                    waiting.append(frames)  # behind earlier messages for that interface
                    self.held_count += 1
                continue
            error = self.send_to_interface(frames)
            if (error == zmq.EHOSTUNREACH and self.in_grace()
                    and self.held_count < self.config.router_hwm):
                self.held[frames[0]] = collections.deque([frames])
                self.held_count += 1
                counters.incr("held_at_start")
            elif error:
                self.bounce(frames, error)

    def in_grace(self) -> bool:
        return time.monotonic() - self.started < STARTUP_GRACE

    def send_to_interface(self, frames: list[bytes]) -> int:
        """Send [interface, worker, header, ...] on: 0, or the ZeroMQ error number."""
        try:
            self.interfaces.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            return e.errno or zmq.EHOSTUNREACH
        counters.incr("to_interfaces")
        return 0

    def release_held(self) -> None:
        """Retry held messages in order; once the grace period is over, bounce the rest."""
        grace_over = not self.in_grace()
        for interface, waiting in list(self.held.items()):
            while waiting:
                error = self.send_to_interface(waiting[0])
                if error and not grace_over:
                    break
                frames = waiting.popleft()
                self.held_count -= 1
                if error:
                    self.bounce(frames, error)
            if not waiting:
                del self.held[interface]

    def bounce(self, frames: list[bytes], error: int) -> None:
        """Count a message that cannot be delivered, and tell the worker that sent it."""
        interface, worker, header = frames[0], frames[1], frames[2]
        if error == zmq.EHOSTUNREACH:
            counters.incr("unreachable_interface")
            log.debug("interface %r is not connected; bouncing to %r", interface, worker)
        else:  # EAGAIN: the interface is not reading fast enough
            counters.incr("dropped_interface_full")
            log.warning("interface %r is not keeping up: dropped a message", interface)
        try:
            self.workers.send_multipart([worker, interface, wire.UNREACHABLE, header],
                                        zmq.NOBLOCK)
        except zmq.ZMQError:
            counters.incr("dropped_bounces")

    def from_interfaces(self) -> None:
        interfaces, workers = self.interfaces, self.workers
        for _ in range(BATCH):
            try:
                frames = interfaces.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 3 and frames[1] == wire.PING:
                # An interface checking that the router knows its routing id.
                try:
                    interfaces.send_multipart([frames[0], wire.PING, wire.PONG], zmq.NOBLOCK)
                except zmq.ZMQError:
                    counters.incr("dropped_pongs")
                continue
            if len(frames) < 3:
                counters.incr("garbage")
                log.warning("dropped a malformed message from interface %r (%d frames)",
                            frames[0], len(frames))
                continue
            interface, worker = frames[0], frames[1]
            frames[0], frames[1] = worker, interface
            try:
                workers.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                # The worker that asked has gone (restarted); nobody waits for this answer.
                counters.incr("unreachable_worker")
