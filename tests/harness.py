"""Start a real zchannels system for a test: real processes, real ZeroMQ sockets.

`System` is the shipped `zchannels.testing.LiveServer` (``python -m zchannels <role>``,
the commands supervisord runs, each with its own log file, in a private run directory
with its own config, every process stopped by its PID) as the tests here use it: the
repository's demo and test consumers, two workers and two interfaces, counters written
every 0.2 s. What only these tests need is added here: killing and restarting
processes, reading the counters and the test consumers' records, and the check that
no process logged an error the test did not expect.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from zchannels.testing.live import LiveServer, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_env() -> dict[str, str]:
    """The environment to run ``python -m benchkit`` in, as scripts/bench does: the
    benchmark lives in scripts/benchkit and is not installed with zchannels."""
    scripts = os.path.join(ROOT, "scripts")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": scripts + (os.pathsep + path if path else "")}
TEST_CONSUMERS = os.path.join(ROOT, "tests", "consumers")
DEMO_CONSUMERS = os.path.join(ROOT, "consumers")

ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^Traceback ", re.MULTILINE)

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run a coroutine to completion in a fresh event loop, failing after `timeout` seconds."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def reserve_port() -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket on a free loopback port.

    Interfaces bind the same port with SO_REUSEPORT; the kernel hands
    connections only to listening sockets, so holding this one costs nothing and
    keeps any other program from taking the port before the interfaces are up.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class System(LiveServer):
    def __init__(self, *, workers: int = 2, interfaces: int = 2,
                 consumers: tuple[str, ...] = (DEMO_CONSUMERS, TEST_CONSUMERS),
                 server: dict[str, Any] | None = None,
                 pools: dict[str, tuple[list[str], int]] | None = None,
                 pool_capacity: dict[str, int] | None = None,
                 env: dict[str, str] | None = None,
                 history: list[dict[str, Any]] | None = None) -> None:
        """`pools`: name -> (channel patterns, number of workers), in routing order;
        default: one pool "default" serving "*" with `workers` workers.
        `pool_capacity`: name -> capacity, for the pools that do not use the default.
        `env`: more environment variables for every process.
        `history`: ``[[history.groups]]`` rules, e.g. ``[{"pattern": "chat.*", "size": 500}]``."""
        pool_capacity = pool_capacity or {}
        pools = pools or {"default": (["*"], workers)}
        tables: dict[str, Any] = {
            "server": {"stats_interval": 0.2, **(server or {})},
            "pools": {name: {"channels": channels, **({"capacity": pool_capacity[name]}
                                                      if name in pool_capacity else {})}
                      for name, (channels, *_) in pools.items()}}
        if history:
            tables["history"] = {"groups": list(history)}
        super().__init__(ROOT, config=tables, consumers=consumers, interfaces=interfaces,
                         workers={name: count for name, (_, count, *_) in pools.items()},
                         env=env, django=False)
        self.record_path = os.path.join(self.run_dir, "record.log")
        self.env.setdefault("ZCHANNELS_TEST_RECORD", self.record_path)
        self.restarts: list[tuple[str, int, int]] = []  # (name, old pid, new pid)
        self.expected_errors: list[re.Pattern[str]] = []

    # -- processes ---------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL one process, as a crash would."""
        proc = self.processes[name]
        proc.kill()
        proc.wait(10)

    def restart(self, name: str, wait: bool = True) -> subprocess.Popen[bytes]:
        """Start `name` again with the same arguments; `wait` until it is ready."""
        old = self.processes[name]
        args = self.arguments[name]
        proc = self.spawn(name, *args)
        self.restarts.append((name, old.pid, proc.pid))
        if wait:
            info = self.wait_ready(self.role_of(name), proc)
            if name.startswith("interface"):
                assert info["port"] == self.port
        return proc

    def interface_name_of(self, reply_channel: str) -> str:
        """The name (interface-N) of the running interface that owns `reply_channel`."""
        interface_id = reply_channel.split("!")[0]
        ready = os.path.join(self.run_dir, "ready")
        for name, proc in self.processes.items():
            path = os.path.join(ready, f"interface.{proc.pid}")
            if name.startswith("interface") and os.path.exists(path):
                with open(path) as f:
                    if json.load(f)["id"] == interface_id:
                        return name
        raise AssertionError(f"no running interface has id {interface_id}")

    def role_of(self, name: str) -> str:
        args = self.arguments[name]
        return f"{args[0]}-{args[2]}" if args[0] == "worker" else args[0]

    @contextlib.contextmanager
    def supervised(self, prefix: str, interval: float = 0.1) -> Iterator[None]:
        """Restart any process whose name starts with `prefix` when it exits, as
        supervisord's autorestart would, while the block runs."""
        done = threading.Event()
        failures: list[BaseException] = []

        def restart_dead() -> None:
            for name, proc in list(self.processes.items()):
                if name.startswith(prefix) and proc.poll() is not None:
                    self.restart(name, wait=False)  # it may die again before it is ready

        def watch() -> None:
            while not done.wait(interval):
                try:
                    restart_dead()
                except BaseException as e:  # reported when the block ends
                    failures.append(e)
                    return
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join(5)
        if failures:
            raise failures[0]
        # Leave every supervised process running and ready for what comes next.
        restart_dead()
        for name, proc in list(self.processes.items()):
            if name.startswith(prefix):
                self.wait_ready(self.role_of(name), proc)

    cleanup = LiveServer.close  # the name the tests here use

    # -- observing -----------------------------------------------------------

    # Before LiveServer had its base URLs (`url`, `ws_url`), the tests here had this:
    # a WebSocket URL of `path`.
    def url(self, path: str) -> str:  # type: ignore[override]
        return self.ws_url + path

    async def connect(self, path: str, **kwargs: Any) -> WebSocketClientConnection:
        return await websocket_connect(self.url(path), **kwargs)

    def all_logs(self) -> str:
        return "\n".join(self.logs().values())

    def expect_error(self, pattern: str) -> None:
        """Declare an ERROR line (or traceback) a test provokes on purpose."""
        self.expected_errors.append(re.compile(pattern))

    def unexpected_errors(self) -> list[str]:
        found = []
        for name, text in self.logs().items():
            lines = text.splitlines()
            for i, line in enumerate(lines):
                if not ERROR_LINE.search(line):
                    continue
                context = "\n".join(lines[i:i + 30])
                if not any(p.search(context) for p in self.expected_errors):
                    found.append(f"{name}: {line}")
        return found

    def settled_counters(self, prefix: str, timeout: float = 5.0) -> dict[str, int]:
        """Counters as they are now: wait until every running process whose name
        starts with `prefix` has written its stats file after this call began."""
        since = time.time()

        def written() -> tuple[dict[str, int]] | None:
            counts = self.counters(prefix, since=since)
            return None if counts is None else (counts,)
        return wait_until(written, timeout, f"{prefix} processes to write their stats")[0]

    def counters(self, prefix: str, since: float = 0.0) -> dict[str, int] | None:
        """The sum of the counters and gauges of the running processes whose name
        starts with `prefix`; None if one has not written its stats after `since`."""
        stats_dir = os.path.join(self.run_dir, "stats")
        files = os.listdir(stats_dir) if os.path.isdir(stats_dir) else []
        total: dict[str, int] = {}
        for name, proc in self.processes.items():
            if not name.startswith(prefix) or proc.poll() is not None:
                continue
            data = None
            for filename in files:
                if filename.endswith(f".{proc.pid}.json"):
                    try:
                        with open(os.path.join(stats_dir, filename)) as f:
                            data = json.load(f)
                    except (OSError, ValueError):  # being replaced right now
                        pass
            if data is None or data.get("time", 0) <= since:
                return None
            for key, value in {**data["counters"], **data["gauges"]}.items():
                total[key] = total.get(key, 0) + value
        return total

    def records(self) -> list[list[str]]:
        """Lines the test consumers appended to the record file, split into fields."""
        try:
            with open(self.record_path) as f:
                return [line.split() for line in f.read().splitlines() if line]
        except FileNotFoundError:
            return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(recorded: dict[str, Any]) -> None:
    """What a live server's test recorded ({"pids": [...], "run_dir": ...}): none of its
    processes is alive, its run directory is gone."""
    assert len(recorded["pids"]) >= 3  # a broker, a worker, an interface at least
    assert not [pid for pid in recorded["pids"] if alive(pid)]
    assert not os.path.exists(recorded["run_dir"])


@contextlib.contextmanager
def checked_system(*expected_errors: str, **options: Any) -> Iterator[System]:
    """A started `System` that, when the block ends, fails if any process logged an
    ERROR line or traceback other than the `expected_errors` patterns."""
    with System(**options) as running:
        for pattern in expected_errors:
            running.expect_error(pattern)
        yield running
        unexpected = running.unexpected_errors()
    assert not unexpected, "processes logged unexpected errors:\n" + "\n".join(unexpected)


async def refused_status(request: str | HTTPRequest) -> int:
    """The HTTP status of a WebSocket handshake the server refuses (fails if it accepts)."""
    try:
        ws = await websocket_connect(request)
    except HTTPClientError as e:
        return e.code
    ws.close()
    raise AssertionError("the handshake was accepted")


async def echo_once(target: str | HTTPRequest, text: str) -> str | bytes | None:
    """One round trip on a fresh /ws/echo connection: what came back."""
    ws = await websocket_connect(target)
    ws.write_message(text)
    answer = await read(ws)
    ws.close()
    return answer


async def join_member(system: System, group: str) -> tuple[WebSocketClientConnection, str]:
    """Join `group` through /test/member/<group> (tests/consumers/membership.py), whose
    connect consumer sends the reply channel, then group_adds and at once group_sends
    a hello. Returns once this member's own hello arrived; earlier members' hellos
    may come before it."""
    ws = await system.connect(f"/test/member/{group}")
    first = await read(ws)
    assert isinstance(first, str) and first.startswith("rc:"), first
    rc = first[3:]
    while (message := await read(ws)) != f"hello {rc} True":
        assert message is not None, "closed before its own hello arrived"
        assert isinstance(message, str) and message.startswith("hello "), message
    return ws, rc


async def read(ws: WebSocketClientConnection, timeout: float = 5.0) -> str | bytes | None:
    """The next message, or None once the server has closed the socket."""
    return await asyncio.wait_for(ws.read_message(), timeout)


async def read_until_closed(ws: WebSocketClientConnection, timeout: float = 5.0) -> list[Any]:
    messages = []
    while True:
        message = await read(ws, timeout)
        if message is None:
            return messages
        messages.append(message)


def cookies_of(headers: Any) -> dict[str, str]:
    """The cookies a response sets (its Set-Cookie headers), by name."""
    jar: SimpleCookie = SimpleCookie()
    for value in headers.get_all("Set-Cookie") or ():
        jar.load(value)
    return {name: morsel.value for name, morsel in jar.items()}


def cookie_header(cookies: dict[str, str]) -> str:
    """A Cookie header that sends `cookies` back."""
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def http_request(port: int, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None,
                 timeout: float = 10.0) -> tuple[int, Any, bytes]:
    """One HTTP/1.1 request on a fresh connection: (status, headers, body). The
    headers are an `email.message.Message`: ``get_all("Set-Cookie")`` for repeats."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.msg, response.read()
    finally:
        conn.close()


def read_gated_stream(system: System, path: str, gate: str) -> tuple[Any, bytes, bytes]:
    """GET a streamed response whose producer waits for the file ``gate-<gate>`` in
    the run directory after its first line: (response, first line, rest). The first
    line arriving before the gate opens proves the body streams rather than
    arriving whole."""
    gate_file = os.path.join(system.run_dir, f"gate-{gate}")
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=20)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        first = response.readline() if response.status == 200 else b""
        open(gate_file, "w").close()
        return response, first, response.read()
    finally:
        conn.close()
        os.unlink(gate_file)


def raw_websocket(port: int, path: str) -> socket.socket:
    """A WebSocket client on a raw blocking socket with a tiny receive window, for
    clients that stop reading: the handshake is read byte by byte, so the frames that
    follow it stay unread in the kernel."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


class LoadThread:
    """Clients that load a system from a thread of their own while a test reads its
    figures: a subclass's `scenario` (a coroutine) runs until `done` is set; the block
    ends it, and an error of the clients is raised when the block ends."""

    def __init__(self, system: "System", timeout: float = 90) -> None:
        self.system = system
        self.timeout = timeout
        self.ready = threading.Event()  # set by the scenario (or by its failure)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.main, daemon=True)

    async def scenario(self) -> None:
        raise NotImplementedError

    def main(self) -> None:
        try:
            run(self.scenario(), timeout=self.timeout)
        except BaseException as e:  # reported when the block ends
            self.error = e
            self.ready.set()

    def __enter__(self) -> "LoadThread":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the load's clients did not finish"
        if self.error is not None and exc[0] is None:
            raise self.error


@contextlib.contextmanager
def publisher_for(system: "System") -> Iterator[Any]:
    """A connection to `system`'s broker from the test process (as a cron job's): it
    group_sends to any group, as any other process may."""
    from zchannels.api.connection import connect
    from zchannels.api.sender import set_current
    from zchannels.core.config import load
    connection = connect(load(system.config_path, environ=system.env))
    try:
        yield connection
    finally:
        connection.close()
        set_current(None)


DASHBOARD_PATH = "/_zchannels/dashboard"


def dashboard_cookie(port: int, token: str, path: str = DASHBOARD_PATH) -> str:
    """The Cookie header that the dashboard's token, exchanged once at the page (a 303
    to the page without it), becomes; the cookie is not the token."""
    status, headers, _ = http_request(port, "GET", f"{path}?token={token}")
    assert status == 303 and headers["Location"] == path, (status, headers)
    cookies = cookies_of(headers)
    assert set(cookies) == {"zchannels_dashboard"} and token not in cookies.values()
    return cookie_header(cookies)


async def json_events_until(ws: WebSocketClientConnection, done: Callable[[list[Any]], Any],
                            timeout: float = 10.0) -> list[Any]:
    """The JSON messages `ws` receives (parsed), as they come, until done(events); each
    read waits `timeout` seconds at most, and a close fails the test."""
    events: list[Any] = []
    while not done(events):
        message = await read(ws, timeout)
        assert message is not None, f"closed ({ws.close_code}) after {len(events)} events"
        events.append(json.loads(message))
    return events


def dashboard_events(system: "System", token: str,
                     path: str = DASHBOARD_PATH) -> tuple[http.client.HTTPConnection, Any]:
    """The dashboard's event stream, opened with the cookie its token becomes: (the
    connection, its 200 response); the caller closes the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
    conn.request("GET", f"{path}/events",
                 headers={"Cookie": dashboard_cookie(system.port, token, path)})
    response = conn.getresponse()
    assert response.status == 200, response.status
    return conn, response
