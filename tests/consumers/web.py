"""/test/http/...: HTTP consumers for the HTTP end-to-end tests."""
import json
import os
import time

from zchannels import consumer, group_add, reply_channel, send
from _record import RECORD, record

GATE_WAIT = 15.0  # seconds a gated consumer waits for the test to open the gate


def gate_path(name):
    return os.path.join(os.path.dirname(RECORD), f"gate-{name}")


def wait_for_gate(name):
    deadline = time.monotonic() + GATE_WAIT
    while not os.path.exists(gate_path(name)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never opened gate {name!r}")
        time.sleep(0.01)


@consumer("http.request", path="/test/http/echo")
def echo(message):
    """What the consumer saw, as JSON; the body comes back in X-Body-Length and 'body'."""
    message.reply_channel.respond(json.dumps({
        "method": message.method, "path": message.path, "query": message.query,
        "headers": message.headers, "body": message.body.decode("latin-1"),
        "client": message["client"], "http_version": message["http_version"],
    }), content_type="application/json", headers={"X-Body-Length": str(len(message.body))})


@consumer("http.request", path="/test/http/stream/<count>")
def stream(message, count):
    """A chunked stream: part 0 now, then the remaining parts once gate 'stream'
    opens, so the test can prove part 0 arrived before the rest existed."""
    reply = message.reply_channel
    reply.start_response(content_type="text/plain", headers=[("X-Parts", count)])
    reply.send_body("part 0\n")
    wait_for_gate("stream")
    for i in range(1, int(count)):
        reply.send_body(f"part {i}\n")
    reply.end()


@consumer("http.request", path="/test/http/handoff")
def handoff(message):
    """Returns at once; a consumer of another channel answers the request later."""
    send("test.http.answer", {"reply": message.reply_channel.name})


@consumer("test.http.answer")
def answer(message):
    time.sleep(0.2)
    reply_channel(message["reply"]).respond(f"answered by pid {os.getpid()}\n")


@consumer("http.request", path="/test/http/boom")
def boom(message):
    raise RuntimeError("HTTP consumer failed on purpose: secret-detail-42")


@consumer("http.request", path="/test/http/silent")
def silent(message):
    record("silent", message.reply_channel.name)  # and never answers


@consumer("http.request", path="/test/http/late")
def late(message):
    time.sleep(1.6)  # past the test system's http_timeout of 1 s
    message.reply_channel.respond("too late\n")
    record("late-sent", message.reply_channel.name)


@consumer("http.request", path="/test/http/gate/<name>")
def gated(message, name):
    wait_for_gate(name)
    message.reply_channel.respond("passed\n")


@consumer("http.request", path="/test/http/events/<group>")
def events(message, group):
    message.reply_channel.start_events()
    group_add(group, message.reply_channel)
    message.reply_channel.send_event("welcome", event="hello", id=0)
    record("events-open", group, message.reply_channel.name)


@consumer("http.disconnect", path="/test/http/events/<group>")
def events_gone(message, group):
    record("events-disconnect", group, message.reply_channel.name)


@consumer("http.request", path="/test/http/hold/<group>")
def hold(message, group):
    message.reply_channel.hold(float(message.query.get("timeout", ["5"])[0]),
                               content_type="text/plain")
    group_add(group, message.reply_channel)
    record("held", group, message.reply_channel.name)


@consumer("http.request", path="/test/http/bad-header")
def bad_header(message):
    message.reply_channel.respond("x", headers={"X-Evil": "a\r\nSet-Cookie: pwned=1"})


@consumer("http.request", path="/test/http/record-body")
def record_body(message):
    record("body-seen", len(message.body))
    message.reply_channel.respond("seen\n")
