"""The interface's clients and their events: the I/O side of `pipeline`.

A client is a WebSocket connection or an HTTP exchange; both sit behind the one
`Client` protocol below, so nothing here (or in `link`) asks which kind it is.
`Clients` keeps them by number with the group memberships of this interface, and
drives each one's `Pipeline`: it pushes the next event to its pool when none is
in flight, applies the pools' refusals, the workers' acknowledgements and the
event timeout, and forgets a client once it has closed and nothing of it is left.

It touches no socket and no event loop of its own: it is handed the sockets to the
pools (`PoolSocket`), a clock and a timer. The interface hands it ZeroMQ sockets,
``time.monotonic`` and its asyncio loop; the in-memory test server
(`zchannels.testing`) its run queue and its fake clock, and so runs this very code.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import zmq

from zchannels.wire import frames as wire
from zchannels.core.config import CLIENT_CHANNELS, Config
from zchannels.core.stats import Counters, Histogram, counters, labelled
from zchannels.interface.deflate import RSV1, Deflater
from zchannels.interface.frames import OPCODE_BINARY, OPCODES, frame, frame_message
from zchannels.interface.groups import GroupTable
from zchannels.interface.compat import peer_address
from zchannels.interface.pipeline import AckResult, Event, Limits, Overdue, Pipeline, Refusal

log = logging.getLogger("zchannels.interface")

DISCONNECT_RETRY = 0.1  # seconds before re-offering a disconnect event to a full pool
# Events handed to a pool, by channel (the metrics' events_sent{channel=...}).
EVENTS_SENT = {channel: labelled("events_sent", channel=channel) for channel in CLIENT_CHANNELS}


class Outgoing:
    """One message from a worker for one client or a whole group. A WebSocket frame is
    built from it at most once, however many members it is written to; and compressed
    at most once for each compressor its members negotiated (in practice one)."""

    __slots__ = ("kind", "payload", "header", "_frame", "_deflated")

    def __init__(self, kind: Any, payload: bytes, header: dict[str, Any]) -> None:
        self.kind, self.payload, self.header = kind, payload, header
        self._frame: bytes | None = None
        self._deflated: dict[Deflater, bytes] | None = None

    def frame(self, deflater: Deflater | None = None) -> bytes:
        """The frame for a connection that compresses with `deflater` (None: it does
        not compress): compressed, or plain when that would not be smaller."""
        if deflater is not None:
            deflated = self._deflated
            if deflated is None:
                deflated = self._deflated = {}
            found = deflated.get(deflater)
            if found is None:
                data = deflater.compress(self.payload)
                found = deflated[deflater] = self.frame() if data is None else \
                    frame(OPCODES.get(self.kind, OPCODE_BINARY), data, RSV1)
            return found
        if self._frame is None:
            self._frame = frame_message(self.kind, self.payload)
        return self._frame


class PoolSocket(Protocol):
    """Where `Clients` hands an event for a pool: ``[header, payload, sequence]``. A
    ZeroMQ PUSH socket in the interface, which raises ``zmq.Again`` when the pool is
    full (the event is refused)."""

    def send_multipart(self, msg_parts: Sequence[bytes], flags: int = ...) -> Any: ...


Timer = Callable[[float, Callable[[], None]], object]  # call_later(seconds, callback)


def _loop_timer(seconds: float, callback: Callable[[], None]) -> object:
    return asyncio.get_running_loop().call_later(seconds, callback)


class Client(Protocol):
    """What `Clients` and `link` ask of a WebSocket connection or an HTTP exchange."""

    id: int
    reply_channel: str
    pipeline: Pipeline
    groups: set[bytes]  # kept in step by the GroupTable
    resume: asyncio.Future[None] | None  # set while its reader is paused

    def event_header(self, channel: str, kind: str) -> bytes:
        """The header of a queued event built when it is dispatched (a receive or a
        disconnect), so it carries the session as the previous consumer left it."""

    def disconnect_channel(self) -> str | None:
        """The channel of its disconnect event; None: no consumer needs to hear of it."""

    def session_changed(self) -> None:
        """A consumer stored a new session (``pipeline.session``)."""

    def refused(self, refusal: Refusal) -> None:
        """The pool refused its connect (503), a receive (close 1013) or its request (503)."""

    def acknowledged(self, result: AckResult) -> None:
        """The consumer of its event in flight returned, or raised, or lost replies."""

    def timed_out(self) -> None:
        """The consumer of its event in flight overran event_timeout."""

    def deliver(self, message: Outgoing) -> None:
        """A message for it: sent to its reply channel, or to a group it is in."""

    def close(self, code: int, reason: str) -> None:
        """Close it (WebSocket close code; an HTTP response ends)."""

    def accept(self, subprotocol: Any) -> None: ...
    def reject(self) -> None: ...
    def start(self, header: dict[str, Any], payload: bytes | None) -> None: ...
    def body(self, payload: bytes, more: bool) -> None: ...
    def hold(self, header: dict[str, Any]) -> None: ...

    def tick(self, now: float) -> None:
        """Periodic work: pings (WebSocket), deadlines and heartbeats (HTTP)."""

    def stop(self) -> None:
        """The interface is stopping: close (1001), end the stream, or answer 503."""


class Clients:
    """Every client of one interface, its group memberships, and its events' way to
    the pools. `pools`: the socket of the pool serving each client channel; `clock`:
    monotonic seconds; `call_later`: a timer (default: the running asyncio loop's);
    `counters`: where its counts and latency histograms go (the process's)."""

    def __init__(self, config: Config, interface_id: str, pools: Mapping[str, PoolSocket],
                 *, clock: Callable[[], float] = time.monotonic,
                 call_later: Timer = _loop_timer, counters: Counters = counters) -> None:
        self.config = config
        self.interface_id = interface_id
        self.limits = Limits(config.max_queued_events, config.event_timeout)
        self.pools = pools  # client channel -> the PUSH socket of the pool serving it
        self.clock = clock
        self.call_later = call_later
        self.counters = counters
        self.by_id: dict[int, Client] = {}
        self.busy: set[Client] = set()  # with an event in flight: checked for timeouts
        self.groups: GroupTable[Client] = GroupTable()
        self.stopping = False
        self.detached = False  # the pool sockets are closed: nothing more can be sent
        self._ids = itertools.count(1)
        # The link's presence reporter: told when a WebSocket opens, and when a client
        # closes with the groups it leaves.
        self.on_open: Callable[[Client, str], None] | None = None
        self.on_close: Callable[[Client, list[bytes]], None] | None = None
        # Metrics: seconds from handing an event to its pool to its done, per pool.
        self.latency: dict[str, Histogram] = {}
        for channel in CLIENT_CHANNELS:
            pool = config.pool_for(channel)
            name = labelled("event_latency_seconds", pool=pool.name if pool else "")
            self.latency[channel] = counters.histograms.setdefault(name, Histogram())

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, client_id: int) -> Client | None:
        return self.by_id.get(client_id)

    def new_reply_channel(self) -> tuple[int, str]:
        client_id = next(self._ids)
        return client_id, wire.reply_channel_name(self.interface_id, client_id)

    def at_capacity(self) -> bool:
        """max_connections reached: refuse (503) and count."""
        if len(self.by_id) < self.config.max_connections:
            return False
        self.counters.incr("refused_max_connections")
        log.warning("refused a connection: %d connections is max_connections",
                    len(self.by_id))
        return True

    def open(self, client: Client, first_event: Event) -> None:
        """A new client, and its first event (websocket.connect or http.request)."""
        self.by_id[client.id] = client
        self.push(client, first_event)

    def push(self, client: Client, event: Event) -> bool:
        """Queue an event and dispatch; True if the client's reader should pause."""
        pause = client.pipeline.push(event, self.limits)
        self.dispatch(client)
        return pause and not client.pipeline.should_resume(self.limits)

    def dispatch(self, client: Client) -> None:
        """Hand the client's next event to its pool, if none is in flight."""
        pipeline = client.pipeline
        if self.detached:  # after shutdown's grace: counted there (shutdown_undelivered)
            return
        queued = len(pipeline.queue)
        pools = self.pools
        counters = self.counters

        def send(event: Event, sequence: int) -> bool:
            channel, kind, payload, header = event
            if header is None:
                header = client.event_header(channel, kind)
            try:
                pools[channel].send_multipart([header, payload, b"%d" % sequence], zmq.NOBLOCK)
            except zmq.Again:
                counters.incr("refused_pool_full")  # every refusal, each retry included
                return False
            counters.incr("zmq_sent")
            counters.incr(EVENTS_SENT[channel])
            return True

        refusal = pipeline.dispatch(send, self.clock(), self.limits, self.stopping)
        if pipeline.in_flight is not None:
            self.busy.add(client)
        if refusal is Refusal.RETRY_LATER:
            if not pipeline.retry_scheduled:
                pipeline.retry_scheduled = True
                self.call_later(DISCONNECT_RETRY, lambda: self.retry(client))
        elif refusal is Refusal.DISCONNECT_LOST:
            self.counters.incr("disconnects_lost")
            log.warning("%s: pool is full; gave up offering the disconnect event",
                        client.reply_channel)
        elif refusal is not None:
            log.warning("%s: pool is full; refused the %s event", client.reply_channel,
                        refusal.value)
            if refusal is Refusal.RECEIVE:  # the receives queued behind it went with it
                dropped = queued - 1 - len(pipeline.queue) - (pipeline.in_flight is not None)
                if dropped:
                    self.counters.incr("receives_dropped_on_close", dropped)
            client.refused(refusal)
        if client.resume is not None and pipeline.should_resume(self.limits):
            resume, client.resume = client.resume, None
            if not resume.done():
                resume.set_result(None)
        if pipeline.finished():
            self.by_id.pop(client.id, None)
            self.busy.discard(client)

    def retry(self, client: Client) -> None:
        client.pipeline.retry_scheduled = False
        self.dispatch(client)

    def drop_receives(self, client: Client) -> None:
        """Drop its queued receive events: it is being closed (1008, 1011, 1013), and
        their answers could not follow the close frame."""
        dropped = client.pipeline.drop_receives()
        if dropped:
            self.counters.incr("receives_dropped_on_close", dropped)

    def acknowledged(self, client: Client | None, header: dict[str, Any]) -> None:
        """A worker's done for the client's event in flight."""
        result = None if client is None else client.pipeline.ack(
            header.get("seq"), header.get("sent"), bool(header.get("error")),
            header.get("session"))
        if client is None or result is None:
            # The client is gone, or its event timed out and a later one is in
            # flight: this ack must not release that one.
            self.counters.incr("late_acks")
            return
        self.busy.discard(client)
        # The event is finished; in_flight_since still says when it was handed over.
        self.latency[result.channel].observe(self.clock() - client.pipeline.in_flight_since)
        if isinstance(header.get("session"), dict):
            client.session_changed()
        if result.lost:
            # The consumer's messages travel the same path as its "done", in order: if
            # the done is here and they are not, they were lost (in a broker that was
            # killed). The client must not wait for an answer that will not come.
            self.counters.incr("replies_lost", result.lost)
            log.error("%s: %d of the %d messages the %s consumer sent were lost on the "
                      "way; closing", client.reply_channel, result.lost,
                      header.get("sent"), result.channel)
        client.acknowledged(result)
        self.dispatch(client)

    def opened(self, client: Client, path: str) -> None:
        """A WebSocket's handshake is done: from now on its disconnect must run."""
        if self.on_open is not None:
            self.on_open(client, path)

    def abandon(self, client: Client, code: int, reason: str) -> None:
        """Close a client whose disconnect consumer has already run elsewhere (the broker
        ran it when it took this interface for dead): nothing more is sent for it."""
        if client.pipeline.close(None, self.clock()):
            self.groups.leave_all(client)
            self._gone(client)
        client.close(code, reason)

    def closed(self, client: Client) -> None:
        """The socket (or HTTP response) is gone: leave every group now, then tell the
        consumers, in order."""
        if not client.pipeline.close(client.disconnect_channel(), self.clock()):
            return
        groups = list(client.groups)
        self.groups.leave_all(client)
        if self.on_close is not None:
            # Told once it is out of the table: what is said to those groups now (its
            # leave notice, say) no longer reaches it.
            self.on_close(client, groups)
        self._gone(client)

    def _gone(self, client: Client) -> None:
        if client.resume is not None:  # reading was paused: let Tornado see the close
            resume, client.resume = client.resume, None
            if not resume.done():
                resume.set_result(None)
        self.dispatch(client)

    def sweep(self, now: float) -> None:
        """Consumers that overran event_timeout.

        An overdue event closes its connection with 1011 at once and drops the
        events queued behind it, but the disconnect still waits for the overdue
        consumer to return (promise 1). Only after a second event_timeout is the
        event presumed lost (its worker died) and the disconnect released.
        """
        timeout = self.limits.event_timeout
        for client in [c for c in self.busy if now - c.pipeline.in_flight_since > timeout]:
            overrun = client.pipeline.sweep(now, self.limits)
            if overrun is None:
                continue
            if overrun.stage is Overdue.TIMED_OUT:
                self.counters.incr("event_timeouts")
                if overrun.dropped:
                    self.counters.incr("receives_dropped_on_close", overrun.dropped)
                log.error("%s: consumer for %s did not finish within %gs; closing with "
                          "1011", client.reply_channel, overrun.channel, timeout)
                client.timed_out()
            else:
                self.counters.incr("events_abandoned")
                log.error("%s: no answer for %s after %gs; presumed lost with its "
                          "worker", client.reply_channel, overrun.channel, 2 * timeout)
                self.busy.discard(client)
                self.dispatch(client)

    def unsettled(self) -> bool:
        """At shutdown: some client is not closed yet, or has events not handed to a pool."""
        return any(not c.pipeline.closed or c.pipeline.queue for c in self.by_id.values())

    def queued(self) -> int:
        return sum(len(c.pipeline.queue) for c in self.by_id.values())


def peer_port(request: Any) -> int | None:
    """The client's port, for the ``client`` field of a connect or request event."""
    address = peer_address(request.connection)
    return address[1] if isinstance(address, tuple) and len(address) > 1 else None
