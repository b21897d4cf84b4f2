"""Sending from anywhere, without a running system: the client against sockets the
test binds itself (threads, fork, a worker's own layer), the publish API's rules
(authorization, request bodies) and the CLI's reading of messages."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import tempfile
import threading
import time

import pytest
import zmq

from zchannels.api import client as client_module
from zchannels.api import connection as layer_module
from zchannels.wire import frames as wire
from zchannels.ops.cli import UsageError, build_parser, channel_content, group_message
from zchannels.api.client import Client
from zchannels.core.config import parse
from zchannels.core.exceptions import ConfigError, UnknownChannel
from zchannels.interface.publish import PublishError, Publisher, authorize, body_limit
from zchannels.interface.publish import parse as parse_publication

RECEIVE_TIMEOUT_MS = 5000


@pytest.fixture
def run_dir():
    path = tempfile.mkdtemp(prefix="zc", dir="/tmp")  # IPC paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(run_dir):
    """Stand-ins for the broker's broker_clients ROUTER and the default pool's input."""
    config = parse({"server": {"run_dir": run_dir, "send_timeout": 1.0},
                    "pools": {"default": {"channels": ["websocket.*", "http.*", "tasks.*"]}}},
                   environ={})
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(config.broker_clients)
    pool_in = context.socket(zmq.PULL)
    pool_in.bind(config.pools[0].endpoint_in)
    yield config, router, pool_in
    context.destroy(linger=0)


def receive(sock):
    assert sock.poll(RECEIVE_TIMEOUT_MS), "nothing arrived"
    return sock.recv_multipart()


# -- the client ---------------------------------------------------------------------------

def test_client_sends_to_groups_channels_and_reply_channels(broker):
    config, router, pool_in = broker
    with Client(config) as client:
        client.group_send("room", text="hi", event="note", id=7)
        client.send("tasks.x", {"n": 1}, payload=b"\x00")
        client.reply_channel("iabc!12").send(bytes=b"yo")
        client.reply_channel("iabc!12").close(4000, "bye")
        sender, *frames = receive(router)
        assert sender.startswith(f"c{os.getpid()}-".encode())
        assert frames[:2] == [wire.VERB_GROUP, b"room"] and frames[3] == b"hi"
        assert wire.decode(frames[2]) == {"op": "send", "kind": "text", "event": "note", "id": 7}
        header, payload = receive(pool_in)
        assert (wire.decode(header), payload) == ({"n": 1, "channel": "tasks.x"}, b"\x00")
        _, verb, interface, header, payload = receive(router)
        assert (verb, interface, payload) == (wire.VERB_TO, b"iabc", b"yo")
        assert wire.decode(header) == {"op": "send", "kind": "bytes", "conn": 12}
        _, _, _, header = receive(router)
        assert wire.decode(header) == {"op": "close", "code": 4000, "reason": "bye", "conn": 12}


def test_client_delays_go_to_the_broker_with_their_delay(broker):
    config, router, pool_in = broker
    with Client(config) as client:
        client.group_send("room", text="later", delay=1.5)
        client.send("tasks.x", {"n": 2}, delay=0.25)
        _, *frames = receive(router)
        assert frames[:3] == [b"W1500", wire.VERB_GROUP, b"room"] and frames[-1] == b"later"
        _, *frames = receive(router)
        assert frames[:3] == [b"W250", wire.VERB_TO_POOL, b"default"]
        assert wire.decode(frames[3]) == {"n": 2, "channel": "tasks.x"}
        assert not pool_in.poll(100), "a delayed message waits in the broker, not the pool"


def test_client_errors_are_the_layers(broker):
    config, _, _ = broker
    with Client(config) as client:
        with pytest.raises(UnknownChannel):
            client.send("nobody.serves.this")
        with pytest.raises(ValueError):
            client.group_send("", text="x")
        with pytest.raises(ValueError):
            client.reply_channel("not-a-reply-channel")


def test_threads_share_one_layer_and_every_message_arrives(broker):
    config, router, _ = broker
    client = Client(config)
    threads, per_thread = 8, 50

    def sender(n):
        for i in range(per_thread):
            client.group_send("room", text=f"{n}.{i}")
    workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(10)
    received = [receive(router) for _ in range(threads * per_thread)]
    client.close()
    assert len({frames[0] for frames in received}) == 1  # one connection for the process
    by_thread: dict[str, list[int]] = {}
    for frames in received:
        n, i = frames[4].decode().split(".")
        by_thread.setdefault(n, []).append(int(i))
    # Each thread's messages arrive, in the order it sent them.
    assert by_thread == {str(n): list(range(per_thread)) for n in range(threads)}


def test_a_forked_child_sends_on_fresh_sockets_and_the_parent_goes_on(broker):
    config, router, _ = broker
    client = Client(config)
    client.group_send("room", text="parent-before")
    parent_id = receive(router)[0]
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            client.group_send("room", text="child")
            client.close()  # let it leave before _exit
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child = receive(router)
    assert child[0].startswith(f"c{pid}-".encode()) and child[4] == b"child"
    client.group_send("room", text="parent-after")
    after = receive(router)
    assert (after[0], after[4]) == (parent_id, b"parent-after")  # its own sockets, still
    client.close()


def test_in_a_worker_the_workers_layer_is_used():
    calls = []

    class WorkerLayer:
        def group_send(self, group, **kwargs):
            calls.append(("group_send", group, kwargs["text"]))

        def send(self, channel, content, payload, delay=None):
            calls.append(("send", channel, content))

        def to_interface(self, reply_channel, header, payload=None):
            calls.append(("to_interface", reply_channel.name, header["op"]))

    layer_module.set_current(WorkerLayer())
    try:
        # No configuration is read: the module functions need none in a worker.
        client_module.group_send("room", text="hi")
        client_module.send("tasks.x", {"a": 1})
        client_module.reply_channel("iabc!3").send(text="yo")
        Client(parse({}, environ={})).group_send("room", text="again")
    finally:
        layer_module.set_current(None)
    assert calls == [("group_send", "room", "hi"), ("send", "tasks.x", {"a": 1}),
                     ("to_interface", "iabc!3", "send"), ("group_send", "room", "again")]


def test_a_layer_inherited_across_fork_is_not_used(broker):
    """A child of a process that called zchannels.api.connection.connect opens its own."""
    config, router, _ = broker
    inherited = layer_module.connect(config)
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                client = Client(config)
                client.group_send("room", text="child")
                client.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        sender = receive(router)[0]
        assert sender != inherited.identity and sender.startswith(f"c{pid}-".encode())
    finally:
        layer_module.set_current(None)
        inherited.close()


def test_wait_for_broker(broker, run_dir):
    config, _, _ = broker
    assert Client(config).wait_for_broker(5.0)
    nobody = parse({"server": {"run_dir": os.path.join(run_dir, "x")}}, environ={})
    started = time.monotonic()
    assert not Client(nobody).wait_for_broker(0.2)
    assert time.monotonic() - started < 2


# -- the publish API's rules ----------------------------------------------------------------

@pytest.mark.parametrize("header, status", [
    (None, 401), ("", 401), ("Basic dG9rZW4=", 401), ("Bearer", 401), ("Bearer  ", 401),
    ("Bearer wrong", 403), ("Bearer token2", 403), ("Bearer tok", 403),
    ("Bearer tokén", 403), ("Bearer token", None), ("bearer token", None),
    ("  Bearer   token  ", None),
])
def test_authorize(header, status):
    assert authorize(header, "token") == status


CONFIG = parse({"server": {"max_message_bytes": 100},
                "pools": {"web": {"channels": ["websocket.*", "http.*"]},
                          "tasks": {"channels": ["tasks.*"]}}}, environ={})


def publication(body):
    return parse_publication(json.dumps(body).encode(), CONFIG)


def test_a_group_message_is_the_layers_frames():
    p = publication({"group": "room", "text": "hé", "event": "e", "id": 3})
    assert (p.target, p.name, p.pool) == ("group", "room", None)
    assert p.frames[:2] == [wire.VERB_GROUP, b"room"] and p.frames[3] == "hé".encode()
    assert wire.decode(p.frames[2]) == {"op": "send", "kind": "text", "event": "e", "id": 3}
    p = publication({"group": "room", "bytes_b64": base64.b64encode(b"\x00\xff").decode()})
    assert wire.decode(p.frames[2]) == {"op": "send", "kind": "bytes"}
    assert p.frames[3] == b"\x00\xff"
    p = publication({"group": "room", "close": 4001})
    assert wire.decode(p.frames[2]) == {"op": "close", "code": 4001} and p.frames[3] == b""


def test_a_reply_channel_message_is_the_layers_frames():
    p = publication({"reply_channel": "iab12!7", "text": "x"})
    assert p.frames[:2] == [wire.VERB_TO, b"iab12"] and p.frames[3] == b"x"
    assert wire.decode(p.frames[2]) == {"op": "send", "kind": "text", "conn": 7}
    p = publication({"reply_channel": "iab12!7", "close": 1000, "reason": "done"})
    assert len(p.frames) == 3
    assert wire.decode(p.frames[2]) == {"op": "close", "code": 1000, "reason": "done",
                                        "conn": 7}


def test_a_channel_message_goes_to_its_pool():
    p = publication({"channel": "tasks.make", "content": {"url": "u"},
                     "payload_b64": base64.b64encode(b"data").decode()})
    assert (p.target, p.pool) == ("channel", "tasks")
    assert wire.decode(p.frames[0]) == {"url": "u", "channel": "tasks.make"}
    assert p.frames[1] == b"data"
    assert publication({"channel": "tasks.x"}).frames[1] == b""


@pytest.mark.parametrize("body, status, fragment", [
    (b"", 400, "not JSON"),
    (b"{", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[" * 100_000, 400, "not JSON"),
    (b"[1]", 400, "JSON object"),
    (b"{}", 400, "exactly one"),
    (b'{"group": "a", "channel": "b", "text": "x"}', 400, "exactly one"),
    (b'{"group": "a", "txt": "x"}', 400, "unknown field(s) ['txt']"),
    (b'{"group": "a", "reason": "x", "close": 1000}', 400, "unknown field(s) ['reason']"),
    (b'{"group": "a"}', 400, 'exactly one of "text"'),
    (b'{"group": "a", "text": "x", "bytes_b64": ""}', 400, "exactly one of"),
    (b'{"group": "a", "text": 5}', 400, "text must be a string"),
    (b'{"group": "a", "bytes_b64": "***"}', 400, "not valid base64"),
    (b'{"group": "a", "bytes_b64": 5}', 400, "base64 string"),
    (b'{"group": "", "text": "x"}', 400, "group name"),
    (b'{"group": 5, "text": "x"}', 400, "group name"),
    (b'{"group": "a", "close": 1006}', 400, "close code"),
    (b'{"group": "a", "close": true}', 400, "close code"),
    (b'{"group": "a", "text": "x", "id": true}', 400, "id must be"),
    (b'{"group": "a", "text": "x", "event": "a\\nb"}', 400, "event must be"),
    (b'{"reply_channel": "nope", "text": "x"}', 400, "not a reply channel"),
    (b'{"reply_channel": 5, "text": "x"}', 400, "reply channel"),
    (b'{"reply_channel": "i1!1", "close": 1000, "reason": 5}', 400, "reason must be"),
    (b'{"channel": "other.x"}', 400, "no pool serves channel 'other.x'"),
    (b'{"channel": "tasks.x", "content": [1]}', 400, "content must be a JSON object"),
    (b'{"channel": "tasks.x", "text": "x"}', 400, "unknown field(s) ['text']"),
    (b'{"group": "a", "text": "' + b"x" * 101 + b'"}', 413, "limit is max_message_bytes"),
    (b'{"channel": "tasks.x", "payload_b64": "' + base64.b64encode(b"x" * 90) + b'"}',
     413, "max_message_bytes"),
])
def test_bad_requests_are_refused_with_the_reason(body, status, fragment):
    with pytest.raises(PublishError) as info:
        parse_publication(body, CONFIG)
    assert info.value.status == status
    assert fragment in info.value.message


def test_a_message_of_exactly_max_message_bytes_is_taken():
    assert publication({"group": "a", "text": "x" * 100}).frames[3] == b"x" * 100
    assert body_limit(CONFIG) == 200 + 65536


def test_the_publisher_refuses_at_once_while_the_broker_is_away(run_dir):
    """ZMQ_IMMEDIATE: nothing is queued for a broker that is not there (503), and the
    first send after it is back goes through."""
    config = parse({"server": {"run_dir": run_dir}}, environ={})

    async def scenario():
        context = zmq.Context()
        try:
            publisher = Publisher(config, "itest", context)
            message = publication({"group": "room", "text": "hi"})
            assert publisher.publish(message) is False
            router = context.socket(zmq.ROUTER)
            router.bind(config.broker_clients)
            deadline = time.monotonic() + 5
            while not publisher.publish(message):
                assert time.monotonic() < deadline, "never connected"
                await asyncio.sleep(0.02)
            sender, *frames = router.recv_multipart()
            assert sender == b"pitest" and frames == message.frames
            publisher.close()
        finally:
            context.destroy(linger=0)
    asyncio.run(asyncio.wait_for(scenario(), 10))


# -- configuration ------------------------------------------------------------------------

def test_publish_keys_default_off_and_the_token_may_come_from_the_environment():
    config = parse({}, environ={})
    assert (config.publish_path, config.publish_token) == ("/_zchannels/publish", "")
    in_file, in_environment = "file-" + "0123456789abcdef" * 2, "env-secret-" * 3
    config = parse({"server": {"publish_token": in_file}},
                   environ={"ZCHANNELS_PUBLISH_TOKEN": in_environment})
    assert config.publish_token == in_environment
    assert parse({"server": {"publish_token": in_file}},
                 environ={"ZCHANNELS_PUBLISH_TOKEN": ""}).publish_token == in_file


@pytest.mark.parametrize("server, fragment", [
    ({"publish_path": "publish"}, "publish_path must be a URL path"),
    ({"publish_path": "/"}, "publish_path"),
    ({"publish_path": "/a b"}, "publish_path"),
    ({"publish_path": "/a?b"}, "publish_path"),
    ({"publish_path": 5}, "[server] publish_path must be a str"),
    ({"publish_token": "two words"}, "publish_token"),
    ({"publish_token": "tok\n"}, "publish_token"),
    ({"publish_token": "jeton-é"}, "publish_token"),
])
def test_bad_publish_settings_are_config_errors(server, fragment):
    with pytest.raises(ConfigError) as info:
        parse({"server": server}, environ={})
    assert fragment in str(info.value)


# -- the command line ---------------------------------------------------------------------

class Stdin(io.BytesIO):
    def __init__(self, data: bytes = b"", tty: bool = False) -> None:
        super().__init__(data)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_group_send_arguments():
    args = build_parser().parse_args(["group-send", "room", "hi", "--event", "e", "--id", "1"])
    assert (args.role, args.group, args.message, args.json, args.bytes, args.event, args.id) \
        == ("group-send", "room", "hi", False, False, "e", "1")
    args = build_parser().parse_args(["send", "tasks.x"])
    assert (args.channel, args.content) == ("tasks.x", "{}")


def test_json_and_bytes_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["group-send", "room", "x", "--json", "--bytes"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("value, stdin, options, expected", [
    ("hi", Stdin(b"ignored"), {}, ("hi", None)),
    ("-", Stdin(b"from stdin\n"), {}, ("from stdin", None)),
    ("-", Stdin(b"two\n\n"), {}, ("two\n", None)),  # only one newline is taken off
    ("-", Stdin(b"crlf\r\n"), {}, ("crlf", None)),
    (None, Stdin(b"piped\n"), {}, ("piped", None)),
    ("line\n", Stdin(), {}, ("line\n", None)),  # an argument is sent as it is
    ("-", Stdin(b'{"a": 1}\n'), {"as_json": True}, ('{"a": 1}', None)),
    ("-", Stdin(b"\x00\xff\n"), {"as_bytes": True}, (None, b"\x00\xff\n")),
    ("é", Stdin(), {"as_bytes": True}, (None, "é".encode())),
])
def test_group_message(value, stdin, options, expected):
    assert group_message(value, stdin, **options) == expected


@pytest.mark.parametrize("value, stdin, options, fragment", [
    (None, Stdin(tty=True), {}, "give the message"),
    ("-", Stdin(b"\xff"), {}, "not UTF-8 text; use --bytes"),
    ("{nope", Stdin(), {"as_json": True}, "not valid JSON"),
])
def test_group_message_usage_errors(value, stdin, options, fragment):
    with pytest.raises(UsageError) as info:
        group_message(value, stdin, **options)
    assert fragment in str(info.value)


def test_channel_content():
    assert channel_content("{}", Stdin()) == {}
    assert channel_content("-", Stdin(b'{"to": "i1!2"}\n')) == {"to": "i1!2"}
    for value, fragment in (("[1]", "must be a JSON object"), ("{", "not valid JSON"),
                            ("-", "not valid JSON")):
        with pytest.raises(UsageError) as info:
            channel_content(value, Stdin())
        assert fragment in str(info.value)
