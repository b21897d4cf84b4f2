"""The real thing: scripts/run starts conf/supervisord.conf, which starts every process."""
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from harness import (ROOT, TEST_CONSUMERS, echo_once, read, read_until_closed, reserve_port,
                     run, wait_until)

pytestmark = pytest.mark.e2e

PROGRAMS = {"layer:broker", "worker-default:worker-default-0",
            "worker-default:worker-default-1", "interface:interface-0", "interface:interface-1"}


def supervisorctl(run_dir, *args):
    return subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "supervisorctl"), "-c",
         os.path.join(ROOT, "conf", "supervisord.conf"),
         "-s", f"unix://{run_dir}/supervisor.sock", *args],
        capture_output=True, text=True, timeout=30)


def statuses(run_dir):
    result = supervisorctl(run_dir, "status")
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    return {row[0]: (row[1], int(row[3].rstrip(","))) for row in rows if len(row) > 3
            and row[2] == "pid"}


@contextlib.contextmanager
def supervised_copy(with_test_consumers=False):
    """scripts/run in a private run directory on a free port; yields (process, port,
    run_dir) once every program is RUNNING and both interfaces accept clients."""
    run_dir = tempfile.mkdtemp(prefix="zcs", dir="/tmp")
    reservation = reserve_port()
    port = reservation.getsockname()[1]
    env = dict(os.environ, ZCHANNELS_PORT=str(port), ZCHANNELS_RUN_DIR=run_dir)
    for key in ("ZCHANNELS_CONFIG", "ZCHANNELS_CONSUMERS", "ZCHANNELS_TEST_RECORD"):
        env.pop(key, None)
    if with_test_consumers:
        env.update(ZCHANNELS_CONSUMERS=f"{ROOT}/consumers:{TEST_CONSUMERS}",
                   ZCHANNELS_TEST_RECORD=f"{run_dir}/record.log")
    log = open(os.path.join(run_dir, "scripts-run.out"), "wb")
    children = {}
    proc = subprocess.Popen([os.path.join(ROOT, "scripts", "run")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def all_running():
            found = statuses(run_dir) if os.path.exists(f"{run_dir}/supervisor.sock") else {}
            return found if set(found) == PROGRAMS and all(
                state == "RUNNING" for state, _ in found.values()) else None
        children = wait_until(all_running, 60, "supervisord to start every program",
                              interval=0.2)
        ready_dir = os.path.join(run_dir, "ready")

        def interfaces_ready():
            names = os.listdir(ready_dir) if os.path.isdir(ready_dir) else []
            return len([n for n in names if n.startswith("interface.")]) == 2
        wait_until(interfaces_ready, 20, "both interfaces to accept clients")
        reservation.close()
        yield proc, port, run_dir
    finally:
        reservation.close()
        # Only finds something running when the test stopped before it did.
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for _, pid in children.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def supervised():
    with supervised_copy() as copy:
        yield copy


def stop(proc):
    """SIGTERM supervisord; the seconds it took to exit."""
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)
    assert proc.returncode == 0
    return time.monotonic() - started


def test_scripts_run_serves_chat_and_stops_everything_on_sigterm(supervised):
    proc, port, run_dir = supervised
    children = {name: pid for name, (_, pid) in statuses(run_dir).items()}

    async def chat():
        from tornado.websocket import websocket_connect
        alice = await websocket_connect(f"ws://127.0.0.1:{port}/ws/chat/sv?name=alice")
        await read(alice)
        bob = await websocket_connect(f"ws://127.0.0.1:{port}/ws/chat/sv?name=bob")
        await read(bob)
        await read(alice)
        bob.write_message("hello from bob")
        for ws in (alice, bob):
            assert json.loads(await read(ws))["text"] == "hello from bob"
        echo = await websocket_connect(f"ws://127.0.0.1:{port}/ws/echo")
        echo.write_message(b"\xff\x00", binary=True)
        assert await read(echo) == b"\xff\x00"
        for ws in (alice, bob, echo):
            ws.close()

    run(chat())

    elapsed = stop(proc)
    assert elapsed < 10, f"stopping took {elapsed:.1f}s"
    for name, pid in children.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = open(os.path.join(run_dir, "supervisord.log")).read()
    assert "stopped: interface-0 (exit status 0)" in log
    assert "stopped: worker-default-0 (exit status 0)" in log


def test_supervisorctl_finds_the_default_copy_without_options():
    """`supervisorctl -c conf/supervisord.conf status` talks to the copy that
    scripts/run starts with the default run directory (./run)."""
    from supervisor.options import ClientOptions
    options = ClientOptions()
    options.realize(args=["-c", os.path.join(ROOT, "conf", "supervisord.conf")])
    assert options.serverurl == f"unix://{ROOT}/run/supervisor.sock"
    from zchannels.core.config import load
    assert load(os.path.join(ROOT, "conf", "zchannels.toml"), environ={}).run_dir == "run"


def test_two_copies_run_side_by_side():
    """Each copy has its own port, run directory, control socket and counters;
    stopping one leaves the other serving."""
    def echo(port, text):
        return echo_once(f"ws://127.0.0.1:{port}/ws/echo", text)

    with supervised_copy() as (first, port1, dir1), supervised_copy() as (second, port2, dir2):
        assert port1 != port2
        assert run(echo(port1, "one")) == "one"
        assert run(echo(port2, "two")) == "two"
        pids1 = {pid for _, pid in statuses(dir1).values()}
        pids2 = {pid for _, pid in statuses(dir2).values()}
        assert len(pids1) == len(pids2) == len(PROGRAMS) and not pids1 & pids2
        stop(first)
        assert run(echo(port2, "still here")) == "still here"
        assert statuses(dir2) and not os.path.exists(f"{dir1}/supervisor.sock")
        stop(second)


def test_sigterm_closes_sockets_1001_and_every_disconnect_consumer_runs():
    """Interfaces stop first and close every socket with 1001, handing the disconnect
    events to the pool; the workers, stopped next, run them all before they exit,
    although they take 0.1 s each (about 1.8 s of work for each of the 2 workers)."""
    members = 36

    async def join(port):
        from tornado.websocket import websocket_connect
        ws = await websocket_connect(f"ws://127.0.0.1:{port}/test/slow-bye")
        return ws, (await read(ws))[3:]

    async def close_codes(sockets):
        codes = []
        for ws in sockets:
            await read_until_closed(ws, timeout=10)
            codes.append(ws.close_code)
        return codes

    with supervised_copy(with_test_consumers=True) as (proc, port, run_dir):
        async def scenario():
            joined = await asyncio.gather(*(join(port) for _ in range(members)))
            watching = asyncio.ensure_future(close_codes([ws for ws, _ in joined]))
            elapsed = await asyncio.to_thread(stop, proc)
            return joined, elapsed, await watching

        joined, elapsed, codes = run(scenario(), timeout=60)
        assert elapsed < 10, f"stopping took {elapsed:.1f}s"
        assert codes == [1001] * members
        with open(f"{run_dir}/record.log") as f:
            gone = {line.split()[1] for line in f if line.startswith("D ")}
        assert gone == {rc for _, rc in joined}, "every disconnect consumer ran"
