"""Sending from anywhere, end to end: a Django view, a cron-style script (threads,
then a fork), the ``zchannels send``/``group-send`` commands and the interfaces'
HTTP publish API each reach WebSocket clients of a running system."""
import base64
import http.client
import json
import os
import subprocess
import sys
import textwrap

import pytest

from harness import (ROOT, checked_system, http_request, join_member, read, run,
                     wait_until)

APPS = os.path.join(ROOT, "tests", "apps")
TOKEN = "s3cret-token_for.tests~4f1c9a7e2b6d8053"
PUBLISH = "/_zchannels/publish"
SUBPROCESS_TIMEOUT = 30  # seconds


@pytest.fixture(scope="module")
def site():
    """Django behind the WSGI fallback; the publish API is off (no token)."""
    env = {"PYTHONPATH": APPS, "DJANGO_SETTINGS_MODULE": "djsite.settings"}
    with checked_system(workers=1, interfaces=1, server={"wsgi_app": "djsite.wsgi:application"},
                        env=env) as system:
        yield system


@pytest.fixture(scope="module")
def api():
    """The publish API on, with a small max_message_bytes for the 413."""
    server = {"publish_token": TOKEN, "max_message_bytes": 4096}
    with checked_system(workers=1, interfaces=1, server=server) as system:
        yield system


def python(system, script, timeout=SUBPROCESS_TIMEOUT):
    """Run a script with the system's environment (ZCHANNELS_CONFIG, ..._RUN_DIR), from
    another directory: as a cron job would."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd="/tmp",
                          env=dict(system.env, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=timeout)


def zchannels(system, *args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "zchannels", *args], cwd=ROOT, input=stdin,
                          env=dict(system.env, **(env or {})), capture_output=True,
                          timeout=SUBPROCESS_TIMEOUT)


async def messages(ws, count):
    return [await read(ws) for _ in range(count)]


def publish(system, body, token=TOKEN, method="POST", raw=None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return http_request(system.port, method, PUBLISH, body=data, headers=headers)


# -- Python: a Django view, a script, a fork ----------------------------------------------

def test_a_django_view_sends_to_a_group(site):
    async def scenario():
        ws, _ = await join_member(site, "anywhere-django")
        status, _, body = http_request(site.port, "POST", "/django/notify?group=anywhere-django",
                                       body="from a view".encode())
        assert (status, body) == (200, b"sent")
        assert await read(ws) == "from a view"
        ws.close()
    run(scenario())


def test_a_script_sends_from_many_threads_and_exits_without_closing(site):
    """No close(): atexit lets the messages leave before the interpreter goes."""
    async def scenario():
        ws, rc = await join_member(site, "anywhere-cron")
        result = python(site, f"""
            import threading
            from zchannels.api.client import group_send, reply_channel, send

            def burst(n):
                for i in range(5):
                    group_send("anywhere-cron", text=f"{{n}}.{{i}}")
            threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
            for t in threads: t.start()
            for t in threads: t.join()
            reply_channel({rc!r}).send(text="direct")
            send("tasks.echo", {{"to": {rc!r}}}, payload=b"via a task")
        """)
        assert result.returncode == 0, result.stderr
        got = await messages(ws, 22)
        group = [m for m in got if isinstance(m, str) and "." in m]
        for n in range(4):  # each thread's messages in the order it sent them
            assert [m for m in group if m.startswith(f"{n}.")] == [f"{n}.{i}" for i in range(5)]
        assert "direct" in got and b"via a task" in got
        ws.close()
    run(scenario())


def test_a_forked_child_sends_with_its_own_sockets(site):
    async def scenario():
        ws, _ = await join_member(site, "anywhere-fork")
        result = python(site, """
            import os
            from zchannels.api import client

            client.group_send("anywhere-fork", text="parent before")
            parent = client.default_client()._layer.identity
            pid = os.fork()
            if pid == 0:
                client.group_send("anywhere-fork", text="child")
                child = client.default_client()._layer.identity
                print("child", child.decode(), child != parent, flush=True)
                client.close()
                os._exit(0)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            client.group_send("anywhere-fork", text="parent after")
            assert client.default_client()._layer.identity == parent
        """)
        assert result.returncode == 0, result.stderr
        words = result.stdout.split()
        assert words[0] == "child" and words[2] == "True"
        # The child is another sender, so its message may come anywhere; the parent's two
        # come through one socket, in the order sent.
        received = await messages(ws, 3)
        assert set(received) == {"child", "parent after", "parent before"}, received
        assert received.index("parent before") < received.index("parent after"), received
        ws.close()
    run(scenario())


# -- the command line -------------------------------------------------------------------------

def test_cli_group_send_from_argument_and_stdin(site):
    async def scenario():
        ws, _ = await join_member(site, "anywhere-cli")
        assert zchannels(site, "group-send", "anywhere-cli", "plain").returncode == 0
        result = zchannels(site, "group-send", "anywhere-cli", "-", "--json",
                           stdin=b'{"n": 1}\n')
        assert result.returncode == 0, result.stderr
        result = zchannels(site, "group-send", "anywhere-cli", "--bytes", stdin=b"\x00\x01")
        assert result.returncode == 0, result.stderr
        assert await messages(ws, 3) == ["plain", '{"n": 1}', b"\x00\x01"]
        ws.close()
    run(scenario())


def test_cli_send_to_a_named_channel(site):
    async def scenario():
        ws, rc = await join_member(site, "anywhere-cli-send")
        result = zchannels(site, "send", "tasks.echo", "-", stdin=json.dumps({"to": rc}).encode())
        assert result.returncode == 0, result.stderr
        assert await read(ws) == b""  # tasks.echo sends its (empty) payload back
        ws.close()
    run(scenario())


@pytest.mark.parametrize("args, stdin, fragment", [
    (["group-send", "g", "{x", "--json"], None, "not valid JSON"),
    (["group-send", "", "x"], None, "group name must be a non-empty string"),
    (["send", "tasks.x", "[1]"], None, "must be a JSON object"),
    (["group-send", "g", "-"], b"\xff", "not UTF-8 text; use --bytes"),
])
def test_cli_usage_errors_exit_2(site, args, stdin, fragment):
    result = zchannels(site, *args, stdin=stdin)
    assert result.returncode == 2
    assert fragment in result.stderr.decode() and b"Traceback" not in result.stderr


def test_cli_refusals_exit_1(site, tmp_path):
    config = tmp_path / "z.toml"
    config.write_text('[server]\nsend_timeout = 0.3\n'
                      '[pools.web]\nchannels = ["websocket.*", "http.*"]\n')
    result = zchannels(site, "--config", str(config), "send", "reports.x")
    assert result.returncode == 1
    assert b"no pool serves channel 'reports.x'" in result.stderr
    # No broker behind this run directory.
    result = zchannels(site, "--config", str(config), "group-send", "g", "x",
                       env={"ZCHANNELS_RUN_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert b"no broker at ipc://" in result.stderr and b"Traceback" not in result.stderr


def test_without_a_token_the_publish_path_is_an_ordinary_path(site):
    status, _, body = publish(site, {"group": "g", "text": "x"})
    assert status == 404 and b'"error"' not in body  # Django's own 404


# -- the HTTP publish API -------------------------------------------------------------------

def test_publish_to_a_group_a_reply_channel_and_a_channel(api):
    async def scenario():
        ws, rc = await join_member(api, "anywhere-http")
        for body in ({"group": "anywhere-http", "text": "text to all"},
                     {"group": "anywhere-http", "bytes_b64": base64.b64encode(b"\x00b").decode()},
                     {"reply_channel": rc, "text": "just you"},
                     {"channel": "tasks.echo", "content": {"to": rc},
                      "payload_b64": base64.b64encode(b"via a task").decode()}):
            status, headers, answer = publish(api, body)
            assert (status, json.loads(answer)) == (202, {"ok": True}), answer
            assert headers["Content-Type"] == "application/json"
        assert await messages(ws, 4) == ["text to all", b"\x00b", "just you", b"via a task"]
        status, _, _ = publish(api, {"group": "anywhere-http", "close": 4321})
        assert status == 202
        assert await read(ws) is None and ws.close_code == 4321
    run(scenario())


@pytest.mark.parametrize("token, method, raw, status, fragment", [
    (None, "POST", b'{"group": "g", "text": "x"}', 401, "missing bearer token"),
    ("wrong", "POST", b'{"group": "g", "text": "x"}', 403, "wrong token"),
    (TOKEN, "POST", b'{"group": "g", "text": ', 400, "not JSON"),
    (TOKEN, "POST", b'{"group": "g"}', 400, "exactly one of"),
    (TOKEN, "GET", None, 405, "use POST"),
    (TOKEN, "POST", json.dumps({"group": "g", "text": "x" * 4097}).encode(), 413,
     "max_message_bytes"),
    (TOKEN, "POST", b"x" * (2 * 4096 + 65537), 413, "the body is over"),
])
def test_publish_refusals(api, token, method, raw, status, fragment):
    got, headers, body = publish(api, None, token=token, method=method, raw=raw)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert fragment in json.loads(body)["error"]
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    if status == 405:
        assert headers["Allow"] == "POST"


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(api):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        chunks = (b"x" * 16384 for _ in range(10))  # no Content-Length: 160 KiB, chunked
        conn.request("POST", PUBLISH, body=chunks, encode_chunked=True,
                     headers={"Authorization": f"Bearer {TOKEN}",
                              "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413
        assert "the body is over" in json.loads(response.read())["error"]
    finally:
        conn.close()


def test_publish_is_counted(api):
    counts = api.settled_counters("interface")
    assert counts["publish_accepted"] >= 5 and counts["publish_unauthorized"] >= 1
    assert counts["publish_forbidden"] >= 1 and counts["publish_invalid"] >= 6
    assert counts["publish_requests"] >= counts["publish_accepted"] + 8


def test_publish_answers_503_while_the_broker_is_away(api):
    """Last in this module: it stops the broker (and starts it again)."""
    api.kill("broker")
    message = {"group": "anywhere-http", "text": "x"}
    status, headers, body = wait_until(
        lambda: (answer := publish(api, message))[0] != 202 and answer, 10,
        "the interface to notice the broker has gone")
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "cannot take the message now" in json.loads(body)["error"]
    api.restart("broker")
    wait_until(lambda: publish(api, message)[0] == 202, 10, "publishing again")
