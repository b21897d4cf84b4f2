"""Who may reach the operator endpoints, and how often a client may guess a token.

Two rules, without I/O (the handlers in `operator`, `publish` and `scrape` apply them):

- `OperatorHosts`: the metrics and the dashboard answer only when the request's
  ``Host`` is one the operator allowed: ``localhost``, ``127.0.0.1`` and ``[::1]``
  (any port), plus ``operator_hosts``. A page that rebinds its own name to
  127.0.0.1 (DNS rebinding) still sends its own name as ``Host``, so it is refused.
  Forwarding headers can only refuse more: an ``X-Forwarded-Host`` or a
  ``Forwarded: host=`` that is not allowed is refused too, and none of them can
  make a refused ``Host`` allowed.
- `FailureLimiter`: wrong tokens (publish, dashboard, metrics) per client address,
  a token bucket of ``token_failure_limit`` per ``token_failure_window``. Once it is
  empty, every request of that address that needs a token gets 429 with
  ``Retry-After``, without its token being looked at. IPv6 clients are counted by
  /64, which is what one host usually gets.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from typing import Callable, Mapping

from zchannels.core.config import Config, host_and_port
from zchannels.core.stats import counters

log = logging.getLogger("zchannels.interface.guard")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
MAX_ADDRESSES = 10_000  # client addresses whose failures are remembered; the oldest go first
SHOWN_HOST_CHARS = 100  # of a refused Host, in a log line or an answer


class OperatorHosts:
    """The Host names the operator endpoints answer to."""

    def __init__(self, config: Config) -> None:
        self.any_port: set[str] = set(LOOPBACK_NAMES)
        self.with_port: set[tuple[str, int]] = set()
        for entry in config.operator_hosts:
            parsed = host_and_port(entry)
            assert parsed is not None  # config validation guarantees it
            name, port = parsed
            if port is None:
                self.any_port.add(name)
            else:
                self.with_port.add((name, port))

    def allows(self, value: str) -> bool:
        parsed = host_and_port(value)
        if parsed is None:
            return False
        return parsed[0] in self.any_port or parsed in self.with_port

    def refusal(self, headers: Mapping[str, str]) -> str | None:
        """None if the request names an allowed host (and any host a proxy forwarded is
        allowed too); else why not, for the log and the answer."""
        host = headers.get("Host")
        if host is None:
            return "the request has no Host header"
        if not self.allows(host):
            return f"Host {host[:SHOWN_HOST_CHARS]!r} is not an operator host"
        for forwarded in forwarded_hosts(headers):
            if not self.allows(forwarded):
                return f"forwarded host {forwarded[:SHOWN_HOST_CHARS]!r} is not an operator host"
        return None


def forwarded_hosts(headers: Mapping[str, str]) -> list[str]:
    """The original hosts a proxy says the request was for: every X-Forwarded-Host value
    and every ``host=`` of Forwarded (RFC 7239)."""
    found = [value.strip() for value in headers.get("X-Forwarded-Host", "").split(",")
             if value.strip()]
    for element in headers.get("Forwarded", "").split(","):
        for pair in element.split(";"):
            name, equals, value = pair.partition("=")
            if equals and name.strip().lower() == "host":
                found.append(value.strip().strip('"'))
    return found


def client_key(remote_ip: str | None) -> str:
    """What failures are counted by: the IPv4 address, or the IPv6 /64."""
    try:
        address = ipaddress.ip_address(remote_ip or "")
    except ValueError:
        return remote_ip or "?"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Wrong tokens per client address: a bucket of `limit` failures that refills at
    limit / window per second. A limit of 0 counts failures and limits nothing."""

    def __init__(self, limit: int, window: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.rate = limit / window if limit else 0.0  # failures forgiven per second
        self.clock = clock
        self.max_addresses = max_addresses
        # key -> (failures still allowed, when that was computed); oldest first
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def of(cls, config: Config) -> "FailureLimiter":
        return cls(config.token_failure_limit, config.token_failure_window)

    def _level(self, key: str, now: float) -> float:
        left, then = self.buckets.get(key, (float(self.limit), now))
        return min(float(self.limit), left + (now - then) * self.rate)

    def blocked(self, remote_ip: str | None) -> int | None:
        """None if this address may present a token now; else the whole seconds until it
        may (for ``Retry-After``), and the refusal is counted (``token_rate_limited``)."""
        if not self.limit:
            return None
        key = client_key(remote_ip)
        if key not in self.buckets:
            return None
        level = self._level(key, self.clock())
        if level >= 1.0:
            return None
        counters.incr("token_rate_limited")
        return max(1, math.ceil((1.0 - level) / self.rate))

    def failed(self, remote_ip: str | None, what: str) -> None:
        """A wrong token for `what` (publish, dashboard, metrics) from this address."""
        counters.incr("token_failures")
        if not self.limit:
            return
        key = client_key(remote_ip)
        now = self.clock()
        level = self._level(key, now) - 1.0
        self.buckets[key] = (level, now)
        self.buckets.move_to_end(key)
        if level < 1.0 <= level + 1.0:
            log.warning("%d wrong tokens from %s within %gs (the last for the %s): its "
                        "requests that need a token get 429 for a while",
                        self.limit, key, self.limit / self.rate, what)
        while len(self.buckets) > self.max_addresses:
            self.buckets.popitem(last=False)
            counters.incr("token_failures_forgotten")
        self.forget_refilled(now)

    def forget_refilled(self, now: float) -> None:
        """Drop the oldest entries whose bucket is full again: they limit nothing."""
        while self.buckets:
            key, (left, then) = next(iter(self.buckets.items()))
            if left + (now - then) * self.rate < self.limit:
                return
            del self.buckets[key]
