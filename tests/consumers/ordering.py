"""/test/order: consumers that record when they start and end, to check per-connection order.

The connect consumer accepts first and then keeps working, so the client's
messages arrive while it still runs; they must not be handed to a consumer
before it returns.
"""
import os
import random
import time

from zchannels import consumer
from _record import record

PATH = "/test/order"


@consumer("websocket.connect", path=PATH)
def connect(message):
    rc = message.reply_channel.name
    record("S", rc, "connect", os.getpid())
    message.reply_channel.accept()
    time.sleep(0.05 + random.random() * 0.05)
    record("E", rc, "connect", os.getpid())


@consumer("websocket.receive", path=PATH)
def receive(message):
    rc = message.reply_channel.name
    record("S", rc, "receive", os.getpid(), message.text)
    time.sleep(random.random() * 0.004)
    record("E", rc, "receive", os.getpid(), message.text)
    message.reply_channel.send(text=message.text)


@consumer("websocket.disconnect", path=PATH)
def disconnect(message):
    rc = message.reply_channel.name
    record("S", rc, "disconnect", os.getpid())
    record("E", rc, "disconnect", os.getpid())
