"""The operator's view on a real system: the Prometheus endpoint (parsed with
prometheus_client's own parser, its counts matching the load sent), who may read
it, the Grafana dashboard's expressions, and ``zchannels status``."""
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import ROOT, checked_system, http_request, read, run, wait_until

pytestmark = pytest.mark.e2e

METRICS = "/_zchannels/metrics"
TOKEN = "metrics-token-for-the-test-5d2a9c71e08b"
WAIT = 10.0  # seconds for the stats files (stats_interval 0.2 s) to show the load


@pytest.fixture(scope="module")
def system():
    with checked_system() as running:
        yield running


def scrape(port, headers=None, source=None):
    """GET the metrics, from `source` (an address of this host) if given:
    (status, body text)."""
    if source is None:
        status, _, body = http_request(port, "GET", METRICS, headers=headers)
        return status, body.decode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    try:
        sock.sendall(f"GET {METRICS} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Connection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    finally:
        sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def families(port):
    status, text = scrape(port)
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(found, sample_name, **labels):
    """The sum of the samples called `sample_name` whose labels include `labels`."""
    family_name = re.sub(r"(_total|_bucket|_count|_sum)$", "", sample_name)
    total = 0.0
    for name in (sample_name, family_name):
        for sample in getattr(found.get(name), "samples", ()):
            if sample.name == sample_name and labels.items() <= sample.labels.items():
                total += sample.value
        if name == family_name == sample_name:
            break
    return total


RECEIVES = ("zchannels_events_sent_total", {"channel": "websocket.receive"})


def test_the_counts_match_the_load_sent(system):
    """5 WebSockets, 7 echo messages each: the receive counter moves by exactly 35,
    the open-WebSocket gauge shows 5 while they are open, the latency histogram
    counts the 5 connects and 35 receives; then the gauge goes back."""
    before = families(system.port)
    receives = value(before, RECEIVES[0], **RECEIVES[1])
    latency = value(before, "zchannels_event_latency_seconds_count")
    ran_before = value(before, "zchannels_events_total", role="worker-default")

    def shows(expected_sockets, expected_receives, expected_latency):
        found = families(system.port)
        now = (value(found, "zchannels_websockets"), value(found, RECEIVES[0], **RECEIVES[1]),
               value(found, "zchannels_event_latency_seconds_count"))
        # Each process writes its file on its own clock: the workers' too.
        ran = value(found, "zchannels_events_total", role="worker-default")
        return found if now == (expected_sockets, expected_receives, expected_latency) \
            and ran >= ran_before + 40 else None

    async def scenario():
        sockets = [await system.connect("/ws/echo") for _ in range(5)]
        for n in range(7):
            for i, ws in enumerate(sockets):
                ws.write_message(f"{i}-{n}")
                assert await read(ws) == f"{i}-{n}"
        found = await asyncio.to_thread(wait_until, lambda: shows(5, receives + 35,
                                                                  latency + 40),
                                        WAIT, "the metrics to show the load")
        for ws in sockets:
            ws.close()
        return found

    found = run(scenario())
    # Every process of the system, labelled by role and process.
    roles = {s.labels["role"]: s.value for s in found["zchannels_processes"].samples}
    assert roles == {"interface": 2, "broker": 1, "worker-default": 2}
    processes = {s.labels["process"] for s in found["zchannels_zmq_sent"].samples}
    assert processes == {str(p.pid) for p in system.processes.values()}
    # The workers ran them; the broker dispatched them to the pool.
    assert value(found, "zchannels_pool_dispatched_total", pool="default") >= 40 + ran_before
    assert value(found, "zchannels_pool_free_workers", pool="default") \
        + value(found, "zchannels_pool_busy_workers", pool="default") == 2
    assert value(found, "zchannels_pool_capacity", pool="default") == 1000
    assert "zchannels_pool_queue_depth" in found
    # The histogram is cumulative and ends at +Inf with the count.
    interface = str(system.processes["interface-0"].pid)
    buckets = [s for s in found["zchannels_event_latency_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["process"] == interface]
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)
    assert buckets[-1].labels["le"] == "+Inf"
    # The headline families exist with their kinds even when nothing was refused.
    kinds = {s.labels["kind"] for s in found["zchannels_refusals"].samples}
    assert {"pool_full", "max_connections", "rate_limited", "channel_full"} <= kinds
    losses = {s.labels["kind"] for s in found["zchannels_losses"].samples}
    assert {"after_redelivery", "replies", "at_stop"} <= losses
    assert value(found, "zchannels_consumer_errors_total") == 0
    wait_until(lambda: value(families(system.port), "zchannels_websockets") == 0, WAIT,
               "the open-WebSocket gauge to go back to 0")


def test_refusals_count_by_kind(system):
    """A consumer error and a refused Origin show up: the error as itself, the
    Origin under refusals by kind."""
    async def scenario():
        ws = await system.connect("/test/fail")
        ws.write_message("boom")
        assert await read(ws) is None  # closed with 1011 "consumer failed"
        assert ws.close_code == 1011
    before = families(system.port)
    errors = value(before, "zchannels_consumer_errors_total")
    origin = value(before, "zchannels_refusals_total", kind="origin")
    system.expect_error("boom requested by the test")
    status, _, _ = http_request(system.port, "GET", "/ws/echo", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "http://elsewhere.example"})
    assert status == 403
    run(scenario(), timeout=10)
    wait_until(lambda: (value(f := families(system.port), "zchannels_refusals_total",
                              kind="origin") == origin + 1
                        and value(f, "zchannels_consumer_errors_total") > errors),
               WAIT, "the refusal and the consumer error in the metrics")


def test_a_forwarded_request_needs_the_token(system):
    status, text = scrape(system.port, headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 403 and "forwarded" in text
    assert "metrics refused to 127.0.0.1: forwarded" in system.all_logs()


def test_the_grafana_dashboard_uses_only_exported_metrics(system):
    with open(os.path.join(ROOT, "docs", "grafana-dashboard.json")) as f:
        dashboard = json.load(f)
    expressions = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                expressions.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)
    walk(dashboard)
    assert len(expressions) >= 8
    found = families(system.port)
    exported = set(found) | {s.name for f in found.values() for s in f.samples}
    used = {name for expr in expressions for name in re.findall(r"\bzchannels_\w+", expr)}
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def status_command(system, *args):
    return subprocess.run([sys.executable, "-m", "zchannels", "status", *args], cwd=ROOT,
                          env=system.env, capture_output=True, text=True, timeout=30)


def test_status_lists_every_process_with_its_role(system):
    result = status_command(system)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name, proc in system.processes.items():
        role = system.role_of(name)
        assert any(line.split()[:3] == [role, str(proc.pid), str(proc.pid)] for line in lines), \
            f"{name} ({role}, pid {proc.pid}) missing:\n{result.stdout}"
    assert re.search(r"^pool +default: depth \d+", result.stdout, re.MULTILINE)
    assert "events/s" in result.stdout and "websockets" in result.stdout


def test_status_watch_redraws_and_stops(system):
    result = status_command(system, "--watch", "0.3", "--count", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("zchannels status") == 2
    result = status_command(system, "--watch", "0")
    assert result.returncode == 2 and "--watch must be" in result.stderr


def test_status_watch_ends_cleanly_on_ctrl_c(system):
    proc = subprocess.Popen([sys.executable, "-m", "zchannels", "status", "--watch", "0.3"],
                            cwd=ROOT, env=system.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0 and err == "", err
    assert out.count("zchannels status") >= 2


def test_status_says_when_nothing_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "zchannels", "status"], cwd=ROOT,
                            env={**os.environ, "ZCHANNELS_RUN_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no running zchannels process" in result.stdout


@pytest.fixture(scope="module")
def guarded():
    """A second, small system whose metrics need a token, and whose dashboard is off."""
    with checked_system(workers=1, interfaces=1,
                        server={"metrics_token": TOKEN}) as running:
        yield running


def test_the_token_is_required_when_set(guarded):
    port = guarded.port
    assert scrape(port)[0] == 401
    assert scrape(port, headers={"Authorization": "Bearer wrong"})[0] == 403
    status, text = scrape(port, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert any(f.name == "zchannels_processes" for f in text_string_to_metric_families(text))
    logs = guarded.all_logs()
    assert "metrics refused to 127.0.0.1: missing bearer token" in logs
    assert "metrics refused to 127.0.0.1: wrong token" in logs


def test_an_address_outside_metrics_allow_is_refused(guarded):
    """127.0.0.2 is this host too, but not in the default allow-list (127.0.0.1, ::1)."""
    status, text = scrape(guarded.port, source="127.0.0.2")
    assert status == 403, text
    assert "127.0.0.2 is not in metrics_allow" in text
    assert "metrics refused to 127.0.0.2" in guarded.all_logs()


def test_with_no_dashboard_token_its_path_goes_to_the_consumers(guarded):
    status, _, body = http_request(guarded.port, "GET", "/_zchannels/dashboard")
    assert status == 404, body  # the demo WSGI application's answer, not a 403
    assert b"403" not in body
