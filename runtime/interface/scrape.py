"""``GET <metrics_path>``: the Prometheus metrics of every process of this host.

Any interface answers for all of them: it reads the stats files of the run
directory (`zchannels.core.metrics`), so a scrape sees the broker and the workers too and
costs the message path nothing. The figures are as fresh as ``stats_interval``.

Who may read them: a request for an operator host (`guard.OperatorHosts`, else 421)
from a client whose address is in ``metrics_allow`` (loopback by default) and,
when ``metrics_token`` is set, that sends it as a bearer token. Behind a reverse
proxy on the same host every request comes from loopback; a request that says it
was forwarded (``Forwarded``, ``Via``, ``X-Forwarded-*``, ``X-Real-IP``) is
therefore served only with the token. Refusals are 403 (401 for a missing token,
429 while the client's wrong tokens are over ``token_failure_limit``), counted
(``metrics_refused``) and logged. `access` is that rule, without I/O.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Mapping, Sequence

from zchannels.core import metrics
from zchannels.core.config import Config
from zchannels.core.stats import collect, counters
from zchannels.core.status import read_proc
from zchannels.interface.guard import FailureLimiter, OperatorHosts
from zchannels.interface.operator import OperatorRequest
from zchannels.interface.publish import authorize

log = logging.getLogger("zchannels.interface.metrics")

FORWARDED_HEADERS = ("Forwarded", "Via", "X-Forwarded-For", "X-Forwarded-Host",
                     "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Server",
                     "X-Real-IP")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(config: Config) -> list[Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in config.metrics_allow]


def access(remote_ip: str | None, headers: Mapping[str, str], allowed: Sequence[Network],
           token: str) -> tuple[int, str] | None:
    """None if the request may read the metrics; else (status, why)."""
    return place_refusal(remote_ip, headers, allowed, bool(token)) or \
        (token_refusal(headers, token) if token else None)


def place_refusal(remote_ip: str | None, headers: Mapping[str, str],
                  allowed: Sequence[Network], with_token: bool) -> tuple[int, str] | None:
    """Where the request comes from: an address in metrics_allow, not through a proxy
    unless a token is needed anyway."""
    try:
        address = ipaddress.ip_address(remote_ip or "")
    except ValueError:
        return 403, f"address {remote_ip!r} is not an IP address"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not any(address in network for network in allowed):
        return 403, f"address {address} is not in metrics_allow"
    if not with_token and any(name in headers for name in FORWARDED_HEADERS):
        return 403, "forwarded by a proxy, and no metrics_token is set"
    return None


def token_refusal(headers: Mapping[str, str], token: str) -> tuple[int, str] | None:
    status = authorize(headers.get("Authorization"), token)
    if status is None:
        return None
    return status, "missing bearer token" if status == 401 else "wrong token"


class MetricsRequest(OperatorRequest):
    """``GET <metrics_path>``: the text exposition format."""

    SUPPORTED_METHODS = ("GET", "HEAD")
    what = "metrics"

    def initialize(self, config: Config, allowed: Sequence[Network], hosts: OperatorHosts,
                   limiter: FailureLimiter) -> None:
        self.config = config
        self.allowed = allowed
        self.hosts = hosts
        self.limiter = limiter

    def prepare(self) -> None:
        self.check_host()
        request, token = self.request, self.config.metrics_token
        refused = place_refusal(request.remote_ip, request.headers, self.allowed, bool(token))
        if refused is None and token:
            self.check_rate()
            refused = token_refusal(request.headers, token)
            if refused is not None and refused[0] == 403:
                self.limiter.failed(request.remote_ip, self.what)
        if refused is not None:
            status, why = refused
            counters.incr("metrics_refused")
            log.warning("metrics refused to %s: %s", request.remote_ip, why)
            self.refuse(status, why, **({"WWW-Authenticate": 'Bearer realm="zchannels"'}
                                        if status == 401 else {}))

    def get(self) -> None:
        counters.incr("metrics_scrapes")
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        processes = collect(self.config.run_dir)
        for data in processes:  # CPU and memory: what the processes cannot say themselves
            uptime, cpu, rss = read_proc(data.get("pid", 0))
            data["proc"] = {"uptime": uptime, "cpu_seconds": cpu, "rss_bytes": rss}
        self.finish(metrics.render(processes))

    def head(self) -> None:
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish()
