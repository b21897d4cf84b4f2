"""Prometheus metrics and the host summary, both made from the stats files.

Every process already writes its counters, gauges and histograms to
``<run_dir>/stats/<role>.<pid>.json`` every ``stats_interval`` (`zchannels.core.stats`).
Nothing here touches a live process: `StatsCollector` reads those files (all the
processes of this host, whichever interface is asked) and renders them with
``prometheus_client`` in the text exposition format; `summarize` turns the same
reading into the few figures a person watches (``zchannels status``, the live
dashboard). So a scrape costs a handful of small file reads, and the message path
pays only for its counter increments and one histogram bucket per event.

Names: a counter ``x`` is ``zchannels_x_total``, a gauge ``y`` is ``zchannels_y``,
each labelled ``role`` and ``process`` (the supervisord program, or the pid). A stats
key ``name{pool=default}`` (`stats.labelled`) adds its own labels. On top of them come
the figures an operator alerts on, always present once a process of their role runs:
``zchannels_refusals_total{kind}``, ``zchannels_losses_total{kind}``,
``zchannels_pool_queue_depth{pool}`` and ``zchannels_processes{role}``.
docs/operations.md lists them all.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client import exposition
from prometheus_client.exposition import generate_latest

__all__ = ["StatsCollector", "render", "summarize", "totals", "rates", "earlier", "parse_key",
           "CONTENT_TYPE"]

# The classic text format, which every Prometheus version reads (what generate_latest
# writes; newer prometheus_client versions label it 1.0.0, which Prometheus 2 refuses).
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
PREFIX = "zchannels_"

# Refused work, by kind (the counter that counts it, and where).
REFUSALS = {
    "refused_pool_full": "pool_full",  # interface: a pool's input was full (each retry too)
    "refused_http": "http_pool_full",  # interface: HTTP 503 for a full pool
    "refused_max_connections": "max_connections",  # interface: 503 at max_connections
    "refused_origin": "origin",  # interface: 403 for the WebSocket Origin
    "refused_host": "operator_host",  # interface: 421 for a metrics/dashboard Host
    "disallowed_host": "allowed_hosts",  # worker: 403, Host/Origin not in ALLOWED_HOSTS
    "refused_body_too_large": "body_too_large",  # interface: 413
    "rate_limited": "rate_limited",  # interface: close 1008
    "publish_refused": "publish",  # interface: the publish API's 503
    "channel_full": "channel_full",  # worker: ChannelFull to a consumer's send
    "delayed_refused": "delayed",  # broker: a delayed message refused
}
# Messages or events lost, by kind: each of these is also a counter of its own.
LOSSES = {
    "dropped_after_redelivery": "after_redelivery",  # broker: its second worker died too
    "dropped_at_stop": "at_stop",  # broker: queued when it stopped
    "dropped_interface_full": "interface_full",  # broker: broker_hwm reached
    "dropped_bounces": "bounces",  # broker: a bounce could not be sent
    "replies_lost": "replies",  # interface: lost in a killed broker
    "disconnects_lost": "disconnects",  # interface: the pool never took a disconnect
    "events_abandoned": "events_abandoned",  # interface: no done after 2 x event_timeout
    "receives_dropped_on_close": "receives_on_close",  # interface: queued behind a close
    "shutdown_undelivered": "at_shutdown",  # interface: not handed over at stop
}
# Counters exported (as 0) even before they first move, so that dashboards and alerts
# find them: by role ("worker" stands for every worker-<pool>).
ALWAYS = {
    "interface": ("refused_pool_full", "refused_http", "refused_max_connections",
                  "refused_origin", "rate_limited", "replies_lost", "disconnects_lost",
                  "events_abandoned", "receives_dropped_on_close", "event_timeouts",
                  "from_broker", "group_deliveries", "zmq_sent", "garbage"),
    "worker": ("events", "consumer_errors", "channel_full", "zmq_sent", "garbage"),
    "broker": ("dispatched", "redelivered", "dropped_after_redelivery", "dropped_at_stop",
               "dropped_interface_full", "delayed_refused", "zmq_sent", "garbage"),
}
HELP = {
    "events_sent": "Events an interface handed to a pool, by channel.",
    "events": "Events and messages a worker ran a consumer for.",
    "consumer_errors": "Consumer calls that raised.",
    "redelivered": "Messages handed to another worker because the one holding them died.",
    "zmq_sent": "ZeroMQ messages sent.",
    "websockets": "Open WebSocket connections.",
    "sse_streams": "Open Server-Sent Event streams.",
    "long_polls": "Long-poll requests being held.",
    "http_streams": "Streamed (chunked) HTTP responses in progress.",
    "http_requests": "HTTP exchanges in progress (streams and long-polls included).",
    "connections": "Clients of an interface: WebSockets plus HTTP exchanges.",
    "queued_events": "Events waiting in the interface's per-connection queues.",
    "pool_in_flight": "Events of this interface handed to the pool and not done yet.",
    "pool_free_workers": "Workers of the pool waiting for a message.",
    "pool_busy_workers": "Workers of the pool holding a message.",
    "pool_backlog": "Messages inside the broker waiting for a worker of the pool.",
    "pool_capacity": "The pool's configured capacity.",
    "pool_dispatched": "Messages the broker handed to a worker of the pool.",
    "curve_refused": "Connections the broker refused: their CURVE client key is not in "
                     "the allow-list (docs/deployment.md).",
    "event_latency_seconds": "Seconds from an interface handing an event to its pool "
                             "until the worker's done arrived (pool wait + consumer).",
}
_KEY = re.compile(r"^([^{}]+)(?:\{([^{}]*)\})?$")
_BAD_NAME = re.compile(r"[^a-zA-Z0-9_]")
_BAD_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    """``name{a=1,b=2}`` -> ("name", {"a": "1", "b": "2"}); a plain name has no labels."""
    match = _KEY.match(key)
    if match is None:
        return _BAD_NAME.sub("_", key), {}
    name, raw = match.group(1), match.group(2)
    labels: dict[str, str] = {}
    for part in (raw or "").split(","):
        label, sep, value = part.partition("=")
        if sep and label:
            labels[_BAD_LABEL.sub("_", label)] = value
    return _BAD_NAME.sub("_", name), labels


def role_kind(role: str) -> str:
    """"worker-default" -> "worker"; other roles as they are."""
    return "worker" if role.startswith("worker") else role


def process_label(data: dict[str, Any]) -> str:
    return str(data.get("process") or data.get("pid", ""))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


class _Family:
    """Samples of one metric family gathered before its label names are known."""

    def __init__(self) -> None:
        self.samples: list[tuple[dict[str, str], Any]] = []

    def label_names(self) -> list[str]:
        names: dict[str, None] = {"role": None, "process": None}
        for labels, _ in self.samples:
            names.update(dict.fromkeys(labels))
        return list(names)


class StatsCollector:
    """A prometheus_client collector over stats snapshots (`stats.collect`)."""

    def __init__(self, processes: list[dict[str, Any]]) -> None:
        self.processes = processes

    def collect(self) -> Iterator[Metric]:
        counters: dict[str, _Family] = {}
        gauges: dict[str, _Family] = {}
        histograms: dict[str, _Family] = {}
        refusals, losses = _Family(), _Family()
        roles: dict[str, int] = {}
        for data in self.processes:
            role = str(data.get("role", ""))
            own = {"role": role, "process": process_label(data)}
            roles[role] = roles.get(role, 0) + 1
            values = dict.fromkeys(ALWAYS.get(role_kind(role), ()), 0)
            values.update(data.get("counters", {}))
            for key, value in values.items():
                name, labels = parse_key(key)
                counters.setdefault(name, _Family()).samples.append(({**own, **labels}, value))
                if key in REFUSALS:
                    refusals.samples.append(({**own, "kind": REFUSALS[key]}, value))
                if key in LOSSES:
                    losses.samples.append(({**own, "kind": LOSSES[key]}, value))
            for key, value in data.get("gauges", {}).items():
                if _number(value) is None:
                    continue
                name, labels = parse_key(key)
                gauges.setdefault(name, _Family()).samples.append(({**own, **labels}, value))
            for key, value in data.get("histograms", {}).items():
                name, labels = parse_key(key)
                histograms.setdefault(name, _Family()).samples.append(({**own, **labels}, value))

        for name, family in sorted(counters.items()):
            yield self._family(CounterMetricFamily, name, family)
        for name, family in sorted(gauges.items()):
            # One family name, one type: a gauge named like a counter gets a suffix.
            yield self._family(GaugeMetricFamily, name + "_gauge" * (name in counters),
                               family)
        for name, family in sorted(histograms.items()):
            yield self._histogram(name, family)
        yield self._family(CounterMetricFamily, "refusals", refusals,
                           "Work refused, by kind (each is also a counter of its own).",
                           ["role", "process", "kind"])
        yield self._family(CounterMetricFamily, "losses", losses,
                           "Messages or events lost, by kind (each is also a counter of "
                           "its own).", ["role", "process", "kind"])
        depth = GaugeMetricFamily(PREFIX + "pool_queue_depth", "Events of this host's "
                                  "interfaces waiting for a worker of the pool (estimated: "
                                  "handed to the pool and not done, minus its busy "
                                  "workers).", labels=["pool"])
        for pool, figures in sorted(summarize(self.processes)["pools"].items()):
            depth.add_metric([pool], figures["depth"])
        yield depth
        processes = GaugeMetricFamily(PREFIX + "processes", "Processes of this host that "
                                      "wrote stats, by role.", labels=["role"])
        for role, count in sorted(roles.items()):
            processes.add_metric([role], count)
        yield processes
        yield from self._resources()

    def _resources(self) -> Iterator[Metric]:
        """CPU and memory of each process, where the reader added them from /proc."""
        labels = ["role", "process"]
        cpu = CounterMetricFamily(PREFIX + "process_cpu_seconds", "User and system CPU "
                                  "seconds of the process.", labels=labels)
        rss = GaugeMetricFamily(PREFIX + "process_resident_memory_bytes", "Resident memory "
                                "of the process.", labels=labels)
        uptime = GaugeMetricFamily(PREFIX + "process_uptime_seconds", "Seconds since the "
                                   "process started.", labels=labels)
        for data in self.processes:
            proc = data.get("proc") or {}
            values = [str(data.get("role", "")), process_label(data)]
            for family, key in ((cpu, "cpu_seconds"), (rss, "rss_bytes"),
                                (uptime, "uptime")):
                if _number(proc.get(key)) is not None:
                    family.add_metric(values, float(proc[key]))
        yield from (cpu, rss, uptime)

    @staticmethod
    def _family(kind: Any, name: str, family: _Family, documentation: str | None = None,
                label_names: list[str] | None = None) -> Metric:
        names = label_names or family.label_names()
        doc = documentation or HELP.get(name) or f"zchannels {name} (docs/operations.md)."
        metric = kind(PREFIX + name, doc, labels=names)
        for labels, value in family.samples:
            number = _number(value)
            if number is not None:
                metric.add_metric([labels.get(n, "") for n in names], number)
        return metric

    @staticmethod
    def _histogram(name: str, family: _Family) -> Metric:
        names = family.label_names()
        doc = HELP.get(name) or f"zchannels {name} (docs/operations.md)."
        metric = HistogramMetricFamily(PREFIX + name, doc, labels=names)
        for labels, value in family.samples:
            try:
                bounds, counts, total = value["buckets"], value["counts"], value["sum"]
            except (TypeError, KeyError):
                continue
            buckets, cumulative = [], 0
            for bound, count in zip([*bounds, float("inf")], counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)),
                                cumulative))
            metric.add_metric([labels.get(n, "") for n in names], buckets, total)
        return metric


def render(processes: list[dict[str, Any]]) -> bytes:
    """The text exposition format of every process's stats."""
    return generate_latest(StatsCollector(processes))


def _sum(processes: Iterable[dict[str, Any]], section: str, *names: str) -> float:
    total = 0.0
    for data in processes:
        for key, value in data.get(section, {}).items():
            if parse_key(key)[0] in names:
                total += _number(value) or 0.0
    return total


def summarize(processes: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of a host: open clients, running totals (`rates` makes
    rates of them), and each pool's depth. The same for `zchannels status` and the
    dashboard as for the metrics. ``time`` is the newest file's: not the time of the
    other processes' counters."""
    interfaces = [d for d in processes if d.get("role") == "interface"]
    brokers = [d for d in processes if d.get("role") == "broker"]
    pools: dict[str, dict[str, float]] = {}

    def pool(name: str) -> dict[str, float]:
        return pools.setdefault(name, dict.fromkeys(
            ("depth", "in_flight", "busy", "free", "backlog", "capacity"), 0.0))

    for data in interfaces:
        for key, value in data.get("gauges", {}).items():
            name, labels = parse_key(key)
            if name == "pool_in_flight" and "pool" in labels:
                pool(labels["pool"])["in_flight"] += _number(value) or 0.0
    fields = {"pool_busy_workers": "busy", "pool_free_workers": "free",
              "pool_backlog": "backlog", "pool_capacity": "capacity"}
    for data in brokers:
        for key, value in data.get("gauges", {}).items():
            name, labels = parse_key(key)
            if name in fields and "pool" in labels:
                pool(labels["pool"])[fields[name]] += _number(value) or 0.0
    for figures in pools.values():
        figures["depth"] = max(0.0, figures["in_flight"] - figures["busy"])
    return {
        "time": max((d.get("time", 0) for d in processes), default=0),
        "processes": [{"role": d.get("role"), "process": process_label(d),
                       "pid": d.get("pid")} for d in processes],
        "websockets": _sum(interfaces, "gauges", "websockets"),
        "sse_streams": _sum(interfaces, "gauges", "sse_streams"),
        "long_polls": _sum(interfaces, "gauges", "long_polls"),
        "http_requests": _sum(interfaces, "gauges", "http_requests"),
        "connections": _sum(interfaces, "gauges", "connections"),
        **totals(processes),  # running totals: `rates` makes rates of them
        "pools": pools,
    }


def totals(processes: list[dict[str, Any]]) -> dict[str, float]:
    """The running totals of `summarize` (RATE_FIGURES and the latency histogram's
    count and sum), from the processes' counters."""
    interfaces = [d for d in processes if d.get("role") == "interface"]
    workers = [d for d in processes if str(d.get("role", "")).startswith("worker")]
    brokers = [d for d in processes if d.get("role") == "broker"]
    latency_count = latency_sum = 0.0
    for data in interfaces:
        for key, value in data.get("histograms", {}).items():
            if parse_key(key)[0] == "event_latency_seconds" and isinstance(value, dict):
                latency_count += sum(value.get("counts", ()))
                latency_sum += _number(value.get("sum")) or 0.0
    return {
        "events": _sum(interfaces, "counters", "events_sent"),
        "receives": sum(_number(d.get("counters", {}).get(
            "events_sent{channel=websocket.receive}")) or 0.0 for d in interfaces),
        "deliveries": _sum(interfaces, "counters", "from_broker", "group_deliveries"),
        "worker_events": _sum(workers, "counters", "events"),
        "zmq_messages": _sum([*interfaces, *workers, *brokers], "counters", "zmq_sent"),
        "consumer_errors": _sum(workers, "counters", "consumer_errors"),
        "event_timeouts": _sum(interfaces, "counters", "event_timeouts"),
        "refusals": _sum(processes, "counters", *REFUSALS),
        "losses": _sum(processes, "counters", *LOSSES),
        "redelivered": _sum(brokers, "counters", "redelivered"),
        "latency_count": latency_count,
        "latency_sum": latency_sum,
    }


# The totals that `rates` turns into figures per second.
RATE_FIGURES = ("events", "receives", "deliveries", "worker_events", "zmq_messages",
                "consumer_errors", "event_timeouts", "refusals", "losses", "redelivered")
Key = tuple[Any, Any]  # (pid, role): one process


def process_key(data: dict[str, Any]) -> Key:
    return data.get("pid"), data.get("role")


def earlier(data: dict[str, Any], before: dict[Key, dict[str, Any]] | None = None
            ) -> dict[str, Any] | None:
    """The reading of the same process that its rates are taken from: the older of the
    earlier write its file names (``previous``, runtime/core/stats.py) and the reader's own
    previous reading of it (`before`, by `process_key`), as long as it is older than
    this one; None if there is none yet. Both are that process's own consecutive
    stats, its time with its counters."""
    now = _number(data.get("time"))
    if now is None:
        return None
    found = None
    previous = data.get("previous")
    if isinstance(previous, dict):
        found = {**data, **previous, "previous": None}
    old = before.get(process_key(data)) if before else None
    if old is not None and (found is None or _time(old) < _time(found)):
        found = old
    return found if found is not None and _time(found) < now else None


def _time(data: dict[str, Any]) -> float:
    return _number(data.get("time")) or 0.0


def rates(processes: list[dict[str, Any]],
          before: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The host's figures per second (RATE_FIGURES), and the mean event latency: each
    process's from its own consecutive stats (`earlier`), over its own span, summed.
    ``latency_ms`` is None without events; ``seconds`` the shortest and longest span.
    None when no process has two readings yet."""
    old_readings = {process_key(d): d for d in before or ()}
    figures = dict.fromkeys(RATE_FIGURES, 0.0)
    latency_count = latency_sum = 0.0
    spans = []
    for data in processes:
        then = earlier(data, old_readings)
        if then is None:
            continue
        seconds = _time(data) - _time(then)
        now_totals, then_totals = totals([data]), totals([then])
        for key in RATE_FIGURES:  # a restarted process is a new pid: never negative
            figures[key] += max(0.0, now_totals[key] - then_totals[key]) / seconds
        latency_count += now_totals["latency_count"] - then_totals["latency_count"]
        latency_sum += now_totals["latency_sum"] - then_totals["latency_sum"]
        spans.append(seconds)
    if not spans:
        return None
    return {**figures,
            "latency_ms": 1000 * latency_sum / latency_count if latency_count > 0 else None,
            "seconds": [min(spans), max(spans)]}
