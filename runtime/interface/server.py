"""The interface process: its sockets, its Tornado application, its start and stop.

Several interface processes share one port (SO_REUSEPORT). Each has a random id,
and each client a reply channel ``<interface id>!<number>``, so replies find their
way back through the stateless broker. Everything else is delegated, top-down:
`link` (what the broker sends), `websocket` and `http` (the two kinds of client),
`clients` (their events, groups and timeouts), `pipeline` (the rules, no I/O).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import secrets
import signal
import time
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.routing
import tornado.web
import zmq
from tornado.httputil import HTTPServerRequest

from zchannels.wire import transport
from zchannels.core.config import CLIENT_CHANNELS, Config
from zchannels.wire.process import announce_ready, withdraw_ready
from zchannels.core.stats import counters
from zchannels.interface import observe, redact, sweeps
from zchannels.interface.clients import Clients
from zchannels.interface.dashboard import DashboardEvents, DashboardPage, Streams, events_path
from zchannels.interface.guard import FailureLimiter, OperatorHosts
from zchannels.interface.http import ConsumerRequest
from zchannels.interface.link import Link
from zchannels.interface.publish import Publisher, PublishRequest
from zchannels.interface.scrape import MetricsRequest, networks
from zchannels.interface.static import StaticFiles, log_request
from zchannels.interface.websocket import ConsumerSocket

log = logging.getLogger("zchannels.interface")

POOL_SEND_HWM = 100  # events buffered towards a pool before new work is refused
SHUTDOWN_GRACE = 2.0  # seconds to hand disconnect events to the pool at shutdown
SHUTDOWN_POLL = 0.05  # seconds between checks that every client has closed


class Interface:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.id = "i" + secrets.token_hex(4)
        self.port = 0
        self.dashboards = Streams()  # open dashboard streams, ended at shutdown
        self.hosts = OperatorHosts(config)  # the Host names the operator endpoints answer
        self.limiter = FailureLimiter.of(config)  # wrong tokens per client address

    async def run(self, port: int | None = None) -> None:
        self.context = zmq.Context()
        self.clients = Clients(self.config, self.id, self.pool_sockets())
        self.link = Link(self.config, self.id, self.context, self.clients)
        self.publisher = (Publisher(self.config, self.id, self.context)
                          if self.config.publish_token else None)
        transport.describe(self.config, check_keys=True)
        counters.setup(self.config.run_dir, "interface")
        counters.gauges.update(connections=lambda: len(self.clients),
                               groups=lambda: len(self.clients.groups),
                               group_members=self.clients.groups.member_count)
        observe.register(self.clients, self.config)  # the metrics' gauges of the clients
        counters.write(force=True)
        await self.link.wait_for_broker()
        self.listen(port)

        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        timers = asyncio.create_task(sweeps.run(self.clients, self.config))
        announce_ready(self.config.run_dir, "interface", id=self.id, port=self.port)
        log.info("interface %s listening on %s:%d", self.id, self.config.host, self.port)
        await stopped.wait()
        log.info("interface %s stopping", self.id)
        timers.cancel()
        await self.shutdown()

    def pool_sockets(self) -> dict[str, zmq.Socket]:
        """A PUSH socket to each pool that serves a client channel, by channel."""
        sockets: dict[str, zmq.Socket] = {}
        by_pool: dict[str, zmq.Socket] = {}
        for channel in CLIENT_CHANNELS:
            pool = self.config.pool_for(channel)
            assert pool is not None  # config validation guarantees it
            if pool.name not in by_pool:
                sock = by_pool[pool.name] = self.context.socket(zmq.PUSH)
                sock.sndhwm = POOL_SEND_HWM
                sock.linger = 0
                transport.connect(sock, pool.endpoint_in, self.config)
            sockets[channel] = by_pool[pool.name]
        return sockets

    def listen(self, port: int | None) -> None:
        sockets = tornado.netutil.bind_sockets(
            self.config.port if port is None else port, self.config.host, reuse_port=True)
        self.port = sockets[0].getsockname()[1]
        app = tornado.web.Application(
            self.rules(),
            log_function=log_request,
            websocket_max_message_size=self.config.max_message_bytes,
            # Pings come from one task for every socket (`sweeps`), not from a task
            # per socket as Tornado's websocket_ping_interval would start.
        )
        self.http = tornado.httpserver.HTTPServer(
            app, max_body_size=2 * self.config.max_body_bytes + 65536,
            # A client has handshake_timeout to send its request headers (also how long
            # an idle keep-alive connection stays open), http_timeout for a body.
            idle_connection_timeout=self.config.handshake_timeout,
            body_timeout=self.config.http_timeout)
        self.http.add_sockets(sockets)

    def rules(self) -> list[Any]:
        """WebSocket upgrades (any path), then the publish API if it has a token, then
        static files, then everything else to the consumers (and the WSGI application
        behind them)."""
        static = {"path": self.config.static_dir, "max_age": self.config.static_max_age}
        consumers = {"clients": self.clients, "config": self.config}
        rules: list[Any] = [
            tornado.routing.Rule(WebSocketUpgrade(), ConsumerSocket, consumers),
        ]
        if self.publisher is not None:
            rules.append((re.escape(self.config.publish_path), PublishRequest,
                          {"publisher": self.publisher, "config": self.config,
                           "limiter": self.limiter}))
        rules += self.operator_rules()
        rules.append((re.escape(self.config.static_url) + "(.*)", StaticFiles, static))
        index = self.config.static_index
        if index and os.path.isfile(os.path.join(self.config.static_dir, index)):
            rules.append((r"/()", StaticFiles, dict(static, default_filename=index)))
        rules.append((r"/.*", ConsumerRequest, dict(consumers, port=self.port)))
        return rules

    def operator_rules(self) -> list[Any]:
        """The metrics (unless metrics_path is "") and the dashboard (if it has a token):
        docs/operations.md."""
        config = self.config
        guard = {"config": config, "hosts": self.hosts, "limiter": self.limiter}
        rules: list[Any] = []
        if config.metrics_path:
            rules.append((re.escape(config.metrics_path), MetricsRequest,
                          {**guard, "allowed": networks(config)}))
        if config.dashboard_token:
            guarded = {**guard, "streams": self.dashboards}
            rules.append((re.escape(config.dashboard_path), DashboardPage, guarded))
            rules.append((re.escape(events_path(config)), DashboardEvents, guarded))
        return rules

    async def shutdown(self) -> None:
        """Stop accepting, close every client (WebSockets with 1001), hand the disconnect
        events to the workers, then close the ZeroMQ sockets."""
        self.http.stop()
        self.dashboards.close_all()
        self.clients.stopping = True
        for client in list(self.clients.by_id.values()):
            client.stop()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.clients.unsettled():
            if time.monotonic() > deadline:
                counters.incr("shutdown_undelivered", self.clients.queued())
                break
            await asyncio.sleep(SHUTDOWN_POLL)
        self.clients.detached = True  # clients that close from now on: their events stay
        withdraw_ready(self.config.run_dir, "interface")
        counters.write(force=True)
        self.link.close()
        if self.publisher is not None:
            self.publisher.close()
        self.context.destroy(linger=500)  # flush the disconnect events already queued
        log.info("interface %s stopped", self.id)


class WebSocketUpgrade(tornado.routing.Matcher):
    """Matches requests that ask for a WebSocket, whatever their path."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return {}
        return None


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
    redact.install(config)  # before the first request: no secret in any log line
    log.info("starting interface (pid %d, open-files limit %d)", os.getpid(),
             raise_open_files_limit())
    asyncio.run(Interface(config).run(port))
