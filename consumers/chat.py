"""Demo: /ws/chat/<room>, a chat room per path, also readable over plain HTTP.

Every member's text frame -- JSON ``{"text": ...}`` or a plain string -- is broadcast
to every member of the room, the sender included, as ``{"type": "message", "user":
..., "text": ...}``. Members are told when someone joins or leaves by the runtime's
presence notices, ``{"type": "join"/"leave", "group", "member", "info": {"user":
...}}``, and ``group_members("chat.<room>")`` lists who is there
(docs/consumers.md#presence). A frame that
starts like a JSON object but is not one closes the socket with 1007, because a
client that sends broken JSON has a bug its author should see. A room whose group
name cannot be used (over 195 bytes as sent in the path, or with a character that is
not printable) is the client's mistake too: the WebSocket is closed with 4400 (the
class's ``groups`` do that), an SSE or long-poll request is answered 400, with a
warning in the log, never a consumer error.

The WebSocket side is a class-based consumer (`ChatConsumer`); ``_chat_functions.py``
beside this file is the same chat written as plain consumer functions.

Without a WebSocket, ``/sse/chat/<room>`` streams the room as Server-Sent Events
(``curl -N``), and ``/poll/chat/<room>`` is a long-poll that answers with the
room's next event (204 after 25 s without one).

The rooms keep history (``[[history.groups]] pattern = "chat.*"`` in
conf/zchannels.toml), so nothing is lost across a reconnect: every event carries
its position (``"pos"``); the page reconnects with ``?since=<the last one>``, an
EventSource sends it back as ``Last-Event-ID`` by itself, and a long-poll passes
``?since=`` (or the ``ZChannels-Position`` header of its last answer) with the
next poll. When the room's history cannot cover the gap, the client gets
``{"type": "recovery_failed", ...}`` instead (docs/consumers.md#history-and-recovery).
"""
import json
import logging
from urllib.parse import parse_qs

from zchannels import InvalidGroupName, WebsocketConsumer, check_group_name, consumer, group_add

log = logging.getLogger("consumers.chat")

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_UNSUPPORTED = 1003
MAX_NAME_CHARS = 32
POLL_TIMEOUT = 25.0  # seconds; below common proxy timeouts


def room_group(room):
    return f"chat.{room}"


def checked_room_group(message, room):
    """The room's group, or None once the request has been answered 400: the room
    comes from the client's path, and a group name is at most 200 bytes of printable
    characters (a room at most 195 bytes as sent, percent-escapes included)."""
    try:
        return check_group_name(room_group(room))
    except InvalidGroupName as e:
        log.warning("chat: refused %s %s: %s", message.method, message.reply_channel, e)
        message.reply_channel.respond("room name not allowed: at most 195 bytes (as sent "
                                      "in the path), printable characters\n", status=400)
        return None


class ChatConsumer(WebsocketConsumer):
    groups = ["chat.{room}"]  # joined before connect() runs, left when the socket closes
    since_query = "since"  # ?since=<position>: first what the client missed, then live
    announce_presence = True  # the room is told when this member joins and leaves

    def user_name(self):
        query = parse_qs(self.message.get("query_string", ""))
        name = (query.get("name") or [""])[0].strip()[:MAX_NAME_CHARS]
        return name or "guest-" + self.reply_channel.name.rsplit("!", 1)[1]

    def presence_info(self):
        return {"user": self.user_name()}  # what group_members and the notices show

    def connect(self):
        self.session["name"] = self.user_name()  # every later event reads it back
        self.accept()

    def receive(self, text=None, bytes=None):
        if text is None:
            self.close(CLOSE_UNSUPPORTED, "chat takes text frames")
            return
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
                text = data["text"]
                if not isinstance(text, str):
                    raise TypeError("'text' must be a string")
            except (ValueError, KeyError, TypeError) as e:
                log.warning("chat %s: invalid JSON from %s (%s): closing with %d",
                            self.room, self.reply_channel, e, CLOSE_INVALID_PAYLOAD)
                self.close(CLOSE_INVALID_PAYLOAD,
                           'invalid JSON: expected {"text": "..."} or a plain string')
                return
        self.broadcast(type="message", user=self.session.get("name", "?"), text=text)

    def broadcast(self, **event):
        self.group_send(room_group(self.room), text=json.dumps(event))


ChatConsumer.register("/ws/chat/<room>")


@consumer("http.request", path="/sse/chat/<room>")
def stream(message, room):
    group = checked_room_group(message, room)  # before the stream starts: a 400 still can
    if group is None:
        return
    # Start the stream before joining: from group_add on, every room event is an SSE event.
    # An EventSource that reconnects sends Last-Event-ID: group_add recovers from it.
    message.reply_channel.start_events()
    group_add(group, message.reply_channel)


@consumer("http.request", path="/poll/chat/<room>")
def poll(message, room):
    group = checked_room_group(message, room)
    if group is None:
        return
    # Hold before joining: the first event (a missed one at once, if any) is the answer.
    message.reply_channel.hold(POLL_TIMEOUT, content_type="application/json")
    since = (message.query.get("since") or [None])[0]
    if since:
        group_add(group, message.reply_channel, since=since)
    else:
        group_add(group, message.reply_channel)
