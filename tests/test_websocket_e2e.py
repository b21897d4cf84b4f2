"""End to end: real processes, real ZeroMQ sockets, a real WebSocket client."""
import json

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from harness import (echo_once, join_member, read, read_until_closed, refused_status, run,
                     wait_until)

pytestmark = pytest.mark.e2e


def test_echo_text_and_binary_in_order(system):
    async def scenario():
        ws = await system.connect("/ws/echo")
        sent = []
        for i in range(300):
            if i % 3 == 2:
                message = bytes([i % 256]) * (i + 1)
                ws.write_message(message, binary=True)
            else:
                message = f"message {i} ✓"
                ws.write_message(message)
            sent.append(message)
        received = [await read(ws) for _ in sent]
        ws.close()
        return sent, received

    sent, received = run(scenario())
    assert received == sent  # same order, text stays str, binary stays bytes
    # Echo has no connect or disconnect consumer: those events need nothing, and are
    # not counted as dropped.
    assert system.settled_counters("worker").get("unhandled", 0) == 0


def test_chat_broadcasts_to_every_member_including_sender(system):
    async def scenario():
        alice = await system.connect("/ws/chat/room1?name=alice")
        joined = json.loads(await read(alice))  # the runtime's presence notice
        alice_rc = joined["member"]
        assert joined == {"type": "join", "group": "chat.room1", "member": alice_rc,
                          "info": {"user": "alice"}}
        bob = await system.connect("/ws/chat/room1?name=bob")
        joined = json.loads(await read(bob))
        assert joined["info"] == {"user": "bob"} and joined["member"] != alice_rc
        assert json.loads(await read(alice)) == joined
        # JSON {"text": ...} or a plain string; the sender hears itself too.
        for sender, user, frame, text in ((alice, "alice", json.dumps({"text": "hi bob"}),
                                           "hi bob"),
                                          (bob, "bob", "plain hello", "plain hello")):
            sender.write_message(frame)
            for ws in (alice, bob):
                assert json.loads(await read(ws)) == {"type": "message", "user": user,
                                                      "text": text}
        other = await system.connect("/ws/chat/elsewhere?name=carol")
        await read(other)  # carol's own join
        bob.close()
        assert json.loads(await read(alice)) == {**joined, "type": "leave"}
        other.write_message("only here")
        assert json.loads(await read(other))["text"] == "only here"
        alice.write_message("still here")
        assert json.loads(await read(alice))["text"] == "still here"  # not "only here"
        alice.close()
        other.close()

    run(scenario())


def test_invalid_json_in_chat_closes_1007_and_the_room_goes_on(system):
    async def scenario():
        good = await system.connect("/ws/chat/json?name=good")
        await read(good)
        bad = await system.connect("/ws/chat/json?name=bad")
        await read(bad)
        await read(good)  # bad joined
        bad.write_message('{"text": "unterminated')
        assert await read_until_closed(bad) == []
        assert bad.close_code == 1007
        assert "invalid JSON" in bad.close_reason
        assert json.loads(await read(good))["type"] == "leave"
        good.write_message(json.dumps({"text": "anyone?"}))
        assert json.loads(await read(good))["text"] == "anyone?"
        good.close()

    run(scenario())
    wait_until(lambda: "invalid JSON from" in system.all_logs(), 5, "the chat's log line")


def test_unknown_path_closes_4404_with_a_log_line(system):
    async def scenario():
        ws = await system.connect("/no/such/path")
        assert await read_until_closed(ws) == []
        return ws.close_code, ws.close_reason

    code, reason = run(scenario())
    assert code == 4404
    assert reason == "no consumer for this path"
    wait_until(lambda: "no consumer for WebSocket path '/no/such/path'" in system.all_logs(),
               5, "the worker's log line")


def test_consumer_exception_closes_1011_logs_traceback_and_worker_lives(system):
    system.expect_error("ConsumerBoom: boom requested by the test")
    workers = {name: proc.pid for name, proc in system.processes.items()
               if name.startswith("worker")}

    async def scenario():
        bystander = await system.connect("/ws/echo")
        ws = await system.connect("/test/fail")
        ws.write_message("ok?")
        assert await read(ws) == "fine"
        ws.write_message("boom")
        ws.write_message("never answered")
        assert await read_until_closed(ws) == []
        assert ws.close_code == 1011
        for i in range(20):  # both workers keep serving other connections
            bystander.write_message(f"after {i}")
            assert await read(bystander) == f"after {i}"
        bystander.close()

    run(scenario())
    assert "ConsumerBoom: boom requested by the test" in system.all_logs()
    assert "Traceback (most recent call last)" in system.all_logs()
    for name, pid in workers.items():
        assert system.processes[name].poll() is None, f"{name} died"
        assert system.processes[name].pid == pid


def test_exception_in_connect_consumer_closes_1011(system):
    system.expect_error("ConsumerBoom: connect failed on purpose")

    async def scenario():
        ws = await system.connect("/test/fail-connect")
        assert await read_until_closed(ws) == []
        return ws.close_code

    assert run(scenario()) == 1011


def test_reject_answers_403_at_the_handshake(system):
    assert run(refused_status(system.url("/test/reject"))) == 403


def test_foreign_origin_is_refused_403(system):
    async def scenario():
        status = await refused_status(HTTPRequest(system.url("/ws/echo"),
                                                  headers={"Origin": "http://evil.example"}))
        same = HTTPRequest(system.url("/ws/echo"),
                           headers={"Origin": f"http://127.0.0.1:{system.port}"})
        assert await echo_once(same, "same origin") == "same origin"
        return status

    assert run(scenario()) == 403


def test_subprotocol_chosen_by_connect_consumer(system):
    async def scenario():
        ws = await system.connect("/test/subprotocol", subprotocols=["v1.chat", "v2.chat"])
        chosen = ws.selected_subprotocol
        ws.close()
        return chosen

    assert run(scenario()) == "v2.chat"


def test_session_travels_with_the_connection_across_workers(system):
    async def scenario():
        ws = await system.connect("/test/session")
        # All sent at once: each event must still see the session as the previous
        # event's consumer left it, whichever worker ran that one.
        for _ in range(30):
            ws.write_message("count")
        counts = [await read(ws) for _ in range(30)]
        ws.close()
        return counts

    assert run(scenario()) == [str(i) for i in range(1, 31)]


def test_oversized_message_closes_1009(system):
    async def scenario():
        ws = await system.connect("/ws/echo")
        ws.write_message(b"x" * (1024 * 1024 + 1), binary=True)
        assert await read_until_closed(ws) == []
        code = ws.close_code
        assert await echo_once(system.url("/ws/echo"), "still serving") == "still serving"
        return code

    assert run(scenario()) == 1009


def test_plain_http_to_a_websocket_path_is_404_and_index_is_served(system):
    from tornado.httpclient import AsyncHTTPClient

    async def scenario():
        client = AsyncHTTPClient()
        with pytest.raises(HTTPClientError) as raised:
            await client.fetch(f"http://127.0.0.1:{system.port}/ws/echo")
        index = await client.fetch(f"http://127.0.0.1:{system.port}/")
        return raised.value.code, index.body.decode()

    code, body = run(scenario())
    assert code == 404
    assert "new WebSocket(" in body and "/ws/chat/" in body


def test_connect_message_carries_path_query_headers_client_subprotocols(system):
    async def scenario():
        request = HTTPRequest(system.url("/test/inspect?a=1&b=two"),
                              headers={"X-Custom": "yes", "User-Agent": "zc-test"})
        ws = await websocket_connect(request, subprotocols=["p1"])
        seen = json.loads(await read(ws))
        local_port = ws.protocol.stream.socket.getsockname()[1]
        ws.close()
        return seen, local_port

    seen, local_port = run(scenario())
    assert seen["path"] == "/test/inspect"
    assert seen["query_string"] == "a=1&b=two"
    assert seen["client"] == ["127.0.0.1", local_port]
    assert seen["subprotocols"] == ["p1"]
    assert seen["headers"]["x-custom"] == "yes"
    assert seen["headers"]["user-agent"] == "zc-test"
    interface_id, conn = seen["reply_channel"].split("!")
    assert interface_id.startswith("i") and conn.isdigit()


def test_many_sends_from_one_consumer_call_arrive_in_order(system):
    """Promise 3: to its own socket and to a group, in the order sent."""
    async def scenario():
        member, _ = await join_member(system, "burst")
        sender = await system.connect("/test/burst/burst")
        sender.write_message("300")
        replies = [await read(sender) for _ in range(300)]
        grouped = [await read(member) for _ in range(300)]
        sender.close()
        member.close()
        return replies, grouped

    replies, grouped = run(scenario())
    assert replies == [f"r{i}" for i in range(300)]
    assert grouped == [f"g{i}" for i in range(300)]


def test_too_much_data_before_the_handshake_closes_1008(system):
    async def scenario():
        ws = await system.connect("/test/early-flood")
        received = await read_until_closed(ws)
        return ws.close_code, sum(len(m) for m in received)

    code, received_bytes = run(scenario())
    assert code == 1008
    assert 0 < received_bytes <= 4 * 1024 * 1024  # what was kept up to max_outbound_bytes
    wait_until(lambda: "(too much data before the handshake finished); closing with 1008"
                       in system.all_logs(), 5,
               "the interface's log line")


def test_a_reply_lost_on_the_way_closes_the_connection_when_its_done_arrives(system):
    """The worker's "done" says how many messages its consumer sent to the connection;
    fewer arrived (one was lost in a killed broker, simulated by the test consumer), so
    the client is told with 1011 instead of waiting for an answer that will not come."""
    system.expect_error(r"were lost on the way")

    async def scenario():
        ws = await system.connect("/test/lost-reply")
        ws.write_message("go")
        return await read_until_closed(ws), ws.close_code
    assert run(scenario()) == (["first"], 1011)
    assert system.settled_counters("interface")["replies_lost"] == 1
