"""The HTTP publish API: any backend (PHP, Go, a shell script with curl) sends to
groups, reply channels and named channels through an interface.

In the spirit of Centrifugo's server API: ``POST <publish_path>`` with
``Authorization: Bearer <publish_token>`` and a JSON object naming one target::

    {"group": "chat.lobby", "text": "hello"}             # or "bytes_b64", or "close": code
    {"reply_channel": "i3f9a01bc!17", "text": "hello"}   # also "close" (+ "reason")
    {"channel": "thumbnails.make", "content": {...}, "payload_b64": "..."}

Group and reply-channel messages may add ``event`` and ``id`` for Server-Sent
Event members. The answer is 202 once the message is handed to the broker (or
to the pool's input): like every send, it is not a delivery receipt. 400 for a
bad body, 401 without a bearer token, 403 with a wrong one, 405 for another
method, 413 when the message is over ``max_message_bytes``, 429 with
``Retry-After`` while the client's wrong tokens are over ``token_failure_limit``
(`guard.FailureLimiter`; the token is then not looked at), 503 with
``Retry-After`` when the broker or the pool cannot take it now. Errors have a
JSON body ``{"error": "..."}``.

A refusal decided from the headers (405, 401, 403, 429, 413 by Content-Length)
keeps the connection usable: a body of up to the body limit is read and
discarded before the answer, so a client's pooled connection stays in step; a
larger one (or one the client waits to send, ``Expect: 100-continue``) is not
read, and the answer says ``Connection: close``.

The interface sends like any process that is not a worker: a DEALER of its own
to the broker's ``broker_clients`` for groups and reply channels (so the broker
needs nothing new), and a PUSH to a pool's input for a named channel. Sends never
block the event loop: they are non-blocking, and the sockets queue nothing while
the broker is away (``ZMQ_IMMEDIATE``), so a publish then gets 503 rather than
waiting in a queue that may never drain.

With ``publish_token = ""`` (the default) none of this exists: the path goes to
the consumers like any other. `authorize` and `parse` are the request's rules,
without I/O.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any

import tornado.web
import zmq
from tornado.http1connection import HTTP1Connection

from zchannels.wire import transport, frames as wire
from zchannels.core.config import Config
from zchannels.core.stats import counters
from zchannels.interface.compat import error_reason, is_finished
from zchannels.interface.guard import FailureLimiter
from zchannels.interface.http import METHODS, unread_body
from zchannels.interface.zmqio import SocketReader

log = logging.getLogger("zchannels.interface.publish")

BROKER_HWM = 1000  # messages queued towards the broker before a 503
POOL_HWM = 100  # towards a pool's input, beyond its capacity, as for the interface's events
BODY_SLACK = 65536  # bytes of JSON around a message, beyond twice max_message_bytes

TARGETS = ("group", "reply_channel", "channel")
FIELDS = {
    "group": {"group", "text", "bytes_b64", "close", "event", "id"},
    "reply_channel": {"reply_channel", "text", "bytes_b64", "close", "reason", "event", "id"},
    "channel": {"channel", "content", "payload_b64"},
}


class PublishError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Publication:
    """One validated request: the ZeroMQ frames to send, and where."""

    target: str  # one of TARGETS
    name: str  # the group, reply channel or channel
    frames: list[bytes]
    pool: str | None = None  # for a named channel: the pool whose input takes it


def body_limit(config: Config) -> int:
    """The largest request body: a message of max_message_bytes, base64-encoded or
    JSON-escaped, fits."""
    return 2 * config.max_message_bytes + BODY_SLACK


def authorize(authorization: str | None, token: str) -> int | None:
    """None if the ``Authorization`` header carries `token`; else 401 (no bearer token)
    or 403 (a wrong one)."""
    scheme, _, presented = (authorization or "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return 401
    # Tornado decodes header values as Latin-1: these are the bytes the client sent.
    try:
        raw = presented.encode("latin-1")
    except UnicodeEncodeError:
        return 403
    return None if hmac.compare_digest(raw, token.encode()) else 403


def parse(body: bytes, config: Config) -> Publication:
    """The request body as a Publication, or a PublishError (400, 413)."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise PublishError(400, f"the body is not JSON: {e}") from None
    if not isinstance(request, dict):
        raise PublishError(400, "the body must be a JSON object")
    targets = [t for t in TARGETS if t in request]
    if len(targets) != 1:
        raise PublishError(400, "name exactly one of \"group\", \"reply_channel\", "
                                "\"channel\"")
    target = targets[0]
    unknown = set(request) - FIELDS[target]
    if unknown:
        raise PublishError(400, f"unknown field(s) {sorted(unknown)} for a {target}; "
                                f"known: {sorted(FIELDS[target])}")
    try:
        if target == "channel":
            return _channel(request, config)
        return _message(target, request, config)
    except (ValueError, TypeError) as e:  # the wire module's checks
        raise PublishError(400, str(e)) from None


def _channel(request: dict[str, Any], config: Config) -> Publication:
    name = wire.check_name(request["channel"], "channel")
    pool = config.pool_for(name)
    if pool is None:
        raise PublishError(400, f"no pool serves channel {name!r}")
    content = request.get("content", {})
    if not isinstance(content, dict):
        raise PublishError(400, "content must be a JSON object")
    payload = _base64(request.get("payload_b64", ""), "payload_b64")
    header = wire.encode({**content, "channel": name})
    _check_size(len(header) + len(payload), config)
    return Publication("channel", name, [header, payload], pool.name)


def _message(target: str, request: dict[str, Any], config: Config) -> Publication:
    """A message (or a close) for a group or for one reply channel."""
    given = [k for k in ("text", "bytes_b64", "close") if k in request]
    if len(given) != 1:
        raise PublishError(400, "give exactly one of \"text\", \"bytes_b64\", \"close\"")
    header: dict[str, Any]
    payload = b""
    if "close" in request:
        reason = request.get("reason", "")
        if not isinstance(reason, str):
            raise PublishError(400, "reason must be a string")
        header = {"op": wire.OP_CLOSE, "code": wire.check_close(request["close"], reason)}
        if target == "reply_channel":
            header["reason"] = reason
    else:
        if "text" in request:
            if not isinstance(request["text"], str):
                raise PublishError(400, "text must be a string")
            kind, payload = wire.KIND_TEXT, request["text"].encode()
        else:
            kind, payload = wire.KIND_BYTES, _base64(request["bytes_b64"], "bytes_b64")
        _check_size(len(payload), config)
        header = {"op": wire.OP_SEND, "kind": kind}
        event, event_id = request.get("event"), request.get("id")
        if event is not None:
            if not isinstance(event, str) or not event.isprintable():
                raise PublishError(400, "event must be a string without control characters")
            header["event"] = event
        if event_id is not None:
            if isinstance(event_id, bool) or not isinstance(event_id, (str, int)):
                raise PublishError(400, "id must be a string or an integer")
            header["id"] = event_id
    if target == "group":
        name = wire.check_name(request["group"], "group")
        return Publication("group", name, [wire.VERB_GROUP, name.encode(),
                                           wire.encode(header), payload])
    name = request["reply_channel"]
    interface, header["conn"] = wire.split_reply_channel(name)
    frames = [wire.VERB_TO, interface, wire.encode(header)]
    if header["op"] == wire.OP_SEND:
        frames.append(payload)
    return Publication("reply_channel", name, frames)


def _base64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise PublishError(400, f"{field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise PublishError(400, f"{field} is not valid base64") from None


def _check_size(size: int, config: Config) -> None:
    if size > config.max_message_bytes:
        raise PublishError(413, f"the message is {size} bytes; the limit is "
                                f"max_message_bytes ({config.max_message_bytes})")


class Publisher:
    """The interface's sockets for publishing: a DEALER to the broker's broker_clients,
    and a PUSH to each pool's input. All are opened at start: with ZMQ_IMMEDIATE, a
    socket opened for the first request would refuse it while it connects."""

    def __init__(self, config: Config, interface_id: str, context: zmq.Context) -> None:
        self.config = config
        self.context = context
        self.broker = self._socket(zmq.DEALER, config.broker_clients, BROKER_HWM,
                                   routing_id=f"p{interface_id}".encode())
        self.pools = {pool.name: self._socket(zmq.PUSH, pool.endpoint_in, POOL_HWM)
                      for pool in config.pools}
        # The broker bounces a message for a reply channel whose interface is gone.
        self.reader = SocketReader(self.broker, self.on_message)

    def _socket(self, kind: int, endpoint: str, hwm: int,
                routing_id: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = 0  # the interface's shutdown gives every socket its linger
        sock.sndhwm = hwm
        sock.immediate = True  # nothing queued while the peer is away: a 503 instead
        if routing_id is not None:
            sock.routing_id = routing_id
        transport.connect(sock, endpoint, self.config)
        return sock

    def publish(self, publication: Publication) -> bool:
        """Hand it on without blocking; False if the broker or pool cannot take it now."""
        sock = self.broker if publication.pool is None else self.pools[publication.pool]
        try:
            sock.send_multipart(publication.frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        counters.incr("zmq_sent")
        if sock is self.broker:
            self.reader.kick()  # a send may swallow the read signal (see zmqio)
        return True

    def on_message(self, frames: list[bytes]) -> None:
        if len(frames) == 3 and frames[0] == wire.TO_WORKER_BOUNCE:
            counters.incr("publish_bounced")
            log.debug("published to a connection of interface %r, which is gone; dropped",
                      frames[1])
        else:
            counters.incr("garbage")
            log.warning("dropped a malformed message from the broker (%d frames)",
                        len(frames))

    def close(self) -> None:
        self.reader.close()  # the sockets go with the context, after their linger


@tornado.web.stream_request_body
class PublishRequest(tornado.web.RequestHandler):
    """``POST <publish_path>``: one message to a group, reply channel or channel."""

    SUPPORTED_METHODS = METHODS
    config: Config
    publisher: Publisher

    def initialize(self, publisher: Publisher, config: Config,
                   limiter: FailureLimiter) -> None:
        self.publisher = publisher
        self.config = config
        self.limiter = limiter
        self.limit = body_limit(config)
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.refused = False  # the body is discarded, not kept
        # A refusal to send once the body has been read: (status, message, headers).
        self.pending: tuple[int, str, dict[str, str]] | None = None

    def prepare(self) -> None:
        """Method, token and declared size, before any of the body is read."""
        counters.incr("publish_requests")
        request = self.request
        length = request.headers.get("Content-Length", "")
        if request.method != "POST":
            counters.incr("publish_invalid")
            self.refuse_unread(405, "use POST", Allow="POST")
        elif (wait := self.limiter.blocked(request.remote_ip)) is not None:
            self.refuse_unread(429, f"too many wrong tokens from this address; retry after "
                                    f"{wait} s", **{"Retry-After": str(wait)})
        elif (status := authorize(request.headers.get("Authorization"),
                                  self.config.publish_token)) == 401:
            counters.incr("publish_unauthorized")
            self.refuse_unread(401, "missing bearer token",
                               **{"WWW-Authenticate": 'Bearer realm="zchannels"'})
        elif status == 403:
            counters.incr("publish_forbidden")
            log.info("publish from %s with a wrong token", request.remote_ip)
            self.limiter.failed(request.remote_ip, "publish API")
            self.refuse_unread(403, "wrong token")
        elif length.isdigit() and int(length) > self.limit:
            self.too_large()
        if is_finished(self):
            raise tornado.web.Finish()
        connection = request.connection
        if isinstance(connection, HTTP1Connection):  # as ConsumerRequest: ours decides
            connection.set_max_body_size(2 * self.limit)

    def refuse_unread(self, status: int, message: str, **headers: str) -> None:
        """A refusal decided before the body: answered now if there is no body, else once
        a body within the limit has been read and discarded; a larger one (or one
        the client has not sent yet) is left unread, and the connection closed."""
        self.refused = True
        length = self.request.headers.get("Content-Length", "")
        if not unread_body(self.request):
            self.refuse(status, message, **headers)
        elif self.request.headers.get("Expect", "").lower() == "100-continue" or (
                length.isdigit() and int(length) > self.limit):
            self.refuse(status, message, Connection="close", **headers)
        else:
            self.pending = (status, message, headers)

    def data_received(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.refused:
            if self.pending is not None and self.body_size > self.limit:  # chunked
                status, message, headers = self.pending
                self.pending = None
                self.refuse(status, message, Connection="close", **headers)
            return
        if self.body_size > self.limit:
            self.body_parts.clear()
            self.too_large()
            return
        self.body_parts.append(chunk)

    def post(self) -> None:
        if self.pending is not None:  # the body has been read: answer the refusal
            status, message, headers = self.pending
            self.pending = None
            self.refuse(status, message, **headers)
            return
        if self.refused or is_finished(self):
            return
        try:
            publication = parse(b"".join(self.body_parts), self.config)
        except PublishError as e:
            counters.incr("publish_invalid")
            log.debug("publish refused (%d): %s", e.status, e.message)
            self.refuse(e.status, e.message)
            return
        finally:
            self.body_parts.clear()
        if not self.publisher.publish(publication):
            counters.incr("publish_refused")
            where = f"pool {publication.pool}" if publication.pool else "the broker"
            self.refuse(503, f"{where} cannot take the message now", **{"Retry-After": "1"})
            return
        counters.incr("publish_accepted")
        self.set_status(202)
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"ok": true}')

    # Every other method was refused (405) in prepare, answered once its body is read.
    get = head = put = patch = delete = options = post

    def too_large(self) -> None:
        """413: declared in the headers (the body is not read) or found while the body
        arrives (the rest is not read): either way the connection is then closed."""
        counters.incr("publish_invalid")
        self.refused = True
        self.refuse(413, f"the body is over {self.limit} bytes (twice max_message_bytes, "
                         f"plus {BODY_SLACK})", Connection="close")

    def refuse(self, status: int, message: str, **headers: str) -> None:
        self.refused = True
        self.clear()
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback to the client.
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": error_reason(self)}))
