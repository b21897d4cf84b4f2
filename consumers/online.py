"""Demo: /ws/online/<room>?name=N, who is online (presence, docs/consumers.md#presence).

Each connection joins the group ``online.<room>`` with its name as its info, and is
not announced (a room of thousands would otherwise tell everyone of every arrival).
Send ``who`` for the sorted names of everyone in the room, on every interface, or
``count`` for how many there are.
"""
import json
from urllib.parse import parse_qs

from zchannels import WebsocketConsumer, group_members, group_size

MAX_NAME_CHARS = 32


class Online(WebsocketConsumer):
    groups = ["online.{room}"]

    def presence_info(self):
        query = parse_qs(self.message.get("query_string", ""))
        return {"user": (query.get("name") or ["guest"])[0][:MAX_NAME_CHARS]}

    def receive(self, text=None, bytes=None):
        group = f"online.{self.room}"
        if text == "who":
            self.send(text=json.dumps(sorted(m.info["user"] for m in group_members(group))))
        elif text == "count":
            self.send(text=str(group_size(group)))
        else:
            self.close(1003, 'send "who" or "count"')


Online.register("/ws/online/<room>")
