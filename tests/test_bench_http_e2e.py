"""scripts/bench http end to end against zchannels: the HTTP consumer (GET /hello) and
the WSGI fallback (GET /app/hello, consumers/demo_wsgi.py), each beside its baseline
(raw Tornado; gunicorn with 2 workers)."""
import pytest

from harness import DEMO_CONSUMERS, TEST_CONSUMERS, checked_system
from test_bench_e2e import bench

pytestmark = pytest.mark.e2e


def test_http_consumer_and_wsgi_fallback_with_baselines(tmp_path):
    with checked_system(consumers=(DEMO_CONSUMERS, TEST_CONSUMERS),
                        server={"wsgi_app": "demo_wsgi:application"}) as system:
        document, done = bench(tmp_path, "http", "--url", f"http://127.0.0.1:{system.port}",
                               "--run-dir", system.run_dir, "-c", "4", "--duration", "1",
                               "--baseline", "--rounds", "1", "--no-plot",
                               "--http-workers", "2")
    names = [run["name"] for run in document["runs"]]
    assert names == ["zchannels /hello", "raw Tornado", "zchannels /app/hello",
                     "gunicorn (2 workers)"]
    for run in document["runs"]:
        # The throughput run with 4 connections, then the latency run with 1.
        for f, connections in ((run["figures"], 4), (run["figures"]["single"], 1)):
            assert f["opened"] == connections, run["name"]
            assert f["received"] > 0 and f["bad_status"] == 0, (run["name"], f["errors"])
            assert f["sent"] == f["received"] + f["bad_status"] + f["lost"]
            assert f["latency"]["count"] == f["received"]
            assert f["cpu_per_op"] > 0
    ratios = {(c["system"], c["reference"], c["metric"]): c["ratio"]
              for c in document["comparisons"]}
    assert ratios[("zchannels /hello", "raw Tornado", "rate")] > 0
    assert ratios[("zchannels /app/hello", "gunicorn (2 workers)", "rate")] > 0
    assert ratios[("zchannels /hello", "raw Tornado", "cpu_per_op")] > 0
    assert "server CPU per request (µs)" in done.stdout
    assert "ZeroMQ messages per request" in done.stdout
