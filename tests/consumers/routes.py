"""/test/routes/...: Django's path converters and nested route tables, end to end
(tests/test_routing_e2e.py). Each connect consumer answers with its keyword
arguments as ``name=type:value``, so a test sees what arrived and of which type.

- /test/routes/int/<int:n>, /test/routes/uuid/<uuid:u>: functions;
- /test/routes/v<int:version>/rooms/...: a `Router` included under a prefix that has
  a parameter of its own: a class at /<int:room>/, a custom converter at
  /archive/<year:year> (``test_year``: four digits from 1900 on; an earlier year
  is no match, so the next route is tried), a slug at /<slug:name>;
- /test/routes/v1/rooms/0/: declared before the include, so it wins over the class.
"""
from zchannels import Router, WebsocketConsumer, consumer, include, path, register_converter


class FourDigitYear:
    regex = "[0-9]{4}"

    def to_python(self, value):
        year = int(value)
        if year < 1900:
            raise ValueError(f"{year} is before 1900")  # Django's "no match"
        return year

    def to_url(self, value):
        return "%04d" % value


register_converter(FourDigitYear, "test_year")


def describe(kwargs):
    return " ".join(f"{name}={type(value).__name__}:{value}"
                    for name, value in sorted(kwargs.items()))


@consumer("websocket.connect", path="/test/routes/int/<int:n>")
def typed(message, **kwargs):
    message.reply_channel.send(text=describe(kwargs))


@consumer("websocket.connect", path="/test/routes/uuid/<uuid:u>")
def by_uuid(message, **kwargs):
    message.reply_channel.send(text=describe(kwargs))


@consumer("websocket.connect", path="/test/routes/v1/rooms/0/")
def first_declared(message):
    message.reply_channel.send(text="declared first")


class Room(WebsocketConsumer):
    groups = ["test.routes.{version}.{room}"]  # built from ints: still a str name

    def connect(self):
        self.send(text=f"{describe(self.kwargs)} groups={','.join(self.group_names())}")

    def receive(self, text=None, bytes=None):
        self.send(text=f"room {self.room + 1}")  # an int, so + 1 adds


def archive(message, **kwargs):
    message.reply_channel.send(text="archive " + describe(kwargs))


def by_slug(message, **kwargs):
    message.reply_channel.send(text="slug " + describe(kwargs))


rooms = Router([
    path("/<int:room>/", Room),
    path("/archive/<test_year:year>", archive, channel="websocket.connect"),
    path("/<slug:name>", by_slug, channel="websocket.connect"),
])

include("/test/routes/v<int:version>/rooms", rooms)
