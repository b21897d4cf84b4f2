"""What every process role does the same way: logging, the run directory, readiness, stopping."""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
from typing import Any, Callable

log = logging.getLogger("runtime.process")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT)


def prepare_run_dir(path: str) -> None:
    """Create the run directory readable by this user only (IPC sockets live there).

    If it exists with wider permissions, tighten them: anyone who can open an
    IPC socket could inject messages.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700)
        log.warning("run directory %s was accessible to others (%o); now 0700", path, mode)


def ready_path(run_dir: str, role: str) -> str:
    return os.path.join(run_dir, "ready", f"{role}.{os.getpid()}")


def announce_ready(run_dir: str, role: str, **info: Any) -> str:
    """Write ``<run_dir>/ready/<role>.<pid>``: tests and tools wait for it."""
    path = ready_path(run_dir, role)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "role": role, **info}, f)
    os.replace(tmp, path)
    return path


def withdraw_ready(run_dir: str, role: str) -> None:
    try:
        os.unlink(ready_path(run_dir, role))
    except FileNotFoundError:
        pass


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Turn SIGTERM and SIGINT into the process's one stop routine (blocking processes)."""
    def handler(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
