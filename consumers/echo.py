"""Demo: /ws/echo sends every frame back unchanged (text as text, bytes as bytes)."""
from zchannels import consumer


@consumer("websocket.receive", path="/ws/echo")
def echo(message):
    message.reply_channel.send(text=message.text, bytes=message.bytes)
