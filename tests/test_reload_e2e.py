"""scripts/run --reload: a change to a consumer restarts the workers, and only them.

The end-to-end test starts the real thing (supervisord with conf/supervisord-reload.conf)
on a private copy of a consumers directory and edits it; the other tests check the
watcher's pieces and the import check without a server.
"""
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from harness import ROOT, read, reserve_port, run, wait_until
from test_supervisord_e2e import statuses

from zchannels.worker import reloader

ANSWER_MODULE = '''"""Answers every message and request with ANSWER."""
from zchannels import consumer

ANSWER = {answer}


@consumer("websocket.receive", path="/ws/answer")
def on_message(message):
    message.reply_channel.send(text=ANSWER)


@consumer("http.request", path="/answer")
def on_request(message):
    message.reply_channel.respond(ANSWER)
'''
ANSWER_LINE = ANSWER_MODULE.splitlines().index("ANSWER = {answer}") + 1
PROGRAMS = {"layer:broker", "worker-default:worker-default-0",
            "worker-default:worker-default-1", "interface:interface-0",
            "interface:interface-1", "reloader"}
RELOAD_TIMEOUT = 10.0  # seconds a test waits for new code to answer (the aim is 2)
# Seconds between requests while waiting. A stopping worker goes on taking work until
# none has come for 0.2 s (runtime/worker/worker.py STOP_IDLE), for 2 s at most: steadier
# traffic would keep the old code answering for those 2 s.
POLL_INTERVAL = 0.25


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def answer_module(answer):
    # Every version has the same size, as an edit of one letter does: the reloader must
    # not run the stale bytecode Python would accept for it (see forget_bytecode).
    return ANSWER_MODULE.format(answer=answer)


@pytest.mark.e2e
def test_a_change_restarts_only_the_workers_and_a_broken_file_keeps_the_old_ones():
    base = tempfile.mkdtemp(prefix="zcr", dir="/tmp")  # short: IPC paths <= 107 bytes
    run_dir = os.path.join(base, "run")
    consumers = os.path.join(base, "consumers")
    os.makedirs(consumers)
    # The shipped config mounts demo_wsgi:application, so the copy has it too.
    shutil.copy(os.path.join(ROOT, "consumers", "demo_wsgi.py"), consumers)
    answer_py = os.path.join(consumers, "answer.py")
    write(answer_py, answer_module('"A"'))
    reservation = reserve_port()
    port = reservation.getsockname()[1]
    env = dict(os.environ, ZCHANNELS_PORT=str(port), ZCHANNELS_RUN_DIR=run_dir,
               ZCHANNELS_CONSUMERS=consumers)
    # PYTHONDONTWRITEBYTECODE off: the workers cache bytecode, as they do by default.
    for key in ("ZCHANNELS_CONFIG", "ZCHANNELS_TEST_RECORD", "PYTHONDONTWRITEBYTECODE"):
        env.pop(key, None)
    os.makedirs(run_dir)
    out = open(os.path.join(base, "scripts-run.out"), "wb")
    proc = subprocess.Popen([os.path.join(ROOT, "scripts", "run"), "--reload"], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    children = {}  # program -> pid, every pid seen, to check and clean up
    reloader_log = os.path.join(run_dir, "logs", "reloader.log")

    def logged():
        try:
            with open(reloader_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    try:
        def all_running():
            found = statuses(run_dir) if os.path.exists(f"{run_dir}/supervisor.sock") else {}
            return found if set(found) == PROGRAMS and all(
                state == "RUNNING" for state, _ in found.values()) else None
        started = wait_until(all_running, 60, "supervisord to start every program",
                             interval=0.2)
        children.update({name: pid for name, (_, pid) in started.items()})

        def interfaces_ready():
            ready = os.path.join(run_dir, "ready")
            names = os.listdir(ready) if os.path.isdir(ready) else []
            return len([n for n in names if n.startswith("interface.")]) == 2
        wait_until(interfaces_ready, 20, "both interfaces to accept clients")
        wait_until(lambda: "watching" in logged(), 20, "the reloader to watch")
        reservation.close()

        supervisor = reloader.supervisor_proxy(f"unix://{run_dir}/supervisor.sock")

        def pids(prefix):
            """name -> pid, STARTING processes included (supervisorctl shows no pid)."""
            return {f"{i['group']}:{i['name']}": i["pid"]
                    for i in supervisor.getAllProcessInfo() if i["group"].startswith(prefix)}

        took = run(scenario(port, answer_py, consumers, logged, pids), timeout=120)
        print("seconds from each edit to the new answer:", ", ".join(f"{t:.2f}" for t in took))

        errors = [line for line in logged().splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"{answer_py}, line {ANSWER_LINE}: SyntaxError" \
            in errors[0], logged()
        children.update(pids(""))
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        for pid in children.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        reservation.close()
        if proc.poll() is None:  # the test failed before it stopped supervisord
            with contextlib.suppress(Exception):
                children.update({name: pid for name, (_, pid) in statuses(run_dir).items()})
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for pid in children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out.close()
        shutil.rmtree(base, ignore_errors=True)


async def scenario(port, answer_py, consumers, logged, pids):
    """The edits, against the running copy. Returns the seconds each reload took."""
    http = AsyncHTTPClient()
    took = []

    async def get(path):
        response = await http.fetch(f"http://127.0.0.1:{port}{path}", raise_error=False,
                                    request_timeout=10)
        return response.code, response.body.decode()

    async def answers(expected, allowed):
        """Poll /answer until it says `expected`; every answer on the way must be a
        200 with an allowed body: no request is lost or refused while workers restart."""
        started = time.monotonic()
        while True:
            code, body = await get("/answer")
            assert code == 200 and body in allowed, (code, body)
            if body == expected:
                return time.monotonic() - started
            assert time.monotonic() - started < RELOAD_TIMEOUT, \
                f"still {body!r} {RELOAD_TIMEOUT}s after the edit"
            await asyncio.sleep(POLL_INTERVAL)

    async def in_log(text):
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while text not in logged():
            assert time.monotonic() < deadline, f"no {text!r} in the reloader's log:\n{logged()}"
            await asyncio.sleep(0.05)

    assert await get("/answer") == (200, "A")
    ws = await websocket_connect(f"ws://127.0.0.1:{port}/ws/answer")
    ws.write_message("?")
    assert await read(ws) == "A"
    others = pids("interface") | pids("layer") | pids("reloader")
    workers = pids("worker-")

    # A -> B: the workers restart; the socket opened before stays open.
    write(answer_py, answer_module('"B"'))
    ws.write_message("during the restart")  # answered by the old or the new code
    took.append(await answers("B", {"A", "B"}))
    assert await read(ws, timeout=10) in ("A", "B")
    ws.write_message("?")
    assert await read(ws) == "B" and ws.close_code is None
    assert pids("interface") | pids("layer") | pids("reloader") == others
    restarted = pids("worker-")
    assert set(restarted) == set(workers) and not set(restarted.values()) & set(
        workers.values()), "every worker restarted"
    assert f"changed: {answer_py} (changed)" in logged()
    await in_log("restarted worker-default:worker-default-0, worker-default:worker-default-1")

    # A syntax error: logged with its file and line; the old workers keep answering B.
    broken = answer_module('"C" +')
    assert len(broken) == len(answer_module('"C"')) + 2
    write(answer_py, broken)
    await in_log(f"{answer_py}, line {ANSWER_LINE}: SyntaxError")
    assert "The workers keep serving the previous code" in logged()
    assert await get("/answer") == (200, "B")
    ws.write_message("?")
    assert await read(ws) == "B"
    assert pids("worker-") == restarted

    # Fixed: C. And the WSGI application's module is watched too.
    write(answer_py, answer_module('"C"'))
    took.append(await answers("C", {"B", "C"}))
    ws.write_message("?")
    assert await read(ws) == "C" and ws.close_code is None
    demo_wsgi = os.path.join(consumers, "demo_wsgi.py")
    with open(demo_wsgi) as f:
        source = f.read()
    write(demo_wsgi, source.replace("hello from WSGI", "hello from WSGI, reloaded"))
    started = time.monotonic()
    while (await get("/app/hello"))[1] != "hello from WSGI, reloaded\n":
        assert time.monotonic() - started < RELOAD_TIMEOUT, "the WSGI app was not reloaded"
        await asyncio.sleep(POLL_INTERVAL)
    took.append(time.monotonic() - started)
    ws.write_message("?")
    assert await read(ws) == "C" and ws.close_code is None
    ws.close()
    return took


# -- the pieces, without a server ------------------------------------------------------

def test_scan_sees_changed_added_and_removed_modules_and_skips_the_rest(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (tmp_path / "chat.py").write_text("A = 1\n")
    (tmp_path / "_helper.py").write_text("")
    (package / "__init__.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.py").write_text("")
    outside = tmp_path.parent / f"{tmp_path.name}-app.py"
    outside.write_text("")
    try:
        before = reloader.scan([str(tmp_path)], [str(outside), "/nonexistent/x.py"])
        assert set(before) == {str(tmp_path / "chat.py"), str(tmp_path / "_helper.py"),
                               str(package / "__init__.py"), str(outside)}
        (tmp_path / "chat.py").write_text("A = 22\n")
        (tmp_path / "_helper.py").unlink()
        (tmp_path / "new.py").write_text("")
        after = reloader.scan([str(tmp_path)], [str(outside)])
        assert reloader.changes(before, after) == [
            f"{tmp_path / '_helper.py'} (removed)", f"{tmp_path / 'chat.py'} (changed)",
            f"{tmp_path / 'new.py'} (added)"]
    finally:
        outside.unlink()


def test_a_changed_module_loses_its_bytecode_so_a_same_size_edit_is_not_missed(tmp_path):
    module = tmp_path / "same.py"
    module.write_text("ANSWER = 'A'\n")
    before = reloader.scan([str(tmp_path)], [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import same"], cwd=tmp_path, env=env, check=True,
                   timeout=30)
    cached = importlib.util.cache_from_source(str(module))
    assert os.path.exists(cached)
    mtime = os.stat(module).st_mtime
    module.write_text("ANSWER = 'B'\n")
    os.utime(module, (mtime, mtime + 0.001))  # the same second, the same size
    after = reloader.scan([str(tmp_path)], [])
    assert reloader.changes(before, after) == [f"{module} (changed)"]
    reloader.forget_bytecode(before, after)
    assert not os.path.exists(cached)
    answer = subprocess.run([sys.executable, "-c", "import same; print(same.ANSWER)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert answer.stdout == "B\n"


def check(consumers, wsgi_app=None):
    env = dict(os.environ, ZCHANNELS_CONSUMERS=str(consumers),
               ZCHANNELS_RUN_DIR=str(consumers / "run"))
    env.pop("ZCHANNELS_CONFIG", None)
    config = []
    if wsgi_app:
        path = consumers / "z.toml"
        path.write_text(f'[server]\nwsgi_app = "{wsgi_app}"\n')
        config = ["--config", str(path)]
    result = subprocess.run([sys.executable, "-m", "zchannels", *config, "--log-level",
                             "WARNING", "reloader", "--check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=30)
    return result.returncode, reloader.parse_report(result.stdout, result.returncode)


def test_the_check_reports_the_imported_project_files(tmp_path):
    (tmp_path / "_shared.py").write_text("WORD = 'hi'\n")
    (tmp_path / "hi.py").write_text("from _shared import WORD\n")
    (tmp_path / "app.py").write_text("def application(environ, start_response):\n"
                                     "    return []\n")
    status, result = check(tmp_path, "app:application")
    assert status == 0 and result.ok
    assert {str(tmp_path / n) for n in ("_shared.py", "hi.py", "app.py")} <= set(result.files)
    assert not [f for f in result.files if f.startswith(os.path.join(ROOT, "runtime"))]


@pytest.mark.parametrize("source, line, error", [
    ("X = 1\ndef f(:\n    pass\n", 2, "SyntaxError: invalid syntax"),
    ("import os\nimport no_such_module_here\n", 2,
     "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("def f():\n    return 1 / 0\n\n\nf()\n", 2, "ZeroDivisionError: division by zero"),
])
def test_the_check_names_the_file_and_line_that_do_not_import(tmp_path, source, line, error):
    (tmp_path / "broken.py").write_text(source)
    status, result = check(tmp_path)
    assert status == 1 and not result.ok
    assert result.error == f"{tmp_path / 'broken.py'}, line {line}: {error}"
    assert "Traceback" in result.details


def test_the_check_names_a_wsgi_app_that_does_not_load(tmp_path):
    (tmp_path / "ok.py").write_text("")
    status, result = check(tmp_path, "missing_app:application")
    assert status == 1
    assert result.error == "ModuleNotFoundError: No module named 'missing_app'"


def test_a_check_that_dies_without_a_report_is_a_failure():
    result = reloader.parse_report("Segmentation fault\n", -11)
    assert not result.ok and "status -11" in result.error
    assert result.details == "Segmentation fault\n"
