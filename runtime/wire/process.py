"""What every process role does the same way: logging, the run directory, readiness, stopping."""
from __future__ import annotations

import json
import logging
import os
import signal
import stat
import sys
from typing import Any, Callable

import zmq

from zchannels.wire import transport
from zchannels.core.stats import counters

from zchannels.core.config import Config

log = logging.getLogger("zchannels.process")

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


class Service:
    """The life of a blocking process (the broker, a worker).

    One ZeroMQ context, created after any fork; SIGTERM and SIGINT turned into
    `stop`; readiness announced once the sockets are up; counters written every
    ``stats_interval``; on the way out, sockets closed (each with its own linger)
    before the context is ended. A subclass creates its sockets with `socket`,
    registers the ones to read on `poller`, and handles them in `step`.
    """

    POLL_INTERVAL_MS = 200  # how often an idle process checks for a stop request

    def __init__(self, config: Config, role: str) -> None:
        self.config = config
        self.role = role
        self.stopping = False
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.sockets: list[zmq.Socket] = []

    def socket(self, kind: int, linger: int = 0) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = linger
        self.sockets.append(sock)
        return sock

    def stop(self) -> None:
        self.stopping = True

    def poll(self) -> dict[zmq.Socket, int]:
        return dict(self.poller.poll(self.POLL_INTERVAL_MS))

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        """Handle the sockets that `poll` found readable (possibly none)."""
        raise NotImplementedError

    def closing(self) -> None:
        """Last words before the sockets close (the stop signal has been handled)."""

    def serve(self, **ready_info: Any) -> None:
        on_stop_signals(self.stop)
        transport.describe(self.config, check_keys=self.role != "broker")
        counters.setup(self.config.run_dir, self.role)
        counters.write(force=True)  # `zchannels stats` lists it before it counts anything
        announce_ready(self.config.run_dir, self.role, **ready_info)
        try:
            while not self.stopping:
                self.step(self.poll())
                if counters.due(self.config.stats_interval):
                    counters.write()
        finally:
            withdraw_ready(self.config.run_dir, self.role)
            self.closing()
            counters.write(force=True)
            for sock in self.sockets:
                sock.close()
            transport.release(self.context)  # the ZAP thread's socket, if it has one
            self.context.term()
            log.info("%s stopped", self.role)
