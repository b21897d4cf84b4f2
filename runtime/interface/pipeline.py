"""One connection's event pipeline, as a state machine without I/O.

Every client connection (a WebSocket, or an HTTP exchange) has a small queue of events
for the worker pools and at most one of them in flight (promise 1: a connection's
consumers run one at a time, in order, the disconnect last). Events are numbered as they
are dispatched and a worker's done must name that number, so a done that comes too late
(its event timed out and was given up on, or ran twice after a worker died) releases
nothing.

There are no sockets, clocks, counters or logs here, in the manner of h11's
``_connection.py``: the interface hands in a ``send`` function and the time, and acts on
what comes back (answers 503, closes with 1013 or 1011, counts, logs). So every rule of
the pipeline is tested in microseconds (tests/test_pipeline.py), without a Tornado loop,
and the interface's own code is left with the I/O.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

__all__ = ["Event", "Limits", "Refusal", "AckResult", "Overdue", "Overrun", "Pipeline"]

# (channel, kind, payload, header). kind is "text" or "bytes" for websocket.receive, ""
# otherwise. A header of None is built by the I/O side when the event is dispatched, so
# that a receive or disconnect carries the session as the previous consumer left it.
Event = tuple[str, str, bytes, bytes | None]

RECEIVE = "websocket.receive"


@dataclass(frozen=True)
class Limits:
    max_queued_events: int  # events queued on one connection before its reading pauses
    event_timeout: float  # seconds a consumer may run before its connection is closed


class Refusal(enum.Enum):
    """What the caller must do about an event its pool refused (``send`` returned False)."""

    RETRY_LATER = "retry later"  # a disconnect, kept queued: offer it again shortly
    CONNECT = "connect"  # websocket.connect dropped: answer the handshake with 503
    RECEIVE = "receive"  # it and the receives queued behind it dropped: close with 1013
    REQUEST = "request"  # http.request dropped: answer 503
    DISCONNECT_LOST = "disconnect lost"  # a disconnect given up on and dropped: count it


# What a refused event means, by channel. A disconnect is only lost once retrying it
# is over (see Pipeline._refused).
REFUSALS = {
    "websocket.connect": Refusal.CONNECT,
    RECEIVE: Refusal.RECEIVE,
    "websocket.disconnect": Refusal.DISCONNECT_LOST,
    "http.request": Refusal.REQUEST,
    "http.disconnect": Refusal.DISCONNECT_LOST,
}


class AckResult(NamedTuple):
    channel: str  # the channel of the event acknowledged
    lost: int  # replies the consumer sent that never arrived (0: none lost)
    error: bool  # the consumer raised


class Overdue(enum.Enum):
    TIMED_OUT = "timed out"  # past event_timeout, reported once: close with 1011 (HTTP 504)
    ABANDONED = "abandoned"  # past twice event_timeout: presumed lost with its worker


class Overrun(NamedTuple):
    """What `Pipeline.sweep` found: the event in flight has run too long."""

    stage: Overdue
    channel: str  # the event's channel (ABANDONED has already taken it out of flight)
    dropped: int  # queued receives dropped with it (TIMED_OUT; always 0 for ABANDONED)


class Pipeline:
    """The queue, the event in flight and the acks of one connection."""

    # One per connection, 20,000 connections per process: no __dict__.
    __slots__ = ("queue", "in_flight", "in_flight_since", "sequence", "arrived", "overdue",
                 "closed", "closed_at", "connect_delivered", "session", "retry_scheduled")

    def __init__(self) -> None:
        # A list, not a deque: it holds at most max_queued_events (and the disconnect),
        # and an empty list is 56 bytes where a deque is 760.
        self.queue: list[Event] = []
        self.in_flight: str | None = None  # channel of the event a consumer is running
        self.in_flight_since = 0.0  # monotonic seconds
        self.sequence = 0  # number of the last event dispatched; acks must name it
        self.arrived = 0  # messages from workers since then (the done says how many to expect)
        self.overdue = False  # the event in flight has overrun event_timeout
        self.closed = False
        self.closed_at = 0.0  # monotonic seconds
        self.connect_delivered = False  # the first event (connect, or request) reached a pool
        self.session: dict[str, Any] | None = None
        self.retry_scheduled = False  # set and cleared by the caller (Refusal.RETRY_LATER)

    def push(self, event: Event, limits: Limits) -> bool:
        """Queue an event; True if the reader should pause (the queue now holds
        max_queued_events or more). The caller dispatches next; if it pauses only when
        `should_resume` is still False after that, it pauses exactly as before."""
        if self.closed:
            # Nothing may follow the disconnect event (queued by close, or dropped there
            # because no consumer ever saw the connection).
            return False
        self.queue.append(event)
        return len(self.queue) >= limits.max_queued_events

    def dispatch(self, send: Callable[[Event, int], bool], now: float, limits: Limits,
                 stopping: bool = False) -> Refusal | None:
        """Hand the next queued event to ``send(event, sequence)`` if none is in flight.

        ``send`` returns False when the pool refused it. A refused event is dropped (a
        disconnect within event_timeout of the close is kept: RETRY_LATER) and the next
        one is tried, as the interface always did. If two are refused in one call (only
        a receive with the disconnect of a gone client behind it), the last refusal is
        returned: the disconnect's must not be missed, and a 1013 to a gone client is
        moot. None if nothing was refused.
        """
        refusal: Refusal | None = None
        while self.in_flight is None and self.queue:
            event = self.queue[0]
            sequence = self.sequence + 1
            if not send(event, sequence):
                refusal = self._refused(event[0], now, limits, stopping)
                if refusal is Refusal.RETRY_LATER:
                    break
                continue
            del self.queue[0]
            self.sequence = sequence
            self.in_flight = event[0]
            self.in_flight_since = now
            self.arrived = 0
            self.connect_delivered = True  # the first event: connect, or the request
        return refusal

    def _refused(self, channel: str, now: float, limits: Limits, stopping: bool) -> Refusal:
        refusal = REFUSALS[channel]  # the interface queues no other channel
        if refusal is Refusal.DISCONNECT_LOST and not stopping \
                and now - self.closed_at < limits.event_timeout:
            # The disconnect consumer is how applications clean up: keep offering it,
            # as long as the event timeout allows.
            return Refusal.RETRY_LATER
        del self.queue[0]
        if refusal is Refusal.RECEIVE:
            # The receives behind it must not reach a consumer without it.
            self.drop_receives()
        return refusal

    def should_resume(self, limits: Limits) -> bool:
        """Whether a paused reader may read again: the queue is below max_queued_events."""
        return len(self.queue) < limits.max_queued_events

    def note_arrival(self) -> None:
        """A message from a worker for this connection that is not a done."""
        self.arrived += 1

    def ack(self, seq: Any, sent: Any, error: bool, session: Any) -> AckResult | None:
        """A worker's done for event number ``seq``. None if it is late: nothing is in
        flight, or a later event is (this one was abandoned, or ran twice and was
        acknowledged already); it must not release that one. Otherwise the event is
        finished and the caller dispatches the next."""
        channel = self.in_flight
        if channel is None or seq != self.sequence:
            return None
        self.finish()
        if isinstance(session, dict):
            self.session = session
        # The consumer's messages travel the same path as its done, in order: if the done
        # is here and they are not, they were lost (in a broker that was killed).
        lost = sent - self.arrived if type(sent) is int and sent > self.arrived else 0
        return AckResult(channel, lost, bool(error))

    def finish(self) -> None:
        """The event in flight is over (acknowledged, or presumed lost)."""
        self.in_flight = None
        self.overdue = False

    def close(self, disconnect_channel: str | None, now: float) -> bool:
        """The client is gone (socket closed, or response ended); False if it was
        already. Its disconnect event goes last in the queue, if a consumer saw the
        connection and ``disconnect_channel`` is not None (an ended HTTP response has none).
        The caller dispatches next."""
        if self.closed:
            return False
        self.closed = True
        self.closed_at = now
        if self.connect_delivered and disconnect_channel is not None:
            self.queue.append((disconnect_channel, "", b"", None))
        else:
            self.queue.clear()  # nothing reached a consumer, nothing to clean up
        return True

    def drop_receives(self) -> int:
        """Drop the queued websocket.receive events; how many there were."""
        kept = [event for event in self.queue if event[0] != RECEIVE]
        dropped = len(self.queue) - len(kept)
        if dropped:
            self.queue[:] = kept
        return dropped

    def sweep(self, now: float, limits: Limits) -> Overrun | None:
        """Check the event in flight against event_timeout (about once a second).

        An overdue event is reported once (TIMED_OUT: the caller closes with 1011) and
        the receives queued behind it are dropped, but the disconnect still waits for
        its consumer to return (promise 1). Only after twice event_timeout is the event
        presumed lost with its worker (ABANDONED: finished here, the caller dispatches
        the disconnect).
        """
        channel = self.in_flight
        if channel is None or now - self.in_flight_since <= limits.event_timeout:
            return None
        if not self.overdue:
            self.overdue = True
            return Overrun(Overdue.TIMED_OUT, channel, self.drop_receives())
        if now - self.in_flight_since > 2 * limits.event_timeout:
            self.finish()
            return Overrun(Overdue.ABANDONED, channel, 0)
        return None

    def finished(self) -> bool:
        """Closed, nothing queued and nothing in flight: the caller may forget it."""
        return self.closed and not self.queue and self.in_flight is None
