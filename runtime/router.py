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
"""
from __future__ import annotations

import logging

import zmq

from . import wire
from .config import Config
from .process import Service
from .stats import counters

log = logging.getLogger("runtime.router")

BATCH = 512  # messages moved from one side before looking at the other


class Router(Service):
    def __init__(self, config: Config) -> None:
        super().__init__(config, "router")
        self.workers = self._bind(config.router_workers)
        self.interfaces = self._bind(config.router_interfaces)
        self.poller.register(self.workers, zmq.POLLIN)
        self.poller.register(self.interfaces, zmq.POLLIN)

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

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.workers in ready:
            self.from_workers(self.workers, self.interfaces)
        if self.interfaces in ready:
            self.from_interfaces(self.interfaces, self.workers)

    def from_workers(self, workers: zmq.Socket, interfaces: zmq.Socket) -> None:
        for _ in range(BATCH):
            try:
                frames = workers.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 3 or not frames[1]:
                counters.incr("garbage")
                log.warning("dropped a malformed message from worker %r (%d frames)",
                            frames[0], len(frames))
                continue
            worker, interface = frames[0], frames[1]
            frames[0], frames[1] = interface, worker
            try:
                interfaces.send_multipart(frames, zmq.NOBLOCK)
                counters.incr("to_interfaces")
            except zmq.ZMQError as e:
                if e.errno == zmq.EHOSTUNREACH:
                    counters.incr("unreachable_interface")
                    log.debug("interface %r is not connected; bouncing to %r", interface, worker)
                else:  # EAGAIN: the interface is not reading fast enough
                    counters.incr("dropped_interface_full")
                    log.warning("interface %r is not keeping up: dropped a message", interface)
                self._bounce(workers, worker, interface, frames[2])

    def _bounce(self, workers: zmq.Socket, worker: bytes, interface: bytes,
                header: bytes) -> None:
        try:
            workers.send_multipart([worker, interface, wire.UNREACHABLE, header], zmq.NOBLOCK)
        except zmq.ZMQError:
            counters.incr("dropped_bounces")

    def from_interfaces(self, interfaces: zmq.Socket, workers: zmq.Socket) -> None:
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
