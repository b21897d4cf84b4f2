"""The interface server: Tornado HTTP + WebSocket in front, ZeroMQ behind.

Several interface processes share one port (SO_REUSEPORT). Each has a random
id, and each connection a reply channel ``<interface id>!<number>``, so
replies find their way back through the stateless router. Per connection the
interface keeps the event queue (one event in flight: promise 1), the group
memberships of its own sockets (promise 2: a ``group_add`` is answered only
after the table has changed), and writes group messages to local members,
framing each WebSocket message once.
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
from typing import Any, Awaitable
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.netutil
import tornado.routing
import tornado.web
import tornado.websocket
import zmq

from . import wire
from .config import CLIENT_CHANNELS, Config
from .exchange import ConsumerRequest, Exchange, WebSocketUpgrade
from .groups import GroupTable
from .process import announce_ready, withdraw_ready
from .stats import counters
from .websocket import (CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, OPCODE_BINARY,
                        OPCODES, Connection, ConsumerSocket, Decision, State, frame)
from .zmqio import SocketReader

log = logging.getLogger("runtime.interface")
access_log = logging.getLogger("runtime.access")

POOL_SEND_HWM = 100  # events buffered towards a pool queue before new work is refused
SWEEP_INTERVAL = 1.0  # seconds between checks for consumers that overran event_timeout
LAYER_CHECK_INTERVAL = 0.05  # seconds between probes of the router and forwarder at start
LAYER_WAIT_LOG = 5.0  # seconds between "still waiting for router/forwarder" lines
DISCONNECT_RETRY = 0.1  # seconds before re-offering a disconnect event to a full pool
SHUTDOWN_GRACE = 2.0  # seconds to hand disconnect events to the pool at shutdown
PROBE_GROUP = b"\x00probe"  # group messages used to check the forwarder path


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
        self.probe_seen = False
        self.router_answered = False
        self.port = 0

    # -- start and stop ------------------------------------------------------

    async def run(self, port: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.DEALER)
        self.router.routing_id = self.id.encode()
        self.router.linger = 0
        self.router.connect(self.config.router_interfaces)
        self.sub = self.context.socket(zmq.SUB)
        self.sub.rcvhwm = self.config.forwarder_hwm
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")  # members are filtered here, locally
        self.sub.connect(self.config.forwarder_out)
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
        self.router_reader = SocketReader(self.router, self.on_router, loop)
        self.sub_reader = SocketReader(self.sub, self.on_group, loop)

        counters.setup(self.config.run_dir, "interface")
        counters.gauges.update(connections=lambda: len(self.conns),
                               groups=lambda: len(self.groups),
                               group_members=self.groups.member_count)
        counters.write(force=True)
        await self.wait_for_layer()

        app = tornado.web.Application(
            self.rules(),
            log_function=_log_request,
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
        sweeper = asyncio.create_task(self.sweep())
        pinger = asyncio.create_task(self.ping()) if self.config.ping_interval else None
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
        """Accept no client before the router knows this interface's routing id and the
        forwarder delivers group messages to it: otherwise the first replies or group
        sends could be lost at start."""
        probe = self.context.socket(zmq.PUSH)
        probe.linger = 0
        probe.connect(self.config.forwarder_in)
        started = logged = time.monotonic()
        while not (self.router_answered and self.probe_seen):
            if not self.router_answered:
                try:
                    self.router.send_multipart([wire.PING, b"{}"], zmq.NOBLOCK)
                except zmq.Again:  # the router has been away long enough to fill the pipe
                    pass
                self.router_reader.kick()
            if not self.probe_seen:
                try:
                    probe.send_multipart([PROBE_GROUP, b"{}", self.id.encode()], zmq.NOBLOCK)
                except zmq.Again:
                    pass
            await asyncio.sleep(LAYER_CHECK_INTERVAL)
            if time.monotonic() - logged > LAYER_WAIT_LOG:
                logged = time.monotonic()
                log.warning("still waiting for the %s after %.0fs",
                            " and ".join(name for name, ok in (
                                ("router", self.router_answered),
                                ("forwarder", self.probe_seen)) if not ok),
                            logged - started)
        probe.close()

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
        self.sub_reader.close()
        self.context.destroy(linger=500)  # flush the disconnect events already queued
        log.info("interface %s stopped", self.id)

    async def sweep(self) -> None:
        """Deal with consumers that overran event_timeout; write the counters.

        An overdue event closes its connection with 1011 at once and drops the
        events queued behind it, but the disconnect still waits for the overdue
        consumer to return (promise 1). Only after a second event_timeout is
        the event presumed lost (its worker died) and the disconnect released.
        """
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL, self.config.stats_interval))
            now = time.monotonic()
            for conn in [c for c in self.busy
                         if now - c.in_flight_since > self.config.event_timeout]:
                if not conn.overdue:
                    conn.overdue = True
                    counters.incr("event_timeouts")
                    log.error("%s: consumer for %s did not finish within %gs; closing with "
                              "1011", conn.reply_channel, conn.in_flight,
                              self.config.event_timeout)
                    self.drop_queued_receives(conn)
                    conn.timed_out()
                elif now - conn.in_flight_since > 2 * self.config.event_timeout:
                    counters.incr("events_abandoned")
                    log.error("%s: no answer for %s after %gs; presumed lost with its "
                              "worker", conn.reply_channel, conn.in_flight,
                              2 * self.config.event_timeout)
                    self.finished(conn)
                    self.dispatch_next(conn)
            self.sweep_exchanges(now)
            if counters.due(self.config.stats_interval):
                counters.write(force=True)

    async def ping(self) -> None:
        """Ping every open WebSocket every ping_interval; close (1000, "ping timed out")
        one that has not answered within ping_timeout, so a half-open TCP peer is
        found and its disconnect consumer runs. One task for all sockets: a task
        per socket (Tornado's way) costs each connection a kilobyte or two."""
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        period = max(0.02, min(SWEEP_INTERVAL, (timeout or interval) / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.conns.values()):
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

    def sweep_exchanges(self, now: float) -> None:
        """HTTP responses that did not start within http_timeout (504), held
        long-polls whose time is up, and heartbeats on idle event streams."""
        heartbeat = self.config.sse_heartbeat
        for exchange in list(self.exchanges):
            if exchange.hold is not None:
                if now > exchange.deadline:
                    exchange.release_hold()
            elif not exchange.started:
                if now > exchange.deadline:
                    counters.incr("http_timeouts")
                    log.warning("%s: no response to %s %s within %gs; answering 504",
                                exchange.reply_channel,
                                exchange.handler.request.method if exchange.handler else "?",
                                exchange.path, self.config.http_timeout)
                    exchange.fail(504, "no response in time")
            else:
                exchange.heartbeat(now, heartbeat)

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

    # -- messages from workers (via the router) ---------------------------

    def on_router(self, frames: list[bytes]) -> None:
        if len(frames) == 2 and frames[0] == wire.PING and frames[1] == wire.PONG:
            self.router_answered = True
            return
        counters.incr("from_router")  # against the workers' to_router: the router's losses
        if len(frames) not in (2, 3):
            counters.incr("garbage")
            log.warning("dropped a malformed message from the router (%d frames)", len(frames))
            return
        try:
            header = wire.decode(frames[1])
            op = header["op"]
            conn_id = header["conn"]
        except (ValueError, KeyError) as e:
            counters.incr("garbage")
            log.warning("dropped a malformed message from worker %r: %s", frames[0], e)
            return
        if not isinstance(op, str) or type(conn_id) is not int or not _valid_fields(header):
            counters.incr("garbage")
            log.warning("dropped a message with wrong field types from worker %r: %.200r",
                        frames[0], frames[1])
            return
        conn = self.conns.get(conn_id)
        if conn is not None and op != wire.OP_DONE:
            conn.arrived += 1
        if op == wire.OP_SEND:
            if conn is None:
                counters.incr("dropped_to_closed")
                return
            payload = frames[2] if len(frames) == 3 else b""
            if isinstance(conn, Connection):
                conn.write(frame(OPCODES.get(header.get("kind"), OPCODE_BINARY), payload))
            else:
                conn.deliver(header.get("kind"), payload, header)
        elif op == wire.OP_DONE:
            if conn is None or conn.in_flight is None or header.get("seq") != conn.sequence:
                # The connection is gone, or its event timed out and a later one is
                # in flight: this ack must not release that one.
                counters.incr("late_acks")
                return
            self.acknowledged(conn, header)
        elif op in (wire.OP_GROUP_ADD, wire.OP_GROUP_DISCARD):
            ok = self.membership(conn, op, header.get("group"))
            try:
                self.router.send_multipart(
                    [frames[0], wire.encode({"req": header.get("req"), "ok": ok})],
                    zmq.NOBLOCK)
            except zmq.Again:  # the worker gives up after group_timeout and says so
                counters.incr("dropped_answers")
            self.router_reader.kick()
        elif conn is None:
            counters.incr("dropped_to_closed")
        elif isinstance(conn, Exchange):
            self.http_response(conn, op, header, frames[2] if len(frames) == 3 else None)
        elif op == wire.OP_ACCEPT:
            subprotocol = header.get("subprotocol")
            if subprotocol is not None and subprotocol not in conn.subprotocols:
                log.warning("%s: consumer chose subprotocol %r, which the client did not "
                            "offer (%s); ignored", conn.reply_channel, subprotocol,
                            conn.subprotocols)
                subprotocol = None
            conn.subprotocol = subprotocol
            conn.decide(Decision.ACCEPT)
        elif op == wire.OP_REJECT:
            conn.decide(Decision.REJECT)
        elif op == wire.OP_CLOSE:
            code = header.get("code", 1000)
            conn.close(code if isinstance(code, int) else 1000, str(header.get("reason", "")))
        else:
            counters.incr("garbage")
            log.warning("dropped a message with unknown op %r", op)

    def http_response(self, exchange: Exchange, op: str, header: dict[str, Any],
                      payload: bytes | None) -> None:
        if op == wire.OP_START:
            exchange.start(header, payload)
        elif op == wire.OP_BODY:
            exchange.body(payload or b"", bool(header.get("more")))
        elif op == wire.OP_HOLD:
            exchange.hold_until_message(header)
        elif op == wire.OP_CLOSE:
            exchange.close()
        elif op in (wire.OP_ACCEPT, wire.OP_REJECT):
            exchange.invalid(f"{op} is for WebSocket connections")
        else:
            counters.incr("garbage")
            log.warning("dropped a message with unknown op %r", op)

    def acknowledged(self, conn: Connection | Exchange, header: dict[str, Any]) -> None:
        channel = conn.in_flight
        self.finished(conn)
        session = header.get("session")
        if isinstance(session, dict):
            conn.set_session(session)
        sent = header.get("sent")
        if type(sent) is int and sent > conn.arrived:
            # The consumer's messages travel the same path as its "done", in order: if
            # the done is here and they are not, they were lost (in a router that was
            # killed). The client must not wait for an answer that will not come.
            counters.incr("replies_lost", sent - conn.arrived)
            log.error("%s: %d of the %d messages the %s consumer sent were lost on the "
                      "way; closing", conn.reply_channel, sent - conn.arrived, sent, channel)
            conn.consumer_failed()
        elif header.get("error"):
            conn.consumer_failed()
        elif isinstance(conn, Connection) and channel == "websocket.connect":
            conn.decide(Decision.ACCEPT)  # a connect consumer that returns accepts
        self.dispatch_next(conn)

    def membership(self, conn: Connection | Exchange | None, op: str, group: Any) -> bool:
        if not isinstance(group, str) or not group:
            counters.incr("garbage")
            return False
        if conn is None or conn.state is State.CLOSED:
            return False  # it has left every group already
        if op == wire.OP_GROUP_ADD:
            self.groups.add(group.encode(), conn)
            return True
        return self.groups.discard(group.encode(), conn)

    # -- group messages (via the forwarder) ----------------------------------

    def on_group(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            counters.incr("garbage")
            log.warning("dropped a malformed group message (%d frames)", len(frames))
            return
        group, raw_header, payload = frames
        if group == PROBE_GROUP:
            if payload == self.id.encode():
                self.probe_seen = True
            return
        counters.incr("group_received")  # against the workers' group_sends
        members = self.groups.members(group)
        if not members:
            return
        try:
            header = wire.decode(raw_header)
        except ValueError as e:
            counters.incr("garbage")
            log.warning("dropped a malformed group message for %r: %s", group, e)
            return
        if not _valid_fields(header):
            counters.incr("garbage")
            log.warning("dropped a group message with wrong field types for %r: %.200r",
                        group, raw_header)
            return
        counters.incr("group_deliveries", len(members))
        # A snapshot: a write or close may end a member's connection, and with it its
        # memberships.
        targets = tuple(members)
        if header.get("op") == wire.OP_CLOSE:
            code = header.get("code")
            for conn in targets:
                conn.close(code if isinstance(code, int) else 1000, "")
            return
        kind = header.get("kind")
        data = None  # framed once, for every WebSocket member
        for conn in targets:
            if isinstance(conn, Connection):
                if data is None:
                    data = frame(OPCODES.get(kind, OPCODE_BINARY), payload)
                conn.write(data)
            else:
                conn.deliver(kind, payload, header)


class StaticFiles(tornado.web.StaticFileHandler):
    """Static files with caching headers: ``Cache-Control: max-age`` (static_max_age;
    ten years for ``?v=`` versioned URLs), plus ETag and Last-Modified, so a
    revalidation answers 304. The page at ``/`` is always revalidated."""

    def initialize(self, max_age: int = 0, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.max_age = max_age

    def get_cache_time(self, path: str, modified: Any, mime_type: str) -> int:
        if "v" in self.request.arguments:
            return self.CACHE_MAX_AGE
        if self.default_filename is not None:
            self.set_header("Cache-Control", "no-cache")
            return 0
        return self.max_age


def _valid_fields(header: dict[str, Any]) -> bool:
    """Whether the optional fields the interface acts on have usable values (a worker
    never sends anything else; this is about garbage on the sockets)."""
    if not isinstance(header.get("kind", ""), str):
        return False
    if header.get("op") == wire.OP_CLOSE:
        try:
            wire.check_close(header.get("code", 1000), header.get("reason", ""))
        except (ValueError, TypeError, AttributeError):
            return False
    return True


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Like Tornado's access log, but a 503 or 504 is a refusal the interface has
    already explained and counted: a warning, not an error."""
    status = handler.get_status()
    if status < 400:
        return  # successful requests (and every WebSocket upgrade) are not logged
    level = logging.INFO if status < 500 else logging.WARNING
    request = handler.request
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.uri,
                   request.remote_ip, 1000.0 * request.request_time())


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
