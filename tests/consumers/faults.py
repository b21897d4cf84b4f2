"""/test/echo-rc: an echo that first tells the client its reply channel (and with it
the interface it is on), for the fault tests."""
from runtime import consumer


@consumer("websocket.connect", path="/test/echo-rc")
def tell_reply_channel(message):
    message.reply_channel.send(text="rc:" + message.reply_channel.name)


@consumer("websocket.receive", path="/test/echo-rc")
def echo(message):
    message.reply_channel.send(text=message.text)
