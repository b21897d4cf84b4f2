"""The bench's pure logic: percentiles, adding up client counts, the server's CPU and
ZeroMQ messages per operation, medians and ratios over rounds, the report, the clients'
parsers (fed bytes directly, no sockets)."""
import asyncio
import json
import math
import os
import random
import struct
import time
import zlib

import pytest

from benchkit import (accounting, channels, cli, modes, payloads, report, runner, servers, summary,
                      wirebytes, wsclient)
from benchkit.histogram import GROWTH, cdf_points, latency_histogram
from benchkit.histogram import summary as latency_summary
from zchannels.core.stats import Histogram
from benchkit.httpclient import HttpProtocol, ResponseError
from benchkit.client import share
from benchkit.wsclient import OP_TEXT, WebSocketProtocol, masked_frame


def exact_percentile(values, p):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_percentiles_within_one_percent_of_the_exact_value():
    rng = random.Random(4)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(20000)]
    h = latency_histogram()
    for v in values:
        h.observe(v)
    for p in (1, 50, 90, 99, 99.9):
        assert h.percentile(p) == pytest.approx(exact_percentile(values, p), rel=GROWTH - 1)
    assert h.percentile(100) == max(values)
    assert h.max == max(values) and h.min == min(values)
    assert h.count == len(values)
    assert h.mean() == pytest.approx(sum(values) / len(values))


def test_percentile_edges():
    h = latency_histogram()
    assert h.percentile(50) is None and h.mean() is None
    assert latency_summary(h)["max"] is None
    h.observe(0.005)
    assert h.percentile(1) == h.percentile(100) == 0.005  # clamped to the only sample
    h.observe(0.0)  # at or below a microsecond: bucket 0
    assert h.percentile(50) == 0.0
    with pytest.raises(ValueError):
        h.percentile(0)
    with pytest.raises(ValueError):
        h.percentile(101)


def test_merged_histograms_equal_one_histogram_of_everything():
    rng = random.Random(7)
    parts = [[rng.uniform(0.0001, 0.2) for _ in range(1000)] for _ in range(3)]
    whole, merged = latency_histogram(), latency_histogram()
    for part in parts:
        h = latency_histogram()
        for v in part:
            h.observe(v)
            whole.observe(v)
        # Client processes send their histograms as JSON-able dicts.
        merged.merge(Histogram.from_dict(json.loads(json.dumps(h.to_dict()))))
    assert merged.counts == whole.counts
    assert merged.count == whole.count == 3000
    assert latency_summary(merged) == pytest.approx(latency_summary(whole))
    xs, ys = cdf_points(merged)
    assert xs == sorted(xs) and ys[-1] == 1.0


def test_one_histogram_for_the_bench_and_the_interfaces():
    """The bench's 1 % histogram is the runtime's, with other bounds: histograms of
    different bounds do not merge, and the Prometheus one still writes its snapshot."""
    prometheus = Histogram()
    for v in (0.0004, 0.003, 0.003, 70.0):
        prometheus.observe(v)
    assert prometheus.snapshot()["counts"][0] == 1 and prometheus.snapshot()["counts"][-1] == 1
    assert prometheus.count == 4 and prometheus.min == 0.0004 and prometheus.max == 70.0
    assert 0.0025 <= prometheus.percentile(50) <= 0.005  # within its bucket
    with pytest.raises(ValueError):
        prometheus.merge(latency_histogram())


def test_share_splits_every_item_once():
    for total in (0, 1, 7, 1000):
        for processes in (1, 2, 3, 8):
            assert sum(share(total, i, processes) for i in range(processes)) == total


def result(counts, latencies=(), cpu=0.5, wall=2.0, **extra):
    h = latency_histogram()
    for v in latencies:
        h.observe(v)
    return {"counts": counts, "errors": [], "latency": h.to_dict(), "cpu_seconds": cpu,
            "wall_seconds": wall, **extra}


def test_echo_figures_add_up_across_processes():
    warnings = []
    figures = runner.aggregate("echo", {}, [
        result({"sent": 10, "received": 9, "lost": 1}, [0.001] * 9),
        result({"sent": 5, "received": 4, "mismatched": 1}, [0.002] * 4, cpu=1.9)], warnings)
    assert (figures["sent"], figures["received"], figures["lost"], figures["mismatched"]) \
        == (15, 13, 1, 1)
    assert figures["balanced"]
    assert figures["rate"] == 13 / 2.0
    assert figures["latency"]["count"] == 13
    assert figures["client_cpu"] == pytest.approx(2.4 / 2.0)
    assert any("did not match" in w for w in warnings)
    assert any("bottleneck" in w for w in warnings)  # 95 % of a core in one process
    unbalanced = runner.aggregate("echo", {}, [result({"sent": 3, "received": 1})], [])
    assert not unbalanced["balanced"]


def test_idle_reports_no_client_cpu():
    # One process's 10 ms clock tick over its 9.9 ms check would read as 101 % of a core.
    warnings = []
    figures = runner.aggregate("idle", {}, [
        result({"sent": 4, "received": 4}, [0.001] * 4, cpu=0.01, wall=0.0099),
        result({"sent": 4, "received": 4}, [0.001] * 4, cpu=0.0, wall=0.016)], warnings)
    assert figures["client_cpu"] is None and figures["client_cpu_max_process"] is None
    assert not any("bottleneck" in w for w in warnings)
    run = {"name": "zchannels", "system": "project", "figures": {**figures, "opened": 8}}
    lines = report.table("idle", summary.columns("idle", [run]), []).splitlines()
    assert [line.split()[-1] for line in lines if line.startswith(("client CPU", "busiest"))] \
        == ["-", "-"]


def test_broadcast_loss_is_counted_per_member():
    warnings = []
    figures = runner.aggregate("broadcast", {}, [
        result({}, [0.01] * 7, received_per_member=[4, 3], published_per_publisher={"m0": 4},
               first_send=10.0, last_delivery=11.0),
        result({}, [0.01] * 4, received_per_member=[4], published_per_publisher={},
               first_send=0.0, last_delivery=12.0)], warnings)
    assert figures["published"] == 4 and figures["members"] == 3
    assert figures["expected"] == 12
    assert figures["received"] == 11 and figures["lost"] == 1
    assert figures["members_with_loss"] == 1
    assert figures["rate"] == pytest.approx(11 / 2.0)  # first send to last delivery
    assert figures["balanced"]
    assert any("lost" in w for w in warnings)


def test_http_non_200_is_an_error():
    figures = runner.aggregate("http", {}, [
        result({"sent": 10, "ok": 8, "bad_status": 1, "lost": 1, "reconnects": 8})], [])
    assert figures["received"] == 8 and figures["bad_status"] == 1 and figures["balanced"]
    assert cli.problems({**figures, "opened": 1, "wanted": 1}) == ["wrong answers"]


def run_of(name, system, round_index, target="/ws/echo", **figures):
    return {"name": name, "system": system, "round": round_index, "target": target,
            "figures": {"opened": 50, "wanted": 50, "warnings": [], "notes": [], **figures}}


def test_comparisons_and_table():
    project = run_of("zchannels", "project", 0, rate=500.0, latency={"p50": 0.002},
                     cpu_per_op=0.0008, warnings=["something odd"])
    base = run_of("raw Tornado", "baseline", 0, rate=1000.0, latency={"p50": 0.001},
                  cpu_per_op=0.0001)
    rows = summary.comparisons("echo", [project, base])
    by_metric = {row["metric"]: row for row in rows}
    assert {(row["system"], row["reference"]) for row in rows} == {("zchannels", "raw Tornado")}
    assert by_metric["rate"]["ratio"] == 0.5 and by_metric["rate"]["rounds"] == [0.5]
    assert by_metric["latency.p50"]["ratio"] == 2.0
    assert by_metric["cpu_per_op"]["ratio"] == pytest.approx(8.0)
    assert by_metric["latency.p99"]["ratio"] is None  # missing figures give no ratio
    text = report.table("echo", summary.columns("echo", [project, base]), rows)
    assert "round trips/s" in text and "1,000" in text and "0.50x" in text
    assert "server CPU per round trip (µs)" in text and "(800 vs 100 µs)" in text
    assert "WARNING (zchannels): something odd" in text
    # Wrong answers void the comparison: a fast 404 is no result.
    project["figures"]["bad_status"] = 3
    assert all(row["ratio"] is None for row in summary.comparisons("echo", [project, base]))


def test_medians_over_rounds_and_per_round_ratios():
    runs = []
    for r, (mine, tornado, chan_async, chan_sync) in enumerate(
            [(100.0, 400.0, 200.0, 50.0), (300.0, 500.0, 250.0, 100.0),
             (200.0, 1000.0, 100.0, 75.0)]):
        runs += [run_of("zchannels", "project", r, rate=mine),
                 run_of("raw Tornado", "baseline", r, rate=tornado),
                 run_of("Channels 4 async", "channels-async", r, rate=chan_async),
                 run_of("Channels 4 sync", "channels-sync", r, rate=chan_sync,
                        single={"mismatched": 1} if r == 2 else {})]
    columns = summary.columns("echo", runs)
    assert [c["name"] for c in columns] == ["zchannels", "raw Tornado", "Channels 4 async",
                                            "Channels 4 sync"]
    assert [c["median"]["rate"] for c in columns] == [200.0, 500.0, 200.0, 75.0]
    assert columns[0]["each_round"]["rate"] == [100.0, 300.0, 200.0]
    assert all(c["rounds"] == 3 for c in columns)
    rate = {(c["system"], c["reference"]): c for c in summary.comparisons("echo", runs)
            if c["metric"] == "rate"}
    # Every system against raw Tornado and against Channels async; never the reverse.
    assert set(rate) == {("zchannels", "raw Tornado"), ("Channels 4 async", "raw Tornado"),
                         ("Channels 4 sync", "raw Tornado"), ("zchannels", "Channels 4 async"),
                         ("Channels 4 sync", "Channels 4 async")}
    # The median of the per-round ratios, not the ratio of the medians (200 / 500).
    assert rate[("zchannels", "raw Tornado")]["rounds"] == [0.25, 0.6, 0.2]
    assert rate[("zchannels", "raw Tornado")]["ratio"] == 0.25
    assert rate[("zchannels", "raw Tornado")]["value"] == 200.0
    assert rate[("zchannels", "Channels 4 async")]["rounds"] == [0.5, 1.2, 2.0]
    # Wrong answers in the 1-connection run void that round's ratios only.
    assert rate[("Channels 4 sync", "raw Tornado")]["rounds"] == [0.125, 0.2, None]
    assert rate[("Channels 4 sync", "raw Tornado")]["ratio"] == pytest.approx(0.1625)
    text = report.table("echo", columns, summary.comparisons("echo", runs))
    assert "median of the 3 per-round ratios" in text
    assert "zchannels vs raw Tornado: round trips/s 0.25 0.60 0.20" in text
    assert summary.median([None, 3, "x", 1]) == 2 and summary.median([None]) is None


def test_table_has_server_cost_columns_and_dashes_for_what_is_unknown():
    runs = [run_of("zchannels", "project", 0, target="/hello", rate=1000.0, cpu_per_op=0.00087,
                   zmq_per_op=None, notes=["ZeroMQ messages per operation not measured"],
                   single={"latency": {"p50": 0.0009, "p99": 0.002}, "cpu_per_op": 0.001}),
            run_of("raw Tornado", "baseline", 0, target="/hello", rate=4000.0,
                   cpu_per_op=0.00014)]
    lines = report.table("http", summary.columns("http", runs), []).splitlines()
    row = {line[:46].strip(): line[46:].split() for line in lines[1:] if line[:1] != " "}
    assert row["server CPU per request (µs)"] == ["870", "140"]
    assert row["ZeroMQ messages per request"] == ["-", "-"]
    assert row["1 connection: latency p50 (ms)"] == ["0.90", "-"]
    assert row["1 connection: server CPU per request (µs)"] == ["1,000", "-"]
    assert "note (zchannels): ZeroMQ messages per operation not measured" in lines
    # The 1-connection run exists for echo and http only.
    assert not any(key.startswith("single.") for key, *_ in report.rows("broadcast"))


def test_header_names_command_date_and_machine():
    text = report.header({
        "title": "echo, 50 connections", "command": "scripts/bench echo --rounds 3",
        "started": "2026-12-01T10:00:00Z", "finished": "2026-12-01T10:01:00Z",
        "machine": {"cpus": 2, "Model name": "AMD EPYC"}, "versions": {"git_commit": "abc1234"},
        "loadavg_before": (1.0, 0.5, 0.25), "loadavg_after": (2.0, 1.0, 0.5)})
    assert "command: scripts/bench echo --rounds 3" in text
    assert "2026-12-01T10:00:00Z to 2026-12-01T10:01:00Z (git abc1234)" in text
    assert "2 cores (AMD EPYC)" in text
    assert "1.00 / 0.50 / 0.25 before, 2.00 / 1.00 / 0.50 after" in text


def stats_file(pid, sent, at, role="broker"):
    counters = {} if sent is None else {"zmq_sent": sent}
    return {"role": role, "pid": pid, "time": at, "counters": counters, "gauges": {}}


def test_messages_per_operation():
    before = {1: stats_file(1, 100, 10.5), 2: stats_file(2, 0, 10.2, "interface")}
    after = {1: stats_file(1, 2100, 20.5), 2: stats_file(2, 1000, 20.1, "interface")}
    assert accounting.messages_per_op(before, after, 1000, 10.0, 20.0) == (3.0, None)
    # The processes known from run_dir/ready must all have written a file.
    value, why = accounting.messages_per_op(before, after, 1000, 10.0, 20.0, pids=[1, 2, 3])
    assert value is None and "process 3" in why
    # Nothing completed: no figure rather than a division by zero.
    assert accounting.messages_per_op(before, after, 0, 10.0, 20.0)[0] is None


def test_messages_per_operation_without_the_counter():
    # Until every process counts zmq_sent, the figure is '-', never a partial sum.
    none = {1: stats_file(1, None, 11.0), 2: stats_file(2, None, 11.0)}
    later = {1: stats_file(1, None, 21.0), 2: stats_file(2, None, 21.0)}
    value, why = accounting.messages_per_op(none, later, 10, 10.0, 20.0)
    assert value is None and "counts no zmq_sent" in why
    some = {1: stats_file(1, 5, 21.0), 2: stats_file(2, None, 21.0, "worker")}
    value, why = accounting.messages_per_op(
        {1: stats_file(1, 0, 11.0), 2: stats_file(2, None, 11.0)}, some, 10, 10.0, 20.0)
    assert value is None and "worker.2" in why


def test_messages_per_operation_with_stale_or_changing_stats():
    before = {1: stats_file(1, 100, 10.5), 2: stats_file(2, 0, 10.2)}
    after = {1: stats_file(1, 2100, 20.5), 2: stats_file(2, 1000, 20.1)}
    # A file written before the quiet period (or before the last answer) is stale.
    stale_before = {**before, 2: stats_file(2, 0, 9.0)}
    value, why = accounting.messages_per_op(stale_before, after, 10, 10.0, 20.0)
    assert value is None and "no fresh stats file from broker.2" in why
    stale_after = {**after, 1: stats_file(1, 2000, 19.0)}
    assert accounting.messages_per_op(before, stale_after, 10, 10.0, 20.0)[0] is None
    # A process that appeared, disappeared or restarted during the load.
    grown = {**after, 3: stats_file(3, 50, 20.3)}
    value, why = accounting.messages_per_op(before, grown, 10, 10.0, 20.0)
    assert value is None and "came or went" in why and "broker.3" in why
    assert accounting.messages_per_op(before, {1: after[1]}, 10, 10.0, 20.0)[0] is None
    restarted = {**after, 1: stats_file(1, 7, 20.5)}
    value, why = accounting.messages_per_op(before, restarted, 10, 10.0, 20.0)
    assert value is None and "backwards" in why


def test_server_cpu_per_operation():
    before = {1: 10.0, 2: 5.0, 3: 1.0}
    after = {1: 10.5, 2: 5.25, 3: 0.0}  # 3 has gone: read as 0, its share not counted
    assert accounting.cpu_per_op(before, after, 1000) == pytest.approx(0.00075)
    assert accounting.cpu_per_op(before, after, 0) is None
    assert accounting.cpu_per_op({}, {}, 10) is None


def status_text(voluntary, involuntary, name="python"):
    """A thread's /proc/PID/task/TID/status as Linux writes it (the lines that matter)."""
    return (f"Name:\t{name}\nState:\tS (sleeping)\nVmRSS:\t  20000 kB\n"
            f"voluntary_ctxt_switches:\t{voluntary}\n"
            f"nonvoluntary_ctxt_switches:\t{involuntary}\n")


def test_context_switches_are_read_per_thread_of_each_process():
    tasks = {100: {100: status_text(40, 2), 101: status_text(7, 1)},
             200: {200: status_text(5, 0), 201: "Name:\tbroken\n"}}  # no counts: left out
    read = tasks.get
    assert servers.parse_switches(status_text(12, 3)) == 15
    assert servers.parse_switches("voluntary_ctxt_switches:\t12\n") is None
    assert servers.switches_by_thread(100, read) == {100: 42, 101: 8}
    assert servers.switches_by_pid([100, 200], lambda pid: tasks.get(pid, {})) == {
        100: {100: 42, 101: 8}, 200: {200: 5}}
    # The real reader: this very process has at least its main thread.
    assert servers.switches_by_thread(os.getpid()).get(os.getpid(), -1) >= 0


def test_context_switches_per_operation():
    before = {1: {1: 100, 11: 50}, 2: {2: 10}, 3: {3: 7}}
    # 12 started in between (counts from 0), 11 ended (its count is lost), 3 has gone.
    after = {1: {1: 160, 12: 30}, 2: {2: 20}}
    assert accounting.switches_per_op(before, after, 10) == pytest.approx(10.0)
    assert accounting.switches_per_op(before, after, 0) is None
    assert accounting.switches_per_op({}, {}, 10) is None
    # A process not read before (it appeared during the load) is not counted, as for CPU.
    assert accounting.switches_per_op(before, {**after, 4: {4: 99}}, 10) == pytest.approx(10.0)


def test_context_switches_row_ratio_and_comparison():
    project = run_of("zchannels", "project", 0, rate=500.0, ctx_per_op=6.0)
    base = run_of("raw Tornado", "baseline", 0, rate=1000.0, ctx_per_op=1.5)
    rows = summary.comparisons("echo", [project, base])
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["ctx_per_op"]["ratio"] == pytest.approx(4.0)
    assert by_metric["ctx_per_op"]["higher_is_better"] is False
    assert by_metric["ctx_per_op"]["label"] == "context switches per round trip"
    lines = report.table("echo", summary.columns("echo", [project, base]), rows).splitlines()
    assert any(line.split() == ["context", "switches", "per", "round", "trip", "6.00", "1.50"]
               for line in lines)
    # The ratio sits in its own column, after the CPU's (rate, p50, p99, 1-conn p50/p99, CPU).
    assert any("ctx switches/op" in line for line in lines)
    ratios = next(line for line in lines if line.startswith("zchannels vs raw Tornado"))
    assert ratios.split()[4:] == ["0.50x", "-", "-", "-", "-", "-", "4.00x"]
    for mode, op in (("broadcast", "delivery"), ("http", "request")):
        assert ("ctx_per_op", f"context switches per {op}", "{:.2f}", False) in report.rows(mode)
        assert "ctx_per_op" in dict(report.RATIOS[mode])


def test_stats_files_are_read_fresh_from_live_processes(tmp_path):
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    me = os.getpid()
    (stats_dir / f"broker.{me}.json").write_text(json.dumps(stats_file(me, 7, time.time())))
    (stats_dir / "worker.999999999.json").write_text(json.dumps(stats_file(999999999, 1, 0)))
    (stats_dir / f"broker.{me}.json.tmp").write_text("{not json")  # being written
    (stats_dir / "broken.999999998.json").write_text("{not json")
    found = accounting.read_stats(str(tmp_path))
    assert list(found) == [me]  # the dead process's and the broken file are left out
    assert servers.server_pids(str(tmp_path)) == [me]
    started = time.monotonic()
    snapshot = accounting.wait_for_fresh(str(tmp_path), [me], time.time() + 60, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2  # bounded: nothing fresh came
    assert accounting.fresh(snapshot, [me], time.time() + 60) == {}
    snapshot = accounting.wait_for_fresh(str(tmp_path), [me], 0.0, timeout=5)
    assert snapshot[me]["counters"]["zmq_sent"] == 7
    assert accounting.StatsSource(str(tmp_path), 2.0).timeout == 6.0


def test_channels_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    with pytest.raises(channels.SetupError) as caught:
        channels.ChannelsServers(str(tmp_path / "no-venv"))
    text = str(caught.value)
    assert "redis-server" in text and "no-venv" in text
    assert "scripts/bench-channels --install" in text and "redis<8" in text


def test_latency_run_options():
    args = cli.build_parser().parse_args(["echo", "--duration", "2", "--rounds", "3"])
    assert cli.title("echo", args) == ("echo, 50 connections, 2 s, then 1 connection at "
                                       "<= 500/s, 2 s; medians of 3 rounds")
    args = cli.build_parser().parse_args(["echo", "--no-latency"])
    assert cli.title("echo", args) == "echo, 50 connections, 5 s"


def test_endpoints_per_mode():
    assert cli.endpoints("echo", "http://127.0.0.1:8000", None) == ["ws://127.0.0.1:8000/ws/echo"]
    assert cli.endpoints("idle", "127.0.0.1:9", None) == ["ws://127.0.0.1:9/ws/echo"]
    assert cli.endpoints("http", "http://h:1", None) == ["http://h:1/hello", "http://h:1/app/hello"]
    assert cli.endpoints("http", "http://h:1/x?y=1", None) == ["http://h:1/x?y=1"]
    assert cli.endpoints("http", "http://h:1", ["/a"]) == ["http://h:1/a"]
    assert cli.endpoints("echo", "ws://h:1/ws/other", None) == ["ws://h:1/ws/other"]
    [room] = cli.endpoints("broadcast", "http://h:1", None)
    assert room.startswith("ws://h:1/ws/chat/bench-")
    with pytest.raises(SystemExit):
        cli.endpoints("echo", "ftp://h:1", None)


def test_websocket_client_parses_frames_in_any_pieces():
    async def scenario():
        protocol = WebSocketProtocol("h", 1, "/")
        got, written = [], []
        protocol.on_message = lambda opcode, payload: got.append((opcode, payload))

        class Transport:
            def write(self, data):
                written.append(data)

            def close(self):
                pass
        protocol.transport = Transport()
        big = b"y" * 70000
        stream = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                  + b"\x81\x05hello" + b"\x82\x7e" + struct.pack("!H", 300) + b"z" * 300
                  + b"\x82\x7f" + struct.pack("!Q", len(big)) + big
                  + b"\x01\x03abc" + b"\x89\x02hi" + b"\x80\x03def"  # fragments around a ping
                  + b"\x88\x02" + struct.pack("!H", 1001))
        for i in range(0, len(stream), 7):  # fed 7 bytes at a time
            protocol.data_received(stream[i:i + 7])
        assert protocol.opened.done()
        assert got == [(1, b"hello"), (2, b"z" * 300), (2, big), (1, b"abcdef")]
        assert protocol.close_code == 1001 and protocol.closed
        assert written[0] == masked_frame(0xA, b"hi")  # the ping was answered
    asyncio.run(scenario())


def test_masked_frame_unmasks_to_the_payload():
    for payload in (b"", b"x" * 125, b"y" * 126, b"z" * 70000):
        frame = masked_frame(OP_TEXT, payload, mask=b"\x01\x02\x03\x04")
        n = frame[1] & 0x7F
        start = {126: 4, 127: 10}.get(n, 2)
        mask, body = frame[start:start + 4], frame[start + 4:]
        assert frame[0] == 0x81 and frame[1] & 0x80
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload


def test_refused_handshake_fails_the_open():
    async def scenario():
        protocol = WebSocketProtocol("h", 1, "/")

        class Transport:
            def close(self):
                pass
        protocol.transport = Transport()
        protocol.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(Exception, match="403"):
            await protocol.opened
    asyncio.run(scenario())


def test_http_parser_lengths_chunks_and_keep_alive():
    got = []
    protocol = HttpProtocol(lambda status, body, keep: got.append((status, body, keep)),
                            lambda: got.append("lost"))
    stream = (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
              b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
              b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n!")
    for i in range(0, len(stream), 5):
        protocol.data_received(stream[i:i + 5])
    assert got == [(200, b"hello\n", True), (404, b"abcde", True), (200, b"ok", False),
                   (200, b"!", False)]
    # A body without a length runs until the server closes.
    protocol.data_received(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    protocol.connection_lost(None)
    assert got[-2:] == [(200, b"until the end", False), "lost"]
    with pytest.raises(ResponseError):
        HttpProtocol(lambda *a: None, lambda: None).data_received(b"garbage\r\n\r\n")


# -- permessage-deflate and chat payloads (--compression, --payload, chat-bytes) ------------


def server_deflate(payload, compressor=None):
    """A message as a server compresses it (on its own, unless given its compressor),
    without the 4-byte tail."""
    compressor = compressor or zlib.compressobj(1, zlib.DEFLATED, -15, 8)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(wsclient.SYNC_TAIL)
    return data[:-4]


def server_frame(first_byte, payload):
    n = len(payload)
    length = bytes([n]) if n < 126 else b"\x7e" + struct.pack("!H", n)
    return bytes([first_byte]) + length + payload


class FakeTransport:
    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)

    def close(self):
        pass


def deflate_client(response_extensions):
    """A client that offered permessage-deflate, and what the server answered."""
    protocol = WebSocketProtocol("h", 1, "/", deflate=True)
    assert b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n" \
        in protocol.request
    protocol.transport = FakeTransport()
    got = []
    protocol.on_message = lambda opcode, payload: got.append((opcode, payload))
    header = f"Sec-WebSocket-Extensions: {response_extensions}\r\n" \
        if response_extensions is not None else ""
    protocol.data_received(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            f"{header}\r\n").encode())
    return protocol, got


def test_websocket_client_inflates_compressed_messages():
    async def scenario():
        protocol, got = deflate_client("permessage-deflate; server_no_context_takeover")
        assert protocol.opened.done() and protocol.deflate and protocol.inflater is None
        event = json.dumps({"type": "message", "user": "ann", "text": "hello " * 20}).encode()
        packed = server_deflate(event)
        half = len(packed) // 2
        stream = (server_frame(0x80 | wsclient.RSV1 | OP_TEXT, packed)  # compressed
                  + server_frame(0x81, b"plain")  # a message sent as is (RFC 7692 allows it)
                  # fragmented: RSV1 on the first frame only, a ping in between
                  + server_frame(wsclient.RSV1 | OP_TEXT, packed[:half])
                  + server_frame(0x89, b"hi") + server_frame(0x80, packed[half:]))
        for i in range(0, len(stream), 5):
            protocol.data_received(stream[i:i + 5])
        assert got == [(OP_TEXT, event), (OP_TEXT, b"plain"), (OP_TEXT, event)]
        assert protocol.bytes_in == len(stream)  # frames only, not the handshake
        assert protocol.transport.written == [masked_frame(0xA, b"hi")]
        assert protocol.bytes_out == len(masked_frame(0xA, b"hi"))
    asyncio.run(scenario())


def test_websocket_client_keeps_an_inflater_when_the_server_keeps_its_context():
    async def scenario():
        protocol, got = deflate_client("permessage-deflate")  # no server_no_context_takeover
        assert protocol.deflate and protocol.inflater is not None
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8)
        events = [f'{{"type": "message", "user": "bob", "text": "same words {i}"}}'.encode()
                  for i in range(3)]
        for event in events:  # later messages refer back to earlier ones
            protocol.data_received(server_frame(0xC1, server_deflate(event, compressor)))
        assert [payload for _, payload in got] == events
    asyncio.run(scenario())


def test_websocket_client_fails_unless_the_server_agrees_to_deflate():
    async def scenario():
        protocol, got = deflate_client(None)
        with pytest.raises(wsclient.HandshakeError, match="compression = true"):
            await protocol.opened
        # A server that compresses without having agreed: 1002.
        plain = WebSocketProtocol("h", 1, "/")
        plain.transport = FakeTransport()
        plain.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
                            + server_frame(0xC1, server_deflate(b"x" * 50)))
        assert plain.closed
        assert plain.transport.written == [masked_frame(0x8, struct.pack("!H", 1002))]
    asyncio.run(scenario())


def test_extension_params_of_a_response():
    headers = (b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: x-other, "
               b"permessage-deflate; Server_No_Context_Takeover; client_max_window_bits = 15")
    assert wsclient.extension_params(headers) == ["server_no_context_takeover",
                                                  "client_max_window_bits=15"]
    assert wsclient.extension_params(b"HTTP/1.1 101 OK\r\nUpgrade: websocket") is None


def test_deflated_frame_is_masked_with_rsv1_and_inflates_to_the_payload():
    payload = payloads.echo_chat("p0c1", 2, 150)
    frame = wsclient.deflated_frame(OP_TEXT, payload, mask=b"\x01\x02\x03\x04")
    assert frame[0] == 0x80 | wsclient.RSV1 | OP_TEXT and frame[1] & 0x80
    n = frame[1] & 0x7F
    body = bytes(b ^ frame[2 + i % 4] for i, b in enumerate(frame[6:]))
    assert len(body) == n < len(payload)
    assert wsclient.inflate(body) == payload
    assert wsclient.inflate(body) is wsclient.inflate(body)  # inflated once, then kept
    # Not worth compressing: sent plain, RSV1 clear.
    assert wsclient.deflated_frame(OP_TEXT, b"ok", b"\x01\x02\x03\x04") \
        == masked_frame(OP_TEXT, b"ok", b"\x01\x02\x03\x04")


def test_chat_payloads_are_sized_distinct_and_repeatable():
    for size in (60, 150, 400):
        made = {payloads.echo_chat(name, k, size) for name in ("p0c0", "p1c7") for k in range(4)}
        assert len(made) == 8
        for payload in made:
            assert len(payload) == size
            event = json.loads(payload)
            assert list(event) == ["type", "user", "text"] and event["type"] == "message"
    assert payloads.echo_chat("p0c0", 1, 150) == payloads.echo_chat("p0c0", 1, 150)
    assert len(payloads.echo_chat("p0c0", 1, 10)) > 10  # no smaller than the JSON around it
    text = payloads.broadcast_chat_text("B m0 7 12.500000", "m0", 7, 150)
    assert text.split(" ", 4)[:4] == ["B", "m0", "7", "12.500000"]
    assert abs(len(payloads.chat_event("m0", text).encode()) - 150) <= 12  # escapes
    assert payloads.page_message("hé") == '{"text":"hé"}'  # as JSON.stringify sends it
    assert all(0 < len(line) < 120 for line in payloads.LINES)


def test_echo_cycle_builds_each_frame_once_and_consecutive_ones_differ():
    class Agreed:
        deflate = True
    cycle = modes.echo_cycle(Agreed(), "p0c3", "chat", 150)
    assert len(cycle) == modes.ECHO_CYCLE
    assert len({payload for payload, _ in cycle}) == modes.ECHO_CYCLE
    assert all(frame[0] & wsclient.RSV1 for _, frame in cycle)
    Agreed.deflate = False
    [(payload, frame), *_] = modes.echo_cycle(Agreed(), "p0c3", "x", 32)
    assert payload == b"p0c3:0:" + b"x" * 25 and frame == masked_frame(OP_TEXT, payload)


def test_compression_options_and_what_the_report_says():
    parse = cli.build_parser().parse_args
    default = parse(["echo"])
    cli.check_wire_options(default)
    spec = cli.spec_for(default, "ws://h:1/ws/echo")
    assert spec["size"] == 32 and "compression" not in spec and "payload" not in spec
    assert cli.wire_description(default) is None
    assert cli.title("echo", default) == ("echo, 50 connections, 5 s, then 1 connection at "
                                          "<= 500/s, 5 s")
    both = parse(["echo", "--compression", "both", "--payload", "chat"])
    cli.check_wire_options(both)
    assert both.size == payloads.CHAT_BYTES
    assert cli.spec_for(both, "ws://h:1/ws/echo", True)["compression"] is True
    assert "permessage-deflate off, then on; chat-like JSON" in cli.title("echo", both)
    wire = cli.wire_description(both)
    assert "server_no_context_takeover" in wire["compression"] and "150" in wire["payload"]
    assert parse(["broadcast", "--compression"]).compression == "on"
    for refused in (["http", "--compression"], ["echo", "--compression", "--channels"]):
        with pytest.raises(SystemExit):
            cli.check_wire_options(parse(refused))
    text = report.header({"title": "t", "command": "c", "started": "s", "machine": {},
                          "wire": wire})
    assert "compression: off, then on: clients offer" in text


def test_compression_comparisons_pair_like_with_like_and_on_with_off():
    runs = []
    for r, (z, zd, t, td) in enumerate([(100.0, 90.0, 50.0, 40.0), (120.0, 100.0, 60.0, 50.0)]):
        for name, system, rate, deflate, bytes_in in (
                ("zchannels", "project", z, False, 150.0),
                ("zchannels +deflate", "project", zd, True, 120.0),
                ("raw Tornado", "baseline", t, False, 150.0),
                ("raw Tornado +deflate", "baseline", td, True, 121.0)):
            run = run_of(name, system, r, rate=rate, bytes_in_per_op=bytes_in)
            run.update(compression=deflate, plain_name=name.replace(" +deflate", ""))
            runs.append(run)
    compared = summary.comparisons("echo", runs)
    rate = {(c["system"], c["reference"]): c for c in compared if c["metric"] == "rate"}
    assert list(rate) == [("zchannels", "raw Tornado"),
                          ("zchannels +deflate", "raw Tornado +deflate"),
                          ("zchannels +deflate", "zchannels"),
                          ("raw Tornado +deflate", "raw Tornado")]
    assert rate[("zchannels +deflate", "raw Tornado +deflate")]["rounds"] == [2.25, 2.0]
    assert rate[("zchannels +deflate", "zchannels")]["rounds"] == [0.9, pytest.approx(100 / 120)]
    wire = {(c["system"], c["reference"]): c["ratio"] for c in compared
            if c["metric"] == "bytes_in_per_op"}
    assert wire[("zchannels +deflate", "zchannels")] == 0.8
    text = report.table("echo", summary.columns("echo", runs), compared)
    assert "bytes received per round trip" in text and "bytes in/op" in text


def test_bytes_rows_only_when_counted():
    runs = [run_of("zchannels", "project", 0, rate=1.0), run_of("raw Tornado", "baseline", 0,
                                                                rate=2.0)]
    columns = summary.columns("echo", runs)
    assert "bytes_in_per_op" not in columns[0]["median"]
    compared = summary.comparisons("echo", runs)
    assert not any(c["metric"] in report.WIRE for c in compared)
    text = report.table("echo", columns, compared)
    assert "bytes" not in text


def test_bytes_per_operation_add_up_across_processes():
    plain = {"counts": {"sent": 10, "received": 10}, "errors": [], "cpu_seconds": 0.1,
             "latency": latency_histogram().to_dict(), "wall_seconds": 1.0}
    counted = {**plain, "bytes_in": 1000, "bytes_out": 1200}
    figures = runner.aggregate("echo", {}, [counted, counted], [])
    assert figures["bytes_in_per_op"] == 100.0 and figures["bytes_out_per_message"] == 120.0
    assert "bytes_in_per_op" not in runner.aggregate("echo", {}, [plain, plain], [])


def test_chat_bytes_frames_and_the_context_a_server_could_keep():
    assert wirebytes.frame_bytes(125) == 127 and wirebytes.frame_bytes(126) == 130
    events = [payloads.chat_event("ann", line).encode() for line in payloads.LINES]
    alone = sum(wirebytes.frame_bytes(len(server_deflate(e))) for e in events)
    kept = wirebytes.with_context_bytes(events)
    assert kept < alone < sum(wirebytes.frame_bytes(len(e)) for e in events)
    assert wirebytes.member_names(12) == list(payloads.USERS) + ["ann2", "bob2"]
