"""/test/member/<group>: join a group, then at once send to it (immediate membership).

The connect consumer first tells the client its reply channel, then does
group_add followed immediately by group_send from the same consumer call. With
immediate membership the new member always receives that message.
/test/send/<group>: every text frame is sent to the group.
"""
from zchannels import consumer, group_add, group_discard, group_send
from _record import record


@consumer("websocket.connect", path="/test/member/<group>")
def join(message, group):
    rc = message.reply_channel
    rc.send(text="rc:" + rc.name)
    added = group_add(group, rc)
    group_send(group, text=f"hello {rc.name} {added}")


@consumer("websocket.receive", path="/test/member/<group>")
def leave_on_request(message, group):
    if message.text == "discard":
        removed = group_discard(group, message.reply_channel)
        message.reply_channel.send(text=f"discarded {removed}")


@consumer("websocket.disconnect", path="/test/member/<group>")
def gone(message, group):
    # Discarding a closed connection is harmless and answers False.
    removed = group_discard(group, message.reply_channel)
    record("D", message.reply_channel.name, group, removed)


@consumer("websocket.receive", path="/test/send/<group>")
def send_to_group(message, group):
    group_send(group, text=message.text)
    message.reply_channel.send(text="sent")


@consumer("websocket.receive", path="/test/burst/<group>")
def burst(message, group):
    """One consumer call sends N messages to its group and N to its own socket."""
    count = int(message.text)
    for i in range(count):
        group_send(group, text=f"g{i}")
        message.reply_channel.send(text=f"r{i}")


@consumer("websocket.connect", path="/test/quiet/<group>")
def join_quietly(message, group):
    """Join without telling the group: for groups of thousands."""
    added = group_add(group, message.reply_channel)
    message.reply_channel.send(text=f"joined {added}")
