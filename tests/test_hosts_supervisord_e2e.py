"""Each host starts with one command: `scripts/run` with ZCHANNELS_ROLE, in its own
network namespace (tests/hosts.py), its own supervisord, run directory and keys. The
layer host's supervisord runs the broker only, the app host's the interfaces and the
workers, and an echo crosses between them over tcp:// with CURVE."""
import os
import shutil
import signal
import subprocess
import tempfile

import pytest
from tornado.websocket import websocket_connect

from harness import ROOT, read, run, wait_until
from hosts import Layout, Network, free_port, make_keys

pytestmark = pytest.mark.e2e

START_TIMEOUT = 60  # seconds for a supervisord to start its programs (bootstrap included)
STOP_TIMEOUT = 15  # seconds for a supervisord to stop them (their stopwaitsecs add up to 9)


def ready(run_dir, role):
    names = os.listdir(os.path.join(run_dir, "ready")) \
        if os.path.isdir(os.path.join(run_dir, "ready")) else []
    return [name for name in names if name.startswith(role + ".") and "tmp" not in name]


def started_pids(run_dir):
    """The PIDs of the processes a supervisord started (their ready files)."""
    return [int(name.rsplit(".", 1)[1]) for name in ready(run_dir, "")
            if name.rsplit(".", 1)[1].isdigit()]


def test_each_host_starts_its_role_with_scripts_run(tmp_path):
    network = Network(["layer", "app"])
    base = tempfile.mkdtemp(prefix="zcr", dir="/tmp")
    supervisords = []
    pids = []
    try:
        network.up()
        key_dirs = make_keys(str(tmp_path / "keys"), ["app"])
        layout = Layout(network, "layer", ["default"])
        port = 8000 if not network.fallback else 0
        hosts = {}
        for name, role, keys_of in (("layer", "layer", "layer"), ("app", "app", "app")):
            run_dir = os.path.join(base, name)
            os.makedirs(run_dir, mode=0o700)
            curve_dir = os.path.join(run_dir, "keys")
            shutil.copytree(key_dirs[keys_of], curve_dir)
            config = os.path.join(run_dir, "zchannels.toml")
            with open(config, "w") as f:
                f.write("[server]\n"
                        f'host = "{network.addresses[name]}"\n'
                        "stats_interval = 0.5\n"
                        "[endpoints]\n"
                        + "".join(f'{k} = "{v}"\n' for k, v in layout.endpoints.items())
                        + '[pools.default]\nchannels = ["*"]\n'
                        f'endpoint_in = "{layout.pools["default"][0]}"\n'
                        f'endpoint_out = "{layout.pools["default"][1]}"\n')
            if not port:
                port = free_port("127.0.0.1")
            env = dict(os.environ, ZCHANNELS_ROLE=role, ZCHANNELS_CONFIG=config,
                       ZCHANNELS_RUN_DIR=run_dir, ZCHANNELS_CURVE_DIR=curve_dir,
                       ZCHANNELS_PORT=str(port))
            for key in ("ZCHANNELS_CONSUMERS", "ZCHANNELS_TEST_RECORD", "ZCHANNELS_HOST"):
                env.pop(key, None)
            log = open(os.path.join(run_dir, "scripts-run.out"), "wb")
            # `ip netns exec`, scripts/run, zchannels run: each execs the next, so this
            # PID is supervisord's.
            proc = subprocess.Popen([*network.prefix(name), os.path.join(ROOT, "scripts", "run")],
                                    env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            log.close()
            supervisords.append(proc)
            hosts[name] = run_dir

        def up():
            for proc in supervisords:
                assert proc.poll() is None, "a supervisord exited:\n" + "\n".join(
                    open(os.path.join(d, "scripts-run.out"), errors="replace").read()
                    for d in hosts.values())
            return ready(hosts["layer"], "broker") and len(ready(hosts["app"], "interface")) == 2
        wait_until(up, START_TIMEOUT, "the layer host's broker and the app host's interfaces")
        pids = started_pids(hosts["layer"]) + started_pids(hosts["app"])

        # Only the role's programs: no interface or worker on the layer host, no broker
        # on the app host.
        assert not ready(hosts["layer"], "interface") and not ready(hosts["layer"], "worker")
        assert not ready(hosts["app"], "broker")
        wait_until(lambda: len(ready(hosts["app"], "worker-default")) == 2, 20,
                   "the app host's two workers")
        with open(os.path.join(hosts["app"], "supervisord.conf")) as f:
            rendered = f.read()
        assert "[program:broker]" not in rendered and "[program:interface]" in rendered

        async def echo():
            ws = await websocket_connect(f"ws://{network.addresses['app']}:{port}/ws/echo")
            ws.write_message("across")
            answer = await read(ws)
            ws.close()
            return answer
        assert run(echo()) == "across"
    finally:
        for proc in supervisords:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in supervisords:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in pids:  # only if a supervisord did not stop its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        network.cleanup()
        shutil.rmtree(base, ignore_errors=True)
