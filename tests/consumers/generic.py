"""/test/generic/...: class-based consumers (runtime/api/generic.py) for tests/test_generic_e2e.py."""
from zchannels import HttpConsumer, JsonWebsocketConsumer, WebsocketConsumer, WebsocketDemultiplexer
from _record import record


class RoomEcho(WebsocketConsumer):
    """Text goes to everyone in the room; binary comes back to the sender; "count"
    counts this socket's messages in its session (which travels between workers)."""
    groups = ["generic.{room}", "generic-all"]

    def connect(self):
        if self.message.query.get("reject"):
            self.reject()
            return
        offered = self.message["subprotocols"]
        self.accept("gen.v1" if "gen.v1" in offered else None)
        self.session["count"] = 0
        self.send(text=f"welcome to {self.room} ({self.kwargs['room']})")

    def receive(self, text=None, bytes=None):
        self.session["count"] = self.session["count"] + 1
        if bytes is not None:
            self.send(bytes=bytes)
        elif text == "count":
            self.send(text=f"count {self.session['count']}")
        elif text == "bye":
            self.close(4000, "bye")
        else:
            self.group_send(f"generic.{self.room}", text=f"{self.room}: {text}")

    def disconnect(self, code):
        record("generic-disconnect", self.room, code, self.session.get("count"))
        self.group_send(f"generic.{self.room}", text=f"{self.room}: someone left")


RoomEcho.register("/test/generic/room/<room>")


class JsonEcho(JsonWebsocketConsumer):
    def receive_json(self, content):
        self.send_json({"echo": content})


JsonEcho.register("/test/generic/json")


class EchoStream(JsonWebsocketConsumer):
    def receive_json(self, content):
        self.send_json({"echo": content})

    def disconnect(self, code):
        record("generic-mux-disconnect", self.stream, self.room, code)


class ChatStream(JsonWebsocketConsumer):
    groups = ["generic-mux.{room}"]

    def connect(self):
        self.send_json({"joined": self.room})

    def receive_json(self, content):
        self.group_send_json(f"generic-mux.{self.room}", {"said": content})

    def disconnect(self, code):
        record("generic-mux-disconnect", self.stream, self.room, code)


class Mux(WebsocketDemultiplexer):
    consumers = {"echo": EchoStream, "chat": ChatStream}

    def disconnect(self, code):
        record("generic-mux-disconnect", "-", self.room, code)


Mux.register("/test/generic/mux/<room>")


class Item(HttpConsumer):
    def get(self):
        self.respond(f"item {self.item}\n", headers={"X-Item": self.kwargs["item"]})

    def post(self):
        self.respond(b"got " + self.message.body, status=201,
                     content_type="application/octet-stream")


Item.register("/test/generic/http/<item>")
