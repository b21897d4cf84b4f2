"""Django Channels 4 for ``scripts/bench --channels``: one Redis server for the whole
invocation, and for each run one Daphne process serving scripts/channels_compare/
(the protocol of zchannels' demo consumers) with sync or async consumers.

Channels lives in a virtualenv of its own ($CHANNELS_VENV, default /tmp/channels-venv),
never in the project's .venv; ``scripts/bench-channels --install`` creates it and
installs redis-server. Every process started here is stopped by its PID, bounded in time.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Any

from benchkit.baseline import ROOT, STOP_TIMEOUT, Baseline, wait_for

DEFAULT_VENV = os.environ.get("CHANNELS_VENV", "/tmp/channels-venv")
PROJECT_DIR = os.path.join(ROOT, "scripts", "channels_compare")
FLAVOURS = ("async", "sync")  # the order they run in, after zchannels and raw Tornado
PACKAGES = ("channels", "daphne", "channels_redis", "redis", "Django")
INSTALL = ("scripts/bench-channels --install (it creates {venv} with pip install "
           "'channels>=4,<5' daphne channels_redis 'redis<8', and installs redis-server "
           "with apt-get install -y redis-server)")


class SetupError(Exception):
    """What --channels needs is missing; the message says how to install it."""


def missing(venv: str) -> list[str]:
    """What --channels needs and this machine lacks."""
    lacking = []
    if not os.access(os.path.join(venv, "bin", "daphne"), os.X_OK):
        lacking.append(f"Django Channels 4 and Daphne in {venv} (set CHANNELS_VENV or "
                       "--channels-venv if they are elsewhere)")
    if shutil.which("redis-server") is None:
        lacking.append("redis-server")
    return lacking


def free_port() -> int:
    """A loopback port nothing listens on now (Redis cannot bind port 0 and say which
    port it got, so there is a short race; a clash fails its start, with its log)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ChannelsServers:
    """The Redis server (started on first use) and the Daphne processes of the runs."""

    def __init__(self, venv: str = DEFAULT_VENV) -> None:
        lacking = missing(venv)
        if lacking:
            raise SetupError("--channels needs " + " and ".join(lacking) + ". Install "
                             + INSTALL.format(venv=venv))
        self.venv = venv
        self.workdir = tempfile.mkdtemp(prefix="zcbench-channels")
        self.redis: subprocess.Popen[bytes] | None = None
        self.redis_port = 0

    def versions(self) -> dict[str, str]:
        found: dict[str, str] = {}
        code = ("import importlib.metadata as m\n"
                f"for p in {PACKAGES!r}: print(p, m.version(p))")
        try:
            out = subprocess.run([os.path.join(self.venv, "bin", "python"), "-c", code],
                                 capture_output=True, text=True, timeout=30).stdout
            for line in out.splitlines():
                package, _, version = line.partition(" ")
                found[package] = version
            redis = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, timeout=10).stdout
            match = re.search(r"v=(\S+)", redis)
            if match:
                found["redis-server"] = match.group(1)
        except (OSError, subprocess.SubprocessError):
            pass
        return found

    def start_redis(self) -> None:
        if self.redis is not None:
            return
        self.redis_port = free_port()
        log_path = os.path.join(self.workdir, "redis.log")
        with open(log_path, "ab") as log:
            self.redis = subprocess.Popen(
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--loglevel", "warning"], stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.redis_port), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(self.redis, listening, "redis-server", log_path)

    def start_daphne(self, flavour: str) -> Baseline:
        """One Daphne process, `flavour` ("sync" or "async") consumers, on a free port;
        Redis's PID is measured with it."""
        self.start_redis()
        assert self.redis is not None
        log_path = os.path.join(self.workdir, f"daphne-{flavour}.log")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(BENCH_FLAVOUR=flavour, REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([os.path.join(self.venv, "bin", "daphne"), "-b",
                                     "127.0.0.1", "-p", "0", "benchproj.asgi:application"],
                                    cwd=PROJECT_DIR, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)

        def port() -> int | None:
            with open(log_path, errors="replace") as f:
                found = re.search(r"Listening on TCP address 127\.0\.0\.1:(\d+)", f.read())
            return int(found.group(1)) if found else None
        server = Baseline(f"Channels 4 {flavour}", proc, wait_for(proc, port, "daphne", log_path),
                          tempfile.mkdtemp(dir=self.workdir), also=[self.redis.pid])
        server.system = f"channels-{flavour}"
        return server

    def stop(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            try:
                self.redis.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ChannelsServers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
