"""The interface's timers: one task for every client's periodic work (WebSocket pings,
HTTP deadlines, long-polls and event-stream heartbeats), consumers that overran
event_timeout, and the counters."""
from __future__ import annotations

import asyncio
import time

from zchannels.core.config import Config
from zchannels.core.stats import counters
from zchannels.interface.clients import Clients

SWEEP_INTERVAL = 1.0  # seconds between checks for consumers that overran event_timeout
MIN_TICK = 0.02  # seconds: the shortest period, whatever ping_timeout says


def tick_period(config: Config) -> float:
    """Often enough to notice a missing pong within a quarter of ping_timeout."""
    ping = config.ping_timeout or config.ping_interval
    return max(MIN_TICK, min(SWEEP_INTERVAL, ping / 4 if ping else SWEEP_INTERVAL,
                             config.stats_interval))


async def run(clients: Clients, config: Config) -> None:
    period = tick_period(config)
    swept = time.monotonic()
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for client in list(clients.by_id.values()):
            client.tick(now)
        if now - swept >= min(SWEEP_INTERVAL, config.stats_interval) - period / 2:
            swept = now
            clients.sweep(now)
            if counters.due(config.stats_interval):
                counters.write(force=True)
