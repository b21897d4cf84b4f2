"""The operator's view without processes: labelled stats keys, the histogram, the
Prometheus rendering of stats snapshots, the host summary, who may read the
metrics, the status screen and the configuration keys."""
import ipaddress
import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zchannels.core import config as config_module
from zchannels.core.exceptions import ConfigError
from zchannels.interface.scrape import access
from zchannels.core import stats as stats_module
from zchannels.core.metrics import earlier, parse_key, rates, render, summarize
from zchannels.core.stats import Counters, Histogram, labelled
from zchannels.core.status import Sampler, read_proc, render as render_status


def test_labelled_keys_round_trip():
    key = labelled("events_sent", channel="websocket.receive")
    assert key == "events_sent{channel=websocket.receive}"
    assert parse_key(key) == ("events_sent", {"channel": "websocket.receive"})
    assert parse_key("zmq_sent") == ("zmq_sent", {})
    assert labelled("x") == "x"
    assert parse_key("pool_backlog{pool=a-b,x=1}") == ("pool_backlog", {"pool": "a-b", "x": "1"})


def test_histogram_buckets_are_upper_bounds_inclusive():
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 1]  # <= 0.1, <= 1.0, +Inf
    assert h.snapshot() == {"buckets": [0.1, 1.0], "counts": [2, 2, 1], "sum": 8.65}


def snapshots():
    interface = {
        "role": "interface", "pid": 11, "process": "interface-0", "time": 100.0,
        "counters": {"zmq_sent": 9, labelled("events_sent", channel="websocket.receive"): 7,
                     labelled("events_sent", channel="websocket.connect"): 2,
                     "refused_origin": 1, "replies_lost": 2, "from_broker": 5},
        "gauges": {"websockets": 2, "connections": 2, labelled("pool_in_flight", pool="p"): 3,
                   "odd": {"not": "a number"}},
        "histograms": {labelled("event_latency_seconds", pool="p"):
                       {"buckets": [0.1, 1.0], "counts": [4, 1, 1], "sum": 3.5}},
    }
    broker = {"role": "broker", "pid": 12, "time": 99.0, "counters": {"redelivered": 1},
              "gauges": {labelled("pool_busy_workers", pool="p"): 1,
                         labelled("pool_free_workers", pool="p"): 0,
                         labelled("pool_capacity", pool="p"): 50}}
    worker = {"role": "worker-p", "pid": 13, "time": 99.5,
              "counters": {"events": 9, "consumer_errors": 1}, "gauges": {"handled": 9}}
    return [interface, broker, worker]


def test_rendering_parses_with_prometheus_clients_own_parser():
    text = render(snapshots()).decode()
    found = {f.name: f for f in text_string_to_metric_families(text)}

    def sample(name, **labels):
        family = found[name.removesuffix("_total").removesuffix("_count")
                       .removesuffix("_bucket")] if name not in found else found[name]
        values = [s.value for s in family.samples
                  if s.name == name and labels.items() <= s.labels.items()]
        assert len(values) == 1, (name, labels, family.samples)
        return values[0]

    assert sample("zchannels_events_sent_total", channel="websocket.receive",
                  role="interface", process="interface-0") == 7
    assert sample("zchannels_zmq_sent_total", process="interface-0") == 9
    assert sample("zchannels_websockets", role="interface") == 2
    assert sample("zchannels_events_total", role="worker-p", process="13") == 9
    assert sample("zchannels_consumer_errors_total") == 1
    assert sample("zchannels_refusals_total", kind="origin") == 1
    assert sample("zchannels_refusals_total", kind="channel_full") == 0  # always there
    assert sample("zchannels_losses_total", kind="replies") == 2
    assert sample("zchannels_pool_queue_depth", pool="p") == 2  # 3 in flight, 1 busy
    assert sample("zchannels_processes", role="broker") == 1
    assert sample("zchannels_event_latency_seconds_bucket", le="0.1") == 4
    assert sample("zchannels_event_latency_seconds_bucket", le="1.0") == 5
    assert sample("zchannels_event_latency_seconds_bucket", le="+Inf") == 6
    assert sample("zchannels_event_latency_seconds_count") == 6
    assert "zchannels_odd" not in found  # a gauge that is not a number is left out


def test_a_gauge_named_like_a_counter_gets_a_suffix():
    text = render([{"role": "broker", "pid": 1, "counters": {"x": 1},
                    "gauges": {"x": 2}}]).decode()
    names = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert names["zchannels_x"] == "counter" and names["zchannels_x_gauge"] == "gauge"


def test_summary_of_a_host():
    summary = summarize(snapshots())
    assert summary["websockets"] == 2
    assert summary["events"] == 9 and summary["receives"] == 7
    assert summary["deliveries"] == 5
    assert summary["consumer_errors"] == 1 and summary["refusals"] == 1
    assert summary["losses"] == 2 and summary["redelivered"] == 1
    assert summary["pools"]["p"] == {"depth": 2, "in_flight": 3, "busy": 1, "free": 0,
                                     "backlog": 0, "capacity": 50}
    assert summary["latency_count"] == 6 and summary["latency_sum"] == 3.5


RECEIVE = labelled("events_sent", channel="websocket.receive")


def interface_writing(pid, previous_time, previous_count, time, count):
    return {"role": "interface", "pid": pid, "time": time,
            "counters": {RECEIVE: count, "from_broker": count},
            "previous": {"time": previous_time, "histograms": {},
                         "counters": {RECEIVE: previous_count, "from_broker": previous_count}}}


def test_each_process_s_rate_comes_from_its_own_writes_and_they_are_summed():
    """Issue 21, item 8: two interfaces at 10/s each, whose files were written 1.5 s
    apart. Taking both counters over the newest file's time would say anything from 0 to
    twice the load; each from its own two writes, the sum is the load."""
    a = interface_writing(1, 98.0, 100, 100.0, 120)  # 20 in 2 s
    b = interface_writing(2, 96.5, 300, 98.5, 320)  # 20 in 2 s, written earlier
    figures = rates([a, b])
    assert figures["events"] == figures["receives"] == figures["deliveries"] == 20.0
    assert figures["seconds"] == [2.0, 2.0] and figures["latency_ms"] is None
    # The reader's own older reading of a process, when older than the file's previous,
    # spans more: it is taken. A newer one, or the same file read again, is not.
    older = dict(a, time=90.0, counters={RECEIVE: 20, "from_broker": 20})
    assert earlier(a, {(1, "interface"): older})["time"] == 90.0
    assert rates([a], [older])["events"] == 10.0  # 100 in 10 s
    assert earlier(a, {(1, "interface"): a})["time"] == 98.0
    # A process with a single write (just started) has no rate yet.
    lone = {"role": "interface", "pid": 3, "time": 100.0, "counters": {RECEIVE: 5}}
    assert earlier(lone) is None and rates([lone]) is None
    assert rates([a, lone])["events"] == 10.0


def test_the_mean_latency_is_over_each_process_s_own_span():
    def latency(count, total):
        return {labelled("event_latency_seconds", pool="p"):
                {"buckets": [1.0], "counts": [count, 0], "sum": total}}
    a = {"role": "interface", "pid": 1, "time": 10.0, "counters": {},
         "histograms": latency(10, 0.5),
         "previous": {"time": 8.0, "counters": {}, "histograms": latency(6, 0.3)}}
    b = {"role": "interface", "pid": 2, "time": 9.0, "counters": {},
         "histograms": latency(4, 0.4),
         "previous": {"time": 7.0, "counters": {}, "histograms": latency(0, 0.0)}}
    # (0.2 + 0.4) s over (4 + 4) events
    assert rates([a, b])["latency_ms"] == pytest.approx(75.0)


def test_a_stats_file_names_the_newest_earlier_write_at_least_the_rate_window_old(
        tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(stats_module.time, "time", lambda: clock[0])
    counters = Counters()
    counters.setup(str(tmp_path), "worker-x")
    written = []
    for step in range(12):  # every 0.5 s, one more event each time
        counters.incr("events")
        counters.write(force=True)
        with open(counters.path) as f:
            written.append(json.load(f))
        clock[0] += 0.5
    assert "previous" not in written[0]
    assert written[1]["previous"]["time"] == 1000.0  # younger than the window: the oldest
    for data in written[4:]:
        span = data["time"] - data["previous"]["time"]
        assert span == stats_module.RATE_WINDOW, span
        assert data["counters"]["events"] - data["previous"]["counters"]["events"] == 4
    assert len(counters._history) <= stats_module.RATE_WINDOW / 0.5 + 1  # no more kept


LOOPBACK = [ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("::1")]


@pytest.mark.parametrize("ip, headers, token, expected", [
    ("127.0.0.1", {}, "", None),
    ("::1", {}, "", None),
    ("::ffff:127.0.0.1", {}, "", None),  # a dual-stack socket's view of IPv4 loopback
    ("127.0.0.2", {}, "", 403),
    ("192.0.2.7", {}, "", 403),
    ("not-an-ip", {}, "", 403),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}, "", 403),  # through a proxy
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer t0k"},
     "t0k", None),
    ("127.0.0.1", {}, "t0k", 401),
    ("127.0.0.1", {"Authorization": "Bearer nope"}, "t0k", 403),
    ("192.0.2.7", {"Authorization": "Bearer t0k"}, "t0k", 403),  # the address first
])
def test_who_may_read_the_metrics(ip, headers, token, expected):
    refused = access(ip, headers, LOOPBACK, token)
    assert (refused and refused[0]) == expected


def test_a_network_in_the_allow_list():
    assert access("10.1.2.3", {}, [ipaddress.ip_network("10.0.0.0/8")], "") is None


@pytest.mark.parametrize("server, message", [
    ({"metrics_allow": ["localhost"]}, "metrics_allow: 'localhost' is not an IP address"),
    ({"metrics_path": "metrics"}, "metrics_path must be a URL path"),
    ({"dashboard_path": "/x?y"}, "dashboard_path must be a URL path"),
    ({"dashboard_path": "/_zchannels/publish"}, "is publish_path already"),
    ({"metrics_path": "/m", "dashboard_path": "/m"}, "is metrics_path already"),
    ({"dashboard_token": "has;semicolon"}, "dashboard_token (or ZCHANNELS_DASHBOARD_TOKEN)"),
    ({"metrics_token": "two words"}, "metrics_token (or ZCHANNELS_METRICS_TOKEN)"),
    ({"metrics_allow": "127.0.0.1", "metrics_token": 5}, "metrics_token must be a str"),
])
def test_operator_keys_are_validated(server, message):
    with pytest.raises(ConfigError) as raised:
        config_module.parse({"server": server})
    assert message in str(raised.value)


def test_operator_keys_defaults_and_environment():
    config = config_module.parse({})
    assert (config.metrics_path, config.metrics_allow, config.metrics_token) == \
        ("/_zchannels/metrics", ("127.0.0.1", "::1"), "")
    assert (config.dashboard_path, config.dashboard_token) == ("/_zchannels/dashboard", "")
    assert config_module.parse({"server": {"metrics_path": ""}}).metrics_path == ""  # off
    metrics_token, dashboard_token = "m1" + "0123456789abcdef" * 2, "d-2_x.y~" * 4
    config = config_module.parse({}, environ={"ZCHANNELS_METRICS_TOKEN": metrics_token,
                                              "ZCHANNELS_DASHBOARD_TOKEN": dashboard_token})
    assert (config.metrics_token, config.dashboard_token) == (metrics_token, dashboard_token)


def test_read_proc_of_this_process():
    uptime, cpu, rss = read_proc(os.getpid())
    assert uptime is not None and uptime >= 0
    assert cpu is not None and cpu > 0
    assert rss is not None and rss > 1024 * 1024
    assert read_proc(2 ** 22 + 12345) == (None, None, None)  # no such process


def test_status_screen_of_snapshots():
    processes = snapshots()
    for data in processes:
        data["pid"] = os.getpid()  # /proc has something to say about it
    later = [dict(d, time=d["time"] + 2.0,
                  counters={**d["counters"], "zmq_sent": d["counters"].get("zmq_sent", 0) + 10})
             for d in processes]
    screen = render_status(config_module.parse({}), later, Sampler().sample(later), processes)
    lines = screen.splitlines()
    assert lines[1].split()[:3] == ["ROLE", "PROCESS", "PID"]
    assert lines[2].split()[:3] == ["interface", "interface-0", str(os.getpid())]
    assert lines[2].split()[-1] == "5.0"  # 10 ZeroMQ messages in 2 s
    assert "websockets 2" in screen
    assert "pool      p: depth 2   in flight 3   busy 1 of 1 workers" in screen
    assert "consumer errors 1" in screen
