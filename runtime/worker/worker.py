"""A worker process: takes messages from its pool's queue and runs consumers, one at a time.

Consumers are ordinary synchronous functions. Each call is isolated: an
exception is logged with its traceback and ends that event (a WebSocket client
gets close 1011), never the worker. For client events the worker sends a "done"
acknowledgement to the owning interface after the consumer returns; the
interface releases the connection's next event only then, which is what keeps
per-connection order across workers. The done is also the worker's credit with
the broker (it is free again), and carries the consumer's last message to its own
connection when there is one: one ZeroMQ message for all three.

The application is imported when the worker starts (`app.load_or_fail`: Django set up,
then the consumers, then the WSGI application). One that does not import leaves the
worker up, answering every event at once (HTTP 503, WebSocket close 1011): said once,
on the terminal and in the log, rather than a restart loop into supervisord's FATAL.
"""
from __future__ import annotations

import io
import logging
import sys
import time

import zmq

from zchannels.wire import frames as wire
from zchannels.worker import app, reloading
from zchannels.core.config import Config
from zchannels.core.exceptions import ZChannelsError
from zchannels.worker.link import WorkerLink
from zchannels.api.sender import set_current
from zchannels.api.message import Message
from zchannels.wire.process import Service
from zchannels.core.stats import counters

log = logging.getLogger("zchannels.worker")

READY_INTERVAL = 1.0  # seconds between READYs while idle: a restarted broker learns of us
# On SIGTERM a worker keeps taking queued work -- above all the disconnect events of the
# interfaces that stopped just before it -- until none has come for STOP_IDLE seconds,
# for STOP_DRAIN seconds at most (supervisord's stopwaitsecs for workers is 3).
STOP_DRAIN = 2.0
STOP_IDLE = 0.2
STOP_DRAIN_MS = 50  # how long a stopped worker waits for a message already on its way
BYE_LINGER_MS = 500  # how long a stopped worker's BYE may wait to reach the broker


class Worker(Service):
    def __init__(self, config: Config, pool_name: str) -> None:
        self.pool = config.pool(pool_name)
        super().__init__(config, f"worker-{self.pool.name}")
        # The application, before any socket: Django set up, then the consumers, then
        # the WSGI application (for the HTTP requests no consumer claims, if this pool
        # serves them). One that does not import is said once, and answered 503/1011.
        self.application = app.load_or_fail(config, self.pool.serves("http.request"))
        if self.application.failure is not None:
            app.report_failure(self.application.failure, config, self.role)
        else:
            app.forget_failure(config.run_dir)
        self.registry = self.application.registry
        self.dispatcher = self.application.dispatcher()
        # One DEALER to the broker for everything: events in; replies, group sends,
        # membership requests and credit out. Credit-based dispatch: the broker sends
        # one event per READY (or done).
        self.layer = WorkerLink(config, self.context, endpoint=self.pool.endpoint_out)
        self.poller.register(self.layer.broker, zmq.POLLIN)
        self.last_ready = 0.0
        self.handled = 0  # messages received from the broker, told to it with each credit
        self.draining = False  # stopped: finish what was sent, ask for nothing more
        self.stop_requested: float | None = None
        self.last_message = 0.0

    def run(self) -> None:
        set_current(self.layer)
        # What consumers print goes to the terminal (supervisord's output) as it happens.
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(line_buffering=True)
        if self.application.failure is not None:
            log.warning("worker %s serving pool %s (%s) WITHOUT its application, which "
                        "failed to import: every event is answered at once (HTTP 503, "
                        "WebSocket close 1011) until the workers are restarted",
                        self.layer.identity.decode(), self.pool.name,
                        ", ".join(self.pool.channels))
        else:
            log.info("worker %s serving pool %s (%s) with %d route(s)%s",
                     self.layer.identity.decode(), self.pool.name,
                     ", ".join(self.pool.channels), len(self.registry.routes),
                     ", Django set up" if self.application.django else "")
        self.layer.start_flusher()
        self.ask_for_work()
        # A gauge makes the worker write its stats every stats_interval, like the other
        # roles, so a reader can tell "nothing changed" from "not written yet".
        counters.gauges["handled"] = lambda: self.handled
        application = {"application": "failed to import"} \
            if self.application.failure is not None else {}
        reloading.attach(self)  # under --reload only: see there
        self.serve(identity=self.layer.identity.decode(), routes=len(self.registry.routes),
                   **application)

    def stop(self) -> None:
        """Finish the queued work that is there now, then stop (see STOP_DRAIN)."""
        if self.stop_requested is None:
            self.stop_requested = time.monotonic()

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        now = time.monotonic()
        event = self.layer.next_event() if self.layer.broker in ready or self.layer.inbox \
            else None
        if event is not None:
            self.handled += 1
            self.last_ready = now
            if not self.handle(event):
                self.ask_for_work()
            self.last_message = now = time.monotonic()
        elif now - self.last_ready > READY_INTERVAL:
            self.ask_for_work()
        if self.stop_requested is not None:
            idle_since = max(self.last_message, self.stop_requested)
            if now - idle_since > STOP_IDLE or now - self.stop_requested > STOP_DRAIN:
                self.stopping = True

    def closing(self) -> None:
        # A message the broker sent in answer to our last credit is ours: finish it
        # rather than lose it (its done is then no credit).
        self.draining = True
        while (event := self.layer.next_event(STOP_DRAIN_MS)) is not None:
            self.handled += 1
            self.handle(event)
        # Tell the broker what we finished, so it hands on only what we did not: a
        # worker that just vanishes has its message redelivered.
        self.layer.broker.linger = BYE_LINGER_MS
        self.layer.credit(b"%s%d" % (wire.VERB_BYE, self.handled))
        self.layer.close()  # with linger: what consumers sent still goes out
        set_current(None)

    def ask_for_work(self) -> None:
        self.last_ready = time.monotonic()
        self.layer.credit(b"%s%d" % (wire.VERB_READY, self.handled))

    def handle(self, frames: list[bytes]) -> bool:
        """Run the consumer for one message from the broker. True if its done, sent to
        the connection's interface, was also the worker's credit."""
        parsed = self.dispatcher.parse(frames, self.layer)
        if parsed is None:
            return False
        message, sequence = parsed
        counters.incr("events")
        error = False
        started = time.monotonic()
        reply_channel = message.reply_channel if message.content.get("ack") else None
        acked = reply_channel is not None
        self.layer.begin_event(reply_channel.route if reply_channel is not None else None)
        try:
            error = self.dispatcher.call(message)
        finally:
            if acked:
                self.acknowledge(message, sequence, error, time.monotonic() - started)
        return acked

    def acknowledge(self, message: Message, sequence: int | None, error: bool,
                    elapsed: float) -> None:
        """Send the event's done, which is also this worker's credit."""
        done = self.dispatcher.done(message, sequence, self.layer.current_sends, error)
        try:
            self.layer.end_event(done, self.handled, credit=not self.draining)
        except ZChannelsError as e:
            # The interface will close the connection when its event timeout passes.
            counters.incr("ack_failures")
            log.error("could not acknowledge %s on %s after %.3fs: %s", message.channel,
                      message.reply_channel, elapsed, e)
            if not self.draining:
                self.ask_for_work()  # the done was the credit
