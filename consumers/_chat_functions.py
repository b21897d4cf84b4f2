"""The WebSocket chat of consumers/chat.py written with plain consumer functions.

It is the same chat, frame for frame: ``/ws/chat/<room>``, the same join, message and
leave events, 1003 for a binary frame, 1007 for broken JSON, 4400 for a room that cannot
name a group. chat.py writes it as a
`WebsocketConsumer` class; this file shows the functions the class stands for. The
worker does not load it (its name starts with ``_``). To run it instead of the class,
remove ``ChatConsumer.register(...)`` from chat.py and rename this file to
``chat_functions.py``.
"""
import json
import logging
from urllib.parse import parse_qs

from zchannels import InvalidGroupName, check_group_name, consumer, group_add, group_send

log = logging.getLogger("consumers.chat")

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_UNSUPPORTED = 1003
CLOSE_BAD_PATH = 4400  # the room cannot name a group: over 195 bytes, or not printable
MAX_NAME_CHARS = 32


def room_group(room):
    return f"chat.{room}"


def broadcast(room, **event):
    group_send(room_group(room), text=json.dumps(event))


@consumer("websocket.connect", path="/ws/chat/<room>")
def join(message, room):
    try:  # the room is the client's: a name the group cannot have is its mistake
        check_group_name(room_group(room))
    except InvalidGroupName as e:
        log.warning("chat: %s; closing %s with %d", e, message.reply_channel, CLOSE_BAD_PATH)
        message.reply_channel.close(CLOSE_BAD_PATH, "group name from the path not allowed: "
                                    "at most 200 bytes, printable characters")
        return
    query = parse_qs(message.get("query_string", ""))
    name = (query.get("name") or [""])[0].strip()[:MAX_NAME_CHARS]
    if not name:
        name = "guest-" + message.reply_channel.name.rsplit("!", 1)[1]
    message.session["name"] = name
    message.reply_channel.accept()
    since = (query.get("since") or [None])[0]  # the last position the page saw, if any
    # announce: the room is told of the join now and of the leave when the socket closes
    if since:  # first what it missed (the room keeps history), then live
        group_add(room_group(room), message.reply_channel, since=since,
                  info={"user": name}, announce=True)
    else:
        group_add(room_group(room), message.reply_channel, info={"user": name},
                  announce=True)


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

