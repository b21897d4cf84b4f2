"""``zchannels reloader``: the development server's watcher (``scripts/run --reload``).

It polls the modification times of every ``*.py`` under the ``consumers``
directories and of the WSGI application's module (plus every other project module
the application imported), four times a second. When something changed, it first
imports the new code in a short-lived ``zchannels reloader --check`` process, the
way a worker does (`app.load`: Django, the consumers, the WSGI application). Only if that
succeeds does it ask supervisord, over its XML-RPC socket, to restart every
``worker-*`` program. The interfaces and the broker keep running, so open
WebSockets stay open and the broker hands queued events to the new workers. A
file that does not import is logged with its file and line, and the running
workers keep serving the previous code until it is fixed.

A poller, not inotify: it needs no dependency, works on every file system
(network mounts and containers' bind mounts included), and a few hundred
``stat`` calls four times a second cost nothing next to a development server.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any, Callable

from zchannels.core.config import Config
from zchannels.wire.process import on_stop_signals

log = logging.getLogger("zchannels.reloader")

POLL_INTERVAL = 0.25  # seconds between two scans of the watched files
SETTLE_INTERVAL = 0.05  # seconds between scans while an editor is still writing
SETTLE_MAX = 1.0  # seconds to wait at most for the files to stop changing
CHECK_TIMEOUT = 60.0  # seconds the import check may take (a big Django project)
RPC_TIMEOUT = 10.0  # seconds for one XML-RPC call to supervisord
STOP_TIMEOUT = 10.0  # seconds for the workers to stop (their stopwaitsecs is 3)
READY_TIMEOUT = 10.0  # seconds for the new workers to announce they are serving
STATE_POLL = 0.05  # seconds between looks at supervisord's process states

WORKER_GROUP_PREFIX = "worker-"  # supervisord groups restarted: worker-default, ...
STOPPED_STATES = {"STOPPED", "EXITED", "FATAL", "UNKNOWN"}
FAILED_STATES = {"EXITED", "FATAL", "BACKOFF"}
REPORT_MARK = "zchannels-reloader-check "  # prefixes the check's one line of JSON

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

Snapshot = dict[str, tuple[int, int]]  # path -> (mtime in ns, size)


# -- what to watch ---------------------------------------------------------------

def scan(directories: list[str], files: list[str]) -> Snapshot:
    """Stat every ``*.py`` under `directories` (recursively: helper modules and
    packages too) and every path in `files`; a missing file is simply absent."""
    found: Snapshot = {}
    for directory in directories:
        for parent, subdirs, names in os.walk(directory):
            subdirs[:] = [d for d in subdirs if not d.startswith(".") and d != "__pycache__"]
            for name in names:
                if name.endswith(".py"):
                    _stat_into(found, os.path.join(parent, name))
    for path in files:
        _stat_into(found, path)
    return found


def _stat_into(found: Snapshot, path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    found[path] = (st.st_mtime_ns, st.st_size)


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """``["/x/chat.py (changed)", ...]``, in path order."""
    described = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            described.append(f"{path} (removed)")
        elif path not in before:
            described.append(f"{path} (added)")
        elif before[path] != after[path]:
            described.append(f"{path} (changed)")
    return described


def forget_bytecode(before: Snapshot, after: Snapshot) -> None:
    """Delete the cached bytecode of every changed file. Python trusts a ``.pyc``
    whose recorded source size and mtime (in whole seconds) match: an edit that
    keeps the size within the second of the last import would run stale code."""
    for path, stamp in after.items():
        if before.get(path) != stamp:
            try:
                os.unlink(importlib.util.cache_from_source(path))
            except (OSError, ValueError):
                pass


def module_file(module_name: str, search_dirs: list[str]) -> str | None:
    """Where ``a.b`` would be found in `search_dirs`, without importing anything
    (the reloader runs none of the project's code itself)."""
    relative = os.path.join(*module_name.split("."))
    for directory in search_dirs:
        for candidate in (relative + ".py", os.path.join(relative, "__init__.py")):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return os.path.abspath(path)
    return None


def _is_library(path: str) -> bool:
    """The standard library, installed packages and zchannels itself: not the project's
    code, and not what a reload is for."""
    roots = {sys.prefix, sys.base_prefix, *(sysconfig.get_paths()[key] for key in
                                           ("stdlib", "platstdlib", "purelib", "platlib"))}
    path = os.path.abspath(path)
    return path.startswith(_RUNTIME_DIR) or any(
        path.startswith(os.path.abspath(root) + os.sep) for root in roots)


# -- the import check (``zchannels reloader --check``, a process of its own) --------

def check_imports(config: Config) -> int:
    """Import the application as a worker does (`app.load`: Django set up, then the
    consumer modules, then the WSGI application), and print one line: `REPORT_MARK`
    and JSON, with the project files that were imported (``ok``) or where the import
    failed (``error``, ``traceback``). 0 if it worked."""
    from zchannels.worker import worker  # noqa: F401 -- what a worker has imported before its consumers
    from zchannels.worker import app
    before = set(sys.modules)
    try:
        app.load(config, http=any(pool.serves("http.request") for pool in config.pools))
    except BaseException as error:  # SystemExit at import would stop a worker too
        report: dict[str, Any] = {"ok": False, "error": app.describe_error(error),
                                  "traceback": traceback.format_exc()}
        print("\n" + REPORT_MARK + json.dumps(report), flush=True)
        return 1
    files = set()
    for name in set(sys.modules) - before:
        path = getattr(sys.modules[name], "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and not _is_library(path):
            files.add(os.path.abspath(path))
    print("\n" + REPORT_MARK + json.dumps({"ok": True, "files": sorted(files)}), flush=True)
    return 0


def describe_error(error: BaseException) -> str:
    """``/x/chat.py, line 12: SyntaxError: invalid syntax`` (`app.describe_error`, what
    a worker logs and tells the terminal too)."""
    from zchannels.worker.app import describe_error as describe
    return describe(error)


@dataclass
class CheckResult:
    ok: bool
    files: list[str] = field(default_factory=list)
    error: str = ""
    details: str = ""


def parse_report(output: str, returncode: int) -> CheckResult:
    for line in reversed(output.splitlines()):
        if line.startswith(REPORT_MARK):
            try:
                report = json.loads(line[len(REPORT_MARK):])
                if report["ok"]:
                    return CheckResult(True, files=list(report["files"]))
                return CheckResult(False, error=report["error"], details=report["traceback"])
            except (ValueError, KeyError, TypeError):
                break  # a consumer printed something that looks like it
    # It died without a word: a crash in an extension module, os._exit, ...
    return CheckResult(False, error=f"the import check exited with status {returncode}",
                       details=output)


# -- supervisord --------------------------------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=RPC_TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with a timeout (supervisor's own
    transport has none, and a stuck call would freeze the reloader)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.socket_path = path

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = self._connection[1]
        if connection is None:
            connection = _UnixConnection(self.socket_path)
            self._connection = host, connection
        return connection


def supervisor_proxy(url: str) -> Any:
    """The ``supervisor`` namespace of supervisord's XML-RPC interface at `url`
    (``unix:///path/supervisor.sock`` or ``http://host:port``)."""
    if url.startswith("unix://"):
        proxy = xmlrpc.client.ServerProxy("http://localhost",
                                          transport=_UnixTransport(url[len("unix://"):]))
    else:
        proxy = xmlrpc.client.ServerProxy(url)
    return proxy.supervisor


# -- the watcher ----------------------------------------------------------------------

class Reloader:
    def __init__(self, config: Config, check_command: list[str], supervisor: Any) -> None:
        self.config = config
        self.check_command = check_command
        self.supervisor = supervisor
        self.directories = [os.path.abspath(d) for d in config.consumers]
        self.imported: list[str] = []  # project files the last good check saw imported
        self.stopped = threading.Event()

    def watched_files(self) -> list[str]:
        files = list(self.imported)
        if self.config.wsgi_app:  # watched even while it does not import
            module = self.config.wsgi_app.partition(":")[0]
            path = module_file(module, [os.getcwd(), *self.directories])
            if path is not None:
                files.append(path)
        return files

    def scan(self) -> Snapshot:
        return scan(self.directories, self.watched_files())

    def run(self) -> int:
        on_stop_signals(self.stopped.set)
        result = self.check()
        if result is not None and result.ok:
            self.imported = result.files
        elif result is not None:  # the workers cannot start either: say why, here too
            log.error("the code does not import: %s\n%s", result.error,
                      result.details.rstrip())
        snapshot = self.scan()
        log.info("watching %d files (every *.py under %s, and what the WSGI application "
                 "imports); a change restarts the worker-* programs",
                 len(snapshot), ", ".join(self.directories))
        while not self.stopped.wait(POLL_INTERVAL):
            current = self.scan()
            if current == snapshot:
                continue
            detected = time.monotonic()
            current = self.settle(current)
            log.info("changed: %s", ", ".join(changes(snapshot, current)))
            forget_bytecode(snapshot, current)
            snapshot = current
            result = self.check()
            if result is None:  # stopped meanwhile
                break
            if not result.ok:
                self.report(result)
                continue
            self.imported = result.files
            # Files first watched now start from their current state; the others
            # keep the state before the check, so an edit made during it is seen.
            snapshot = {path: snapshot.get(path, stamp) for path, stamp in self.scan().items()}
            self.restart_workers(detected)
        log.info("reloader stopped")
        return 0

    def settle(self, current: Snapshot) -> Snapshot:
        """Wait until a scan finds the same as the one before (an editor may write a file
        in several steps), for SETTLE_MAX seconds at most."""
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline and not self.stopped.wait(SETTLE_INTERVAL):
            again = self.scan()
            if again == current:
                break
            current = again
        return current

    def check(self) -> CheckResult | None:
        """Run the import check in a process of its own; None if stopped meanwhile."""
        proc = subprocess.Popen(self.check_command, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + CHECK_TIMEOUT
        while True:
            try:
                output, _ = proc.communicate(timeout=POLL_INTERVAL)
                return parse_report(output, proc.returncode)
            except subprocess.TimeoutExpired:
                if self.stopped.is_set() or time.monotonic() > deadline:
                    proc.kill()
                    proc.communicate()
                    if self.stopped.is_set():
                        return None
                    return CheckResult(False, error=f"the import check took longer than "
                                                    f"{CHECK_TIMEOUT:g} s and was killed")

    def report(self, result: CheckResult) -> None:
        log.error("not restarting the workers: %s\nThe workers keep serving the previous "
                  "code until this is fixed.\n%s", result.error, result.details.rstrip())

    def restart_workers(self, since: float) -> None:
        """Stop every worker-* program, start them again, and wait until the new ones
        serve. Errors are logged: the watcher goes on."""
        try:
            self._restart_workers(since)
        except (OSError, http.client.HTTPException, xmlrpc.client.Error) as e:
            log.error("could not restart the workers through supervisord: %s", e)

    def _restart_workers(self, since: float) -> None:
        workers = {self._name(info) for info in self.supervisor.getAllProcessInfo()
                   if info["group"].startswith(WORKER_GROUP_PREFIX)}
        if not workers:
            log.warning("supervisord runs no %s* program: nothing to restart",
                        WORKER_GROUP_PREFIX)
            return
        groups = sorted({name.partition(":")[0] for name in workers})
        for group in groups:  # every pool at once, not one after the other
            self.supervisor.stopProcessGroup(group, False)
        if self._states(workers, lambda info: info["statename"] in STOPPED_STATES,
                        STOP_TIMEOUT) is None:
            log.error("the workers did not stop within %g s", STOP_TIMEOUT)
            return
        for group in groups:
            self.supervisor.startProcessGroup(group, False)
        ready_dir = os.path.join(self.config.run_dir, "ready")

        def serving_or_failed(info: dict[str, Any]) -> bool:
            if info["statename"] in FAILED_STATES:
                return True
            suffix = f".{info['pid']}"
            return bool(info["pid"]) and any(name.endswith(suffix)
                                             for name in os.listdir(ready_dir))

        infos = self._states(workers, serving_or_failed, READY_TIMEOUT)
        if infos is None:
            log.warning("restarted %s, but not all of them were serving after %g s",
                        ", ".join(sorted(workers)), READY_TIMEOUT)
            return
        failed = sorted(self._name(info) for info in infos
                        if info["statename"] in FAILED_STATES)
        if failed:
            log.error("restarted the workers, but %s exited at start: see the log",
                      ", ".join(failed))
        else:
            log.info("restarted %s: serving the new code %.2f s after the change was noticed",
                     ", ".join(sorted(workers)), time.monotonic() - since)

    def _states(self, workers: set[str], done: Callable[[dict[str, Any]], bool],
                timeout: float) -> list[dict[str, Any]] | None:
        """supervisord's process info of `workers`, polled until `done` holds for each
        of them; None after `timeout` seconds or when stopped."""
        deadline = time.monotonic() + timeout
        while not self.stopped.is_set():
            infos = [info for info in self.supervisor.getAllProcessInfo()
                     if self._name(info) in workers]
            if all(done(info) for info in infos):
                return infos
            if time.monotonic() > deadline:
                return None
            time.sleep(STATE_POLL)
        return None

    @staticmethod
    def _name(info: dict[str, Any]) -> str:
        return f"{info['group']}:{info['name']}"


def main(config: Config, config_path: str | None, check_only: bool) -> int:
    if check_only:
        return check_imports(config)
    check_command = [sys.executable, "-m", "zchannels",
                     *(["--config", config_path] if config_path else []),
                     "--log-level", "WARNING", "reloader", "--check"]
    url = (os.environ.get("SUPERVISOR_SERVER_URL")  # set by supervisord for its children
           or f"unix://{os.path.abspath(config.run_dir)}/supervisor.sock")
    return Reloader(config, check_command, supervisor_proxy(url)).run()
