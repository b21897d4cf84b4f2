"""/test/crash: consumers that kill their own worker, as a segfault would."""
import os
import signal

from zchannels import consumer, send

from _record import record


@consumer("websocket.receive", path="/test/crash")
def crash_once(message):
    """"crash ..." kills the worker on first delivery and is answered on redelivery;
    "poison ..." kills every worker it reaches; "task ..." hands the text to the
    app.crash channel; anything else is echoed."""
    text = message.text
    record("crash", message.reply_channel, text, os.getpid(), int(message.redelivered))
    if text.startswith("task"):
        send("app.crash", {"reply_channel": message.reply_channel.name},
             payload=text.encode())
        return
    if text.startswith("poison") or (text.startswith("crash") and not message.redelivered):
        os.kill(os.getpid(), signal.SIGKILL)
    prefix = "redelivered " if message.redelivered else ""
    message.reply_channel.send(text=prefix + text)


@consumer("app.crash")
def crash_on_app_channel(message):
    """An application-channel message: kills its first worker; its redelivery answers."""
    if not message.redelivered:
        os.kill(os.getpid(), signal.SIGKILL)
    message.reply_channel.send(text="redelivered " + message.payload.decode())
