"""``zchannels reloader``: the development server's watcher (``scripts/run --reload``).

What it watches (docs/operations.md#reloading-in-development):

- every ``*.py`` under the ``consumers`` directories, new ones included;
- the WSGI application's module, even while it does not import;
- every file of the project the workers have imported, which each writes down after
  loading its code and again when it imports more (`reloading`): Django's settings,
  urls, views, models, template tags... and Django's template directories;
- the project's files in the traceback of a failed import check or of an exception a
  worker logged, so that fixing a module nothing could import yet is seen too.

A file once watched stays watched. They are scanned every `watching.POLL_INTERVAL`, and
at once when inotify reports an event in one of their directories (`watching.Waker`).

When something changed, it imports the new code in a ``zchannels reloader --check``
process, the way a worker does (`app.load`: Django, the consumers, the WSGI
application); only if that succeeds does it have supervisord, over its
XML-RPC socket, restart every ``worker-*`` program. The interfaces and the broker keep
running, so open WebSockets stay open and the broker hands queued events to the new
workers. A file that does not import is logged with its file and line, and the running
workers keep serving the previous code until it is fixed.

Where the time goes, and what this does about it (measured in tests/test_reload_e2e.py):
a Python process that imports zchannels, ZeroMQ and Django spends most of its start
before it reaches the project's code, and a worker's start came after the check and
after the old workers had drained. So the check and a stand-in worker are started ahead
and wait (`standby`); after a save the stand-in loads the new code while the check runs,
and serves as soon as the check has passed and the old workers were told to stop, while
supervisord starts the new workers; the old workers stop without the drain of a shutdown
(`reloading.RESTART_SIGNAL`); the check's report is taken without waiting for its
process to exit; the restart is followed through the pids and ready files, not by asking
supervisord every few milliseconds.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
import traceback
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any, Callable

from zchannels.core.config import Config
from zchannels.wire.process import on_stop_signals
from zchannels.worker import reloading, standby
from zchannels.worker.standby import module_file
from zchannels.worker.watching import (POLL_INTERVAL, Snapshot, Waker, changes,
                                       directories_of, forget_bytecode, scan)

log = logging.getLogger("zchannels.reloader")

SETTLE_INTERVAL = 0.03  # seconds without a change before the files count as saved
SETTLE_MAX = 1.0  # seconds to wait at most for the files to stop changing
CHECK_TIMEOUT = 60.0  # seconds the import check may take (a big Django project)
RPC_TIMEOUT = 10.0  # seconds for one XML-RPC call to supervisord
STOP_TIMEOUT = 10.0  # seconds for the workers to stop (their stopwaitsecs is 3)
READY_TIMEOUT = 10.0  # seconds for the new workers to announce they are serving
STATE_POLL = 0.005  # seconds between looks at the workers' pids and ready files
RPC_POLL = 0.02  # seconds between two questions to supervisord while waiting for it

WORKER_GROUP_PREFIX = "worker-"  # supervisord groups restarted: worker-default, ...
STOPPED_STATES = {"STOPPED", "EXITED", "FATAL", "UNKNOWN"}
FAILED_STATES = {"EXITED", "FATAL", "BACKOFF"}
REPORT_MARK = "zchannels-reloader-check "  # prefixes the check's one line of JSON

_is_library = reloading.is_library
_TRACEBACK_FILE = re.compile(r'^\s*File "([^"]+)", line \d+', re.MULTILINE)


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


# -- the check, kept ready ------------------------------------------------------------

def prepare_check() -> None:
    """What a standing-by check imports before it is told to go: what a worker imports
    before the project's code. The interpreter's start and these imports are most of what
    a check costs for a small project; done ahead, they are not in the time to a reload."""
    from zchannels.api import routing  # noqa: F401
    from zchannels.worker import worker, wsgi  # noqa: F401


class Checker:
    """Runs the import check (``zchannels reloader --check``) in a process of its own,
    started ahead (see `standby`). Its report is taken as soon as it is printed: the
    process's exit (a Python with Django loaded takes a tenth of a second or two to
    end) is waited for later. The reloader starts the next one once the workers have
    restarted, not before: on a small machine it would take the CPU from them."""

    def __init__(self, command: list[str], stopped: threading.Event) -> None:
        self.command = command
        self.stopped = stopped
        self.standby: subprocess.Popen[str] | None = None
        self.ending: list[subprocess.Popen[str]] = []  # reported, maybe not exited yet

    def prepare(self) -> None:
        for proc in self.ending:
            try:
                proc.communicate(timeout=CHECK_TIMEOUT)
            except subprocess.TimeoutExpired:  # hangs at exit: an atexit hook of the project?
                standby.end(proc)
        self.ending.clear()
        if self.standby is None and not self.stopped.is_set():
            self.standby = standby.start([*self.command, "--standby"], subprocess.PIPE)

    def check(self) -> CheckResult | None:
        """Check the code as it is now; None if stopped meanwhile."""
        self.prepare()
        proc, self.standby = self.standby, None
        if proc is None:
            return None
        standby.go(proc)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()  # read here unbuffered, never through proc.stdout
        output = b""
        deadline = time.monotonic() + CHECK_TIMEOUT
        while True:
            if self.stopped.is_set() or time.monotonic() > deadline:
                standby.end(proc)
                if self.stopped.is_set():
                    return None
                return CheckResult(False, error=f"the import check took longer than "
                                                f"{CHECK_TIMEOUT:g} s and was killed")
            readable, _, _ = select.select([fd], [], [], POLL_INTERVAL)
            chunk = os.read(fd, 65536) if readable else None
            if chunk == b"":  # it exited
                proc.wait()
                return parse_report(output.decode(errors="replace"), proc.returncode)
            if chunk:
                output += chunk
                text = output.decode(errors="replace")
                if any(line.startswith(REPORT_MARK) for line in
                       text[:text.rfind("\n") + 1].splitlines()):
                    self.ending.append(proc)
                    return parse_report(text, 0)

    def close(self) -> None:
        proc, self.standby = self.standby, None
        for ending in [*self.ending, *([proc] if proc is not None else [])]:
            standby.end(ending)
        self.ending.clear()


def files_in_traceback(details: str) -> set[str]:
    """The project's files named in a failed check's traceback: one the workers never
    imported (a new module with the error) must be watched for its fix to be seen."""
    return {os.path.abspath(path) for path in _TRACEBACK_FILE.findall(details)
            if os.path.isfile(path) and not _is_library(path)}


# -- the watcher ----------------------------------------------------------------------

class Reloader:
    def __init__(self, config: Config, checker: Checker, supervisor: Any,
                 waker: Waker | None = None, stand_in: standby.StandIn | None = None) -> None:
        self.config = config
        self.checker = checker
        self.stand_in = stand_in
        self.supervisor = supervisor
        self.waker = waker if waker is not None else Waker()
        self.run_dir = os.path.abspath(config.run_dir)
        self.directories = [os.path.abspath(d) for d in config.consumers]
        self.checked: set[str] = set()  # project files the last good check saw imported
        self.error_files: set[str] = set()  # ... the last failed check's traceback named
        self.recorded_version: tuple[int, int] | None = None  # of the directory, when read
        self.files: set[str] = set()  # every file watched one by one
        self.trees: set[str] = set()  # Django's template directories: every file in them
        self.stopped = checker.stopped

    # -- what is watched

    def wsgi_file(self) -> str | None:
        if not self.config.wsgi_app:  # watched even while it does not import
            return None
        module = self.config.wsgi_app.partition(":")[0]
        return module_file(module, [os.getcwd(), *self.directories])

    def read_records(self) -> dict[int, reloading.Record] | None:
        """The workers' lists, if any was written or removed since the last time (one
        ``stat`` otherwise), else None."""
        directory = os.path.join(self.run_dir, reloading.SUBDIRECTORY)
        try:
            st = os.stat(directory)
            version: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            version = None
        if version == self.recorded_version:
            return None
        self.recorded_version = version
        return reloading.read(self.run_dir)

    def refresh(self, snapshot: Snapshot) -> Snapshot:
        """Add what the workers and the checks named since the last time to what is
        watched. Returns `snapshot` with each file watched from now on as the worker that
        first listed it saw it (so an edit made since, while that worker ran the old
        code, still counts), or else as it is now.

        A file once watched stays watched for the life of the reloader, whatever the
        lists say later: a view that fails to import after an edit is in no new worker's
        ``sys.modules``, and its fix must be seen. The lists of processes that have
        ended are read a last time, then removed."""
        records = self.read_records() or {}
        files = self.files | self.checked | self.error_files
        trees = set(self.trees)
        for record in records.values():
            files.update(record.files)
            trees.update(record.directories)
        wsgi_file = self.wsgi_file()
        if wsgi_file is not None:
            files.add(wsgi_file)
        gone = {pid for pid in records if not _alive(pid)}
        if gone:
            reloading.forget(self.run_dir, gone)
        if files == self.files and trees == self.trees:
            return snapshot
        new_files, new_trees = files - self.files, trees - self.trees
        self.files, self.trees = files, trees
        updated = dict(snapshot)
        for path, stamp in scan([], new_files, new_trees).items():
            if path in updated:
                continue
            seen = [record.files[path] for record in records.values()
                    if path in record.files]
            updated[path] = next((old for old in seen if old != stamp), stamp)
        if snapshot:  # not the first time: say what is new (the first time, how many)
            log.info("watching too: %s", ", ".join(sorted(new_files | new_trees)))
        self.waker.watch(self.watched_directories())
        return updated

    def watches(self, path: str) -> bool:
        return path in self.files or any(
            path.startswith(root + os.sep) for root in (*self.directories, *self.trees))

    def watched_directories(self) -> set[str]:
        return directories_of([*self.directories, *self.trees], self.files)

    def scan(self) -> Snapshot:
        return scan(self.directories, self.files, self.trees)

    # -- the loop

    def stop(self) -> None:
        self.stopped.set()
        self.waker.wake()

    def run(self) -> int:
        on_stop_signals(self.stop)
        try:
            self._run()
        finally:
            self.checker.close()
            if self.stand_in is not None:
                self.stand_in.close()
            self.waker.close()
        log.info("reloader stopped")
        return 0

    def _run(self) -> None:
        result = self.checker.check()
        if result is None:
            return
        self.learn(result)
        if not result.ok:  # the workers cannot start either: say why, here too
            log.error("the code does not import: %s\n%s", result.error,
                      result.details.rstrip())
        self.prepare()
        baselines = self.refresh({})  # what the workers saw of the files they listed
        snapshot = {**self.scan(), **baselines}
        self.waker.watch(self.watched_directories())
        log.info("watching %d files: every *.py under %s, the project's files the workers "
                 "imported%s (%s); a change restarts the worker-* programs",
                 len(snapshot), ", ".join(self.directories),
                 ", the template directories" if self.trees else "",
                 f"inotify, and a scan every {POLL_INTERVAL:g} s" if self.waker.uses_inotify
                 else f"a scan every {POLL_INTERVAL:g} s")
        while not self.stopped.is_set():
            woke = self.waker.wait(POLL_INTERVAL)
            if self.stopped.is_set():
                break
            snapshot = self.refresh(snapshot)
            current = self.scan()
            if woke:  # maybe a new directory under a watched one
                self.waker.watch(self.watched_directories())
            if current == snapshot:
                continue
            current = self.settle(current)
            noticed = time.monotonic()
            saved = max((current[path][0] / 1e9 for path in current
                         if snapshot.get(path) != current[path]), default=time.time())
            log.info("changed: %s", ", ".join(changes(snapshot, current)))
            forget_bytecode(snapshot, current)
            snapshot = current
            if self.stand_in is not None:  # it loads the new code while the check runs
                self.stand_in.load()
            result = self.checker.check()
            if result is None:  # stopped meanwhile
                break
            self.learn(result)
            if not result.ok:
                self.report(result)
                if self.stand_in is not None:
                    self.stand_in.discard()
                self.prepare()
                snapshot = self.refresh(snapshot)
                continue
            checked = time.monotonic()
            # Files first watched now start from their current state; the others
            # keep the state before the check, so an edit made during it is seen.
            snapshot = self.refresh(snapshot)
            self.restart_workers(saved, noticed, checked)
            self.prepare()

    def prepare(self) -> None:
        """Start the next check and stand-in (see `standby`)."""
        self.checker.prepare()
        if self.stand_in is not None and not self.stopped.is_set():
            self.stand_in.prepare()

    def learn(self, result: CheckResult) -> None:
        if result.ok:
            self.checked, self.error_files = set(result.files), set()
        else:
            self.error_files = files_in_traceback(result.details)

    def settle(self, current: Snapshot) -> Snapshot:
        """Wait until two scans SETTLE_INTERVAL apart find the same (an editor may write a
        file in several steps), for SETTLE_MAX seconds at most. Events are not waited
        out: something else may write in a watched directory all the time."""
        deadline = time.monotonic() + SETTLE_MAX
        while time.monotonic() < deadline and not self.stopped.wait(SETTLE_INTERVAL):
            again = self.scan()
            if again == current:
                break
            current = again
        return current

    def report(self, result: CheckResult) -> None:
        log.error("not restarting the workers: %s\nThe workers keep serving the previous "
                  "code until this is fixed.\n%s", result.error, result.details.rstrip())

    # -- supervisord

    def restart_workers(self, saved: float, noticed: float, checked: float) -> None:
        """Stop every worker-* program, start them again, and wait until the new ones
        serve. Errors are logged: the watcher goes on."""
        try:
            self._restart_workers(saved, noticed, checked)
        except (OSError, http.client.HTTPException, xmlrpc.client.Error) as e:
            log.error("could not restart the workers through supervisord: %s", e)
        finally:
            if self.stand_in is not None:
                self.stand_in.stop()

    def _restart_workers(self, saved: float, noticed: float, checked: float) -> None:
        infos = [info for info in self.supervisor.getAllProcessInfo()
                 if info["group"].startswith(WORKER_GROUP_PREFIX)]
        workers = {self._name(info) for info in infos}
        old_pids = {info["pid"] for info in infos if info["pid"]}
        if not workers:
            log.warning("supervisord runs no %s* program: nothing to restart",
                        WORKER_GROUP_PREFIX)
            return
        groups = sorted({name.partition(":")[0] for name in workers})
        for group in groups:  # every pool at once, not one after the other
            self.supervisor.stopProcessGroup(group, False)
        for pid in old_pids & reloading.listed(self.run_dir):  # those that listen for it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, reloading.RESTART_SIGNAL)  # no drain: see reloading.py
        # The old workers take no more work now: the stand-in, which has loaded the new
        # code meanwhile, serves while supervisord replaces them (see standby.py).
        stand_in = self.stand_in.serve() if self.stand_in is not None and \
            self.stand_in.program in groups else None
        ready_dir = os.path.join(self.run_dir, "ready")
        stand_in_ready: list[float] = []

        def is_ready(pid: int, names: list[str]) -> bool:
            return any(name.endswith(f".{pid}") for name in names)

        def ready_names() -> list[str]:
            names = os.listdir(ready_dir) if os.path.isdir(ready_dir) else []
            if stand_in is not None and not stand_in_ready and is_ready(stand_in, names):
                stand_in_ready.append(time.monotonic())
            return names

        # Their pids tell when they have exited, without a call to supervisord every
        # few milliseconds (each costs it and us CPU the new workers need); supervisord's
        # word is asked for once they have.
        def old_ones_gone() -> bool:
            ready_names()  # notes when the stand-in serves
            return not any(map(_running, old_pids))

        if not self._wait(old_ones_gone, STOP_TIMEOUT) or \
                self._states(workers, lambda info: info["statename"] in STOPPED_STATES,
                             STOP_TIMEOUT) is None:
            log.error("the workers did not stop within %g s", STOP_TIMEOUT)
            return
        stopped = time.monotonic()
        for group in groups:
            self.supervisor.startProcessGroup(group, False)
        started = self._states(workers, lambda info: bool(info["pid"]) or
                               info["statename"] in FAILED_STATES, READY_TIMEOUT)
        new_pids = {self._name(info): info["pid"] for info in started or ()}

        def serving_or_gone() -> bool:
            names = ready_names()
            return all(not pid or not _running(pid) or is_ready(pid, names)
                       for pid in new_pids.values())

        serving = self._wait(serving_or_gone, READY_TIMEOUT)
        now, now_wall = time.monotonic(), time.time()
        if self.stand_in is not None:
            self.stand_in.stop()
            if stand_in is not None and not stand_in_ready:
                log.warning("the stand-in worker (pid %d) was not serving before the new "
                            "workers were: see %s", stand_in, self.stand_in.log_path)
        if not serving:
            log.warning("restarted %s, but not all of them were serving after %g s",
                        ", ".join(sorted(workers)), READY_TIMEOUT)
            return
        failed = sorted(self._name(info) for info in self.supervisor.getAllProcessInfo()
                        if self._name(info) in workers and (
                            info["statename"] in FAILED_STATES
                            or info["pid"] != new_pids.get(self._name(info))))
        if failed:
            log.error("restarted the workers, but %s exited at start: see the log",
                      ", ".join(failed))
            return
        # Seconds since the save, from the file's modification time (the wall clock).
        since_save = max(now_wall - saved, now - noticed)
        noticed_after = since_save - (now - noticed)
        first = min(stand_in_ready[0], now) if stand_in_ready else now
        how = (f"stand-in worker serving {first - checked:.2f} s later" if stand_in_ready
               else f"old workers stopped in {stopped - checked:.2f} s, new ones started "
                    f"in {now - stopped:.2f} s")
        log.info("restarted %s: serving the new code %.2f s after the save (noticed after "
                 "%.2f s, import check %.2f s, %s)%s", ", ".join(sorted(workers)),
                 since_save - (now - first), noticed_after, checked - noticed, how,
                 f"; the new workers took over {since_save:.2f} s after it (old ones "
                 f"stopped in {stopped - checked:.2f} s, new ones started in "
                 f"{now - stopped:.2f} s)" if stand_in_ready else "")

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Until `done()`, looking every STATE_POLL; False after `timeout` or when stopped."""
        deadline = time.monotonic() + timeout
        while not self.stopped.is_set():
            if done():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(STATE_POLL)
        return False

    def _states(self, workers: set[str], done: Callable[[dict[str, Any]], bool],
                timeout: float) -> list[dict[str, Any]] | None:
        """supervisord's process info of `workers`, asked for every RPC_POLL until `done`
        holds for each of them; None after `timeout` seconds or when stopped."""
        found: list[dict[str, Any]] = []

        def all_done() -> bool:
            nonlocal found
            found = [info for info in self.supervisor.getAllProcessInfo()
                     if self._name(info) in workers]
            return all(done(info) for info in found)
        deadline = time.monotonic() + timeout
        while not self.stopped.is_set():
            if all_done():
                return found
            if time.monotonic() > deadline:
                return None
            time.sleep(RPC_POLL)
        return None

    @staticmethod
    def _name(info: dict[str, Any]) -> str:
        return f"{info['group']}:{info['name']}"


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has: supervisord reaps it soon)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


def main(config: Config, config_path: str | None, check_only: bool,
         standing_by: bool = False) -> int:
    if check_only:
        if standing_by:  # started ahead by the reloader: ready, then wait for the word
            prepare_check()
            if not standby.wait_for_cue(config):
                return 0  # the reloader went away
        return check_imports(config)
    check_command = [sys.executable, "-m", "zchannels",
                     *(["--config", config_path] if config_path else []),
                     "--log-level", "WARNING", "reloader", "--check"]
    url = (os.environ.get("SUPERVISOR_SERVER_URL")  # set by supervisord for its children
           or f"unix://{os.path.abspath(config.run_dir)}/supervisor.sock")
    checker = Checker(check_command, threading.Event())
    return Reloader(config, checker, supervisor_proxy(url),
                    stand_in=standby.StandIn(config, config_path)).run()
