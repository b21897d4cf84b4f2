"""The shared behaviour scenarios (tests/behaviour.py) against real processes: the
broker, 2 workers and 2 interfaces of tests/harness.py, with the demo and test
consumers, driven through real sockets by a synchronous client with the API of
zchannels.testing's clients."""
from __future__ import annotations

import asyncio
import collections
import email.message
import http.client
import json
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from behaviour import SCENARIOS
from harness import System, checked_system
from zchannels.testing import ServerSentEvent, WebSocketClosed

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0  # seconds any one step may take
T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a thread of its own, for Tornado's WebSocket client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = TIMEOUT) -> T:
        """Run ``make()`` on the loop (Tornado binds to the loop it is called on)."""
        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)
        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result(timeout + 1)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class RealSocket:
    def __init__(self, loop: LoopThread, url: str) -> None:
        self.loop = loop
        self.frames: collections.deque[str | bytes] = collections.deque()
        self.ws: WebSocketClientConnection | None = None
        self.closed = False
        try:
            self.ws = loop.call(lambda: websocket_connect(url))
            self.status = 101
        except HTTPClientError as e:
            self.status = e.code

    @property
    def accepted(self) -> bool:
        return self.status == 101

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code if self.ws is not None else None

    def send(self, text: str | None = None, bytes: bytes | None = None) -> None:
        assert self.ws is not None
        ws = self.ws
        data = text if text is not None else bytes
        self.loop.call(lambda: ws.write_message(data, binary=bytes is not None))

    def _read(self, timeout: float) -> str | bytes | None:
        assert self.ws is not None
        ws = self.ws
        if self.closed:
            return None
        try:
            message = self.loop.call(ws.read_message, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"nothing received within {timeout}s") from None
        self.closed = message is None
        return message

    def receive(self, timeout: float = TIMEOUT) -> str | bytes:
        if self.frames:
            return self.frames.popleft()
        message = self._read(timeout)
        if message is None:
            raise WebSocketClosed(self.close_code, (self.ws.close_reason if self.ws else "") or "")
        return message

    def receive_json(self, timeout: float = TIMEOUT) -> Any:
        frame = self.receive(timeout)
        assert isinstance(frame, str), frame
        return json.loads(frame)

    def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        deadline = time.monotonic() + timeout
        while (message := self._read(max(0.01, deadline - time.monotonic()))) is not None:
            self.frames.append(message)
        return self.close_code

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws is not None and not self.closed:
            ws = self.ws

            async def close() -> None:
                ws.close(code, reason)
            self.loop.call(close)


class RealResponse:
    """An HTTP request on its own connection, read by a thread as the parts arrive."""

    def __init__(self, port: int, method: str, path: str, body: bytes | str,
                 headers: Mapping[str, str] | None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.changed = threading.Condition()
        self.status: int | None = None
        self.headers = email.message.Message()
        self.parts: list[bytes] = []
        self.complete = False
        self.events = ""
        self.consumed = 0
        self.thread = threading.Thread(target=self._run, args=(method, path, body, headers),
                                       daemon=True)
        self.thread.start()

    def _run(self, method: str, path: str, body: bytes | str,
             headers: Mapping[str, str] | None) -> None:
        try:
            self.conn.request(method, path, body=body or None, headers=dict(headers or {}))
            response = self.conn.getresponse()
            with self.changed:
                self.status, self.headers = response.status, response.msg
                self.changed.notify_all()
            while chunk := response.read1(65536):
                with self.changed:
                    self.parts.append(chunk)
                    self.changed.notify_all()
        except (OSError, http.client.HTTPException):
            pass  # closed by the test
        finally:
            with self.changed:
                self.complete = True
                self.changed.notify_all()

    def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    @property
    def body(self) -> bytes:
        with self.changed:
            return b"".join(self.parts)

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def wait(self, timeout: float = TIMEOUT) -> RealResponse:
        if not self.until(lambda: self.complete, timeout):
            raise TimeoutError(f"response not complete within {timeout}s")
        return self

    def receive_event(self, timeout: float = TIMEOUT) -> ServerSentEvent:
        deadline = time.monotonic() + timeout
        while True:
            block, sep, rest = self.events.partition("\n\n")
            if sep:
                self.events = rest
                event = ServerSentEvent.parse(block)
                if event is not None:
                    return event
                continue
            if not self.until(lambda: len(self.parts) > self.consumed or self.complete,
                              max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"no event within {timeout}s")
            with self.changed:
                if len(self.parts) == self.consumed:
                    raise EOFError("the event stream ended")
                self.events += b"".join(self.parts[self.consumed:]).decode()
                self.consumed = len(self.parts)

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)
        self.conn.close()


class RealBackend:
    """The API tests/behaviour.py expects of a backend, over real sockets."""

    def __init__(self, system: System, loop: LoopThread) -> None:
        self.system = system
        self.loop = loop
        self.sockets: list[RealSocket] = []
        self.responses: list[RealResponse] = []

    def websocket(self, path: str) -> RealSocket:
        ws = RealSocket(self.loop, self.system.url(path))
        self.sockets.append(ws)
        return ws

    def http(self, method: str, path: str, body: bytes | str = b"",
             headers: Mapping[str, str] | None = None, wait: bool = True) -> RealResponse:
        response = RealResponse(self.system.port, method, path, body, headers)
        self.responses.append(response)
        if wait and not response.until(lambda: response.status is not None
                                       or response.complete, TIMEOUT):
            raise TimeoutError(f"{method} {path}: no response within {TIMEOUT}s")
        return response

    def expect_error(self, pattern: str) -> None:
        self.system.expect_error(pattern)

    def close(self) -> None:
        for ws in self.sockets:
            ws.close()
        for response in self.responses:
            response.close()


@pytest.fixture(scope="module")
def loop():
    running = LoopThread()
    yield running
    running.close()


@pytest.fixture(scope="module")
def system():
    # Default consumers: the demo's and tests/consumers. Any ERROR a scenario did not
    # declare with backend.expect_error fails the module's last test.
    with checked_system() as running:
        yield running


@pytest.fixture
def backend(system, loop):
    real = RealBackend(system, loop)
    yield real
    real.close()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_behaviour(scenario, backend):
    scenario(backend)
