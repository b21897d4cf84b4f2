"""What the interface does with messages from the workers, all through the broker: replies,
acknowledgements, membership requests, HTTP responses, and group messages (delivered
to the interface's own members, framed once for every WebSocket)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import zmq

from . import wire
from .exchange import Exchange
from .stats import counters
from .websocket import OPCODE_BINARY, OPCODES, Connection, Decision, State, frame

if TYPE_CHECKING:
    from .interface import Interface

log = logging.getLogger("runtime.interface")


def on_router(iface: Interface, frames: list[bytes]) -> None:
    if frames[0] == wire.FROM_GROUP:
        on_group(iface, frames[1:])
        return
    if len(frames) == 2 and frames[0] == wire.PING and frames[1] == wire.PONG:
        iface.router_answered = True
        return
    counters.incr("from_router")  # against the workers' to_router: the broker's losses
    if len(frames) == 4:
        # An operation and the done of the event that sent it, in one message.
        on_operation(iface, frames[:3])
        on_operation(iface, [frames[0], frames[3]])
        return
    on_operation(iface, frames)


def on_operation(iface: Interface, frames: list[bytes]) -> None:
    if len(frames) not in (2, 3):
        counters.incr("garbage")
        log.warning("dropped a malformed message from the router (%d frames)", len(frames))
        return
    try:
        header = wire.decode(frames[1])
        op = header["op"]
        conn_id = header["conn"]
    except (ValueError, KeyError) as e:
        counters.incr("garbage")
        log.warning("dropped a malformed message from worker %r: %s", frames[0], e)
        return
    if not isinstance(op, str) or type(conn_id) is not int or not valid_fields(header):
        counters.incr("garbage")
        log.warning("dropped a message with wrong field types from worker %r: %.200r",
                    frames[0], frames[1])
        return
    conn = iface.conns.get(conn_id)
    if conn is not None and op != wire.OP_DONE:
        conn.arrived += 1
    if op == wire.OP_SEND:
        if conn is None:
            counters.incr("dropped_to_closed")
            return
        payload = frames[2] if len(frames) == 3 else b""
        if isinstance(conn, Connection):
            conn.write(frame(OPCODES.get(header.get("kind"), OPCODE_BINARY), payload))
        else:
            conn.deliver(header.get("kind"), payload, header)
    elif op == wire.OP_DONE:
        if conn is None or conn.in_flight is None or header.get("seq") != conn.sequence:
            # The connection is gone, or its event timed out and a later one is
            # in flight: this ack must not release that one.
            counters.incr("late_acks")
            return
        acknowledged(iface, conn, header)
    elif op in (wire.OP_GROUP_ADD, wire.OP_GROUP_DISCARD):
        ok = membership(iface, conn, op, header.get("group"))
        try:
            iface.router.send_multipart(
                [frames[0], wire.encode({"req": header.get("req"), "ok": ok})],
                zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.Again:  # the worker gives up after group_timeout and says so
            counters.incr("dropped_answers")
        iface.router_reader.kick()
    elif conn is None:
        counters.incr("dropped_to_closed")
    elif isinstance(conn, Exchange):
        http_response(iface, conn, op, header, frames[2] if len(frames) == 3 else None)
    elif op == wire.OP_ACCEPT:
        subprotocol = header.get("subprotocol")
        if subprotocol is not None and subprotocol not in conn.subprotocols:
            log.warning("%s: consumer chose subprotocol %r, which the client did not "
                        "offer (%s); ignored", conn.reply_channel, subprotocol,
                        conn.subprotocols)
            subprotocol = None
        conn.subprotocol = subprotocol
        conn.decide(Decision.ACCEPT)
    elif op == wire.OP_REJECT:
        conn.decide(Decision.REJECT)
    elif op == wire.OP_CLOSE:
        code = header.get("code", 1000)
        conn.close(code if isinstance(code, int) else 1000, str(header.get("reason", "")))
    else:
        counters.incr("garbage")
        log.warning("dropped a message with unknown op %r", op)

def http_response(iface: Interface, exchange: Exchange, op: str,
                  header: dict[str, Any], payload: bytes | None) -> None:
    if op == wire.OP_START:
        exchange.start(header, payload)
    elif op == wire.OP_BODY:
        exchange.body(payload or b"", bool(header.get("more")))
    elif op == wire.OP_HOLD:
        exchange.hold_until_message(header)
    elif op == wire.OP_CLOSE:
        exchange.close()
    elif op in (wire.OP_ACCEPT, wire.OP_REJECT):
        exchange.invalid(f"{op} is for WebSocket connections")
    else:
        counters.incr("garbage")
        log.warning("dropped a message with unknown op %r", op)

def acknowledged(iface: Interface, conn: Connection | Exchange,
                 header: dict[str, Any]) -> None:
    channel = conn.in_flight
    iface.finished(conn)
    session = header.get("session")
    if isinstance(session, dict):
        conn.set_session(session)
    sent = header.get("sent")
    if type(sent) is int and sent > conn.arrived:
        # The consumer's messages travel the same path as its "done", in order: if
        # the done is here and they are not, they were lost (in a router that was
        # killed). The client must not wait for an answer that will not come.
        counters.incr("replies_lost", sent - conn.arrived)
        log.error("%s: %d of the %d messages the %s consumer sent were lost on the "
                  "way; closing", conn.reply_channel, sent - conn.arrived, sent, channel)
        conn.consumer_failed()
    elif header.get("error"):
        conn.consumer_failed()
    elif isinstance(conn, Connection) and channel == "websocket.connect":
        conn.decide(Decision.ACCEPT)  # a connect consumer that returns accepts
    iface.dispatch_next(conn)

def membership(iface: Interface, conn: Connection | Exchange | None, op: str,
               group: Any) -> bool:
    if not isinstance(group, str) or not group:
        counters.incr("garbage")
        return False
    if conn is None or conn.state is State.CLOSED:
        return False  # it has left every group already
    if op == wire.OP_GROUP_ADD:
        iface.groups.add(group.encode(), conn)
        return True
    return iface.groups.discard(group.encode(), conn)


def on_group(iface: Interface, frames: list[bytes]) -> None:
    if len(frames) != 3:
        counters.incr("garbage")
        log.warning("dropped a malformed group message (%d frames)", len(frames))
        return
    group, raw_header, payload = frames
    counters.incr("group_received")  # against the workers' group_sends
    members = iface.groups.members(group)
    if not members:
        return
    try:
        header = wire.decode(raw_header)
    except ValueError as e:
        counters.incr("garbage")
        log.warning("dropped a malformed group message for %r: %s", group, e)
        return
    if not valid_fields(header):
        counters.incr("garbage")
        log.warning("dropped a group message with wrong field types for %r: %.200r",
                    group, raw_header)
        return
    counters.incr("group_deliveries", len(members))
    # A snapshot: a write or close may end a member's connection, and with it its
    # memberships.
    targets = tuple(members)
    if header.get("op") == wire.OP_CLOSE:
        code = header.get("code")
        for conn in targets:
            conn.close(code if isinstance(code, int) else 1000, "")
        return
    kind = header.get("kind")
    data = None  # framed once, for every WebSocket member
    for conn in targets:
        if isinstance(conn, Connection):
            if data is None:
                data = frame(OPCODES.get(kind, OPCODE_BINARY), payload)
            conn.write(data)
        else:
            conn.deliver(kind, payload, header)


def valid_fields(header: dict[str, Any]) -> bool:
    """Whether the optional fields the interface acts on have usable values (a worker
    never sends anything else; this is about garbage on the sockets)."""
    if not isinstance(header.get("kind", ""), str):
        return False
    if header.get("op") == wire.OP_CLOSE:
        try:
            wire.check_close(header.get("code", 1000), header.get("reason", ""))
        except (ValueError, TypeError, AttributeError):
            return False
    return True
