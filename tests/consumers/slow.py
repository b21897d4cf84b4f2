"""/test/slow: consumers that take longer than the test's timeouts."""
import time

from zchannels import consumer
from _record import record


@consumer("websocket.receive", path="/test/slow")
def slow(message):
    time.sleep(float(message.text))
    record("slow-end", message.reply_channel.name)
    message.reply_channel.send(text="done")


@consumer("websocket.disconnect", path="/test/slow")
def slow_gone(message):
    record("slow-disconnect", message.reply_channel.name)


@consumer("websocket.connect", path="/test/slow-connect")
def slow_connect(message):
    time.sleep(2.0)


@consumer("websocket.connect", path="/test/slow-bye")
def greet(message):
    message.reply_channel.send(text="rc:" + message.reply_channel.name)


@consumer("websocket.disconnect", path="/test/slow-bye")
def slow_bye(message):
    """Cleanup that takes a while: at shutdown, more work than supervisord's one-second
    pause between stopping the interfaces and stopping the workers covers."""
    time.sleep(0.1)
    record("D", message.reply_channel.name)
