"""A fresh Django project made by a test, as a user makes one, and ``zchannels run`` in it.

`make_project` runs ``django-admin startproject mysite`` (``python -m django``) and
``zchannels init`` in a new directory, writes the test's consumer modules, settings and
``migrate``s; `ZchannelsRun` starts ``python -m zchannels run`` there (supervisord in the
foreground, every program of the shipped template) on a free port with a private run
directory, with its output -- the developer's terminal -- in a file, and stops it and
every process it started, by PID.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from harness import reserve_port, wait_until

START_TIMEOUT = 60.0  # seconds for every program to announce it is ready
STOP_TIMEOUT = 20.0  # seconds for supervisord to stop everything on SIGTERM
STEP_TIMEOUT = 120.0  # seconds for one setup command (startproject, init, migrate)
READY = {"broker": 1, "worker-default": 2, "interface": 2}  # ready/ files per role


def clean_env(**extra: str) -> dict[str, str]:
    """The environment a developer's shell has: none of the test run's ZCHANNELS_ or
    DJANGO_ variables, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ZCHANNELS_", "DJANGO_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


def step(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env or clean_env(), capture_output=True,
                            text=True, timeout=STEP_TIMEOUT)
    assert result.returncode == 0, \
        f"{shlex.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_project(consumers: dict[str, str], settings: str = "", migrate: bool = True,
                 env: dict[str, str] | None = None) -> str:
    """A new directory with ``mysite`` (startproject), ``zchannels init``, the given
    consumer modules (name -> source) in ``consumers/`` and `settings` appended to
    ``mysite/settings.py``; migrated unless told not to. The caller removes it."""
    project = tempfile.mkdtemp(prefix="zcdj-")
    env = env or clean_env()
    step([sys.executable, "-m", "django", "startproject", "mysite", project], project, env)
    step([sys.executable, "-m", "zchannels", "init"], project, env)
    with open(os.path.join(project, "conf", "zchannels.toml")) as f:
        assert 'wsgi_app = "mysite.wsgi:application"' in f.read()
    for name, source in consumers.items():
        with open(os.path.join(project, "consumers", name), "w") as f:
            f.write(source)
    if settings:
        with open(os.path.join(project, "mysite", "settings.py"), "a") as f:
            f.write("\n" + settings)
    if migrate:
        step([sys.executable, "manage.py", "migrate", "--noinput"], project, env)
    return project


class ZchannelsRun:
    """``python -m zchannels run`` in `project`: `start`, then `stop` (or use it in a
    ``with``). `output()` is what the developer's terminal shows."""

    def __init__(self, project: str, env: dict[str, str] | None = None) -> None:
        self.project = project
        self.run_dir = tempfile.mkdtemp(prefix="zcr", dir="/tmp")  # IPC paths: <= 107 bytes
        self.output_path = os.path.join(self.run_dir, "terminal.out")
        self.env = env or clean_env()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    def start(self) -> "ZchannelsRun":
        reservation = reserve_port()
        self.port = reservation.getsockname()[1]
        out = open(self.output_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zchannels", "run"], cwd=self.project,
                env=dict(self.env, ZCHANNELS_PORT=str(self.port),
                         ZCHANNELS_RUN_DIR=self.run_dir),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

            def started() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"zchannels run exited with {self.proc.returncode}:"
                                         f"\n{self.output()[-3000:]}")
                self.pids |= set(self.ready().values())
                roles = [name.rpartition(".")[0] for name in self.ready()]
                return all(roles.count(role) == count for role, count in READY.items())
            wait_until(started, START_TIMEOUT, "every program to be ready", interval=0.1)
        except BaseException:  # no __exit__ follows a failed __enter__
            self.cleanup()
            raise
        finally:
            out.close()
            reservation.close()
        return self

    def ready(self) -> dict[str, int]:
        """ready file name (``worker-default.<pid>``) -> pid."""
        ready = os.path.join(self.run_dir, "ready")
        names = os.listdir(ready) if os.path.isdir(ready) else []
        return {name: int(name.rpartition(".")[2]) for name in names
                if not name.endswith(".tmp")}

    def ready_info(self, role: str) -> list[dict[str, Any]]:
        found = []
        for name in self.ready():
            if name.rpartition(".")[0] == role:
                with open(os.path.join(self.run_dir, "ready", name)) as f:
                    found.append(json.load(f))
        return found

    def output(self) -> str:
        with open(self.output_path, errors="replace") as f:
            return f.read()

    def log(self, name: str) -> str:
        """A program's log file, e.g. ``worker-default-0``."""
        try:
            with open(os.path.join(self.run_dir, "logs", f"{name}.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c",
             os.path.join(self.run_dir, "supervisord.conf"), *args],
            capture_output=True, text=True, timeout=30, env=self.env)

    def statuses(self) -> dict[str, str]:
        """supervisord's state of every program: {"worker-default:worker-default-0": "RUNNING"}."""
        rows = [line.split() for line in self.supervisorctl("status").stdout.splitlines()]
        return {row[0]: row[1] for row in rows if len(row) > 1}

    def counters(self, role: str) -> dict[str, int]:
        """The counters of the live processes of `role`, added up."""
        total: dict[str, int] = {}
        stats = os.path.join(self.run_dir, "stats")
        for name in os.listdir(stats) if os.path.isdir(stats) else []:
            if not name.startswith(role + ".") or not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(stats, name)) as f:
                    data = json.load(f)
            except (OSError, ValueError):  # being replaced right now
                continue
            for key, value in data["counters"].items():
                total[key] = total.get(key, 0) + value
        return total

    def stop(self) -> None:
        self.pids |= set(self.ready().values())
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in self.pids:  # anything supervisord did not stop (it was killed)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "ZchannelsRun":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def wait_for_text(read: Any, text: str, timeout: float, what: str) -> str:
    """Poll `read()` until it contains `text`; what it returned then."""
    found: list[str] = []

    def contains() -> bool:
        found[:] = [read()]
        return text in found[0]
    try:
        wait_until(contains, timeout, what, interval=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{found[0][-3000:] if found else ''}") from None
    return found[0]


def seconds_since(started: float) -> float:
    return time.monotonic() - started
