"""scripts/bench end to end: each mode, briefly and lightly, against a real system (and
the http mode against its gunicorn baseline). The counts must add up; speed is never
asserted."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from harness import ROOT, bench_env
from benchkit import channels

pytestmark = pytest.mark.e2e

BENCH_TIMEOUT = 120  # seconds for one bench command


def bench(results_dir, *args, check=True):
    """Run ``python -m benchkit`` as a user would; its JSON document and output."""
    cmd = [sys.executable, "-m", "benchkit", *args, "--results-dir", str(results_dir),
           "--progress", "off", "--processes", "2", "--drain", "5"]
    done = subprocess.run(cmd, cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=BENCH_TIMEOUT)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    [name] = [n for n in os.listdir(results_dir) if n.endswith(".json")]
    with open(os.path.join(results_dir, name)) as f:
        return json.load(f), done


def system_args(system):
    return ["--url", f"http://127.0.0.1:{system.port}", "--run-dir", system.run_dir]


def test_echo_with_baseline_every_echo_matched(system, tmp_path):
    document, done = bench(tmp_path, "echo", *system_args(system), "--duration", "1",
                           "-c", "6", "--baseline", "--rounds", "2")
    runs = document["runs"]
    # The systems alternate, round after round.
    assert [(r["system"], r["round"]) for r in runs] == [
        ("project", 0), ("baseline", 0), ("project", 1), ("baseline", 1)]
    for run in runs:
        # The throughput run with 6 connections, then the latency run with 1.
        for f, connections in ((run["figures"], 6), (run["figures"]["single"], 1)):
            assert f["opened"] == connections
            assert f["sent"] > 0
            assert f["sent"] == f["received"] + f["lost"] + f["mismatched"]
            assert f["mismatched"] == 0 and f["lost"] == 0
            assert f["latency"]["count"] == f["received"]
            assert 0 < f["latency"]["p50"] <= f["latency"]["p99"] <= f["latency"]["max"]
            assert f["cpu_per_op"] > 0
            assert f["ctx_per_op"] > 0  # every thread of every server process, from /proc
        assert run["figures"]["client_processes"] == 2
        assert run["figures"]["single"]["client_processes"] == 1
    project, base = runs[0]["figures"], runs[1]["figures"]
    # Every zchannels process was found and measured, whatever its role.
    assert project["server_processes"] == len(system.processes)
    assert len(project["zmq_sent_by_process"]) == len(system.processes)
    counting = all(p["after"] is not None for p in project["zmq_sent_by_process"])
    if counting:  # once every process counts zmq_sent, an echo costs some messages
        assert all(run["figures"]["zmq_per_op"] > 0 for run in runs[::2])
    else:  # until then: no figure, and a note that says why
        assert project["zmq_per_op"] is None
        assert "ZeroMQ messages per operation not measured" in done.stdout
    assert "zmq_per_op" not in base  # no ZeroMQ in raw Tornado
    rate = [c for c in document["comparisons"] if c["metric"] == "rate"][0]
    assert (rate["system"], rate["reference"]) == ("zchannels", "raw Tornado")
    assert rate["rounds"] == [pytest.approx(runs[i]["figures"]["rate"]
                                            / runs[i + 1]["figures"]["rate"]) for i in (0, 2)]
    assert rate["ratio"] == pytest.approx(sum(rate["rounds"]) / 2)
    switches = [c for c in document["comparisons"] if c["metric"] == "ctx_per_op"][0]
    assert switches["ratio"] > 0 and not switches["higher_is_better"]
    assert "round trips/s" in done.stdout and "raw Tornado" in done.stdout
    header = done.stdout.splitlines()
    for label in ("server CPU per round trip (µs)", "context switches per round trip",
                  "ZeroMQ messages per round trip",
                  "1 connection: RTT p50 (ms)", "1 connection: RTT p99 (ms)"):
        [row] = [line for line in header if line.startswith(label)]
        cells = row[len(label):].split()
        assert len(cells) == 2, row  # zchannels, raw Tornado
        if label.startswith("ZeroMQ"):
            assert cells[1] == "-" and (cells[0] != "-") == counting
        else:
            assert "-" not in cells, row
    assert header[1].startswith("command: scripts/bench echo")
    assert header[2].startswith("date:") and header[3].startswith("machine:")
    assert document["command"].startswith("scripts/bench echo")
    assert document["machine"]["cpus"] and document["versions"]["tornado"]
    assert len(document["loadavg_before"]) == len(document["loadavg_after"]) == 3
    assert [c["name"] for c in document["columns"]] == ["zchannels", "raw Tornado"]
    png = [n for n in os.listdir(tmp_path) if n.endswith(".png")]
    try:
        import matplotlib  # noqa: F401
        assert len(png) == 1
    except ImportError:  # the plot is an optional extra; the rest is still written
        assert png == [] and "matplotlib is not installed" in done.stderr


def test_channels_without_its_packages_says_how_to_install(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchkit", "echo", "--channels",
                           "--channels-venv", str(tmp_path / "none"), "--url",
                           "http://127.0.0.1:9"], cwd=ROOT, env=bench_env(), capture_output=True, text=True,
                          timeout=BENCH_TIMEOUT)
    assert done.returncode == 2
    assert "scripts/bench-channels --install" in done.stderr


def test_channels_in_the_same_rounds(system, tmp_path):
    # scripts/test installs it (scripts/bootstrap test, as root): a comparison that is not
    # run is not counted as passing.
    assert channels.missing(channels.DEFAULT_VENV) == [], \
        "Channels 4 is not installed: scripts/bench-channels --install"
    document, done = bench(tmp_path, "echo", *system_args(system), "--duration", "0.5",
                           "-c", "2", "--channels", "--rounds", "1", "--no-latency",
                           "--no-plot")
    assert [r["name"] for r in document["runs"]] == ["zchannels", "Channels 4 async",
                                                     "Channels 4 sync"]
    for run in document["runs"]:
        f = run["figures"]
        assert f["received"] > 0 and f["lost"] == f["mismatched"] == 0, run["name"]
    daphne = document["runs"][1]["figures"]
    assert daphne["server_processes"] == 2  # Daphne and Redis
    pairs = {(c["system"], c["reference"]) for c in document["comparisons"]}
    assert pairs == {("zchannels", "Channels 4 async"), ("Channels 4 sync", "Channels 4 async")}
    assert "Channels 4 sync vs Channels 4 async" in done.stdout


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
    assert f["ctx_per_op"] > 0
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
    done = subprocess.run([sys.executable, "-m", "benchkit", "idle", "--run-dir", empty,
                           "--url", "http://127.0.0.1:9"], cwd=ROOT, env=bench_env(), capture_output=True,
                          text=True, timeout=BENCH_TIMEOUT)
    assert done.returncode == 2
    assert "no running zchannels process" in done.stderr


@pytest.fixture(scope="module")
def gunicorn():
    from benchkit.baseline import start_gunicorn
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
