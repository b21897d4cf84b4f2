"""A worker's link to the broker: a `BrokerConnection` that also takes events and
gives back each event's done with the worker's credit.

The last operation a consumer sends to its own connection is held back for as
long as the consumer keeps running Python without touching the link, so that it
can travel in one ZeroMQ message with the event's "done" and the worker's credit:
an echo is then four messages end to end instead of seven. It is never held
while the consumer waits or computes: a flusher thread sends it as soon as it
can run, which is when the consumer blocks (I/O, sleep) or after the
interpreter's switch interval (5 ms) of pure computation; any other call on the
link sends it first, too.
"""
from __future__ import annotations

import logging
import threading
import time

import zmq

from zchannels.api.connection import TO, BrokerConnection
from zchannels.core.config import Config
from zchannels.core.exceptions import ChannelFull
from zchannels.core.stats import counters
from zchannels.wire import frames as wire

log = logging.getLogger("zchannels.worker")

FLUSHER_JOIN = 1.0  # seconds to wait for the flusher thread at close
FLUSH_TICK = 0.001  # seconds between the flusher's looks while events keep coming
FLUSH_PARK = 0.05  # seconds without a held operation before the flusher sleeps until woken


class WorkerLink(BrokerConnection):
    def __init__(self, config: Config, context: zmq.Context | None = None,
                 identity: str | None = None, endpoint: str | None = None) -> None:
        super().__init__(config, context, identity, endpoint)
        # The route of the event the worker is running, and how many messages its
        # consumer has sent there: the "done" tells the interface, which can then tell
        # whether one was lost on the way (in a broker that died).
        self.current_route: tuple[bytes, int] | None = None
        self.current_sends = 0
        # The consumer's last operation for its own connection, not sent yet, and the
        # thread that sends it if the consumer goes on running (guarded by the lock).
        self.pending: list[bytes] | None = None
        self.wakeup = threading.Condition(self.lock)
        self.closed = False
        self.flusher: threading.Thread | None = None
        # Hold the last operation for the done: set by start_flusher (tests set it alone
        # to see what rides with the done without a thread's timing in the way).
        self.holding = False
        self.parked = False  # the flusher sleeps until an operation is held
        self.last_held = 0.0  # monotonic seconds

    # -- what a consumer sends ---------------------------------------------

    def _flush(self) -> None:
        """Send the held operation, if there is one (lock held)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._relay(pending)

    def _to_connection(self, route: tuple[bytes, int], frames: list[bytes]) -> None:
        if route == self.current_route:  # no new tuple: this is the per-message path
            self.current_sends += 1
            if self.holding:
                self.pending = frames  # maybe it can ride with the done
                if self.parked:
                    self.wakeup.notify()
                else:  # it looks every FLUSH_TICK: no thread to wake per message
                    self.last_held = time.monotonic()
                return
        self._relay(frames)

    def _sent_to(self, route: tuple[bytes, int]) -> None:
        if route == self.current_route:
            self.current_sends += 1

    # -- a worker's events -------------------------------------------------

    def begin_event(self, route: tuple[bytes, int] | None) -> None:
        self.current_route = route
        self.current_sends = 0

    def end_event(self, done: bytes, handled: int, credit: bool = True) -> None:
        """The consumer has returned: send the event's done (encoded, for the current
        route) with the worker's credit (unless it is stopping), and with the held
        operation if there is one."""
        route = self.current_route
        assert route is not None
        self.current_route = None
        verb = b"%s%d" % (wire.VERB_DONE, handled) if credit else TO
        with self.lock:
            pending, self.pending = self.pending, None
            if pending is None:
                frames = [verb, route[0], done]
            else:
                frames = [verb, *pending[1:]]
                if len(frames) == 3:
                    frames.append(b"")  # no payload
                frames.append(done)
            self._relay(frames)

    def credit(self, word: bytes, block: bool = False) -> None:
        """A bare credit (READY or BYE) to the broker; dropped if it cannot go now."""
        with self.lock:
            self._flush()
            try:
                self.broker.send(word, 0 if block else zmq.NOBLOCK)
                counters.incr("zmq_sent")
            except zmq.Again:  # the broker is away; the next READY will tell it
                pass

    def next_event(self, timeout_ms: int = 0) -> list[bytes] | None:
        """The next event the broker sent, within `timeout_ms`; answers and bounces that
        nobody waits for any more are read and counted on the way."""
        if self.inbox:
            return self.inbox.popleft()
        deadline = time.monotonic() + timeout_ms / 1000
        with self.lock:
            while True:
                try:  # the worker's poll has usually just said there is one
                    frames = self.broker.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    remaining = int((deadline - time.monotonic()) * 1000)
                    if remaining <= 0 or not self.broker.poll(remaining):
                        return None
                    continue
                if frames[0] == wire.TO_WORKER_EVENT:
                    return frames[1:]
                answer = self._answer(frames)
                if answer is not None and "req" in answer and answer.get("ok") is not False:
                    counters.incr("late_answers")

    # -- the flusher -------------------------------------------------------

    def start_flusher(self) -> None:
        """Let the consumer's last operation for its connection wait for the done (see
        the module docstring): a worker calls this once it is set up."""
        self.holding = True
        self.flusher = threading.Thread(target=self._flush_while_running, daemon=True,
                                        name="zchannels-flusher")
        self.flusher.start()

    def _flush_while_running(self) -> None:
        """Send a held operation whenever this thread gets to run: the consumer has
        blocked (I/O, sleep) or computed past the interpreter's switch interval. While
        events keep coming it looks every FLUSH_TICK, which costs less than waking it
        for each one; after FLUSH_PARK without a held operation it sleeps until one is."""
        while True:
            with self.wakeup:
                if self.closed:
                    return
                if self.pending is not None:
                    try:
                        self._flush()
                    except ChannelFull as e:
                        # The consumer has moved on; its done will tell the interface
                        # that a message is missing, and the connection is closed (1011).
                        log.error("could not send a message for %s: %s",
                                  self.current_route, e)
                elif time.monotonic() - self.last_held > FLUSH_PARK:
                    self.parked = True
                    self.wakeup.wait()
                    self.parked = False
                    self.last_held = time.monotonic()
                    continue
            time.sleep(FLUSH_TICK)

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        if self.flusher is not None:
            self.flusher.join(FLUSHER_JOIN)
        super().close()
