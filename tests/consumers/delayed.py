"""/test/delayed/<group>: "join" makes the socket a member of <group>; "<seconds> <text>"
sends <text> to <group> after <seconds>; "task <seconds> <text>" sends it to the
channel tasks.delayed after <seconds>, whose consumer answers this socket."""
from zchannels import consumer, group_add, group_send, reply_channel, send


@consumer("websocket.receive", path="/test/delayed/<group>")
def later(message, group):
    first, _, rest = (message.text or "").partition(" ")
    if first == "join":
        group_add(group, message.reply_channel)
        message.reply_channel.send(text="joined")
    elif first == "task":
        seconds, _, text = rest.partition(" ")
        send("tasks.delayed", {"to": message.reply_channel.name}, payload=text.encode(),
             delay=float(seconds))
    else:
        group_send(group, text=rest, delay=float(first))


@consumer("tasks.delayed")
def delayed_task(message):
    reply_channel(message["to"]).send(text=message.payload.decode())
