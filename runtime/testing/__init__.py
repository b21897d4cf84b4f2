"""Run consumers in the test process: no broker, no workers, no sockets.

::

    from zchannels.testing import TestServer

    def test_echo():
        with TestServer(consumers=["consumers"]) as server:
            ws = server.websocket("/ws/echo")
            ws.send(text="hi")
            assert ws.receive() == "hi"

`TestServer` loads consumers through the normal registry and runs them with the
worker's own `Dispatcher` (routes, 4404, the WSGI fallback, 404, its done), after
setting Django up as a worker does; it refuses (`SetupMismatch`) a Django setup the
workers would not have.
`InMemoryLayer` is the channel layer they reach through ``zchannels.send``,
``group_*`` and their reply channels. A client's events, acknowledgements and group
memberships are the interface's own `Clients` (its `Pipeline` and `GroupTable`), and
what a consumer sends a client goes through the interface's own operation table, so
ordering, sessions and the disconnect-last rule are the production code, not a copy:
only the sockets and the clock are replaced.

Everything runs synchronously in the calling thread: a client action (connect,
send, close, a request) runs every consumer it causes, and what those send to
named channels, before it returns, one message at a time, first in first out.
Time is a fake clock: delayed messages, long-poll timeouts and ``http_timeout``
happen when the test advances it, with `TestServer.advance` or by waiting in a
``receive(timeout=...)``; nothing ever waits in real time.
"""
# The modules, each importing only the ones below it:
#
# - `server`: `TestServer`, running consumers with the worker's own `Dispatcher`;
# - `handles`: the test's end of a connection (`WebSocketClient`, `HttpResponse`);
# - `layer`: the channel layer in memory (`InMemoryLayer`: the interface's `Clients`
#   on a run queue and a fake clock, the broker's history and presence), and
#   `ConsumerError`;
# - `connections`: the in-memory sockets (`_Socket`, `_Exchange`), the clients
#   `Clients` drives in place of Tornado's.
from zchannels.testing.handles import (HttpResponse, ServerSentEvent, WebSocketClient,
                                       WebSocketClosed)
from zchannels.testing.layer import ConsumerError, InMemoryLayer
from zchannels.testing.server import TestServer
from zchannels.worker.app import SetupMismatch

__all__ = ["TestServer", "InMemoryLayer", "WebSocketClient", "HttpResponse",
           "ServerSentEvent", "ConsumerError", "WebSocketClosed", "SetupMismatch"]
