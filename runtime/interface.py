"""The interface server: Tornado HTTP + WebSocket in front, ZeroMQ behind.

Several interface processes share one port (SO_REUSEPORT). Each has a random
id, and each connection a reply channel ``<interface id>!<number>``, so
replies find their way back through the stateless router. Per connection the
interface keeps the event queue (one event in flight: promise 1), the group
memberships of its own sockets (promise 2: a ``group_add`` is answered only
after the table has changed), and writes group messages to local members,
framing each WebSocket message once. What it does with the workers' messages is in
`delivery`, its timers in `sweeps`.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import resource
import secrets
import signal
import time
from functools import partial
from typing import Any, Awaitable
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.netutil
import tornado.routing
import tornado.web
import zmq

from . import delivery, sweeps, wire
from .config import CLIENT_CHANNELS, Config
from .exchange import ConsumerRequest, Exchange, WebSocketUpgrade
from .groups import GroupTable
from .process import announce_ready, withdraw_ready
from .static import StaticFiles, log_request
from .stats import counters
from .websocket import (CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, Connection,
                        ConsumerSocket, Decision, State)
from .zmqio import SocketReader

log = logging.getLogger("runtime.interface")

POOL_SEND_HWM = 100  # events buffered towards a pool queue before new work is refused
LAYER_CHECK_INTERVAL = 0.05  # seconds between hellos to the broker at start
LAYER_WAIT_LOG = 5.0  # seconds between "still waiting for the broker" lines
DISCONNECT_RETRY = 0.1  # seconds before re-offering a disconnect event to a full pool
SHUTDOWN_GRACE = 2.0  # seconds to hand disconnect events to the pool at shutdown


class Interface:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.id = "i" + secrets.token_hex(4)
        self.conns: dict[int, Connection | Exchange] = {}
        self.exchanges: set[Exchange] = set()  # HTTP requests whose response has not ended
        self.groups: GroupTable[Connection | Exchange] = GroupTable()
        self.busy: set[Connection | Exchange] = set()  # connections with an event in flight
        self._conn_ids = itertools.count(1)
        self.stopping = False
        self.router_answered = False
        self.port = 0

    # -- start and stop ------------------------------------------------------

    async def run(self, port: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.DEALER)
        self.router.routing_id = self.id.encode()
        self.router.linger = 0
        self.router.rcvhwm = self.config.router_hwm
        # Say hello whenever the connection to the broker is (re)made: a broker that
        # restarted sends group messages only to interfaces that said so.
        self.router_monitor = self.router.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.router_monitor.linger = 0
        self.router.connect(self.config.router_interfaces)
        self.pool_sockets: dict[str, zmq.Socket] = {}
        by_pool: dict[str, zmq.Socket] = {}
        for channel in CLIENT_CHANNELS:
            pool = self.config.pool_for(channel)
            assert pool is not None  # config validation guarantees it
            if pool.name not in by_pool:
                sock = by_pool[pool.name] = self.context.socket(zmq.PUSH)
                sock.sndhwm = POOL_SEND_HWM
                sock.linger = 0
                sock.connect(pool.endpoint_in)
            self.pool_sockets[channel] = by_pool[pool.name]
        self.router_reader = SocketReader(self.router, partial(delivery.on_router, self), loop)
        self.monitor_reader = SocketReader(self.router_monitor, self.reconnected, loop)

        counters.setup(self.config.run_dir, "interface")
        counters.gauges.update(connections=lambda: len(self.conns),
                               groups=lambda: len(self.groups),
                               group_members=self.groups.member_count)
        counters.write(force=True)
        await self.wait_for_layer()

        app = tornado.web.Application(
            self.rules(),
            log_function=log_request,
            websocket_max_message_size=self.config.max_message_bytes,
            # Pings come from one pinger task for every socket (`ping`), not from a
            # task per socket as Tornado's websocket_ping_interval would start.
        )
        self.http = tornado.httpserver.HTTPServer(
            app, max_body_size=2 * self.config.max_body_bytes + 65536,
            # A client has handshake_timeout to send its request headers (also how long
            # an idle keep-alive connection stays open), http_timeout for a body.
            idle_connection_timeout=self.config.handshake_timeout,
            body_timeout=self.config.http_timeout)
        sockets = tornado.netutil.bind_sockets(
            self.config.port if port is None else port, self.config.host, reuse_port=True)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]

        self.stopped = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        sweeper = asyncio.create_task(sweeps.sweep(self))
        pinger = asyncio.create_task(sweeps.ping(self)) if self.config.ping_interval else None
        announce_ready(self.config.run_dir, "interface", id=self.id, port=self.port)
        log.info("interface %s listening on %s:%d", self.id, self.config.host, self.port)
        await self.stopped.wait()
        sweeper.cancel()
        if pinger is not None:
            pinger.cancel()
        await self.shutdown()

    def rules(self) -> list[Any]:
        """WebSocket upgrades (any path), then static files, then everything else to
        the consumers (and the WSGI application behind them)."""
        static = {"path": self.config.static_dir, "max_age": self.config.static_max_age}
        rules: list[Any] = [
            tornado.routing.Rule(WebSocketUpgrade(), ConsumerSocket, {"server": self}),
            (re.escape(self.config.static_url) + "(.*)", StaticFiles, static),
        ]
        index = self.config.static_index
        if index and os.path.isfile(os.path.join(self.config.static_dir, index)):
            rules.append((r"/()", StaticFiles, dict(static, default_filename=index)))
        rules.append((r"/.*", ConsumerRequest, {"server": self}))
        return rules

    async def wait_for_layer(self) -> None:
        """Accept no client before the broker knows this interface's routing id (and so
        sends it replies and group messages): otherwise the first of them could be lost
        at start."""
        started = logged = time.monotonic()
        while not self.router_answered:
            self.hello()
            await asyncio.sleep(LAYER_CHECK_INTERVAL)
            if time.monotonic() - logged > LAYER_WAIT_LOG:
                logged = time.monotonic()
                log.warning("still waiting for the broker after %.0fs", logged - started)

    def hello(self) -> None:
        try:
            self.router.send_multipart([wire.PING, b"{}"], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.Again:  # the broker has been away long enough to fill the pipe
            pass
        self.router_reader.kick()

    def reconnected(self, frames: list[bytes]) -> None:
        """The DEALER (re)connected to the broker (a monitor event): say hello."""
        if self.router_answered:
            self.hello()

    def stop(self) -> None:
        if not self.stopping:
            log.info("interface %s stopping", self.id)
            self.stopping = True
            self.stopped.set()

    async def shutdown(self) -> None:
        """Stop accepting, close every socket with 1001, hand the disconnect events to
        the workers, then close the ZeroMQ sockets."""
        self.http.stop()
        for conn in list(self.conns.values()):
            if isinstance(conn, Connection):
                conn.close(CLOSE_GOING_AWAY, "server shutting down")
            elif conn.started:  # a stream ends
                conn.close()
            else:
                conn.fail(503, "server shutting down")
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while any(c.queue or c.state is not State.CLOSED for c in self.conns.values()):
            if time.monotonic() > deadline:
                counters.incr("shutdown_undelivered", sum(len(c.queue) for c in self.conns.values()))
                break
            await asyncio.sleep(0.05)
        withdraw_ready(self.config.run_dir, "interface")
        counters.write(force=True)
        self.router_reader.close()
        self.monitor_reader.close()
        self.router_monitor.close()
        self.context.destroy(linger=500)  # flush the disconnect events already queued
        log.info("interface %s stopped", self.id)

    # -- connections -------------------------------------------------------

    def at_capacity(self) -> bool:
        """max_connections reached: refuse (503) and count."""
        if len(self.conns) < self.config.max_connections:
            return False
        counters.incr("refused_max_connections")
        log.warning("refused a connection: %d connections is max_connections",
                    len(self.conns))
        return True

    def origin_allowed(self, origin: str, host: str) -> bool:
        if origin in self.config.allowed_origins or "*" in self.config.allowed_origins:
            return True
        return urlsplit(origin).netloc.lower() == host.lower()

    def open_connection(self, handler: ConsumerSocket, subprotocols: list[str]) -> Connection:
        conn_id = next(self._conn_ids)
        conn = Connection(conn_id, wire.reply_channel_name(self.id, conn_id), handler,
                          subprotocols)
        self.conns[conn_id] = conn
        request = handler.request
        client = [request.remote_ip, _peer_port(request)]
        header = wire.encode({
            "channel": "websocket.connect", "reply_channel": conn.reply_channel,
            "path": request.path, "query_string": request.query,
            "headers": [[k, v] for k, v in request.headers.get_all()],
            "client": client, "subprotocols": subprotocols, "ack": True,
        })
        conn.queue.append(("websocket.connect", "", b"", header))
        self.dispatch_next(conn)
        return conn

    def open_exchange(self, handler: ConsumerRequest, body: bytes) -> Exchange:
        conn_id = next(self._conn_ids)
        exchange = Exchange(conn_id, wire.reply_channel_name(self.id, conn_id), handler)
        exchange.deadline = time.monotonic() + self.config.http_timeout
        self.conns[conn_id] = exchange
        self.exchanges.add(exchange)
        request = handler.request
        header = wire.encode({
            "channel": "http.request", "reply_channel": exchange.reply_channel,
            "method": request.method, "path": request.path, "query_string": request.query,
            "headers": [[k, v] for k, v in request.headers.get_all()],
            "client": [request.remote_ip, _peer_port(request)],
            "server": [request.host_name, self.port], "scheme": request.protocol,
            "http_version": request.version.partition("/")[2], "ack": True,
        })
        exchange.queue.append(("http.request", "", body, header))
        self.dispatch_next(exchange)
        return exchange

    def receive(self, conn: Connection, message: str | bytes) -> Awaitable[None] | None:
        if conn.closing:
            # Frames the client sent before it saw our close frame: after a 1011 or
            # 1013 they must not reach a consumer without the events we dropped.
            counters.incr("receives_dropped_on_close")
            return None
        if self.config.rate_limit and not self.within_rate(conn):
            return None
        if isinstance(message, str):
            conn.queue.append(("websocket.receive", wire.KIND_TEXT, message.encode(), None))
        else:
            conn.queue.append(("websocket.receive", wire.KIND_BYTES, message, None))
        self.dispatch_next(conn)
        if len(conn.queue) >= self.config.max_queued_events:
            # Stop reading this socket until its consumers catch up (Tornado does not
            # read the next frame until this future is done).
            counters.incr("paused_reading")
            conn.resume = asyncio.get_running_loop().create_future()
            return conn.resume
        return None

    def within_rate(self, conn: Connection) -> bool:
        """Token bucket: rate_limit messages a second, rate_burst at once. A client
        over it is closed with 1008, and its queued messages are dropped with it (their
        answers could not follow the close frame)."""
        now = time.monotonic()
        burst = self.config.rate_burst
        tokens = conn.tokens + (now - conn.tokens_at) * self.config.rate_limit \
            if conn.tokens_at else float(burst)
        conn.tokens_at = now
        if tokens < 1.0:
            conn.tokens = tokens
            counters.incr("rate_limited")
            log.warning("%s: more than %g messages/s (burst %d); closing with %d",
                        conn.reply_channel, self.config.rate_limit, burst, CLOSE_POLICY)
            self.drop_queued_receives(conn)
            conn.close(CLOSE_POLICY, "rate limit exceeded")
            return False
        conn.tokens = min(float(burst), tokens) - 1.0
        return True

    def connection_closed(self, conn: Connection | Exchange, code: int | None) -> None:
        """The socket (or HTTP response) is gone: leave every group now, then tell the
        consumers, in order."""
        if conn.state is State.CLOSED:
            return
        conn.state = State.CLOSED
        conn.closed_at = time.monotonic()
        self.groups.leave_all(conn)
        conn.closed()
        if isinstance(conn, Connection):
            if conn.resume is not None and not conn.resume.done():
                conn.resume.set_result(None)
            if code is not None:
                conn.close_code = code
        else:
            self.exchanges.discard(conn)
        channel = conn.disconnect_channel()
        if conn.connect_delivered and channel is not None:
            conn.queue.append((channel, "", b"", None))
        else:
            conn.queue.clear()  # nothing reached a consumer, nothing to clean up
        self.dispatch_next(conn)

    def dispatch_next(self, conn: Connection | Exchange) -> None:
        """Hand the connection's next event to its pool, if none is in flight."""
        while conn.in_flight is None and conn.queue:
            channel, kind, payload, header = conn.queue[0]
            if header is None:
                header = (conn.receive_header(kind)
                          if channel == "websocket.receive" and isinstance(conn, Connection)
                          else conn.disconnect_header())
            sequence = conn.sequence + 1
            try:
                self.pool_sockets[channel].send_multipart(
                    [header, payload, b"%d" % sequence], zmq.NOBLOCK)
                counters.incr("zmq_sent")
            except zmq.Again:
                if self.refused(conn, channel):
                    return  # retried later
                continue
            del conn.queue[0]
            conn.sequence = sequence
            conn.in_flight = channel
            conn.in_flight_since = time.monotonic()
            conn.arrived = 0
            self.busy.add(conn)
            conn.connect_delivered = True  # the first event: connect, or the request
        if conn.resume is not None and len(conn.queue) < self.config.max_queued_events:
            resume, conn.resume = conn.resume, None
            if not resume.done():
                resume.set_result(None)
        if conn.state is State.CLOSED and conn.in_flight is None and not conn.queue:
            self.conns.pop(conn.id, None)

    def refused(self, conn: Connection | Exchange, channel: str) -> bool:
        """The pool would not take an event. True if it will be offered again later."""
        counters.incr("refused_pool_full")
        if channel.endswith(".disconnect") and not self.stopping:
            # The disconnect consumer is how applications clean up: keep offering it,
            # as long as the event timeout allows.
            if time.monotonic() - conn.closed_at < self.config.event_timeout:
                if not conn.retry_scheduled:
                    conn.retry_scheduled = True
                    asyncio.get_running_loop().call_later(DISCONNECT_RETRY, self.retry, conn)
                return True
        del conn.queue[0]
        log.warning("%s: pool for %s is full; refused the event", conn.reply_channel, channel)
        if isinstance(conn, Exchange):
            conn.refused()
        elif channel == "websocket.connect":
            conn.decide(Decision.UNAVAILABLE)
        elif channel == "websocket.receive":
            # The events behind it must not reach a consumer without it: drop them
            # too, and tell the client to come back.
            self.drop_queued_receives(conn)
            conn.close(CLOSE_TRY_AGAIN_LATER, "server busy, try again later")
        else:
            counters.incr("disconnects_lost")
        return False

    def drop_queued_receives(self, conn: Connection | Exchange) -> None:
        kept = [event for event in conn.queue if event[0] != "websocket.receive"]
        if len(kept) != len(conn.queue):
            counters.incr("receives_dropped_on_close", len(conn.queue) - len(kept))
            conn.queue[:] = kept

    def retry(self, conn: Connection | Exchange) -> None:
        conn.retry_scheduled = False
        self.dispatch_next(conn)

    def finished(self, conn: Connection | Exchange) -> None:
        conn.in_flight = None
        conn.overdue = False
        self.busy.discard(conn)

def _peer_port(request: Any) -> int | None:
    sock = getattr(getattr(request.connection, "stream", None), "socket", None)
    try:  # the socket is None once the client has gone
        address = sock.getpeername() if sock is not None else None
    except OSError:
        return None
    return address[1] if isinstance(address, tuple) and len(address) > 1 else None


def raise_open_files_limit() -> int:
    """Every client is a file descriptor: take the hard limit, not the 1,024 soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, e)
    return soft


def main(config: Config, port: int | None = None) -> None:
    log.info("starting interface (pid %d, open-files limit %d)", os.getpid(),
             raise_open_files_limit())
    asyncio.run(Interface(config).run(port))
