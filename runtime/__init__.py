"""zchannels: realtime Python with synchronous consumers.

Everything a consumer author needs is importable from here::

    from zchannels import consumer, group_add, group_send

    @consumer("websocket.receive", path="/ws/echo")
    def echo(message):
        message.reply_channel.send(text=message.text, bytes=message.bytes)

Sending from outside a consumer (a Django view, a cron job): ``from zchannels import
client`` then ``client.group_send(...)`` (docs/consumers.md#sending-from-anywhere);
testing consumers in-process: `zchannels.testing`.

The package is one room per role; each room imports only the rooms below it
(tests/test_layout.py holds it to that, counting every import):

    ops/        the ``zchannels`` command: run, init, status, keys, send, check-config
    testing/    consumers run in the test process, on the interface's and worker's code
    worker/     a worker process: its link to the broker, dispatch, WSGI, the reloader
    interface/  an interface process: Tornado HTTP and WebSocket in front of the workers
    broker/     the broker process: pool queues, groups' fan-out, presence, history
    api/        what a consumer imports: messages, routing, class-based consumers,
                sending (the `Sender` protocol), login, the client for other processes
    wire/       how processes meet: frames, positions, endpoints, CURVE keys, the
                service loop every ZeroMQ process runs
    core/       what every process shares: config, exceptions, counters and stats,
                metrics
"""
import sys as _sys

if __name__ != "zchannels":  # the source folder (runtime/) imported under its own name
    raise ImportError(f"the zchannels package was imported as {__name__!r}: install it "
                      "(scripts/bootstrap, or pip install -e .) and import zchannels")

from zchannels.api import *  # noqa: E402,F401,F403  (the names below)
from zchannels.api import __all__ as _api_names  # noqa: E402
from zchannels.api import client  # noqa: E402
from zchannels.api.client import Client  # noqa: E402

__all__ = [*_api_names, "client", "Client"]
del _sys
