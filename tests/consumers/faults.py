"""/test/echo-rc: an echo that first tells the client its reply channel (and with it
the interface it is on), for the fault tests. /test/hold and /test/hold-send/<group>
hold their event for a while, so a test can kill a process while a consumer runs."""
import os
import time

from zchannels import consumer, group_send

from _record import record


@consumer("websocket.connect", path="/test/echo-rc")
def tell_reply_channel(message):
    message.reply_channel.send(text="rc:" + message.reply_channel.name)


@consumer("websocket.receive", path="/test/echo-rc")
def echo(message):
    message.reply_channel.send(text=message.text)


@consumer("websocket.receive", path="/test/flood/<group>")
def flood(message, group):
    """"START COUNT SIZE": COUNT group messages "<n> xxx...", n from START, SIZE bytes of x."""
    start, count, size = (int(word) for word in message.text.split())
    padding = "x" * size
    for n in range(start, start + count):
        group_send(group, text=f"{n} {padding}")
    message.reply_channel.send(text="flooded")


@consumer("websocket.connect", path="/test/slow-echo")
def slow_accept(message):
    time.sleep(0.05)


@consumer("websocket.receive", path="/test/slow-echo")
def echo_after_slow_accept(message):
    message.reply_channel.send(text=message.text)


@consumer("websocket.receive", path="/test/hold")
def hold(message):
    """Records its worker's pid, holds the event for float(text) seconds, then answers
    whether this is a redelivery."""
    record("hold", message.reply_channel.name, os.getpid(), int(message.redelivered))
    time.sleep(float(message.text))
    message.reply_channel.send(text=f"held {message.redelivered}")


@consumer("websocket.receive", path="/test/hold-send/<group>")
def hold_then_group_send(message, group):
    """"SECONDS TEXT": records its worker's pid, holds the event for SECONDS, then sends
    TEXT to the group and answers "sent"."""
    seconds, text = message.text.split(" ", 1)
    record("hold-send", message.reply_channel.name, os.getpid(), int(message.redelivered))
    time.sleep(float(seconds))
    group_send(group, text=text)
    message.reply_channel.send(text="sent")
