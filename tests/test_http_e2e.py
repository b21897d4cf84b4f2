"""HTTP through real processes: interface -> broker -> worker consumers (and the WSGI
fallback) -> broker -> interface, with real HTTP clients on real sockets."""
import asyncio
import http.client
import json
import os
import re
import resource
import signal
import threading

import pytest

from harness import checked_system, http_request, read, read_gated_stream, run, wait_until

SERVER = {"http_timeout": 1.0, "max_body_bytes": 65536, "sse_heartbeat": 0.5,
          "wsgi_app": "demo_wsgi:application"}


@pytest.fixture(scope="module")
def system():
    with checked_system("HTTP consumer failed on purpose", "secret-detail-42",
                        "invalid header", server=SERVER) as running:
        yield running


def request(system, method, path, body=None, headers=None):
    return http_request(system.port, method, path, body, headers)


def interface_total(system, counter):
    """`counter` summed over the interface processes, as they are now."""
    return system.settled_counters("interface").get(counter, 0)


def records_starting(system, *prefix):
    return [r for r in system.records() if r[:len(prefix)] == list(prefix)]


async def open_events(port, path):
    """A raw SSE client: (reader, writer) after the response headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Accept: text/event-stream\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"text/event-stream" in head.lower(), head
    return reader, writer


async def next_event(reader, timeout=5.0):
    """The next SSE event block (comments and chunk framing stripped)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        assert line, "stream ended"
        text = line.decode().rstrip("\r\n")
        if _is_chunk_size(text) or text.startswith(":"):  # chunk framing, heartbeats
            continue
        if text == "":
            if lines:
                return lines
            continue
        lines.append(text)


def _is_chunk_size(text):
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


# -- requests and responses -----------------------------------------------------------

def test_consumer_sees_method_path_query_headers_body_and_client(system):
    status, headers, body = request(system, "POST", "/test/http/echo?a=1&a=2&empty=",
                                    body=b"name=zed&x=\xff", headers={"X-Thing": "yes"})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Body-Length"] == "12"
    seen = json.loads(body)
    assert seen["method"] == "POST"
    assert seen["path"] == "/test/http/echo"
    assert seen["query"] == {"a": ["1", "2"], "empty": [""]}
    assert seen["headers"]["x-thing"] == "yes"
    assert seen["body"].encode("latin-1") == b"name=zed&x=\xff"
    assert seen["client"][0] == "127.0.0.1"
    assert seen["http_version"] == "1.1"


def test_demo_consumer_and_wsgi_fallback_on_one_keep_alive_connection(system):
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        for i in range(20):
            path = "/hello" if i % 2 else "/app/hello"
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert body == (b"hello\n" if i % 2 else b"hello from WSGI\n")
            assert conn.sock is sock, "the connection was not kept alive"
        conn.request("GET", "/app/no-such-page")
        response = conn.getresponse()
        assert response.status == 404 and json.loads(response.read())["path"] == \
            "/app/no-such-page"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(system):
    async def scenario():
        reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
        paths = ["/test/http/handoff", "/hello", "/app/hello", "/hello"]
        writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
        bodies = []
        for _ in paths:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            bodies.append(await asyncio.wait_for(reader.readexactly(length), 10))
        writer.close()
        return bodies
    bodies = run(scenario())
    assert bodies[0].startswith(b"answered by pid ")  # the slow one first, still
    assert bodies[1:] == [b"hello\n", b"hello from WSGI\n", b"hello\n"]


def test_head_has_headers_but_no_body(system):
    for path, length in (("/hello", "6"), ("/app/hello", "16")):
        status, headers, body = request(system, "HEAD", path)
        assert (status, headers["Content-Length"], body) == (200, length, b"")


def test_chunked_request_bodies_reach_consumers_and_wsgi(system):
    parts = [b"x" * 1000, b"y" * 2000, b"z"]
    for path in ("/test/http/echo", "/app/echo"):
        conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
        try:
            conn.request("POST", path, body=iter(parts), encode_chunked=True,
                         headers={"Content-Type": "application/x-test"})
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200
        if path == "/app/echo":
            assert body == b"".join(parts)
        else:
            assert json.loads(body)["body"] == "".join(p.decode() for p in parts)


def test_streamed_response_arrives_part_by_part(system):
    # The consumer is blocked until the gate opens: the first part came before the
    # rest of the body existed.
    response, first, rest = read_gated_stream(system, "/test/http/stream/4", "stream")
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("X-Parts") == "4"
    assert (first, rest) == (b"part 0\n", b"part 1\npart 2\npart 3\n")


def test_a_response_can_come_later_from_another_consumer(system):
    status, _, body = request(system, "GET", "/test/http/handoff")
    assert status == 200 and body.startswith(b"answered by pid ")


def test_consumer_exception_is_500_without_details(system):
    status, headers, body = request(system, "GET", "/test/http/boom")
    assert status == 500
    assert b"secret-detail-42" not in body and b"Traceback" not in body
    wait_until(lambda: "secret-detail-42" in system.all_logs(), 5, "the traceback in a log")
    assert "Traceback" in system.all_logs()


def test_invalid_header_from_consumer_is_500_and_not_sent(system):
    status, headers, body = request(system, "GET", "/test/http/bad-header")
    assert status == 500
    assert "pwned" not in str(headers)


def test_no_response_in_time_is_504_and_late_reply_is_counted(system):
    before = interface_total(system, "late_responses")
    status, _, _ = request(system, "GET", "/test/http/late")
    assert status == 504
    wait_until(lambda: records_starting(system, "late-sent"), 5, "the late reply to be sent")
    wait_until(lambda: interface_total(system, "late_responses") == before + 1, 5,
               "the late reply to be counted")
    status, _, _ = request(system, "GET", "/test/http/silent")
    assert status == 504


def test_body_over_limit_is_413_and_no_worker_sees_it(system):
    status, _, _ = request(system, "POST", "/test/http/record-body", body=b"x" * 70000)
    assert status == 413
    conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
    try:  # no Content-Length: the limit is found while the chunks arrive
        conn.request("POST", "/test/http/record-body", body=iter([b"y" * 30000] * 3),
                     encode_chunked=True)
        assert conn.getresponse().status == 413
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the server cut the connection instead of answering 413")
    finally:
        conn.close()
    # A body at the limit goes through; had either big one reached a worker, its
    # record would be there too by the time this one's is.
    assert request(system, "POST", "/test/http/record-body", body=b"z" * 65536)[0] == 200
    wait_until(lambda: records_starting(system, "body-seen"), 5, "the small body's record")
    assert records_starting(system, "body-seen") == [["body-seen", "65536"]]
    assert interface_total(system, "refused_body_too_large") == 2


def test_static_files_are_served_with_caching_headers(system):
    status, headers, body = request(system, "GET", "/static/index.html")
    assert status == 200 and b"<html" in body.lower()
    assert headers["Cache-Control"] == "max-age=3600"
    etag = headers["Etag"]
    status, _, body = request(system, "GET", "/static/index.html",
                              headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")
    status, headers, _ = request(system, "GET", "/")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    assert request(system, "GET", "/static/missing.css")[0] == 404


# -- streams that messages feed ---------------------------------------------------------

def test_server_sent_events_from_groups_then_disconnect_drops_membership(system):
    async def scenario():
        reader, writer = await open_events(system.port, "/test/http/events/news")
        assert await next_event(reader) == ["event: hello", "id: 0", "data: welcome"]
        ws = await system.connect("/test/send/news")
        ws.write_message("line one\nline two")
        assert await read(ws) == "sent"
        assert await next_event(reader) == ["data: line one", "data: line two"]
        # Idle: a heartbeat comment (sse_heartbeat is 0.5 s here).
        line = b""
        while not line.startswith(b": "):
            line = await asyncio.wait_for(reader.readline(), 5)
        rc = records_starting(system, "events-open", "news")[0][2]
        writer.close()
        await asyncio.to_thread(wait_until, lambda: records_starting(
            system, "events-disconnect", "news", rc), 10, "http.disconnect")
        ws.write_message("after")
        assert await read(ws) == "sent"
        ws.close()
        return rc
    run(scenario())
    wait_until(lambda: interface_total(system, "group_members") == 0, 5,
               "no group members left")


def test_long_poll_answers_with_the_next_message_or_times_out(system):
    result = {}

    def poll():
        result["answer"] = request(system, "GET", "/test/http/hold/poll?timeout=10")

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        wait_until(lambda: records_starting(system, "held", "poll"), 5, "the poll to be held")

        async def say():
            ws = await system.connect("/test/send/poll")
            ws.write_message("fresh news")
            assert await read(ws) == "sent"
            ws.close()
        run(say())
    finally:
        thread.join(15)
    status, headers, body = result["answer"]
    assert (status, body) == (200, b"fresh news")
    assert headers["Content-Type"] == "text/plain"
    assert request(system, "GET", "/test/http/hold/quiet?timeout=0.5")[:3:2] == (204, b"")


def test_a_thousand_sse_clients_on_one_interface():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    clients = 1000
    with checked_system(interfaces=1, server=SERVER) as system:
        async def scenario():
            streams = []
            for start in range(0, clients, 100):
                streams += await asyncio.gather(*(
                    open_events(system.port, "/test/http/events/many")
                    for _ in range(start, min(clients, start + 100))))
            for reader, _ in streams:
                assert (await next_event(reader, 20))[-1] == "data: welcome"
            ws = await system.connect("/test/send/many")
            ws.write_message("to all")
            assert await read(ws) == "sent"
            events = await asyncio.gather(*(next_event(reader, 20) for reader, _ in streams))
            ws.close()
            for _, writer in streams:
                writer.close()
            return events
        events = run(scenario(), timeout=90)
        assert all(event == ["data: to all"] for event in events)
        assert len(events) == clients
        wait_until(lambda: len(records_starting(system, "events-disconnect", "many")) == clients,
                   60, "every http.disconnect")


def test_pool_full_is_503_with_retry_after():
    """One worker blocked, a pool queue that holds one message: the requests beyond
    what the pipes hold are refused at once, with Retry-After. (The bodies are large
    so that the kernel's socket buffers between the processes fill up quickly too.)"""
    pools = {"web": (["http.*"], 1), "default": (["*"], 1)}
    with checked_system(server=dict(SERVER, http_timeout=30.0), pools=pools,
                        pool_capacity={"web": 1}) as system:
        async def scenario():
            async def get(i):
                reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
                writer.write(b"POST /test/http/gate/full HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 60000\r\n\r\n" + b"x" * 60000)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 25)
                writer.close()
                return head
            tasks = [asyncio.ensure_future(get(i)) for i in range(300)]
            await asyncio.to_thread(wait_until, lambda: interface_total(system, "refused_http"),
                                    20, "a refusal")
            open(os.path.join(system.run_dir, "gate-full"), "w").close()
            return await asyncio.gather(*tasks)
        heads = run(scenario(), timeout=60)
        refused = [h for h in heads if h.startswith(b"HTTP/1.1 503 ")]
        served = [h for h in heads if h.startswith(b"HTTP/1.1 200 ")]
        assert refused and served and len(refused) + len(served) == len(heads)
        assert all(b"\r\nRetry-After: 1\r\n" in h for h in refused)
        assert interface_total(system, "refused_http") == len(refused)


def test_stopping_interface_ends_streams_and_refuses_unanswered_requests():
    with checked_system(interfaces=1, server=dict(SERVER, http_timeout=30.0)) as system:
        async def scenario():
            reader, writer = await open_events(system.port, "/test/http/events/bye")
            assert (await next_event(reader))[-1] == "data: welcome"
            r2, w2 = await asyncio.open_connection("127.0.0.1", system.port)
            w2.write(b"GET /test/http/silent HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.to_thread(wait_until, lambda: records_starting(system, "silent"),
                                    5, "the silent consumer")
            system.processes["interface-0"].send_signal(signal.SIGTERM)
            rest = await asyncio.wait_for(reader.read(), 10)  # to EOF
            head = await asyncio.wait_for(r2.readuntil(b"\r\n\r\n"), 10)
            writer.close()
            w2.close()
            return rest, head
        rest, head = run(scenario())
        assert rest.endswith(b"0\r\n\r\n"), rest  # the chunked body ended properly
        assert head.startswith(b"HTTP/1.1 503 ")
        assert system.processes["interface-0"].wait(10) == 0
