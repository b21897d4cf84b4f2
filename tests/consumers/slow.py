"""/test/slow: consumers that take longer than the test's timeouts."""
import time

from runtime import consumer


@consumer("websocket.receive", path="/test/slow")
def slow(message):
    time.sleep(float(message.text))
    message.reply_channel.send(text="done")


@consumer("websocket.connect", path="/test/slow-connect")
def slow_connect(message):
    time.sleep(2.0)
