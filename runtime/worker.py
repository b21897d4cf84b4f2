"""A worker process: takes messages from its pool's queue and runs consumers, one at a time.

Consumers are ordinary synchronous functions. Each call is isolated: an
exception is logged with its traceback and ends that event (a WebSocket client
gets close 1011), never the worker. For WebSocket events the worker sends a
"done" acknowledgement to the owning interface after the consumer returns; the
interface releases the connection's next event only then, which is what keeps
per-connection order across workers.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from . import routing, wire, wsgi
from .config import WEBSOCKET_CHANNELS, Config
from .exceptions import ZChannelsError
from .layer import Layer, set_current
from .message import Message
from .poolqueue import BYE, READY
from .process import Service
from .stats import counters

log = logging.getLogger("runtime.worker")

READY_INTERVAL = 1.0  # seconds between READYs while idle: a restarted queue learns of us
# On SIGTERM a worker keeps taking queued work -- above all the disconnect events of the
# interfaces that stopped just before it -- until none has come for STOP_IDLE seconds,
# for STOP_DRAIN seconds at most (supervisord's stopwaitsecs for workers is 3).
STOP_DRAIN = 2.0
STOP_IDLE = 0.2
STOP_DRAIN_MS = 50  # how long a stopped worker waits for a message already on its way
BYE_LINGER_MS = 500  # how long a stopped worker's BYE may wait to reach the queue

CLOSE_NO_CONSUMER = 4404  # WebSocket close code: nothing handles this path
NOT_FOUND_BODY = "404 Not Found: no consumer for this path\n"


class Worker(Service):
    def __init__(self, config: Config, pool_name: str,
                 registry: routing.Registry = routing.registry) -> None:
        self.pool = config.pool(pool_name)
        super().__init__(config, f"worker-{self.pool.name}")
        self.registry = registry
        self.unhandled_seen: set[str] = set()
        self.layer = Layer(config, self.context)
        # The WSGI application answers the HTTP requests no consumer claims; it is
        # loaded now so that a broken one stops the worker at start, loudly.
        self.wsgi_app = (wsgi.load_app(config.wsgi_app)
                         if config.wsgi_app and self.pool.serves("http.request") else None)
        # Credit-based dispatch: the pool queue sends one message per READY.
        self.events = self.socket(zmq.DEALER)
        self.events.routing_id = self.layer.identity
        self.events.connect(self.pool.endpoint_out)
        self.poller.register(self.events, zmq.POLLIN)
        self.poller.register(self.layer.router, zmq.POLLIN)
        self.last_ready = 0.0
        self.handled = 0  # messages received from the queue, told to it with each READY
        self.stop_requested: float | None = None
        self.last_message = 0.0

    def run(self) -> None:
        set_current(self.layer)
        log.info("worker %s serving pool %s (%s) with %d route(s)",
                 self.layer.identity.decode(), self.pool.name, ", ".join(self.pool.channels),
                 len(self.registry.routes))
        self.ask_for_work()
        # A gauge makes the worker write its stats every stats_interval, like the other
        # roles, so a reader can tell "nothing changed" from "not written yet".
        counters.gauges["handled"] = lambda: self.handled
        self.serve(identity=self.layer.identity.decode(), routes=len(self.registry.routes))

    def stop(self) -> None:
        """Finish the queued work that is there now, then stop (see STOP_DRAIN)."""
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.layer.router in ready:
            self.layer.drain_router()
        now = time.monotonic()
        if self.events in ready:
            self.handled += 1
            self.handle(self.events.recv_multipart())
            self.last_message = now = time.monotonic()
            self.ask_for_work()
        elif now - self.last_ready > READY_INTERVAL:
            self.ask_for_work()
        if self.stop_requested is not None:
            idle_since = max(self.last_message, self.stop_requested)
            if now - idle_since > STOP_IDLE or now - self.stop_requested > STOP_DRAIN:
                self.stopping = True

    def closing(self) -> None:
        # A message the queue sent in answer to our last READY is ours: finish it
        # rather than lose it.
        while self.events.poll(STOP_DRAIN_MS):
            self.handled += 1
            self.handle(self.events.recv_multipart())
        # Tell the queue what we finished, so it hands on only what we did not: a
        # worker that just vanishes has its message redelivered.
        self.events.linger = BYE_LINGER_MS
        try:
            self.events.send(b"%s%d" % (BYE, self.handled), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.layer.close()  # with linger: what consumers sent still goes out
        set_current(None)

    def ask_for_work(self) -> None:
        self.last_ready = time.monotonic()
        try:
            self.events.send(b"%s%d" % (READY, self.handled), zmq.NOBLOCK)
        except zmq.Again:  # the queue is away; READY_INTERVAL will ask again
            pass

    def handle(self, frames: list[bytes]) -> None:
        """Run the consumer for one message from the queue."""
        if len(frames) not in (2, 3):
            counters.incr("garbage")
            log.warning("dropped a malformed event (%d frames, expected 2 or 3)", len(frames))
            return
        try:
            header = wire.decode(frames[0])
            message = Message(header, frames[1], self.layer)
            sequence = int(frames[2]) if len(frames) == 3 else None
        except (ValueError, KeyError, TypeError) as e:
            counters.incr("garbage")
            log.warning("dropped a malformed event: %s", e)
            return
        counters.incr("events")
        error = False
        started = time.monotonic()
        self.layer.current_route = message.reply_channel.route if message.reply_channel else None
        self.layer.current_sends = 0
        try:
            self.dispatch(message)
        except Exception:
            error = True
            counters.incr("consumer_errors")
            log.exception("consumer for %s %s failed (%s)", message.channel,
                          message.path or "", message.reply_channel or "no reply channel")
        finally:
            if header.get("ack") and message.reply_channel is not None:
                self.acknowledge(message, sequence, error, time.monotonic() - started)

    def dispatch(self, message: Message) -> None:
        path = message.path
        found = self.registry.match(message.channel, path)
        if found is not None:
            func, kwargs = found
            func(message, **kwargs)
            return
        if message.channel == "http.request" and message.reply_channel is not None:
            if self.wsgi_app is not None:
                wsgi.run(self.wsgi_app, message)
                return
            counters.incr("no_consumer_for_path")
            log.info("no consumer for HTTP %s %r: 404", message.method, path)
            message.reply_channel.respond(NOT_FOUND_BODY, status=404)
            return
        if message.channel == "http.disconnect":
            return  # nothing to clean up unless a consumer asked for it
        if message.channel in WEBSOCKET_CHANNELS:
            if self.registry.handles_path(path, WEBSOCKET_CHANNELS):
                # The path has consumers, just none for this event (commonly no
                # disconnect consumer): nothing to do. Without a connect consumer the
                # connection is accepted as is.
                return
            if message.channel == "websocket.connect" and message.reply_channel is not None:
                counters.incr("no_consumer_for_path")
                log.warning("no consumer for WebSocket path %r: closing %s with %d",
                            path, message.reply_channel, CLOSE_NO_CONSUMER)
                message.reply_channel.close(CLOSE_NO_CONSUMER, "no consumer for this path")
            # The disconnect of such a connection needs nothing either.
            return
        counters.incr("unhandled")
        if message.channel not in self.unhandled_seen:
            # Once per channel: a missing consumer is a deployment mistake, and a
            # line per message would flood the log.
            self.unhandled_seen.add(message.channel)
            log.warning("no consumer for channel %s; dropped, and counted as 'unhandled' "
                        "from now on", message.channel)

    def acknowledge(self, message: Message, sequence: int | None, error: bool,
                    elapsed: float) -> None:
        assert message.reply_channel is not None
        header: dict[str, Any] = {"op": wire.OP_DONE, "seq": sequence,
                                  "sent": self.layer.current_sends}
        self.layer.current_route = None
        if error:
            header["error"] = True
        if message.session.modified:
            header["session"] = dict(message.session)
        try:
            try:
                self.layer.to_interface(message.reply_channel, header)
            except (TypeError, ValueError, OverflowError) as e:
                counters.incr("consumer_errors")
                log.error("session of %s cannot be stored (not JSON-serialisable: %s); "
                          "closing the connection", message.reply_channel, e)
                header.pop("session")
                header["error"] = True
                self.layer.to_interface(message.reply_channel, header)
        except ZChannelsError as e:
            # The interface will close the connection when its event timeout passes.
            counters.incr("ack_failures")
            log.error("could not acknowledge %s on %s after %.3fs: %s", message.channel,
                      message.reply_channel, elapsed, e)
