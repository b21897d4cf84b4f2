"""What the operator endpoints (the metrics, the dashboard page and its stream) share:
the ``Host`` check that comes before anything else, the rate limit on wrong tokens,
and short plain-text refusals (docs/operations.md, "Operator endpoints")."""
from __future__ import annotations

import logging
from typing import Any, NoReturn

import tornado.web

from zchannels.core.config import Config
from zchannels.core.stats import counters
from zchannels.interface.guard import FailureLimiter, OperatorHosts

log = logging.getLogger("zchannels.interface.operator")

MISDIRECTED = 421  # RFC 9110 15.5.20: this server does not answer for that host


class OperatorRequest(tornado.web.RequestHandler):
    """Base of the operator endpoints' handlers; `what` names the endpoint in logs."""

    what = "operator endpoint"
    config: Config
    hosts: OperatorHosts
    limiter: FailureLimiter

    def check_host(self) -> None:
        """421 unless the request is for a host the operator allowed (`guard`)."""
        why = self.hosts.refusal(self.request.headers)
        if why is not None:
            counters.incr("refused_host")
            log.warning("%s refused to %s: %s", self.what, self.request.remote_ip, why)
            self.refuse(MISDIRECTED, f"{why} (operator_hosts)")

    def check_rate(self) -> None:
        """429 while this client's wrong tokens are over token_failure_limit."""
        wait = self.limiter.blocked(self.request.remote_ip)
        if wait is not None:
            self.refuse(429, f"too many wrong tokens from this address; retry after {wait} s",
                        **{"Retry-After": str(wait)})

    def refuse(self, status: int, why: str, **headers: str) -> NoReturn:
        self.clear()
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.finish(f"{status}: {why}\n")
        raise tornado.web.Finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code}\n")  # never a traceback to the client
