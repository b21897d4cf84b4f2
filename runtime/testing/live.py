"""`LiveServer`: the real processes of a project for a test, on a free port.

The broker, the workers and the interfaces are started with ``python -m zchannels
<role>`` -- the commands supervisord runs -- in the project's directory, with the
project's consumers and config, each writing its log to a file of its own in a run
directory of the server's own. The first interface binds port 0 and says which port it
got (its ready file); the others share that port (SO_REUSEPORT). Every process is
stopped by its PID at the end, SIGKILLed if it has not exited within `STOP_TIMEOUT`,
and the run directory is removed, whatever the test did.

When Django is set up in the test process (Django's test runner, pytest-django), the
processes run the same settings module against the same databases as the test -- the
test database, where the test's committed rows are -- through a settings module the
server writes into its run directory (``from <your settings> import *``, the
databases' names and ``ALLOWED_HOSTS`` changed).

The pytest fixture is in `zchannels.testing.plugin`, the Django ``TestCase`` in
`zchannels.testing.djangocase`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import weakref
from typing import Any, Callable, Mapping, Sequence

from zchannels.core import config as config_module
from zchannels.core.config import Config

START_TIMEOUT = 20.0  # seconds for a process to write its ready file
STOP_TIMEOUT = 10.0  # seconds for every process to exit after SIGTERM, before SIGKILL
LOG_TAIL_LINES = 200  # lines of each process's log that a failure report shows
LOG_HEADER = "zchannels live server"  # how a failure report's logs begin

# What the test's environment could set that would move the server off its own run
# directory, config, port or loopback, or make it a host of a larger deployment.
_NOT_INHERITED = ("ZCHANNELS_CONFIG", "ZCHANNELS_RUN_DIR", "ZCHANNELS_PORT", "ZCHANNELS_HOST",
                  "ZCHANNELS_CONSUMERS", "ZCHANNELS_ROLE", "ZCHANNELS_WORKER_POOLS",
                  "ZCHANNELS_CURVE_DIR")
# Keys of the project's config that belong to a deployment on several hosts: a live
# server is one host talking IPC in its own run directory.
_NOT_COPIED = {"server": ("role", "worker_pools", "curve_dir"),
               "pools": ("endpoint_in", "endpoint_out")}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
DJANGO_SETTINGS = "zchannels_live_settings"  # the settings module the server writes

_running: "weakref.WeakSet[LiveServer]" = weakref.WeakSet()


class LiveServerError(RuntimeError):
    """A process of a live server exited, or was not ready in time (its log is in the
    message); or the test's Django setup cannot be shared with the processes."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something true, and return that; fail the test
    (AssertionError) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def running_servers() -> list["LiveServer"]:
    """The live servers of this process whose processes are running (for failure reports)."""
    return list(_running)


class LiveServer:
    """The real processes of a project, for a test.

    `project`: the directory the processes run in, where the project's modules, its
    ``consumers/`` and ``conf/zchannels.toml`` are (default: the current directory).
    `config`: the config to start from: None for the project's (``ZCHANNELS_CONFIG``
    or ``conf/zchannels.toml``; the defaults if there is none), a path (from
    `project`), or its tables as a dict (``{"server": {...}, "pools": {...}}``).
    `server`: ``[server]`` keys that replace the config's (``{"http_timeout": 2.0}``).
    `consumers`: directories to load instead of the config's ``consumers``.
    `workers`: worker processes per pool (a number for every pool, or pool -> number).
    `interfaces`: interface processes. `env`: more environment for every process.
    `django`: run the processes with the test process's Django settings and databases;
    None: if Django is set up in the test process.

    Whatever the config says, the server listens on loopback (unless `server` names
    a ``host``), on a free port, and its processes meet over IPC in its run directory:
    the config's ``[endpoints]``, the pools' endpoints, ``role``, ``worker_pools`` and
    ``curve_dir`` are left out.

    ``with LiveServer() as server:`` starts it and, at the end, stops every process and
    removes the run directory; or call `start` and `close`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, project: str | None = None, *,
                 config: str | Mapping[str, Any] | None = None,
                 server: Mapping[str, Any] | None = None,
                 consumers: Sequence[str] | None = None,
                 workers: int | Mapping[str, int] = 1, interfaces: int = 1,
                 env: Mapping[str, str] | None = None, django: bool | None = None) -> None:
        self.project = os.path.abspath(project or os.getcwd())
        self.workers = workers
        self.interfaces = interfaces
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.arguments: dict[str, tuple[str, ...]] = {}  # name -> `python -m zchannels` args
        self.port = 0
        self.config: Config | None = None  # read when the server starts
        tables = self._tables(config)
        settings = {"host": "127.0.0.1", **tables.get("server", {}), **(server or {})}
        self.host: str = settings["host"]
        # IPC paths must fit in 107 bytes: a short run directory, in /tmp.
        self.run_dir = tempfile.mkdtemp(prefix="zc", dir="/tmp")
        self.config_path = os.path.join(self.run_dir, "zchannels.toml")
        try:
            tables["server"] = {**settings, "run_dir": self.run_dir}
            with open(self.config_path, "w", encoding="utf-8") as f:
                f.write(toml(tables))
            self.env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
            self.env.update(ZCHANNELS_CONFIG=self.config_path, ZCHANNELS_RUN_DIR=self.run_dir,
                            PYTHONUNBUFFERED="1")
            if consumers is not None:
                self.env["ZCHANNELS_CONSUMERS"] = os.pathsep.join(consumers)
            self.env.update(env or {})
            if django or (django is None and _django_is_set_up()):
                self.env.update(self._django_environment())
        except BaseException:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _tables(self, config: str | Mapping[str, Any] | None) -> dict[str, Any]:
        tables: dict[str, Any]
        if isinstance(config, Mapping):
            tables = json.loads(json.dumps(config))  # a deep copy of plain values
        else:
            name = config or os.environ.get("ZCHANNELS_CONFIG")
            path = os.path.join(self.project, name or config_module.DEFAULT_CONFIG_PATH)
            tables = {}
            if name or os.path.exists(path):  # a missing config that was named is an error
                with open(path, "rb") as f:
                    tables = tomllib.load(f)
        tables.pop("endpoints", None)
        for key in _NOT_COPIED["server"]:
            tables.get("server", {}).pop(key, None)
        for pool in tables.get("pools", {}).values():
            for key in _NOT_COPIED["pools"]:
                pool.pop(key, None)
        return tables

    # -- what a test uses ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL of HTTP requests: ``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The base URL of WebSockets: ``ws://127.0.0.1:<port>``."""
        return f"ws://{self.host}:{self.port}"

    def logs(self, since: Mapping[str, int] | None = None) -> dict[str, str]:
        """Each process's log (stdout and stderr), by name: ``broker``,
        ``worker-<pool>-<n>``, ``interface-<n>``; with `since` (a `log_marks`), only
        what was written after it."""
        result = {}
        for name in self.processes:
            with open(self._log_path(name), "rb") as f:
                f.seek((since or {}).get(name, 0))
                result[name] = f.read().decode(errors="replace")
        return result

    def log_marks(self) -> dict[str, int]:
        """Where each log ends now, for `logs` and `log_report`."""
        return {name: os.path.getsize(self._log_path(name)) for name in self.processes}

    def log_report(self, since: Mapping[str, int] | None = None,
                   tail: int = LOG_TAIL_LINES) -> str:
        """The processes' logs as a failure report shows them: each with its PID and
        state, the last `tail` lines of what was written after `since`."""
        parts = [f"{LOG_HEADER} {self.url}, run directory {self.run_dir}:"]
        for name, text in self.logs(since).items():
            proc = self.processes[name]
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            lines = text.splitlines()
            if len(lines) > tail:
                lines = [f"[{len(lines) - tail} lines before these: {self._log_path(name)}]",
                         *lines[-tail:]]
            parts.append(f"--- {name} (pid {proc.pid}, {state}) ---")
            parts.extend(lines or ["(nothing logged)"])
        return "\n".join(parts)

    # -- starting ----------------------------------------------------------------------

    def start(self) -> "LiveServer":
        """Start the broker and the workers, wait until they are ready, then the
        interfaces. If anything fails, what was started is stopped."""
        _running.add(self)
        try:
            self.config = config_module.load(self.config_path, environ=self.env)
            started = [("broker", self.spawn("broker", "broker"))]
            for pool in self.config.pools:
                count = self.workers if isinstance(self.workers, int) \
                    else self.workers.get(pool.name, 0)
                for i in range(count):
                    started.append((f"worker-{pool.name}",
                                    self.start_worker(i, pool.name, wait=False)))
            for role, proc in started:
                self.wait_ready(role, proc)
            for i in range(self.interfaces):
                self.start_interface(i)
        except BaseException:
            self.stop()
            raise
        return self

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python -m zchannels <args>`` as the process `name`, its output in
        ``<run_dir>/<name>.log`` (appended to, if `name` ran before)."""
        with open(self._log_path(name), "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "zchannels", *args],
                                    cwd=self.project, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)
        self.processes[name] = proc
        self.arguments[name] = args
        return proc

    def start_worker(self, index: int, pool: str = "default",
                     wait: bool = True) -> subprocess.Popen[bytes]:
        proc = self.spawn(f"worker-{pool}-{index}", "worker", "--pool", pool)
        if wait:
            self.wait_ready(f"worker-{pool}", proc)
        return proc

    def start_interface(self, index: int) -> subprocess.Popen[bytes]:
        """The first interface binds port 0 and reports the port it got; the others
        bind that one (SO_REUSEPORT)."""
        proc = self.spawn(f"interface-{index}", "interface", "--port", str(self.port))
        info = self.wait_ready("interface", proc)
        self.port = info["port"]
        self.arguments[f"interface-{index}"] = ("interface", "--port", str(self.port))
        return proc

    def ready_info(self, role: str, proc: subprocess.Popen[bytes]) -> dict[str, Any] | None:
        """What `proc` wrote to ``<run_dir>/ready/<role>.<pid>``; None until it has."""
        if proc.poll() is not None:
            raise LiveServerError(f"{role} (pid {proc.pid}) exited with {proc.returncode}:\n"
                                  + self._log_of(proc))
        try:
            with open(os.path.join(self.run_dir, "ready", f"{role}.{proc.pid}")) as f:
                info: dict[str, Any] = json.load(f)
                return info
        except (FileNotFoundError, ValueError):
            return None

    def wait_ready(self, role: str, proc: subprocess.Popen[bytes],
                   timeout: float = START_TIMEOUT) -> dict[str, Any]:
        try:
            info: dict[str, Any] = wait_until(lambda: self.ready_info(role, proc), timeout,
                                              f"{role} pid {proc.pid} to be ready")
        except AssertionError as e:
            raise LiveServerError(f"{e}:\n{self._log_of(proc)}") from None
        return info

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every process, the interfaces first (so that connections get their
        disconnects); SIGKILL any still there after `STOP_TIMEOUT`."""
        for name in sorted(self.processes, key=lambda n: not n.startswith("interface")):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        _running.discard(self)

    def close(self) -> None:
        """Stop every process and remove the run directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "LiveServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the details -------------------------------------------------------------------

    def _log_path(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.log")

    def _log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for name, started in self.processes.items():
            if started.pid == proc.pid:
                return self.logs()[name]
        return ""

    def _django_environment(self) -> dict[str, str]:
        """DJANGO_SETTINGS_MODULE and PYTHONPATH for a settings module of the server's
        own: the test process's settings, on the databases it uses."""
        from django.conf import settings
        from django.db import connections
        module = settings.SETTINGS_MODULE
        if not module:
            raise LiveServerError("Django was set up with settings.configure(): the live "
                                  "server's processes need a settings module "
                                  "(DJANGO_SETTINGS_MODULE)")
        lines = ['"""Written by zchannels.testing.live for the processes of a live server: '
                 'the test\'s settings, on the test\'s databases."""',
                 f"from {module} import *  # noqa",
                 "DATABASES = {alias: dict(db) for alias, db in DATABASES.items()}"]
        for alias in connections:
            connection = connections[alias]
            if connection.vendor == "sqlite" and connection.is_in_memory_db():
                raise LiveServerError(
                    f"the database {alias!r} is an in-memory SQLite database, which only the "
                    "test process can see: give it a file, e.g. DATABASES[{alias!r}]['TEST'] "
                    "= {'NAME': BASE_DIR / 'test_db.sqlite3'}")
            name = str(connection.settings_dict["NAME"])
            lines.append(f"DATABASES[{alias!r}]['NAME'] = {name!r}")
        lines.append(f"ALLOWED_HOSTS = [*ALLOWED_HOSTS, {self.host!r}, 'localhost']")
        directory = os.path.join(self.run_dir, "django")
        os.makedirs(directory)
        with open(os.path.join(directory, f"{DJANGO_SETTINGS}.py"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        path = self.env.get("PYTHONPATH")
        return {"DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS,
                "PYTHONPATH": directory + (os.pathsep + path if path else "")}


def _django_is_set_up() -> bool:
    if "django" not in sys.modules:  # never import Django for a project without it
        return False
    from django.apps import apps
    return apps.ready


def toml(tables: Mapping[str, Any]) -> str:
    """The config's tables as TOML: ``[server]``, ``[pools.NAME]``, ``[[history.groups]]``
    (a JSON string, number, boolean or list is a TOML value too)."""
    lines: list[str] = []

    def key(name: str) -> str:
        return name if _BARE_KEY.fullmatch(name) else json.dumps(name)

    def table(prefix: str, values: Mapping[str, Any], header: str) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, Mapping)
                   and not (isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v))}
        if header.startswith("[[") or scalars or not values:
            lines.append(header)
        lines.extend(f"{key(k)} = {json.dumps(v)}" for k, v in scalars.items())
        for k, v in values.items():
            name = f"{prefix}.{key(k)}" if prefix else key(k)
            if isinstance(v, Mapping):
                table(name, v, f"[{name}]")
            elif k not in scalars:
                for item in v:
                    table(name, item, f"[[{name}]]")

    for name, values in tables.items():
        table(key(name), values, f"[{key(name)}]")
    return "\n".join(lines) + "\n"
