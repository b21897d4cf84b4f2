"""The ceilings every figure is compared with.

``python -m benchkit.baseline`` is a raw Tornado server in one process, written
the plain way a Tornado user would: ``/ws/echo`` echoes, ``/ws/chat/<room>`` speaks the
protocol of ``consumers/chat.py`` with an in-process set of members per room, and
``GET /hello`` answers like zchannels' HTTP consumer. With ``--compression`` its
WebSocket handlers offer Tornado's own permessage-deflate (level 1, memLevel 8, as
zchannels' defaults), to clients that ask for it. For ``http`` against the WSGI
fallback, the baseline is the same WSGI callable under gunicorn with the same number of
worker processes. `start_tornado` and `start_gunicorn` run them for the bench.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import parse_qs

import tornado.iostream
import tornado.web
import tornado.websocket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 15.0  # seconds for a baseline server to listen
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL
MAX_NAME_CHARS = 32
DEFLATE_SUFFIX = " +deflate"  # a system's name when its clients use permessage-deflate

# Tornado's compression_options with --compression: zchannels' default level and memLevel.
COMPRESSION_OPTIONS = {"compression_level": 1, "mem_level": 8}
compression: dict[str, Any] | None = None  # what the handlers return (None: no deflate)

rooms: dict[str, set["ChatHandler"]] = {}
guests = itertools.count(1)


class DeflateOption(tornado.websocket.WebSocketHandler):
    """permessage-deflate when the server was started with --compression, as stock
    Tornado does it: each message compressed for each connection, with a context kept
    per connection. (Tornado 6.6.1's header parser drops a parameter without a value,
    so it never sees the server_no_context_takeover the bench's client offers; the
    client then inflates with one context per connection.)"""

    def get_compression_options(self) -> dict[str, Any] | None:
        return compression


class EchoHandler(DeflateOption):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


class ChatHandler(DeflateOption):
    room = ""
    name = ""

    def open(self, room: str) -> None:  # type: ignore[override]
        query = parse_qs(self.request.query)
        self.name = (query.get("name") or [""])[0].strip()[:MAX_NAME_CHARS] \
            or f"guest-{next(guests)}"
        self.room = room
        rooms.setdefault(room, set()).add(self)
        self.announce("join")

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.close(1003, "chat takes text frames")
            return
        text = message
        if text.lstrip().startswith("{"):
            try:
                text = json.loads(text)["text"]
                if not isinstance(text, str):
                    raise TypeError("'text' must be a string")
            except (ValueError, KeyError, TypeError):
                self.close(1007, "invalid JSON")
                return
        self.broadcast(type="message", user=self.name, text=text)

    def on_close(self) -> None:
        members = rooms.get(self.room)
        if members is not None and self in members:
            members.discard(self)
            self.announce("leave")

    def announce(self, action: str) -> None:
        """What zchannels' presence notices carry (runtime/broker/presence.py), byte for byte."""
        self.broadcast(type=action, group=f"chat.{self.room}", member=f"t!{id(self)}",
                       info={"user": self.name})

    def broadcast(self, **event: Any) -> None:
        text = json.dumps(event)
        for member in list(rooms.get(self.room, ())):
            try:
                member.write_message(text)
            except tornado.websocket.WebSocketClosedError:
                pass


class HelloHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("hello\n")


def _ignore_closed(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A member that closes while a broadcast is written to it fails that write's Future,
    # which nobody awaits: that is normal in a chat room, not worth a traceback each.
    closed = (tornado.websocket.WebSocketClosedError, tornado.iostream.StreamClosedError)
    if isinstance(context.get("exception"), closed):
        return
    loop.default_exception_handler(context)


async def serve(port: int, ready_file: str | None) -> None:
    app = tornado.web.Application([(r"/ws/echo", EchoHandler),
                                   (r"/ws/chat/([^/]+)", ChatHandler),
                                   (r"/hello", HelloHandler)])
    server = app.listen(port, "127.0.0.1", backlog=1024)
    bound = next(iter(server._sockets.values())).getsockname()[1]
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "port": bound}, f)
        os.replace(tmp, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_ignore_closed)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchkit.baseline",
                                     description="raw Tornado baseline server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", help="write {pid, port} here once listening")
    parser.add_argument("--fds", type=int, default=0, help="file descriptors to allow")
    parser.add_argument("--compression", action="store_true",
                        help=f"permessage-deflate with clients that offer it "
                        f"({COMPRESSION_OPTIONS})")
    args = parser.parse_args(argv)
    global compression
    compression = dict(COMPRESSION_OPTIONS) if args.compression else None
    if args.fds:
        from benchkit.client import raise_fd_limit
        _, problem = raise_fd_limit(args.fds)
        if problem:  # the bench reads this line and warns about it beside the figures
            print(f"baseline: {problem.split(': use')[0]} (raise `ulimit -Hn`)",
                  file=sys.stderr, flush=True)
    asyncio.run(serve(args.port, args.ready_file))


# -- running baselines for the bench ------------------------------------------------------


class Baseline:
    """A server the bench started to compare with: its URL base, its PIDs (its own, its
    children's and `also`, e.g. the Redis server behind Daphne), and how to stop it."""

    system = "baseline"  # what run["system"] says of its runs
    stats = None  # no ZeroMQ, so no zmq_sent counters to read
    compression = False  # whether the bench's clients offer permessage-deflate to it

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int,
                 workdir: str, also: list[int] | None = None) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.workdir = workdir
        self.also = list(also or [])
        self.notes: list[str] = []  # what keeps it from taking the whole load

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        from benchkit.servers import with_descendants
        return with_descendants([self.proc.pid] + self.also)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_for(proc: subprocess.Popen[bytes], ready: Any, what: str, log_path: str) -> Any:
    """`ready()` once it is true (bounded); the process's log if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{f.read()}")
        value = ready()
        if value:
            return value
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT} s")


def start_tornado(workdir: str, fds: int = 0, compression: bool = False) -> Baseline:
    """Raw Tornado; with `compression`, offering permessage-deflate (named "+deflate")."""
    ready_file = os.path.join(workdir, "tornado.ready")
    log_path = os.path.join(workdir, "tornado.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "benchkit.baseline", "--port", "0",
                                 "--ready-file", ready_file, "--fds", str(fds)]
                                + (["--compression"] if compression else []),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> Any:
        try:
            with open(ready_file) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None
    info = wait_for(proc, ready, "the raw Tornado baseline", log_path)
    baseline = Baseline("raw Tornado" + (DEFLATE_SUFFIX if compression else ""), proc,
                        info["port"], workdir)
    baseline.compression = compression
    with open(log_path, errors="replace") as f:
        baseline.notes = [line[len("baseline: "):].strip() for line in f
                          if line.startswith("baseline: ")]
    return baseline


def start_gunicorn(workdir: str, workers: int) -> Baseline:
    """``gunicorn --chdir consumers demo_wsgi:application -w N`` on a free loopback port."""
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) \
        or shutil.which("gunicorn")
    if gunicorn is None:
        raise RuntimeError("the http baseline needs gunicorn: pip install 'zchannels[bench]' "
                           "(scripts/bench installs it)")
    log_path = os.path.join(workdir, "gunicorn.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([gunicorn, "--chdir", os.path.join(ROOT, "consumers"),
                                 "demo_wsgi:application", "-w", str(workers),
                                 "-b", "127.0.0.1:0", "--backlog", "1024"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> int | None:
        from benchkit.servers import children
        with open(log_path, errors="replace") as f:
            text = f.read()
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
        if found and text.count("Booting worker") >= workers \
                and len(children(proc.pid)) >= workers:
            return int(found.group(1))
        return None
    port = wait_for(proc, ready, "gunicorn", log_path)
    return Baseline(f"gunicorn ({workers} workers)", proc, port, workdir)


if __name__ == "__main__":
    main()
