"""The interface's timers: consumers that overran event_timeout, HTTP responses that did
not start in time, held long-polls, event-stream heartbeats, counters, and WebSocket pings."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import tornado.websocket

from .stats import counters
from .websocket import Connection, State

if TYPE_CHECKING:
    from .interface import Interface

log = logging.getLogger("runtime.interface")

SWEEP_INTERVAL = 1.0  # seconds between checks for consumers that overran event_timeout


async def sweep(iface: Interface) -> None:
    """Deal with consumers that overran event_timeout; write the counters.

    An overdue event closes its connection with 1011 at once and drops the
    events queued behind it, but the disconnect still waits for the overdue
    consumer to return (promise 1). Only after a second event_timeout is
    the event presumed lost (its worker died) and the disconnect released.
    """
    while True:
        await asyncio.sleep(min(SWEEP_INTERVAL, iface.config.stats_interval))
        now = time.monotonic()
        for conn in [c for c in iface.busy
                     if now - c.in_flight_since > iface.config.event_timeout]:
            if not conn.overdue:
                conn.overdue = True
                counters.incr("event_timeouts")
                log.error("%s: consumer for %s did not finish within %gs; closing with "
                          "1011", conn.reply_channel, conn.in_flight,
                          iface.config.event_timeout)
                iface.drop_queued_receives(conn)
                conn.timed_out()
            elif now - conn.in_flight_since > 2 * iface.config.event_timeout:
                counters.incr("events_abandoned")
                log.error("%s: no answer for %s after %gs; presumed lost with its "
                          "worker", conn.reply_channel, conn.in_flight,
                          2 * iface.config.event_timeout)
                iface.finished(conn)
                iface.dispatch_next(conn)
        sweep_exchanges(iface, now)
        if counters.due(iface.config.stats_interval):
            counters.write(force=True)

async def ping(iface: Interface) -> None:
    """Ping every open WebSocket every ping_interval; close (1000, "ping timed out")
    one that has not answered within ping_timeout, so a half-open TCP peer is
    found and its disconnect consumer runs. One task for all sockets: a task
    per socket (Tornado's way) costs each connection a kilobyte or two."""
    interval, timeout = iface.config.ping_interval, iface.config.ping_timeout
    period = max(0.02, min(SWEEP_INTERVAL, (timeout or interval) / 4))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for conn in list(iface.conns.values()):
            if not isinstance(conn, Connection) or conn.state is not State.OPEN \
                    or conn.handler is None or conn.closing:
                continue
            if timeout and not conn.pong:
                if now - conn.ping_at >= timeout:
                    counters.incr("ping_timeouts")
                    log.info("%s: no pong within %gs; closing", conn.reply_channel,
                             timeout)
                    conn.close(1000, "ping timed out")
            elif now - conn.ping_at >= interval:
                conn.ping_at = now
                conn.pong = False
                try:
                    conn.handler.ping()
                except tornado.websocket.WebSocketClosedError:
                    pass

def sweep_exchanges(iface: Interface, now: float) -> None:
    """HTTP responses that did not start within http_timeout (504), held
    long-polls whose time is up, and heartbeats on idle event streams."""
    heartbeat = iface.config.sse_heartbeat
    for exchange in list(iface.exchanges):
        if exchange.hold is not None:
            if now > exchange.deadline:
                exchange.release_hold()
        elif not exchange.started:
            if now > exchange.deadline:
                counters.incr("http_timeouts")
                log.warning("%s: no response to %s %s within %gs; answering 504",
                            exchange.reply_channel,
                            exchange.handler.request.method if exchange.handler else "?",
                            exchange.path, iface.config.http_timeout)
                exchange.fail(504, "no response in time")
        else:
            exchange.heartbeat(now, heartbeat)
