"""The wire format between processes: multipart ZeroMQ messages.

Every message is a small ujson header frame plus, where there is one, a raw
payload frame, so binary WebSocket data and large bodies are never base64'd or
JSON-escaped, and nothing is ever unpickled. The frames of each hop:

==================================  ==============================================
event to a pool (PUSH)               ``[header, payload]``; client events add ``seq``
broker -> worker                     ``[E, <the event's frames>]``
worker -> broker: credit             ``[R<n>]`` (free), ``[B<n>]`` (stopping)
worker -> broker: to a connection    ``[T, interface id, header, payload?]``
worker -> broker: ... ending event   ``[D<n>, interface id, header, payload, done]``
                                     or ``[D<n>, interface id, done]`` (credit too);
                                     a stopping worker: the same with ``T`` (no credit)
worker -> broker: group send         ``[G, group, header, payload]``; a consumer's send
                                     to a group with history adds ``origin``, the
                                     reply channel of the event's connection
worker -> broker: join with history  ``[H, interface id, header]`` (a group_add with
                                     ``since``: the broker adds ``history`` to the
                                     header and the missed messages behind it)
worker -> broker: delayed            ``[W<ms>, G, group, header, payload, origin?]`` or
                                     ``[W<ms>, S, pool, header, payload]``
broker -> interface                  ``[worker id, header, payload?, done?]``
broker -> interface: group message   ``[*, group, header, payload]``, and
                                     ``position`` last if its group keeps history
broker -> interface: join + history  ``[worker id, header, (header, payload,
                                     position) per missed message]``
interface -> broker                  ``[worker id, header]``  (answers to requests)
interface -> broker: presence        ``[P, header]`` (membership changes: `presence`)
worker -> broker: presence query     ``[Q, header]``, answered ``[A, "", header]``
broker -> worker: answer             ``[A, interface id, header]``
broker -> worker: bounce             ``[U, interface id, original header]``
interface -> broker ping             ``[PING, header]``, answered ``[PING, PONG]``
                                     (or ``[PING, ABANDONED]``: see the broker)
==================================  ==============================================

One echo is four messages: event to the broker, broker to a worker, the reply with
the done and the worker's credit to the broker, and on to the interface.

Header keys: ``op`` says what a worker's or a group message asks of an interface
(`OP_*` below); ``conn`` is the connection number inside the interface;
``kind`` says whether the payload is ``text`` (UTF-8) or ``bytes``.
A WebSocket event's third frame, ``seq``, numbers it within its connection (ASCII
digits); the worker's ``done`` names it, so the acknowledgement of an event that
timed out can never release the event after it.
"""
from __future__ import annotations

from typing import Any

import ujson

from zchannels.core.exceptions import BadMessage, InvalidGroupName, InvalidName

# Operations a worker asks of the interface that owns a socket.
OP_ACCEPT = "accept"
OP_REJECT = "reject"
OP_SEND = "send"
OP_CLOSE = "close"
OP_DONE = "done"  # the consumer for the connection's in-flight event has returned
OP_GROUP_ADD = "group_add"
OP_GROUP_DISCARD = "group_discard"
# HTTP responses: "start" sends the status and headers (and maybe the whole body),
# "body" more of the body, "hold" parks a long-poll until a message arrives.
OP_START = "start"
OP_BODY = "body"
OP_HOLD = "hold"

# How an HTTP response carries later messages (reply_channel.send, group_send).
MODE_RESPONSE = "response"  # one body, maybe in several "body" parts; sends not taken
MODE_STREAM = "stream"  # each message is written to the body as it is
MODE_SSE = "sse"  # each message is a Server-Sent Event
MODE_HOLD = "hold"  # the first message is the whole body

KIND_TEXT = "text"
KIND_BYTES = "bytes"

# The first frame of what a worker (or any other process) sends the broker.
VERB_READY = b"R"  # R<n>: free for one more message; n counts the messages received
VERB_BYE = b"B"  # B<n>: stopping; take no more
VERB_TO = b"T"  # an operation for one connection, relayed to its interface
VERB_DONE = b"D"  # D<n>: the same, ending with the event's done, and a credit (R<n>)
VERB_GROUP = b"G"  # a group message, to every interface
VERB_HISTORY = b"H"  # [H, interface id, header]: a group_add that recovers from a position
VERB_LATER = b"W"  # W<ms>: the message behind it (G, or S) is due in ms milliseconds
VERB_TO_POOL = b"S"  # [S, pool name, header, payload]: a named channel's message (delayed)
VERB_QUERY = b"Q"  # [Q, header]: who is in a group (runtime/broker/presence.py); the broker answers
MAX_DELAY = 86400.0  # seconds a message may be delayed
# The first frame of what the broker sends a worker.
TO_WORKER_EVENT = b"E"
TO_WORKER_ANSWER = b"A"
TO_WORKER_BOUNCE = b"U"
# The first frame of a group message from the broker to an interface; anything else
# there is the id of the process that sent the operation (or PING).
FROM_GROUP = b"*"

# What an interface sends the broker in place of a worker id: its membership changes.
PRESENCE = b"P"

UNREACHABLE = b"unreachable"
PING = b""
PONG = b"pong"
# The broker's answer to the hello of an interface it found gone and whose sockets'
# disconnects it ran: drop them (close 1012) and say hello again with HELLO_ABANDONED.
ABANDONED = b"abandoned"
HELLO_ABANDONED = b'{"abandoned":true}'

# RFC 6455 section 7.4: the registered codes an endpoint may put in a close frame.
SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                  1012, 1013, 1014})

REPLY_SEPARATOR = "!"
MAX_NAME_BYTES = 200  # channel and group names


def encode(header: dict[str, Any]) -> bytes:
    return ujson.dumps(header, ensure_ascii=False, escape_forward_slashes=False).encode()


def decode(frame: bytes) -> dict[str, Any]:
    """Parse a header frame; anything but a JSON object is a BadMessage."""
    try:
        header = ujson.loads(frame)
    except (ValueError, TypeError) as e:
        raise BadMessage(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise BadMessage(f"header is a JSON {type(header).__name__}, not an object")
    return header


def reply_channel_name(interface_id: str, conn_id: int) -> str:
    return f"{interface_id}{REPLY_SEPARATOR}{conn_id}"


def split_reply_channel(name: str) -> tuple[bytes, int]:
    """``"i3f9a!17"`` -> ``(b"i3f9a", 17)``: the owning interface's routing id and
    the connection number. The interface id is part of the name, so routing a
    reply needs no table that could go stale."""
    if not isinstance(name, str):
        raise ValueError(f"a reply channel is a string, not {name!r}")
    interface_id, sep, conn = name.partition(REPLY_SEPARATOR)
    if not sep or not interface_id or not (conn.isascii() and conn.isdigit()):
        raise ValueError(f"{name!r} is not a reply channel (expected '<interface>!<number>')")
    return interface_id.encode(), int(conn)


def check_name(name: Any, what: str) -> str:
    """Validate a channel or group name: a non-empty string of printable characters, at
    most MAX_NAME_BYTES of UTF-8. `InvalidGroupName` for a group (`what` "group"), else
    `InvalidName` (both are ValueErrors)."""
    error = InvalidGroupName if what == "group" else InvalidName
    if not isinstance(name, str) or not name:
        raise error(f"{what} name must be a non-empty string, not {name!r:.60}")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate
        raise error(f"{what} name {name[:40]!r} is not valid Unicode") from None
    if size > MAX_NAME_BYTES:
        raise error(f"{what} name is longer than {MAX_NAME_BYTES} bytes ({size} bytes of "
                    f"UTF-8): {name[:40]!r}...")
    if not name.isprintable():
        raise error(f"{what} name {name[:40]!r} contains control characters")
    return name


def check_close(code: Any, reason: str = "") -> int:
    """A close code a server may send: 1000, another registered one, or 3000-4999."""
    if isinstance(code, bool) or not isinstance(code, int) or (
            code not in SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999):
        raise ValueError(f"close code {code!r} cannot be sent; use 1000 or 3000-4999")
    if len(reason.encode()) > 123:
        raise ValueError("close reason must fit in 123 bytes of UTF-8")
    return code


def check_delay(delay: Any) -> int:
    """A delay in seconds (0 < delay <= MAX_DELAY), as whole milliseconds."""
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) \
            or not 0 < delay <= MAX_DELAY:
        raise ValueError(f"delay must be seconds, 0 < delay <= {MAX_DELAY:g}, not {delay!r}")
    return max(1, round(delay * 1000))


def group_message(text: str | None, data: bytes | None, close: int | None,
                  event: str | None, event_id: str | int | None) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a group message: a text or binary message (with the
    Server-Sent Event name and id event-stream members see), or a close."""
    if close is not None:
        return {"op": OP_CLOSE, "code": check_close(close)}, b""
    kind, payload = payload_of(text, data)
    header: dict[str, Any] = {"op": OP_SEND, "kind": kind}
    if event is not None:
        header["event"] = str(event)
    if event_id is not None:
        header["id"] = event_id
    return header, payload


def payload_of(text: str | None, data: bytes | None) -> tuple[str, bytes]:
    """The (kind, payload frame) for a message given as text or as bytes (exactly one)."""
    if text is not None and data is not None:
        raise ValueError("give text or bytes, not both")
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        return KIND_TEXT, text.encode()
    if data is not None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"bytes must be bytes-like, not {type(data).__name__}")
        return KIND_BYTES, bytes(data)
    raise ValueError("give text= or bytes=")


# -- a group member's info ---------------------------------------------------------------

MAX_INFO_BYTES = 4096  # the encoded info a member may carry; more is refused at group_add
MAX_ANSWER_MEMBERS = 100_000  # a larger group's members are not sent (group_size is)


def check_info(info: Any) -> Any:
    """The info a member joins with: a JSON value of at most MAX_INFO_BYTES encoded."""
    try:
        size = len(encode(info))
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"group_add info must be JSON (str, number, bool, None, list, "
                        f"dict): {e}") from None
    if size > MAX_INFO_BYTES:
        raise ValueError(f"group_add info is {size} bytes encoded; at most "
                         f"{MAX_INFO_BYTES}")
    return info
