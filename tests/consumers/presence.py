"""/test/presence/<group>?name=N[&announce=1]: join `group` with {"name": N}; then each
text frame asks: "members" (JSON list of [reply channel, info], as group_members
returns them) or "size"."""
import json
from urllib.parse import parse_qs

from zchannels import consumer, group_add, group_members, group_send, group_size
from _record import record


@consumer("websocket.connect", path="/test/presence/<group>")
def join(message, group):
    query = parse_qs(message.get("query_string", ""))
    name = (query.get("name") or [""])[0]
    announce = (query.get("announce") or ["0"])[0] == "1"
    message.reply_channel.send(text="rc:" + message.reply_channel.name)
    group_add(group, message.reply_channel, info={"name": name}, announce=announce)


@consumer("websocket.receive", path="/test/presence/<group>")
def ask(message, group):
    if message.text == "members":
        answer = [list(member) for member in group_members(group)]
    elif message.text == "size":
        answer = group_size(group)
    else:
        try:
            group_add(group, message.reply_channel, info="x" * 5000)
            answer = "accepted"
        except ValueError as e:
            answer = f"refused: {e}"
    message.reply_channel.send(text=json.dumps(answer))


@consumer("websocket.connect", path="/test/abandon")
def remember(message):
    message.reply_channel.send(text="rc:" + message.reply_channel.name)


@consumer("websocket.disconnect", path="/test/abandon")
def forget(message):
    record("X", message.reply_channel.name, message.abandoned, message.get("code"),
           dict(message.session))


@consumer("websocket.connect", path="/test/room/<group>")
def enter_room(message, group):
    """/test/room/<group>?name=N: a chat room's member, announced, whose disconnect is
    recorded ("X", reply channel, abandoned); every text frame goes to the room."""
    name = (parse_qs(message.get("query_string", "")).get("name") or [""])[0]
    message.reply_channel.send(text="rc:" + message.reply_channel.name)
    group_add(group, message.reply_channel, info={"name": name}, announce=True)


@consumer("websocket.receive", path="/test/room/<group>")
def say_in_room(message, group):
    group_send(group, text=json.dumps({"type": "message", "text": message.text}))


@consumer("websocket.disconnect", path="/test/room/<group>")
def leave_room(message, group):
    record("X", message.reply_channel.name, message.abandoned)
