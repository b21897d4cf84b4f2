"""The forwarder: group broadcast. Workers PUSH group sends in, every interface SUBscribes.

One ZeroMQ message per ``group_send`` whatever the group's size; each interface
keeps the table of its own members and fans the message out locally, framing the
WebSocket message once.

Senders PUSH rather than PUB: a PUB socket drops everything sent before its
subscriptions arrive (the slow-joiner problem), so a worker that had just
started would lose its first group sends. PUSH queues instead, bounded by the
high-water mark. The outgoing side is an XPUB with XPUB_NODROP: when a
subscriber's buffer is full, the forwarder stops reading its input rather than
dropping, so the pressure reaches senders as `ChannelFull`, never as silent loss.

After a (re)start the forwarder does not read its input until the interfaces
have subscribed again (no new subscription for SUBSCRIPTIONS_SETTLE seconds, or
STARTUP_GRACE at most): workers flush the group sends they queued while it was
away as soon as it binds, and an XPUB with no subscribers discards them.
"""
from __future__ import annotations

import logging
import time

import zmq

from .config import Config
from .process import Service
from .stats import counters

log = logging.getLogger("runtime.forwarder")

BATCH = 512
BLOCKED_RETRY = 0.001  # seconds between attempts while a subscriber is full
STARTUP_GRACE = 3.0  # seconds after start at most before publishing to whoever is there
SUBSCRIPTIONS_SETTLE = 0.3  # seconds without a new subscriber before publishing at start
BLOCKED_LOG_INTERVAL = 10.0  # seconds between "still blocked" warnings


class Forwarder(Service):
    def __init__(self, config: Config) -> None:
        super().__init__(config, "forwarder")
        self.subscribers = 0
        self.started = self.last_subscription = time.monotonic()
        self.publishing = False  # becomes True once the subscribers are back after a start
        self.incoming = self.socket(zmq.PULL)
        self.incoming.rcvhwm = config.forwarder_hwm
        self.incoming.bind(config.forwarder_in)
        self.outgoing = self.socket(zmq.XPUB)
        self.outgoing.sndhwm = config.forwarder_hwm
        self.outgoing.setsockopt(zmq.XPUB_NODROP, 1)
        # Pass every (un)subscription, not only a topic's first and last: the
        # subscribers gauge counts interfaces (each subscribes to everything).
        self.outgoing.setsockopt(zmq.XPUB_VERBOSER, 1)
        self.outgoing.bind(config.forwarder_out)
        self.poller.register(self.outgoing, zmq.POLLIN)  # input only once publishing
        counters.gauges["subscribers"] = lambda: self.subscribers

    def run(self) -> None:
        log.info("forwarder up: in %s, out %s", self.config.forwarder_in,
                 self.config.forwarder_out)
        self.serve()

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.outgoing in ready:
            self.read_subscriptions(self.outgoing)
        if not self.publishing:
            now = time.monotonic()
            if (self.subscribers and now - self.last_subscription > SUBSCRIPTIONS_SETTLE
                    or now - self.started > STARTUP_GRACE):
                self.publishing = True
                self.poller.register(self.incoming, zmq.POLLIN)
                log.info("publishing to %d subscriber(s)", self.subscribers)
        if self.incoming in ready:
            self.forward(self.incoming, self.outgoing)

    def read_subscriptions(self, outgoing: zmq.Socket) -> None:
        while True:
            try:
                event = outgoing.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                self.subscribers += 1
                self.last_subscription = time.monotonic()
            elif event[:1] == b"\x00":
                self.subscribers -= 1

    def forward(self, incoming: zmq.Socket, outgoing: zmq.Socket) -> None:
        for _ in range(BATCH):
            try:
                frames = incoming.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3 or not frames[0]:
                counters.incr("garbage")
                log.warning("dropped a malformed group message (%d frames, expected 3)",
                            len(frames))
                continue
            self.publish(outgoing, frames)

    def publish(self, outgoing: zmq.Socket, frames: list[bytes]) -> None:
        blocked_since = None
        warned_at = 0.0
        while True:
            try:
                outgoing.send_multipart(frames, zmq.NOBLOCK)
                counters.incr("group_messages")
                return
            except zmq.Again:
                # A subscriber (an interface) is full. Wait, keep reading its
                # subscription changes (it may be gone), stop taking new input.
                now = time.monotonic()
                if blocked_since is None:
                    blocked_since = now
                    counters.incr("blocked")
                if now - warned_at > BLOCKED_LOG_INTERVAL:
                    warned_at = now
                    log.warning("a subscriber is not keeping up; group sends wait "
                                "(blocked for %.1fs)", now - blocked_since)
                if self.stopping:
                    counters.incr("dropped_at_stop")
                    return
                self.read_subscriptions(outgoing)
                time.sleep(BLOCKED_RETRY)
