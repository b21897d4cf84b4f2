"""Everything the interface borrows from Tornado's internals, in one place.

Tornado has no public way to ask how much a stream still has to send, whether a
handler's headers have gone out or its response has finished, or which reason
phrase an error response carries; and two WebSocket behaviours (an over-size
message, a text message that is not UTF-8) can only be fixed by overriding
private methods of ``WebSocketProtocol13``. The rest of ``runtime`` calls the
functions here and touches no private Tornado name itself.

Tested on Tornado 6.4, 6.5.10 and 6.6.1; ``setup.cfg`` bounds Tornado to
``>=6.4,<6.7``. Every name here has a test in ``tests/test_tornado_compat.py``,
against real Tornado objects, that fails if an upgrade changes the internal it
relies on; another test there fails once the installed Tornado is outside the
bound, so moving the bound means running those tests first.
"""
from __future__ import annotations

import asyncio
import logging

import tornado.web
import tornado.websocket
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream, StreamClosedError

from zchannels.wire import frames as wire
from zchannels.core.stats import counters

__all__ = ["unsent_bytes", "headers_written", "is_finished", "response_status",
           "error_reason", "lingering_close", "LingeringClose", "close_frame_problem",
           "inflate_messages"]

log = logging.getLogger("zchannels.interface")

OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8
OPCODE_CONTROL = 0x8  # this bit: a control frame
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009


def close_frame_problem(payload: bytes) -> tuple[int, str] | None:
    """What is wrong with a client's close frame, as the code and reason to close with
    (RFC 6455 sections 5.5.1 and 7.4): a one-byte body or a code no endpoint may send is a
    protocol error (1002); a reason that is not UTF-8, invalid data (1007). None: fine."""
    if not payload:
        return None
    if len(payload) == 1:
        return CLOSE_PROTOCOL_ERROR, "close frame with a one-byte body"
    code = int.from_bytes(payload[:2], "big")
    if code not in wire.SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        return CLOSE_PROTOCOL_ERROR, f"invalid close code {code}"
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return CLOSE_INVALID_PAYLOAD, "close reason is not valid UTF-8"
    return None


def unsent_bytes(stream: IOStream | None) -> int:
    """Bytes written to the stream that the kernel has not taken yet; 0 for no
    stream or a closed one. Tornado keeps no public count; if the private buffer
    ever disappears this says 0, and the stream's own ``max_write_buffer_size``
    is the backstop."""
    buffer = getattr(stream, "_write_buffer", None)  # None once the stream has closed
    return len(buffer) if buffer is not None else 0


def websocket_stream(handler: tornado.websocket.WebSocketHandler) -> IOStream | None:
    """The IOStream under an open WebSocket (Tornado's protocol keeps it as ``stream``);
    frames written to it directly skip a Future per message."""
    protocol = handler.ws_connection
    return protocol.stream if protocol is not None else None


def server_closing(handler: tornado.websocket.WebSocketHandler | None) -> bool:
    """Whether the WebSocket is gone or the server has sent its close frame (Tornado's
    ``server_terminated``): nothing more may be written."""
    protocol = handler.ws_connection if handler is not None else None
    return protocol is None or bool(protocol.server_terminated)


def limit_write_buffer(stream: IOStream, max_bytes: int) -> None:
    """Past `max_bytes` unsent, Tornado's stream raises StreamBufferFullError whatever
    writes (its ``max_write_buffer_size``, settable only after the stream is made)."""
    stream.max_write_buffer_size = max_bytes


def request_stream(connection: object) -> IOStream | None:
    """The IOStream of an HTTP/1 request's connection (Tornado's HTTP1Connection keeps it
    as ``stream``), or None for any other kind."""
    return connection.stream if isinstance(connection, HTTP1Connection) else None


def peer_address(connection: object) -> object:
    """The peer's address of a request's connection; None once the client has gone."""
    stream = request_stream(connection)
    sock = stream.socket if stream is not None else None
    try:
        return sock.getpeername() if sock is not None else None
    except OSError:
        return None


def headers_written(handler: tornado.web.RequestHandler) -> bool:
    """Whether the status line and headers have gone out (by a flush or a finish):
    from then on only the body can be added, and an error response is impossible."""
    return handler._headers_written


def is_finished(handler: tornado.web.RequestHandler) -> bool:
    """Whether ``finish()`` has been called (directly, or by ``send_error``)."""
    return handler._finished


def response_status(handler: tornado.web.RequestHandler) -> int:
    """The status code the response has now. Public API (``get_status``), kept here
    so that the call sites that used ``_status_code`` have one name to switch to."""
    return handler.get_status()


def error_reason(handler: tornado.web.RequestHandler) -> str:
    """The reason phrase of the response: the ``reason`` given to ``send_error`` or
    ``set_status`` or an ``HTTPError``, else the standard phrase of the status.
    For ``write_error``, which Tornado calls without it."""
    return handler._reason


def lingering_close(protocol: tornado.websocket.WebSocketProtocol | None
                    ) -> tornado.websocket.WebSocketProtocol | None:
    """For ``WebSocketHandler.get_websocket_protocol``: the protocol Tornado chose,
    as a ``LingeringClose`` when it is the RFC 6455 one (the only one Tornado has)::

        def get_websocket_protocol(self):
            return lingering_close(super().get_websocket_protocol())
    """
    if isinstance(protocol, tornado.websocket.WebSocketProtocol13):
        return LingeringClose(protocol.handler, protocol.mask_outgoing, protocol.params)
    return protocol


def inflate_messages(handler: tornado.websocket.WebSocketHandler, keep_context: bool) -> None:
    """Have Tornado inflate this client's compressed messages (RSV1), as permessage-deflate
    agreed outside it (``deflate``). Call it from ``open()``, before the first frame is
    read. Tornado's decompressor applies ``max_message_size`` to the *inflated* message
    (1009 beyond it) and never inflates more than that. Its window is always 15 bits: a
    client's smaller window is inflated just the same. `keep_context`: the client did
    not agree to client_no_context_takeover, so one inflater lives as long as the
    connection — made at its first compressed message, so an idle socket costs nothing."""
    protocol = handler.ws_connection
    if isinstance(protocol, tornado.websocket.WebSocketProtocol13):
        protocol._decompressor = LazyInflater(keep_context, protocol.params.max_message_size)


class LazyInflater(tornado.websocket._PerMessageDeflateDecompressor):
    """Tornado's decompressor, but a persistent one is made when first needed."""

    def __init__(self, keep_context: bool, max_message_size: int) -> None:
        super().__init__(persistent=False, max_wbits=15, max_message_size=max_message_size)
        self._keep_context = keep_context

    def decompress(self, data: bytes) -> bytes:
        if self._keep_context and self._decompressor is None:
            self._decompressor = self._create_decompressor()
        return super().decompress(data)


class LingeringClose(tornado.websocket.WebSocketProtocol13):
    """The server side of a WebSocket that closes with a code the client can see.

    Tornado closes an over-size message with 1009 and tears the TCP connection
    down at once. The rest of the big frame is then unread input, so the kernel
    answers with a reset that destroys the close frame: the client sees 1006, not
    1009. Here the connection instead lingers, reading and discarding, until the
    client closes or LINGER seconds pass.

    Tornado also drops the connection, without a close frame or a log line, on a
    text message that is not UTF-8; here that is a close with 1007, counted
    (``invalid_utf8``) and logged. And it echoes any close code a client sends; here a
    code no endpoint may send (or a one-byte close body) is answered with 1002, a close
    reason that is not UTF-8 with 1007, counted (``invalid_close``).

    With compression on, Tornado takes the RSV1 bit of every frame but a continuation
    as "this message is compressed", control frames included: a ping between two
    fragments of a compressed message made it forget the message was compressed, and
    a control frame with RSV1 set (forbidden, RFC 7692 6.1) was inflated. Here the bit
    of a control frame is its own, and set it is a protocol error (1002).
    """

    LINGER = 2.0  # seconds
    _sent_close_code: int | None = None
    _lingering = False
    _in_text_message = False
    _rsv1 = False  # the RSV1 bit of the last frame Tornado read that was not a continuation
    _rsv1_before = False  # ... and of the one before it

    @property
    def _frame_compressed(self) -> bool:
        return self._rsv1

    @_frame_compressed.setter
    def _frame_compressed(self, value: bool | None) -> None:
        self._rsv1_before, self._rsv1 = self._rsv1, bool(value)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        if self._sent_close_code is None:
            self._sent_close_code = code
        super().close(code, reason)

    def _handle_message(self, opcode: int, data: bytes) -> "asyncio.Future[None] | None":
        if opcode & OPCODE_CONTROL and self._decompressor is not None:
            # Tornado set the bit from this control frame; the message it may have
            # interrupted keeps its own.
            compressed, self._rsv1 = self._rsv1, False
            try:
                if compressed and not self.client_terminated:
                    counters.incr("invalid_frames")
                    log.info("a control frame with RSV1 set: closing with %d",
                             CLOSE_PROTOCOL_ERROR)
                    self.close(CLOSE_PROTOCOL_ERROR, "compressed control frame")
                    return None
                return self._handle_checked(opcode, data)
            finally:
                self._rsv1 = self._rsv1_before
        return self._handle_checked(opcode, data)

    def _handle_checked(self, opcode: int, data: bytes) -> "asyncio.Future[None] | None":
        if opcode == OPCODE_CLOSE and not self.client_terminated:
            problem = close_frame_problem(data)
            if problem is not None:
                # Tornado would echo the code back; the RFC wants a protocol error.
                counters.incr("invalid_close")
                log.info("a close frame from the client is invalid (%s): closing with %d",
                         problem[1], problem[0])
                self.client_terminated = True
                self.close_code = problem[0]  # what the disconnect consumer is told
                self.close(*problem)
                return None
        # Tornado's answer to a text message that is not UTF-8 is `_abort()` from
        # inside this method: remember that a text message is being handled.
        self._in_text_message = opcode == OPCODE_TEXT
        try:
            return super()._handle_message(opcode, data)
        finally:
            self._in_text_message = False

    def _abort(self) -> None:
        if self._in_text_message and not self.server_terminated:
            self._in_text_message = False
            counters.incr("invalid_utf8")
            log.warning("a text message that is not UTF-8: closing with %d",
                        CLOSE_INVALID_PAYLOAD)
            self.close(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
            return
        if self._lingering:
            return
        stream = self.stream
        if self._sent_close_code == CLOSE_MESSAGE_TOO_BIG and stream is not None \
                and not stream.closed():
            self._lingering = True
            self.client_terminated = self.server_terminated = True
            asyncio.ensure_future(self._discard_then_abort(stream))
            return
        super()._abort()

    async def _discard_then_abort(self, stream: IOStream) -> None:
        deadline = asyncio.get_running_loop().time() + self.LINGER
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                await asyncio.wait_for(stream.read_bytes(65536, partial=True), remaining)
        except (StreamClosedError, asyncio.TimeoutError):
            pass
        stream.close()
