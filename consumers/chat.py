"""Demo: /ws/chat/<room>, a chat room per path, also readable over plain HTTP.

Every member's text frame -- JSON ``{"text": ...}`` or a plain string -- is broadcast
to every member of the room, the sender included, as ``{"type": "message", "user":
..., "text": ...}``. Members are told when someone joins or leaves. A frame that
starts like a JSON object but is not one closes the socket with 1007, because a
client that sends broken JSON has a bug its author should see.

Without a WebSocket, ``/sse/chat/<room>`` streams the room as Server-Sent Events
(``curl -N``), and ``/poll/chat/<room>`` is a long-poll that answers with the
room's next event (204 after 25 s without one). A long-poll client sees only
what arrives while it waits: between polls, events are not kept (this demo
has no message store).
"""
import json
import logging
from urllib.parse import parse_qs

from runtime import consumer, group_add, group_send

log = logging.getLogger("consumers.chat")

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_UNSUPPORTED = 1003
MAX_NAME_CHARS = 32
POLL_TIMEOUT = 25.0  # seconds; below common proxy timeouts


def room_group(room):
    return f"chat.{room}"


def broadcast(room, **event):
    group_send(room_group(room), text=json.dumps(event))


@consumer("websocket.connect", path="/ws/chat/<room>")
def join(message, room):
    query = parse_qs(message.get("query_string", ""))
    name = (query.get("name") or [""])[0].strip()[:MAX_NAME_CHARS]
    if not name:
        name = "guest-" + message.reply_channel.name.rsplit("!", 1)[1]
    message.session["name"] = name
    message.reply_channel.accept()
    group_add(room_group(room), message.reply_channel)
    broadcast(room, type="join", user=name, text=f"{name} joined")


@consumer("websocket.receive", path="/ws/chat/<room>")
def say(message, room):
    name = message.session.get("name", "?")
    text = message.text
    if text is None:
        message.reply_channel.close(CLOSE_UNSUPPORTED, "chat takes text frames")
        return
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            text = data["text"]
            if not isinstance(text, str):
                raise TypeError("'text' must be a string")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("chat %s: invalid JSON from %s (%s): closing with %d",
                        room, message.reply_channel, e, CLOSE_INVALID_PAYLOAD)
            message.reply_channel.close(CLOSE_INVALID_PAYLOAD, "invalid JSON: expected "
                                        '{"text": "..."} or a plain string')
            return
    broadcast(room, type="message", user=name, text=text)


@consumer("websocket.disconnect", path="/ws/chat/<room>")
def leave(message, room):
    # The socket has already left the group: this reaches only those who stay.
    name = message.session.get("name", "?")
    broadcast(room, type="leave", user=name, text=f"{name} left")


@consumer("http.request", path="/sse/chat/<room>")
def stream(message, room):
    # Start the stream before joining: from group_add on, every room event is an SSE event.
    message.reply_channel.start_events()
    group_add(room_group(room), message.reply_channel)


@consumer("http.request", path="/poll/chat/<room>")
def poll(message, room):
    message.reply_channel.hold(POLL_TIMEOUT, content_type="application/json")
    group_add(room_group(room), message.reply_channel)
