"""The live dashboard: ``GET <dashboard_path>`` (a page) and ``<dashboard_path>/events``
(Server-Sent Events with the host's figures every second).

Off unless ``dashboard_token`` is set; then the page and its stream need that token,
as ``?token=...`` (the page then keeps it in a cookie scoped to the dashboard path,
and takes it out of the address bar) or as that cookie. A missing or wrong token is
answered 403, counted (``dashboard_refused``) and logged. The figures are those of
the metrics (`runtime.metrics.summarize` over the same stats files) plus each
process's CPU and memory from /proc (`runtime.status`); the page draws them itself,
with no script from elsewhere.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from ..config import Config
from ..metrics import rates, summarize
from ..stats import collect, counters
from ..status import Sampler

log = logging.getLogger("runtime.interface.dashboard")

PUSH_INTERVAL = 1.0  # seconds between two snapshots on a dashboard's stream
COOKIE = "zchannels_dashboard"
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.html")
# The page runs only its own inline code and talks only to this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; connect-src 'self'; "
                               "img-src 'self' data:",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def events_path(config: Config) -> str:
    return config.dashboard_path.rstrip("/") + "/events"


def token_ok(presented: str | None, token: str) -> bool:
    if not presented or not token:
        return False
    try:
        raw = presented.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, token.encode())


class Streams:
    """The open dashboard streams of an interface, ended when it stops."""

    def __init__(self) -> None:
        self.open: set[DashboardEvents] = set()
        self.stopping = False

    def close_all(self) -> None:
        self.stopping = True
        for stream in list(self.open):
            stream.end()


class Guarded(tornado.web.RequestHandler):
    """Both dashboard requests: GET only, and the token first."""

    SUPPORTED_METHODS = ("GET",)
    config: Config

    def initialize(self, config: Config, streams: Streams) -> None:
        self.config = config
        self.streams = streams
        self.ended = False

    def prepare(self) -> None:
        from_query = self.get_query_argument("token", None)
        presented = from_query if from_query is not None else self.get_cookie(COOKIE)
        if not token_ok(presented, self.config.dashboard_token):
            counters.incr("dashboard_refused")
            log.warning("dashboard refused to %s: %s token", self.request.remote_ip,
                        "no" if not presented else "wrong")
            self.set_status(403)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("403: the dashboard needs its token (?token=...)\n")
            raise tornado.web.Finish()
        if from_query is not None:
            self.set_cookie(COOKIE, from_query, path=self.config.dashboard_path,
                            httponly=True, samesite="Strict")
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}\n")  # never a traceback to the client


class DashboardPage(Guarded):
    def get(self) -> None:
        counters.incr("dashboard_views")
        with open(PAGE, "rb") as f:
            page = f.read()
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page.replace(b"{{EVENTS_PATH}}", events_path(self.config).encode()))


class DashboardEvents(Guarded):
    """One ``data:`` line of JSON every PUSH_INTERVAL until the client goes."""

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        sampler = Sampler()
        self.streams.open.add(self)
        try:
            self.write("retry: 2000\n\n")
            while not self.ended and not self.streams.stopping:
                self.write(f"data: {json.dumps(snapshot(self.config, sampler))}\n\n")
                await self.flush()
                await asyncio.sleep(PUSH_INTERVAL)
        except StreamClosedError:
            self.ended = True  # the page was closed
        except asyncio.CancelledError:
            if not self.ended:  # ended by the interface's stop, then its loop closed
                raise
        finally:
            self.streams.open.discard(self)
        self.end()

    def end(self) -> None:
        """End the stream now (the interface is stopping, or the client went)."""
        if not self.ended:
            self.ended = True
            self.finish()

    def on_connection_close(self) -> None:
        self.ended = True


def snapshot(config: Config, sampler: "Sampler") -> dict[str, Any]:
    """What the page draws: the host summary, its rates (each process's from its own
    stats file, summed: `runtime.metrics.rates`), and each process with its CPU and
    RSS."""
    processes = collect(config.run_dir)
    summary = summarize(processes)
    summary["rates"] = rates(processes)
    rows = []
    for data, proc in zip(processes, sampler.sample(processes)):
        rows.append({"role": data.get("role"), "pid": data.get("pid"),
                     "process": data.get("process") or str(data.get("pid")),
                     "uptime": proc.uptime, "cpu_percent": proc.cpu_percent,
                     "rss_bytes": proc.rss_bytes})
    summary["processes"] = rows
    summary["now"] = time.time()
    return summary
