"""An example consumer, written by ``zchannels init``.

Every ``*.py`` module in this directory (names starting with ``_`` are helpers, not
loaded) is imported by the workers; its ``@consumer`` functions answer the paths they
name. Try it: connect a WebSocket to ``ws://127.0.0.1:8000/ws/example`` and send it
text, or ``curl http://127.0.0.1:8000/example``. Every other HTTP path goes to the
WSGI application named by ``wsgi_app`` in conf/zchannels.toml (your Django site).
"""
from zchannels import consumer


@consumer("websocket.receive", path="/ws/example")
def echo(message):
    message.reply_channel.send(text=message.text, bytes=message.bytes)


@consumer("http.request", path="/example")
def hello(message):
    message.reply_channel.respond("hello from zchannels\n")
