"""/test/fail: consumers that go wrong on purpose."""
from zchannels import consumer


class ConsumerBoom(RuntimeError):
    pass


@consumer("websocket.receive", path="/test/fail")
def explode(message):
    if message.text == "boom":
        raise ConsumerBoom("boom requested by the test")
    message.reply_channel.send(text="fine")


@consumer("websocket.connect", path="/test/fail-connect")
def explode_on_connect(message):
    raise ConsumerBoom("connect failed on purpose")


@consumer("websocket.connect", path="/test/reject")
def reject(message):
    message.reply_channel.reject()


@consumer("websocket.connect", path="/test/subprotocol")
def choose_subprotocol(message):
    offered = message["subprotocols"]
    message.reply_channel.accept(subprotocol=offered[-1] if offered else None)


@consumer("websocket.receive", path="/test/session")
def count_in_session(message):
    message.session["count"] = message.session.get("count", 0) + 1
    message.reply_channel.send(text=str(message.session["count"]))


@consumer("websocket.connect", path="/test/inspect")
def inspect(message):
    import json
    message.reply_channel.accept()
    message.reply_channel.send(text=json.dumps({
        "path": message.path, "query_string": message["query_string"],
        "client": message["client"], "subprotocols": message["subprotocols"],
        "headers": message.headers, "reply_channel": message.reply_channel.name,
    }))


@consumer("websocket.connect", path="/test/early-flood")
def early_flood(message):
    """Sends 5 MiB before the handshake completes (it completes when this returns)."""
    for _ in range(80):
        message.reply_channel.send(bytes=b"x" * 65536)


@consumer("websocket.receive", path="/test/firehose")
def firehose(message):
    """Sends int(text) chunks of 64 KiB: far more than a client that does not read
    can take, or the interface may buffer for it."""
    chunk = b"y" * 65536
    for _ in range(int(message.text)):
        message.reply_channel.send(bytes=chunk)


@consumer("websocket.receive", path="/test/lost-reply")
def lose_a_reply(message):
    """Answers, then counts one more message than it sent, as if a second answer had
    been lost inside a broker that was killed (its "done" still arrives)."""
    from zchannels.api.sender import current
    message.reply_channel.send(text="first")
    current().current_sends += 1
