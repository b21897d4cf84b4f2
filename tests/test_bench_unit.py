"""The bench's pure logic: percentiles, adding up client counts, the report, the
clients' parsers (fed bytes directly, no sockets)."""
import asyncio
import json
import math
import random
import struct

import pytest

from runtime.bench import cli, report, runner
from runtime.bench.histogram import GROWTH, Histogram
from runtime.bench.httpclient import HttpProtocol, ResponseError
from runtime.bench.client import share
from runtime.bench.wsclient import OP_TEXT, WebSocketProtocol, masked_frame


def exact_percentile(values, p):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_percentiles_within_one_percent_of_the_exact_value():
    rng = random.Random(4)
    values = [rng.lognormvariate(-7, 1.5) for _ in range(20000)]
    h = Histogram()
    for v in values:
        h.record(v)
    for p in (1, 50, 90, 99, 99.9):
        assert h.percentile(p) == pytest.approx(exact_percentile(values, p), rel=GROWTH - 1)
    assert h.percentile(100) == max(values)
    assert h.max == max(values) and h.min == min(values)
    assert h.count == len(values)
    assert h.mean() == pytest.approx(sum(values) / len(values))


def test_percentile_edges():
    h = Histogram()
    assert h.percentile(50) is None and h.mean() is None
    assert h.summary()["max"] is None
    h.record(0.005)
    assert h.percentile(1) == h.percentile(100) == 0.005  # clamped to the only sample
    h.record(0.0)  # at or below a microsecond: bucket 0
    assert h.percentile(50) == 0.0
    with pytest.raises(ValueError):
        h.percentile(0)
    with pytest.raises(ValueError):
        h.percentile(101)


def test_merged_histograms_equal_one_histogram_of_everything():
    rng = random.Random(7)
    parts = [[rng.uniform(0.0001, 0.2) for _ in range(1000)] for _ in range(3)]
    whole, merged = Histogram(), Histogram()
    for part in parts:
        h = Histogram()
        for v in part:
            h.record(v)
            whole.record(v)
        # Client processes send their histograms as JSON-able dicts.
        merged.merge(Histogram.from_dict(json.loads(json.dumps(h.to_dict()))))
    assert merged.buckets == whole.buckets
    assert merged.count == whole.count == 3000
    assert merged.summary() == pytest.approx(whole.summary())
    xs, ys = merged.cdf_points()
    assert xs == sorted(xs) and ys[-1] == 1.0


def test_share_splits_every_item_once():
    for total in (0, 1, 7, 1000):
        for processes in (1, 2, 3, 8):
            assert sum(share(total, i, processes) for i in range(processes)) == total


def result(counts, latencies=(), cpu=0.5, wall=2.0, **extra):
    h = Histogram()
    for v in latencies:
        h.record(v)
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
    lines = report.table("idle", [run], []).splitlines()
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


def test_comparisons_and_table():
    project = {"name": "zchannels", "system": "project",
               "figures": {"rate": 500.0, "latency": {"p50": 0.002}, "opened": 50,
                           "warnings": ["something odd"]}}
    base = {"name": "raw Tornado", "system": "baseline",
            "figures": {"rate": 1000.0, "latency": {"p50": 0.001}, "opened": 50}}
    rows = report.comparisons("echo", [(project, base)])
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["rate"]["ratio"] == 0.5
    assert by_metric["latency.p50"]["ratio"] == 2.0
    assert by_metric["latency.p99"]["ratio"] is None  # missing figures give no ratio
    text = report.table("echo", [project, base], rows)
    assert "round trips/s" in text and "1,000" in text and "0.50x" in text
    assert "WARNING (zchannels): something odd" in text
    # Wrong answers void the comparison: a fast 404 is no result.
    project["figures"]["bad_status"] = 3
    assert all(row["ratio"] is None for row in report.comparisons("echo", [(project, base)]))


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
