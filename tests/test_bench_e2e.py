"""scripts/bench end to end: each mode, briefly and lightly, against a real system (and
the http mode against its gunicorn baseline). The counts must add up; speed is never
asserted."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from harness import ROOT

pytestmark = pytest.mark.e2e

BENCH_TIMEOUT = 120  # seconds for one bench command


def bench(results_dir, *args, check=True):
    """Run ``python -m runtime.bench`` as a user would; its JSON document and output."""
    cmd = [sys.executable, "-m", "runtime.bench", *args, "--results-dir", str(results_dir),
           "--progress", "off", "--processes", "2", "--drain", "5"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    [name] = [n for n in os.listdir(results_dir) if n.endswith(".json")]
    with open(os.path.join(results_dir, name)) as f:
        return json.load(f), done


def system_args(system):
    return ["--url", f"http://127.0.0.1:{system.port}", "--run-dir", system.run_dir]


def test_echo_with_baseline_every_echo_matched(system, tmp_path):
    document, done = bench(tmp_path, "echo", *system_args(system), "--duration", "1",
                           "-c", "6", "--baseline")
    project, base = document["runs"]
    assert (project["system"], base["system"]) == ("project", "baseline")
    for run in (project, base):
        f = run["figures"]
        assert f["opened"] == 6
        assert f["sent"] > 0
        assert f["sent"] == f["received"] + f["lost"] + f["mismatched"]
        assert f["mismatched"] == 0 and f["lost"] == 0
        assert f["latency"]["count"] == f["received"]
        assert 0 < f["latency"]["p50"] <= f["latency"]["p99"] <= f["latency"]["max"]
        assert f["client_processes"] == 2
    # Every zchannels process was found and measured.
    assert project["figures"]["server_processes"] == len(system.processes)
    rate = [c for c in document["comparisons"] if c["metric"] == "rate"][0]
    assert rate["ratio"] == pytest.approx(project["figures"]["rate"] / base["figures"]["rate"])
    assert "round trips/s" in done.stdout and "raw Tornado" in done.stdout
    assert document["command"].startswith("scripts/bench echo")
    assert document["machine"]["cpus"] and document["versions"]["tornado"]
    png = [n for n in os.listdir(tmp_path) if n.endswith(".png")]
    try:
        import matplotlib  # noqa: F401
        assert len(png) == 1
    except ImportError:  # the plot is an optional extra; the rest is still written
        assert png == [] and "matplotlib is not installed" in done.stderr


@pytest.mark.parametrize("rate", ["20", "0"], ids=["fixed-rate", "flood"])
def test_broadcast_every_member_gets_every_message(system, tmp_path, rate):
    document, done = bench(tmp_path, "broadcast", *system_args(system), "--duration", "1",
                           "--subscribers", "12", "--publishers", "2", "--rate", rate,
                           "--window", "3", "--quiet", "0.5", "--no-plot")
    [run] = document["runs"]
    f = run["figures"]
    assert f["opened"] == f["members"] == 12
    assert f["published"] > 0
    assert f["expected"] == f["published"] * 12
    assert f["received"] + f["lost"] == f["expected"]
    assert f["lost"] == 0 and f["members_with_loss"] == 0
    assert f["duplicated_or_reordered"] == 0
    assert f["latency"]["count"] == f["received"]
    if rate == "20":  # 20 msg/s for 1 s, started on the beat: about 20
        assert 10 <= f["published"] <= 30
    assert not system.unexpected_errors()


def test_idle_measures_memory_of_every_server_process(system, tmp_path):
    document, done = bench(tmp_path, "idle", *system_args(system), "-c", "40", "--no-plot")
    [run] = document["runs"]
    f = run["figures"]
    assert f["opened"] == 40
    assert f["sent"] == f["received"] == 40  # each connection proved open with one echo
    assert f["server_processes"] == len(system.processes)
    assert f["rss_before"] > 0 and f["rss_after"] > 0
    assert f["rss_per_connection"] == pytest.approx(
        (f["rss_after"] - f["rss_before"]) / 40)


def test_idle_without_a_server_process_says_so(tmp_path):
    empty = tempfile.mkdtemp(dir=tmp_path)
    done = subprocess.run([sys.executable, "-m", "runtime.bench", "idle", "--run-dir", empty,
                           "--url", "http://127.0.0.1:9"], cwd=ROOT, capture_output=True,
                          text=True, timeout=BENCH_TIMEOUT)
    assert done.returncode == 2
    assert "no running zchannels process" in done.stderr


@pytest.fixture(scope="module")
def gunicorn():
    from runtime.bench.baseline import start_gunicorn
    server = start_gunicorn(tempfile.mkdtemp(prefix="zcg"), workers=2)
    yield server
    server.stop()


def test_http_against_the_gunicorn_baseline(gunicorn, tmp_path):
    document, done = bench(tmp_path, "http", "--url", f"http://{gunicorn.base}/app/hello",
                           "--server-pid", str(gunicorn.proc.pid), "-c", "4",
                           "--duration", "1", "--no-plot")
    [run] = document["runs"]
    f = run["figures"]
    assert f["opened"] == 4
    assert f["received"] > 0 and f["bad_status"] == 0
    assert f["sent"] == f["received"] + f["bad_status"] + f["lost"]
    assert f["latency"]["count"] == f["received"]
    assert f["server_processes"] == 3  # gunicorn's master and its 2 workers
    # gunicorn's sync workers close the connection after each response: reconnected.
    assert f["reconnects"] >= f["received"] - 4


def test_http_non_200_counts_as_an_error(gunicorn, tmp_path):
    document, done = bench(tmp_path, "http", "--url", f"http://{gunicorn.base}/missing",
                           "-c", "2", "--duration", "0.5", "--no-plot", check=False)
    assert done.returncode == 1
    f = document["runs"][0]["figures"]
    assert f["received"] == 0 and f["bad_status"] > 0
    assert f["sent"] == f["bad_status"] + f["lost"]
    assert "HTTP 404" in done.stdout
