"""The ``zchannels_live_server`` pytest fixture (runtime/testing/plugin.py) as a project's
tests use it: a pytest run of its own, in a subprocess, from the repository root (the
project: conf/zchannels.toml, the demo consumers). Its test talks HTTP and WebSocket to
the live server and writes down the server's PIDs and run directory; once that run has
ended, none of those processes is alive and the run directory is gone -- also when the
test failed, whose report then carries the processes' logs."""
import json
import os
import subprocess
import sys

from harness import ROOT, TEST_CONSUMERS, assert_nothing_left

PYTEST_TIMEOUT = 120  # seconds for the inner pytest run

RECORDING = '''
import json, os

def record(server):
    with open(os.environ["LIVE_RECORD"], "w") as f:
        json.dump({"run_dir": server.run_dir, "url": server.url,
                   "pids": [proc.pid for proc in server.processes.values()]}, f)
'''

PASSING = RECORDING + '''
import asyncio
import urllib.request

from tornado.websocket import websocket_connect


def test_talks_to_the_live_server(zchannels_live_server):
    record(zchannels_live_server)

    async def echo(text):
        ws = await websocket_connect(zchannels_live_server.ws_url + "/ws/echo")
        ws.write_message(text)
        return await asyncio.wait_for(ws.read_message(), timeout=10)

    assert asyncio.run(echo("hi")) == "hi"
    with urllib.request.urlopen(zchannels_live_server.url + "/hello", timeout=10) as response:
        assert response.read() == b"hello\\n"
    assert set(zchannels_live_server.processes) == {"broker", "worker-default-0", "interface-0"}
'''

FAILING = RECORDING + '''
import asyncio

import pytest
from tornado.websocket import websocket_connect


@pytest.fixture
def zchannels_live_server_options():
    return {"consumers": ["consumers", CONSUMERS], "workers": 2}


def test_fails_after_a_consumer_raised(zchannels_live_server):
    record(zchannels_live_server)

    async def boom():
        ws = await websocket_connect(zchannels_live_server.ws_url + "/test/fail")
        ws.write_message("boom")
        return await asyncio.wait_for(ws.read_message(), timeout=10)

    assert asyncio.run(boom()) == "the consumer's answer"  # it closed (1011) instead
'''


def run_pytest(tmp_path, source):
    """pytest on `source` (a test module) from the repository root: (its output, what
    its test recorded)."""
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(source)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    record = tmp_path / "record.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(test_file)],
        cwd=ROOT, env=dict(os.environ, LIVE_RECORD=str(record)), capture_output=True,
        text=True, timeout=PYTEST_TIMEOUT)
    with open(record) as f:
        return result, json.load(f)


def test_the_fixture_serves_http_and_websocket_and_leaves_nothing_behind(tmp_path):
    result, recorded = run_pytest(tmp_path, PASSING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert recorded["url"].startswith("http://127.0.0.1:") and not recorded["url"].endswith(":0")
    assert_nothing_left(recorded)


def test_a_failed_test_reports_the_processes_logs_and_leaves_nothing_behind(tmp_path):
    source = FAILING.replace("CONSUMERS", repr(TEST_CONSUMERS))
    result, recorded = run_pytest(tmp_path, source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    report = result.stdout[result.stdout.index("zchannels live server logs"):]
    assert "--- worker-default-" in report
    assert "ConsumerBoom: boom requested by the test" in report  # the worker's traceback
    assert_nothing_left(recorded)
