"""What a worker does with one message, without its sockets (`Dispatcher`).

It reads the frames the broker hands on into a `Message`, finds its consumer --
routes first, then the defaults: 4404 for a WebSocket path no consumer handles, the
WSGI application or 404 for an HTTP request, nothing for a disconnect, and a count
(and one log line) for any other channel nobody consumes -- runs it isolated, and
writes the event's done. The worker process (`worker.Worker`) puts its sockets
around it; the in-memory test server (`zchannels.testing`) its run queue, so that
tests and production decide the same way.

Two variants, chosen once when the application is loaded (`app.Application`), so that
the plain one does nothing more per event: `DjangoDispatcher` looks after Django's
database connections around every event, and `UnavailableDispatcher` answers every
event at once when the application failed to import.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

from zchannels.api import routing
from zchannels.api.message import Message
from zchannels.api.sender import Replier
from zchannels.core.config import WEBSOCKET_CHANNELS
from zchannels.core.stats import counters
from zchannels.wire import frames as wire
from zchannels.worker import wsgi
from zchannels.worker import hosts

log = logging.getLogger("zchannels.worker")

CLOSE_NO_CONSUMER = 4404  # WebSocket close code: nothing handles this path
NOT_FOUND_BODY = "404 Not Found: no consumer for this path\n"
# The application failed to import (UnavailableDispatcher): 1011, as for a consumer that
# raised -- the server's code failed, not the pool's capacity (that is 1013).
CLOSE_APP_UNAVAILABLE = 1011
APP_UNAVAILABLE_REASON = "application failed to import"
APP_UNAVAILABLE_BODY = ("503 Service Unavailable: the application failed to import. The "
                        "error is in the worker logs (logs/worker-*.log in the run "
                        "directory) and on the terminal of zchannels run.\n")

# Told of each failure a worker logs at ERROR, with the message it concerns and the
# traceback or logged text: a consumer that raised, a session that cannot be stored.
OnError = Callable[[Message, str, BaseException], None]


class Dispatcher:
    """Routes, defaults, isolation and the done of one message at a time.

    `count` bumps a named counter (the process's `counters` by default); `on_error`,
    if given, hears of every failure besides the log."""

    def __init__(self, registry: routing.Registry, wsgi_app: wsgi.WSGIApp | None,
                 count: Callable[[str], None] = counters.incr,
                 on_error: OnError | None = None) -> None:
        self.registry = registry
        self.wsgi_app = wsgi_app
        self.count = count
        self.on_error = on_error
        self.unhandled_seen: set[str] = set()

    def parse(self, frames: list[bytes], sender: Replier) -> tuple[Message, int | None] | None:
        """The message in ``[header, payload]`` (a named channel's) or ``[header, payload,
        sequence]`` (a client's event), and its sequence; None for garbage (counted,
        logged)."""
        if len(frames) not in (2, 3):
            self.count("garbage")
            log.warning("dropped a malformed event (%d frames, expected 2 or 3)", len(frames))
            return None
        try:
            message = Message(wire.decode(frames[0]), frames[1], sender)
            sequence = int(frames[2]) if len(frames) == 3 else None
        except (ValueError, KeyError, TypeError) as e:  # e.g. a bad "reply_channel" key
            self.count("garbage")
            log.warning("dropped a malformed event: %s", e)
            return None
        return message, sequence

    def call(self, message: Message) -> bool:
        """Run the message's consumer, isolated: an exception is counted, logged with
        its traceback and reported, never raised. True if the consumer raised."""
        try:
            self.dispatch(message)
        except Exception as e:
            self.count("consumer_errors")
            log.exception("consumer for %s %s failed (%s)", message.channel,
                          message.path or "", message.reply_channel or "no reply channel")
            if self.on_error is not None:
                self.on_error(message, traceback.format_exc(), e)
            return True
        return False

    def dispatch(self, message: Message) -> None:
        """Run the message's consumer, or the default for its channel (raises what the
        consumer raises)."""
        if message.channel == "websocket.connect" and hosts.refused(message, self.count):
            return  # Django's ALLOWED_HOSTS (zchannels.worker.hosts): 403
        path = message.path
        found = self.registry.match(message.channel, path)
        if found is not None:
            func, kwargs = found
            func(message, **kwargs)
            return
        if message.channel == "http.request" and message.reply_channel is not None:
            if self.wsgi_app is not None:
                wsgi.run(self.wsgi_app, message)
                return
            self.count("no_consumer_for_path")
            log.info("no consumer for HTTP %s %r: 404", message.method, path)
            message.reply_channel.respond(NOT_FOUND_BODY, status=404)
            return
        if message.channel == "http.disconnect":
            return  # nothing to clean up unless a consumer asked for it
        if message.channel in WEBSOCKET_CHANNELS:
            if self.registry.handles_path(path, WEBSOCKET_CHANNELS):
                # The path has consumers, just none for this event (commonly no
                # disconnect consumer): nothing to do. Without a connect consumer the
                # connection is accepted as is.
                return
            if message.channel == "websocket.connect" and message.reply_channel is not None:
                self.count("no_consumer_for_path")
                log.warning("no consumer for WebSocket path %r: closing %s with %d",
                            path, message.reply_channel, CLOSE_NO_CONSUMER)
                message.reply_channel.close(CLOSE_NO_CONSUMER, "no consumer for this path")
            # The disconnect of such a connection needs nothing either.
            return
        self.count("unhandled")
        if message.channel not in self.unhandled_seen:
            # Once per channel: a missing consumer is a deployment mistake, and a
            # line per message would flood the log.
            self.unhandled_seen.add(message.channel)
            log.warning("no consumer for channel %s; dropped, and counted as 'unhandled' "
                        "from now on", message.channel)

    def done(self, message: Message, sequence: int | None, sent: int | None,
             error: bool) -> bytes:
        """The done of a client's event (the interface releases the connection's next
        event on it): its sequence, how many messages the consumer sent (`sent`, to
        tell a lost one), whether it raised, and the session if it changed. A session
        that is not JSON is a failure: the done says error, and the connection closes."""
        assert message.reply_channel is not None
        header: dict[str, Any] = {"op": wire.OP_DONE, "seq": sequence, "sent": sent,
                                  "conn": message.reply_channel.route[1]}
        if error:
            header["error"] = True
        if message.session.modified:
            header["session"] = dict(message.session)
        try:
            return wire.encode(header)
        except (TypeError, ValueError, OverflowError) as e:
            self.count("consumer_errors")
            text = (f"session of {message.reply_channel} cannot be stored (not "
                    f"JSON-serialisable: {e}); closing the connection")
            log.error("%s", text)
            if self.on_error is not None:
                self.on_error(message, text, e)
            header.pop("session")
            header["error"] = True
            return wire.encode(header)


class DjangoDispatcher(Dispatcher):
    """A `Dispatcher` for a process where Django is set up: every event is a request to
    Django's database connections. Before and after each one, what Django's handlers do
    on ``request_started`` and ``request_finished``: ``close_old_connections`` (a
    connection past its ``CONN_MAX_AGE``, broken, or left in a transaction is closed;
    with ``CONN_HEALTH_CHECKS`` the next use checks it first), and the queries ``DEBUG``
    records start afresh. So a worker that runs for days does not query through a
    connection the database closed (its idle timeout, a restart, ``pg_terminate_backend``).

    `in_tests` (`zchannels.testing`): leave alone a connection inside a transaction, as
    Django's test client does -- a ``TestCase`` runs each test in one."""

    def __init__(self, registry: routing.Registry, wsgi_app: wsgi.WSGIApp | None,
                 count: Callable[[str], None] = counters.incr,
                 on_error: OnError | None = None, in_tests: bool = False) -> None:
        super().__init__(registry, wsgi_app, count, on_error)
        from django.db import close_old_connections, connections, reset_queries
        self.connections = connections
        self.close_old_connections = close_old_connections
        self.reset_queries = reset_queries
        self.in_tests = in_tests

    def dispatch(self, message: Message) -> None:
        # Inside `call`'s isolation: an error here is the event's, never the worker's.
        self.reset_queries()
        self.close_old()
        try:
            super().dispatch(message)
        finally:
            self.close_old()

    def close_old(self) -> None:
        if self.in_tests and any(connection.in_atomic_block for connection
                                 in self.connections.all(initialized_only=True)):
            return
        self.close_old_connections()


class UnavailableDispatcher(Dispatcher):
    """The application failed to import: every event is answered at once, without a
    consumer -- an HTTP request with 503, a WebSocket's connect or message with close
    1011 -- and counted (``app_unavailable``), as are the disconnects and named
    channels' messages no consumer can run. The failure itself is logged once, when the
    worker starts (`app.report_failure`), not for every event."""

    def dispatch(self, message: Message) -> None:
        self.count("app_unavailable")
        reply_channel = message.reply_channel
        if reply_channel is None or not message.content.get("ack"):
            return
        if message.channel == "http.request":
            reply_channel.respond(APP_UNAVAILABLE_BODY, status=503)
        elif message.channel in ("websocket.connect", "websocket.receive"):
            reply_channel.close(CLOSE_APP_UNAVAILABLE, APP_UNAVAILABLE_REASON)
