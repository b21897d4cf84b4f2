"""A client that stops reading cannot make the server buffer without bound."""
import os
import socket

import pytest

from harness import checked_system, echo_once, raw_websocket, run, wait_until

pytestmark = pytest.mark.e2e

LIMIT = 256 * 1024


def send_text(sock: socket.socket, text: str) -> None:
    payload, mask = text.encode(), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def test_a_client_that_does_not_read_is_closed_and_others_carry_on():
    with checked_system(server={"max_outbound_bytes": LIMIT}) as system:
        slow = raw_websocket(system.port, "/test/firehose")
        send_text(slow, "128")  # 8 MiB: more than the kernel buffers and the limit
        counts = wait_until(lambda: (c := system.counters("interface"))
                            and c.get("outbound_overflow") and c, 20,
                            "the interface to give up on the slow client")
        assert counts["outbound_overflow"] == 1
        assert "is not reading fast enough" in system.all_logs()

        assert run(echo_once(system.url("/ws/echo"), "unaffected")) == "unaffected"
        # The close frame waits behind the unread data; Tornado gives up on the
        # client's answer after 5 s and drops the connection, which frees its buffer.
        wait_until(lambda: system.counters("interface").get("connections") == 0, 20,
                   "the server to drop the slow client")
        slow.close()
