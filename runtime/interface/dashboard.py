"""The live dashboard: ``GET <dashboard_path>`` (a page) and ``<dashboard_path>/events``
(Server-Sent Events with the host's figures every second).

Off unless ``dashboard_token`` is set. Both answer only for an operator host
(`operator.OperatorRequest.check_host`), and need the token: ``?token=...`` is
exchanged once for a cookie (HttpOnly, SameSite=Strict, limited to the dashboard
path) whose value is derived from the token, with a 303 to the same URL without
the token, so the token leaves neither the address bar nor the history, and is
never in a log. From then on the cookie opens both. A missing or wrong token is
answered 403, counted (``dashboard_refused``) and logged; wrong ones count towards
the client's ``token_failure_limit`` (then 429). The figures are those of the
metrics (`zchannels.core.metrics.summarize` over the same stats files) plus each process's
CPU and memory from /proc (`zchannels.core.status`); the page draws them itself, with no
script from elsewhere.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode

import tornado.web
from tornado.iostream import StreamClosedError

from zchannels.core.config import Config
from zchannels.core.metrics import rates, summarize
from zchannels.core.stats import collect, counters
from zchannels.core.status import Sampler
from zchannels.interface.guard import FailureLimiter, OperatorHosts
from zchannels.interface.operator import OperatorRequest

log = logging.getLogger("zchannels.interface.dashboard")

PUSH_INTERVAL = 1.0  # seconds between two snapshots on a dashboard's stream
COOKIE = "zchannels_dashboard"
COOKIE_PURPOSE = b"zchannels.dashboard.cookie"  # the cookie's value proves the token, is not it
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


def cookie_value(token: str) -> str:
    """What the cookie holds: an HMAC of the token, so a cookie seen somewhere is not
    the token that the configuration holds (it opens the dashboard all the same)."""
    return hmac.new(token.encode(), COOKIE_PURPOSE, hashlib.sha256).hexdigest()


def without_token(path: str, query: str) -> str:
    """The URL to send the browser to once its token is in a cookie."""
    rest = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "token"]
    return path + ("?" + urlencode(rest) if rest else "")


class Streams:
    """The open dashboard streams of an interface, ended when it stops."""

    def __init__(self) -> None:
        self.open: set[DashboardEvents] = set()
        self.stopping = False

    def close_all(self) -> None:
        self.stopping = True
        for stream in list(self.open):
            stream.end()


class Guarded(OperatorRequest):
    """Both dashboard requests: GET only, the host, then the token."""

    SUPPORTED_METHODS = ("GET",)
    what = "dashboard"

    def initialize(self, config: Config, streams: Streams, hosts: OperatorHosts,
                   limiter: FailureLimiter) -> None:
        self.config = config
        self.streams = streams
        self.hosts = hosts
        self.limiter = limiter
        self.ended = False

    def prepare(self) -> None:
        self.check_host()
        self.check_rate()
        token = self.config.dashboard_token
        from_query = self.get_query_argument("token", None)
        if from_query is not None:
            if not token_ok(from_query, token):
                self.wrong_token("wrong")
            self.exchange()
        cookie = self.get_cookie(COOKIE)
        if cookie is None:
            self.wrong_token("no")
        if not hmac.compare_digest(cookie.encode("ascii", "replace"),
                                   cookie_value(token).encode()):
            self.wrong_token("wrong")
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)

    def wrong_token(self, which: str) -> NoReturn:
        counters.incr("dashboard_refused")
        log.warning("dashboard refused to %s: %s token", self.request.remote_ip, which)
        if which != "no":
            self.limiter.failed(self.request.remote_ip, self.what)
        self.refuse(403, "the dashboard needs its token (?token=...)")

    def exchange(self) -> NoReturn:
        """The token in the URL becomes a cookie, and the browser goes to the URL without
        it (303): the token is in no address bar, history, Referer or log."""
        request = self.request
        self.set_cookie(COOKIE, cookie_value(self.config.dashboard_token),
                        path=self.config.dashboard_path, httponly=True, samesite="Strict",
                        secure=request.protocol == "https")
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.redirect(without_token(request.path, request.query), status=303)
        raise tornado.web.Finish()


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
