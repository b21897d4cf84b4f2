"""/test/task: hand work to the "tasks.*" channels (a task queue, possibly another pool);
the task's consumer answers the WebSocket directly through its reply channel."""
import os

from zchannels import consumer, reply_channel, send


@consumer("websocket.receive", path="/test/task")
def submit(message):
    send("tasks.upper", {"reply_channel": message.reply_channel.name, "submitted_by":
                         os.getpid()}, payload=message.text.encode())


@consumer("tasks.upper")
def upper(message):
    # message.reply_channel comes from the "reply_channel" key the sender put in.
    message.reply_channel.send(text=f"{message.payload.decode().upper()} "
                                    f"{message['submitted_by']} {os.getpid()}")


@consumer("websocket.receive", path="/test/task-by-name")
def submit_by_name(message):
    send("tasks.echo", {"to": message.reply_channel.name}, payload=message.text.encode())


@consumer("tasks.echo")
def echo_by_name(message):
    reply_channel(message["to"]).send(bytes=message.payload)


@consumer("websocket.receive", path="/test/task-to-nobody")
def submit_to_nobody(message):
    send("tasks.nobody", {})
    message.reply_channel.send(text="queued")
