"""/test/hosts/...: consumers that say which host ran them (tests/test_hosts_e2e.py).

ZCHANNELS_TEST_HOST names the host a worker runs on (tests/hosts.py sets it).
/test/hosts/where: every text frame is answered with the host that ran the consumer.
/test/hosts/member/<group>: the connect consumer tells the client its reply channel
and sends ``hosts.join`` to a pool whose workers run on another host; that consumer
adds the connection to the group and at once sends the group a hello naming it.
``spread.work``: records which host ran it. ``spread.slow``: records which host started
it, and whether it was redelivered, then takes ``seconds``.
"""
import os
import time

from zchannels import consumer, group_add, group_send, send
from _record import record

HOST = os.environ.get("ZCHANNELS_TEST_HOST", "?")


@consumer("websocket.receive", path="/test/hosts/where")
def where(message):
    message.reply_channel.send(text=f"{message.text} from {HOST}")


@consumer("websocket.connect", path="/test/hosts/member/<group>")
def member(message, group):
    rc = message.reply_channel
    rc.send(text="rc:" + rc.name)
    send("hosts.join", {"rc": rc.name, "group": group})


@consumer("hosts.join")
def join(message):
    rc, group = message.content["rc"], message.content["group"]
    added = group_add(group, rc)
    group_send(group, text=f"hello {rc} {added} {HOST}")


@consumer("spread.work")
def spread(message):
    record("spread", message.content.get("n"), HOST)


@consumer("spread.slow")
def slow(message):
    record("slow", message.content.get("n"), HOST, message.redelivered)
    time.sleep(message.content.get("seconds", 3))


@consumer("websocket.connect", path="/test/hosts/room/<group>")
def room_join(message, group):
    """A member with its name as info, announced: its disconnect records where it ran
    and whether it was abandoned (its interface died)."""
    rc = message.reply_channel
    rc.send(text="rc:" + rc.name)
    name = message.query.get("name", ["?"])[0]
    group_add(group, rc, info={"name": name}, announce=True)


@consumer("websocket.receive", path="/test/hosts/room/<group>")
def room_say(message, group):
    if message.text == "slow":
        time.sleep(1.0)  # an event in flight when the host dies
        return
    group_send(group, text=message.text)


@consumer("websocket.disconnect", path="/test/hosts/room/<group>")
def room_leave(message, group):
    record("X", message.reply_channel.name, message.abandoned, HOST)
