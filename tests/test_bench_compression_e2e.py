"""scripts/bench with permessage-deflate, end to end and briefly, against a real system with
compression = true (and raw Tornado with its own): every answer right, the clients
really compressed, the bytes counted. Speed is never asserted."""
import subprocess
import sys

import pytest

from harness import ROOT, checked_system, bench_env
from test_bench_e2e import BENCH_TIMEOUT, bench, system_args

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deflating():
    with checked_system(server={"compression": True, "stats_interval": 0.2}) as running:
        yield running


def test_echo_on_and_off_with_the_baseline(deflating, tmp_path):
    document, done = bench(tmp_path, "echo", *system_args(deflating), "--duration", "1",
                           "-c", "4", "--baseline", "--rounds", "1", "--compression", "both",
                           "--payload", "chat", "--no-plot")
    runs = {run["name"]: run for run in document["runs"]}
    assert list(runs) == ["zchannels", "zchannels +deflate", "raw Tornado",
                          "raw Tornado +deflate"]
    for name, run in runs.items():
        f = run["figures"]
        assert run["compression"] == name.endswith("+deflate")
        assert run["spec"].get("compression", False) == run["compression"]
        assert f["received"] > 0 and f["mismatched"] == f["lost"] == 0, name
        assert f["single"]["received"] > 0 and f["single"]["mismatched"] == 0, name
        assert f["bytes_in_per_op"] > 0 and f["bytes_out_per_message"] > 0
    plain, deflated = runs["zchannels"]["figures"], runs["zchannels +deflate"]["figures"]
    # Chat events of at most 150 bytes: 4-byte frame headers, and 4 more for the mask.
    assert plain["bytes_in_per_op"] == pytest.approx(plain["bytes_out_per_message"] - 4)
    assert 140 < plain["bytes_in_per_op"] <= 154
    assert deflated["bytes_in_per_op"] < 140 and deflated["bytes_out_per_message"] < 140
    # Stock Tornado keeps a context per connection (it cannot read the client's
    # server_no_context_takeover): the same four messages again and again shrink to
    # almost nothing. zchannels compresses each on its own, for every member at once.
    tornado = runs["raw Tornado +deflate"]["figures"]["bytes_in_per_op"]
    assert tornado < deflated["bytes_in_per_op"]
    pairs = [(c["system"], c["reference"]) for c in document["comparisons"]
             if c["metric"] == "rate"]
    assert pairs == [("zchannels", "raw Tornado"), ("zchannels +deflate", "raw Tornado +deflate"),
                     ("zchannels +deflate", "zchannels"),
                     ("raw Tornado +deflate", "raw Tornado")]
    assert "compression: off, then on" in done.stdout
    assert "payload: chat-like JSON of about 150 bytes" in done.stdout
    assert "bytes received per round trip" in done.stdout


def test_broadcast_with_compression_every_member_gets_every_message(deflating, tmp_path):
    document, done = bench(tmp_path, "broadcast", *system_args(deflating), "--duration", "1",
                           "--subscribers", "12", "--rate", "20", "--quiet", "0.5",
                           "--compression", "--payload", "chat", "--no-plot")
    [run] = document["runs"]
    f = run["figures"]
    assert run["name"] == "zchannels +deflate"
    assert f["published"] > 0 and f["received"] == f["expected"] == f["published"] * 12
    assert f["lost"] == f["duplicated_or_reordered"] == 0
    assert 0 < f["bytes_in_per_op"] < 150  # compressed chat events
    assert not deflating.unexpected_errors()


def test_chat_bytes_on_and_off(deflating, tmp_path):
    document, done = bench(tmp_path, "chat-bytes", *system_args(deflating), "-c", "3",
                           "--messages", "30", "--baseline", "--rounds", "1")
    figures = {run["name"]: run["figures"] for run in document["runs"]}
    assert list(figures) == ["zchannels", "zchannels +deflate", "raw Tornado",
                             "raw Tornado +deflate"]
    for name, f in figures.items():
        assert f["delivered"] == f["expected"] == 90 and f["mismatched"] == 0, name
        assert f["agreed"] == name.endswith("+deflate")
    on, off = figures["zchannels +deflate"], figures["zchannels"]
    assert on["bytes_in_per_delivery"] < off["bytes_in_per_delivery"]
    assert on["json_bytes_per_message"] == off["json_bytes_per_message"]  # the same lines
    # Stock Tornado's context per connection: fewer bytes, compressed once per member.
    assert figures["raw Tornado +deflate"]["bytes_in_per_delivery"] \
        < on["bytes_in_per_delivery"]
    assert "zchannels: on / off, bytes received 0." in done.stdout


def test_compression_against_a_server_without_it_says_what_to_do(system, tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchkit", "echo", "--compression",
                           *system_args(system)], cwd=ROOT, env=bench_env(), capture_output=True, text=True,
                          timeout=BENCH_TIMEOUT)
    assert done.returncode == 2
    assert "compression = true" in done.stderr and "ZCHANNELS_CONFIG" in done.stderr
