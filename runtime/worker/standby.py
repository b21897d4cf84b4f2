"""Processes the reloader starts ahead, so that a save costs only the project's own code.

A fresh Python process that imports zchannels, ZeroMQ and Django spends most of its
start before it reaches the project's code; a worker's start also came only after the
import check and after the old workers had stopped, so it all added up. The reloader
therefore keeps two processes started and waiting (``--standby``), which have done those
imports (`preload`) and wait for `GO` on their stdin before they import the project's
code:

- the import check (``zchannels reloader --check --standby``);
- the stand-in (``zchannels worker --pool NAME --standby``, `StandIn`), a worker of the
  pool the clients' events go to. After a save it loads the new code while the check
  runs; once the check has passed and the old workers have been told to stop, it is told
  to serve (`SERVE`), and serves while supervisord starts the new workers; it is stopped
  once they serve. The new code thus answers as soon as the check has passed, not after
  the old workers' exit and a whole worker start. If the check fails, it is killed.
  Its log is ``<run_dir>/logs/worker-<pool>-standin.log``.

Both die with the reloader (``PR_SET_PDEATHSIG``): none is left behind, serving, if the
reloader is killed.
"""
from __future__ import annotations

import ast
import ctypes
import importlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from typing import IO, Any

from zchannels.core.config import Config
from zchannels.worker import reloading

log = logging.getLogger("zchannels.reloader")

GO = "go\n"  # what a process standing by waits for on its stdin
SERVE = "serve\n"  # what a stand-in that has loaded the code then waits for
STAND_IN_STOP_TIMEOUT = 5.0  # seconds for the stand-in to stop before it is killed
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# -- in the process standing by ------------------------------------------------------

def module_file(module_name: str, search_dirs: list[str]) -> str | None:
    """Where ``a.b`` would be found in `search_dirs`, without importing anything."""
    relative = os.path.join(*module_name.split("."))
    for directory in search_dirs:
        for candidate in (relative + ".py", os.path.join(relative, "__init__.py")):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return os.path.abspath(path)
    return None


def preload(config: Config) -> list[str]:
    """Import ahead what a worker imports that is neither the project's code nor run by
    it: the libraries the WSGI application's module imports at its top (for a Django
    project, ``django.core.wsgi`` and what it brings), and the modules of Django the
    workers had imported (`reloading.PRELOADED`: Django is written to be imported before
    it is set up). Only modules of installed packages, found without running any of the
    project's code; ``DJANGO_SETTINGS_MODULE`` is hidden meanwhile, so that no module
    reads the project's settings now; one that fails is left for the real import.
    Returns the names imported."""
    names = _imports_of_wsgi_module(config)
    for record in reloading.read(os.path.abspath(config.run_dir)).values():
        names += sorted(record.libraries - set(names))
    settings = os.environ.pop("DJANGO_SETTINGS_MODULE", None)
    imported = []
    try:
        for name in names:
            try:
                # A top-level name is found without importing anything; the project's
                # own packages (and anything not installed) are left alone.
                spec = importlib.util.find_spec(name.partition(".")[0])
                if spec is None or not spec.origin or \
                        not reloading.is_library(spec.origin):
                    continue
                importlib.import_module(name)
                imported.append(name)
            except Exception:
                continue
    finally:
        if settings is not None:
            os.environ["DJANGO_SETTINGS_MODULE"] = settings
    return imported


def _imports_of_wsgi_module(config: Config) -> list[str]:
    """The modules the WSGI application's module imports at its top, read (not run)."""
    if not config.wsgi_app:
        return []
    path = module_file(config.wsgi_app.partition(":")[0],
                       [os.getcwd(), *(os.path.abspath(d) for d in config.consumers)])
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def wait_for_cue(config: Config) -> bool:
    """Standing by: import ahead (`preload`), then wait for `GO` on stdin. False if the
    reloader went away instead (stdin closed): the process should exit quietly."""
    preload(config)
    return sys.stdin.readline() == GO


def wait_to_serve() -> bool:
    """A stand-in that has loaded the code: wait for `SERVE`. False if the reloader went
    away instead (stdin closed)."""
    return sys.stdin.readline() == SERVE


# -- in the reloader ---------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the reloader dies (Linux; elsewhere the
    stdin it waits on closes, which ends a process still standing by)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start(argv: list[str], output: int | IO[Any]) -> subprocess.Popen[str]:
    """`argv` standing by, with the worker's side of --reload on (`reloading.attach`)."""
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, reloading.RELOAD_VARIABLE: "1"},
                            preexec_fn=_die_with_parent)


def go(proc: subprocess.Popen[str], cue: str = GO) -> None:
    """Tell `proc` to go on. A process that died standing by is for the caller to
    notice (its exit status, its output)."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(cue)
        proc.stdin.flush()
    except (BrokenPipeError, ValueError):
        pass


def end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


def stand_in_pool(config: Config) -> str:
    """The pool a stand-in serves: the one clients' events go to (WebSocket messages,
    else HTTP requests), else the first. Other pools' events wait in the broker for their
    new workers, as they did before stand-ins."""
    for channel in ("websocket.receive", "http.request"):
        pool = config.pool_for(channel)
        if pool is not None:
            return pool.name
    return config.pools[0].name


class StandIn:
    """The worker started ahead for the pool `stand_in_pool` (see the module docstring).

    After a save it is told to load the code (`load`) while the import check runs, then
    to serve (`serve`) once the check passed and the old workers were told to stop, and
    stopped (`stop`) once the new workers serve; if the check fails, it is killed
    (`discard`)."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.pool = stand_in_pool(config)
        self.program = f"worker-{self.pool}"
        self.argv = [sys.executable, "-m", "zchannels",
                     *(["--config", config_path] if config_path else []),
                     "worker", "--pool", self.pool, "--standby"]
        self.log_path = os.path.join(os.path.abspath(config.run_dir), "logs",
                                     f"{self.program}-standin.log")
        self.waiting: subprocess.Popen[str] | None = None
        self.loading: subprocess.Popen[str] | None = None

    def prepare(self) -> None:
        if self.waiting is None or self.waiting.poll() is not None:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a") as output:  # the child keeps its own descriptor
                self.waiting = start(self.argv, output)

    def load(self) -> None:
        """Let the waiting stand-in load the code as it is now."""
        self.discard()
        proc, self.waiting = self.waiting, None
        if proc is not None and proc.poll() is None:
            go(proc)
            self.loading = proc

    def serve(self) -> int | None:
        """Let the stand-in that loaded the code serve; its pid, or None if there is none
        (it died: its log says why)."""
        proc = self.loading
        if proc is None or proc.poll() is not None:
            return None
        go(proc, SERVE)
        return proc.pid

    def stop(self) -> None:
        """Stop the stand-in as the reloader stops a worker (SIGTERM, then the restart
        signal: no drain), killing it if it takes longer than STAND_IN_STOP_TIMEOUT."""
        proc, self.loading = self.loading, None
        if proc is None:
            return
        for signum in (signal.SIGTERM, reloading.RESTART_SIGNAL):
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                break
        try:
            proc.wait(STAND_IN_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("the stand-in worker (pid %d) did not stop within %g s: killed",
                        proc.pid, STAND_IN_STOP_TIMEOUT)
            end(proc)
        if proc.stdin is not None:
            proc.stdin.close()

    def discard(self) -> None:
        """Kill a stand-in told to load but not to serve (the check failed)."""
        proc, self.loading = self.loading, None
        if proc is not None:
            end(proc)

    def close(self) -> None:
        self.stop()
        proc, self.waiting = self.waiting, None
        if proc is not None:
            end(proc)
