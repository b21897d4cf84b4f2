"""Run a WSGI application (PEP 3333) for ``http.request`` messages no consumer claims.

The worker builds the environ from the message, calls the application, and
sends what it returns back on the request's reply channel: a response whose
body is known to be complete (a list, or as many bytes as its Content-Length)
goes as one message; any other iterable streams, part by part, as the
application yields it. The iterable's ``close()`` is always called.
"""
from __future__ import annotations

import importlib
import io
import logging
import sys
from typing import Any, Callable, Iterable
from urllib.parse import unquote_to_bytes

from zchannels.wire import frames as wire
from zchannels.api.message import Message, ReplyChannel

log = logging.getLogger("zchannels.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def load_app(spec: str) -> WSGIApp:
    """``"package.module:callable"`` -> the callable. Errors are not swallowed: a worker
    that cannot load its application must fail at start, loudly."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attribute, None)
    if not callable(app):
        raise TypeError(f"wsgi_app {spec!r}: {attribute!r} in {module.__file__} is not callable")
    return app


def environ_for(message: Message) -> dict[str, Any]:
    content = message.content
    host, port = (content.get("server") or ["localhost", 80])[:2]
    client = content.get("client") or ["", None]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": content.get("method", "GET"),
        "SCRIPT_NAME": "",
        # PEP 3333: the path decoded from %-escapes, its bytes as latin-1 characters.
        "PATH_INFO": unquote_to_bytes(content.get("path", "/")).decode("latin-1"),
        "QUERY_STRING": content.get("query_string", ""),
        "SERVER_NAME": str(host),
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/" + str(content.get("http_version") or "1.1"),
        "REMOTE_ADDR": str(client[0]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": content.get("scheme", "http"),
        "wsgi.input": io.BytesIO(message.payload),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "zchannels.message": message,
    }
    if client[1] is not None:
        environ["REMOTE_PORT"] = str(client[1])
    for name, value in content.get("headers", ()):
        key = name.upper()
        if "_" in key:
            # HTTP_X_USER could come from "X-User" or from "X_User": drop the
            # ambiguous spelling so no header can pass for another.
            continue
        key = key.replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
            continue
        key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    if message.payload and "CONTENT_LENGTH" not in environ:  # a chunked request body
        environ["CONTENT_LENGTH"] = str(len(message.payload))
    return environ


class Response:
    """start_response, and the parts of the body on their way to the interface."""

    def __init__(self, reply_channel: ReplyChannel) -> None:
        self.reply_channel = reply_channel
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.length: int | None = None  # from Content-Length
        self.started = False
        self.ended = False
        self.sent = 0

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code = status.split(" ", 1)[0]
        if not (code.isascii() and code.isdigit()):
            raise ValueError(f"WSGI status must start with a number: {status!r}")
        self.status = int(code)
        self.headers = [[str(name), str(value)] for name, value in headers]
        self.length = None
        for name, value in self.headers:
            if name.lower() == "content-length" and value.strip().isdigit():
                self.length = int(value)
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise RuntimeError("the WSGI application wrote before calling start_response")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"a WSGI body part must be bytes, not {type(data).__name__}")
        if not data or self.ended:
            return
        self.sent += len(data)
        last = self.length is not None and self.sent >= self.length
        self.send(bytes(data), more=not last)

    def send(self, payload: bytes, more: bool) -> None:
        if not self.started:
            self.started = True
            assert self.status is not None
            self.reply_channel._start(self.status, self.headers, more, wire.MODE_RESPONSE,
                                      payload)
        else:
            self.reply_channel._part(payload, more)
        self.ended = not more

    def finish(self) -> None:
        if self.status is None:
            raise RuntimeError("the WSGI application returned without calling start_response")
        if not self.ended:
            self.send(b"", more=False)


def run(app: WSGIApp, message: Message) -> None:
    """Call the application for one request and send its response."""
    assert message.reply_channel is not None
    response = Response(message.reply_channel)
    result = app(environ_for(message), response.start_response)
    try:
        if isinstance(result, (list, tuple)):
            # The whole body is here: one message, with a Content-Length.
            body = b"".join(result)
            if response.status is None:
                raise RuntimeError("the WSGI application returned without calling "
                                   "start_response")
            if not response.started and response.length is None:
                response.headers.append(["Content-Length", str(len(body))])
            if body:
                response.send(body, more=False)
        else:
            for part in result:
                response.write(part)
        response.finish()
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
