"""Demo: the smallest HTTP consumer. ``GET /hello`` answers ``hello``."""
from zchannels import consumer


@consumer("http.request", path="/hello")
def hello(message):
    message.reply_channel.respond("hello\n")
