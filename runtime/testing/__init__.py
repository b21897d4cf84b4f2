"""Test consumers: in the test process (`TestServer`), or against the real processes
(`LiveServer`, the ``zchannels_live_server`` pytest fixture, `LiveServerTestCase`).

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

`LiveServer` starts the project's real processes for a test, on a free port, and stops
them at the end; the pytest plugin (`plugin`, loaded by pytest itself) makes it the
``zchannels_live_server`` fixture, and `LiveServerTestCase` (`djangocase`, which needs
Django) a Django ``TransactionTestCase``, like Channels' ``ChannelsLiveServerTestCase``
(docs/howto/test-consumers.md#against-real-processes).
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
#
# and beside them, the real processes:
#
# - `djangocase`: `LiveServerTestCase` and `LiveServerMixin`, for Django's test runner;
# - `plugin`: the pytest plugin, the ``zchannels_live_server`` fixture;
# - `live`: `LiveServer`, the project's processes for a test.
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers; at run time __getattr__ imports them
    from zchannels.testing.djangocase import LiveServerMixin, LiveServerTestCase
    from zchannels.testing.handles import (HttpResponse, ServerSentEvent, WebSocketClient,
                                           WebSocketClosed)
    from zchannels.testing.layer import ConsumerError, InMemoryLayer
    from zchannels.testing.live import LiveServer, LiveServerError
    from zchannels.testing.server import TestServer
    from zchannels.worker.app import SetupMismatch

# Each name's module, imported when the name is first asked for: pytest imports this
# package in every session of a project with zchannels installed (for the plugin), and
# need not pay for the in-process server, nor import Django.
_MODULES = {
    "TestServer": "server", "InMemoryLayer": "layer", "ConsumerError": "layer",
    "WebSocketClient": "handles", "HttpResponse": "handles", "ServerSentEvent": "handles",
    "WebSocketClosed": "handles", "LiveServer": "live", "LiveServerError": "live",
    "LiveServerTestCase": "djangocase", "LiveServerMixin": "djangocase",
    "SetupMismatch": "zchannels.worker.app",
}
# (Not the Django ones: ``import *`` would import Django.)
__all__ = [name for name, module in _MODULES.items() if module != "djangocase"]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _MODULES[name]
    value = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"),
                    name)
    globals()[name] = value  # found directly next time
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])
