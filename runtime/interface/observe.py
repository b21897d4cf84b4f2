"""What an interface tells the metrics about its clients, as gauges in its stats file.

Nothing here runs per message: `Census` counts the clients by kind when the stats
file is written (every ``stats_interval``), one pass over them for every gauge.
The per-event figures (events handed to each pool, the queued -> done latency
histogram) are kept by `clients.Clients` itself.
"""
from __future__ import annotations

import time
from typing import Callable

from zchannels.wire import frames as wire
from zchannels.core.config import CLIENT_CHANNELS, Config
from zchannels.core.stats import counters, labelled
from zchannels.interface.clients import Clients
from zchannels.interface.http import Exchange
from zchannels.interface.websocket import Connection

CENSUS_TTL = 0.05  # seconds a census serves every gauge of one stats write

KINDS = ("websockets", "sse_streams", "long_polls", "http_streams", "http_requests",
         "queued_events")


class Census:
    """The interface's clients counted by kind, and its events in flight by pool."""

    def __init__(self, clients: Clients, config: Config) -> None:
        self.clients = clients
        self.pool_of: dict[str, str] = {}
        for channel in CLIENT_CHANNELS:
            pool = config.pool_for(channel)
            if pool is not None:
                self.pool_of[channel] = pool.name
        self.pools = sorted(set(self.pool_of.values()))
        self.figures: dict[str, int] = {}
        self.taken_at = -1.0

    def count(self) -> dict[str, int]:
        now = time.monotonic()
        if now - self.taken_at < CENSUS_TTL:
            return self.figures
        figures = dict.fromkeys(KINDS, 0)
        in_flight = dict.fromkeys(self.pools, 0)
        for client in list(self.clients.by_id.values()):
            pipeline = client.pipeline
            figures["queued_events"] += len(pipeline.queue)
            if pipeline.in_flight is not None:
                pool = self.pool_of.get(pipeline.in_flight)
                if pool is not None:
                    in_flight[pool] += 1
            if pipeline.closed:  # gone, its disconnect still on the way: not open
                continue
            if isinstance(client, Connection):
                figures["websockets"] += 1
            elif isinstance(client, Exchange):
                figures["http_requests"] += 1
                if client.mode == wire.MODE_SSE:
                    figures["sse_streams"] += 1
                elif client.mode == wire.MODE_HOLD and client.held is not None:
                    figures["long_polls"] += 1
                elif client.mode == wire.MODE_STREAM:
                    figures["http_streams"] += 1
        for pool, count in in_flight.items():
            figures[labelled("pool_in_flight", pool=pool)] = count
        self.figures, self.taken_at = figures, now
        return figures

    def gauge(self, name: str) -> Callable[[], int]:
        return lambda: self.count().get(name, 0)


def register(clients: Clients, config: Config) -> Census:
    """Add the interface's gauges to its stats."""
    census = Census(clients, config)
    names = [*KINDS, *(labelled("pool_in_flight", pool=pool) for pool in census.pools)]
    counters.gauges.update({name: census.gauge(name) for name in names})
    return census
