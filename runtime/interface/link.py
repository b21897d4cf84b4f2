"""The interface's link to the broker: one DEALER for everything the workers send it.

Replies, acknowledgements, membership requests, HTTP responses and group messages
all come in on this one socket, in the order the broker sent them, which is the
order the consumers of a connection's consecutive events sent them (promise 8).
What each wire operation does to a client is the table `OPERATIONS`; a group
message is written to this interface's own members, framed once for every
WebSocket. The link says hello to the broker at start, and again whenever its
connection is remade, so a restarted broker knows where to send group messages.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Mapping, cast

import zmq

from zchannels.wire import transport, frames as wire
from zchannels.core.config import Config
from zchannels.core.stats import counters
from zchannels.interface.clients import Client, Clients, Outgoing
from zchannels.interface.positions import Positions
from zchannels.interface.presence import PresenceReporter
from zchannels.interface.zmqio import SocketReader

log = logging.getLogger("zchannels.interface")

CLOSE_SERVICE_RESTART = 1012  # what a client sees of sockets the broker abandoned
HELLO_INTERVAL = 0.05  # seconds between hellos while waiting for the broker at start
WAIT_LOG_INTERVAL = 5.0  # seconds between "still waiting for the broker" lines

Operation = Callable[[Any, Mapping[str, Any], bytes], None]


def operations(deliver: Operation) -> dict[str, Operation]:
    """What a worker's operation does to the client it names (op "done" and membership
    requests are the link's own business, below), given how a message is delivered:
    the in-memory test server (zchannels.testing) uses the same table with its own."""
    return {
        wire.OP_SEND: deliver,
        wire.OP_CLOSE: lambda client, header, payload:
            client.close(header.get("code", 1000), str(header.get("reason", ""))),
        wire.OP_ACCEPT: lambda client, header, payload:
            client.accept(header.get("subprotocol")),
        wire.OP_REJECT: lambda client, header, payload: client.reject(),
        wire.OP_START: lambda client, header, payload: client.start(header, payload),
        wire.OP_BODY: lambda client, header, payload:
            client.body(payload, bool(header.get("more"))),
        wire.OP_HOLD: lambda client, header, payload: client.hold(header),
    }


def _deliver(client: Client, header: Mapping[str, Any], payload: bytes) -> None:
    # (the header is the dict the link decoded)
    client.deliver(Outgoing(header.get("kind"), payload, cast(dict[str, Any], header)))


OPERATIONS = operations(_deliver)
MEMBERSHIP = (wire.OP_GROUP_ADD, wire.OP_GROUP_DISCARD)


class Link:
    def __init__(self, config: Config, interface_id: str, context: zmq.Context,
                 clients: Clients) -> None:
        self.clients = clients
        self.positions = Positions(config.history.groups)  # group history: its positions
        self.presence = PresenceReporter(self.tell_broker)  # membership changes, to the broker
        clients.on_open, clients.on_close = self.presence.opened, self.presence.closed
        self.answered = False  # the broker has answered a hello: it knows this interface
        self.broker = context.socket(zmq.DEALER)
        self.broker.routing_id = interface_id.encode()
        self.broker.linger = 0
        self.broker.rcvhwm = config.broker_hwm
        self.monitor = self.broker.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.monitor.linger = 0
        transport.connect(self.broker, config.broker_interfaces, config)
        loop = asyncio.get_running_loop()
        self.reader = SocketReader(self.broker, self.on_message, loop)
        self.monitor_reader = SocketReader(self.monitor, self.reconnected, loop)

    async def wait_for_broker(self) -> None:
        """Accept no client before the broker knows this interface's routing id (and so
        sends it replies and group messages): otherwise the first of them could be lost
        at start."""
        started = logged = time.monotonic()
        while not self.answered:
            self.hello()
            await asyncio.sleep(HELLO_INTERVAL)
            if time.monotonic() - logged > WAIT_LOG_INTERVAL:
                logged = time.monotonic()
                log.warning("still waiting for the broker after %.0fs", logged - started)

    def hello(self, header: bytes = b"{}") -> None:
        try:
            self.broker.send_multipart([wire.PING, header], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.Again:  # the broker has been away long enough to fill the pipe
            pass
        self.reader.kick()

    def reconnected(self, frames: list[bytes]) -> None:
        """The DEALER (re)connected to the broker (a monitor event): say hello, and who
        is in which group (a restarted broker knows nothing)."""
        if self.answered:
            self.hello()
            self.presence.snapshot(self.clients.groups)

    def abandoned(self) -> None:
        """The broker took this interface for dead (it was cut off from it longer than
        the heartbeat timeout) and ran the disconnect consumers of its WebSockets: close
        them (1012, so clients reconnect) without running those again, then say hello
        as new, with what is left (HTTP streams' memberships)."""
        sockets = list(self.presence.sockets)
        counters.incr("abandoned_by_broker", len(sockets))
        log.warning("the broker ran the disconnects of this interface's %d WebSocket(s) "
                    "(it was cut off from the broker): closing them with %d",
                    len(sockets), CLOSE_SERVICE_RESTART)
        self.presence.abandoned()
        for conn_id in sockets:
            client = self.clients.get(conn_id)
            if client is not None:
                self.clients.abandon(client, CLOSE_SERVICE_RESTART, "server restarted")
        self.hello(wire.HELLO_ABANDONED)
        self.presence.snapshot(self.clients.groups)

    def tell_broker(self, header: dict[str, Any]) -> None:
        """Presence changes, ahead of the answer the worker waits for."""
        try:
            self.broker.send_multipart([wire.PRESENCE, wire.encode(header)], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.Again:  # the broker has been away long enough to fill the pipe
            counters.incr("dropped_presence")
        # A send may consume the socket's edge-triggered readiness: look for input now.
        self.reader.kick()

    def close(self) -> None:
        self.reader.close()
        self.monitor_reader.close()
        self.monitor.close()

    # -- what the broker sends ------------------------------------------------

    def on_message(self, frames: list[bytes]) -> None:
        if frames[0] == wire.FROM_GROUP:
            self.on_group(frames[1:])
            return
        if len(frames) == 2 and frames[0] == wire.PING:
            if frames[1] == wire.ABANDONED:
                self.abandoned()
            else:
                self.answered = True
            return
        counters.incr("from_broker")  # against the workers' to_broker: the broker's losses
        if len(frames) == 4:
            # An operation and the done of the event that sent it, in one message.
            self.on_operation(frames[:3])
            self.on_operation([frames[0], frames[3]])
        else:
            self.on_operation(frames)

    def on_operation(self, frames: list[bytes]) -> None:
        # (2 + 3n frames: a join that recovers, with the n messages its connection missed)
        if len(frames) not in (2, 3) and (len(frames) < 5 or (len(frames) - 2) % 3):
            counters.incr("garbage")
            log.warning("dropped a malformed message from the broker (%d frames)", len(frames))
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
        client = self.clients.get(conn_id)
        if op == wire.OP_DONE:
            self.clients.acknowledged(client, header)
            return
        if client is not None:
            client.pipeline.note_arrival()
        if op in MEMBERSHIP:
            group = header.get("group")
            member = client is not None and isinstance(group, str) \
                and group.encode() in client.groups  # (before the add)
            added = self.membership(client, op, group)
            if added and client is not None and isinstance(group, str):
                if op == wire.OP_GROUP_ADD:
                    self.presence.joined(client, group.encode(), header.get("info"),
                                         header.get("announce") is True)
                else:
                    self.presence.left(client, [group.encode()])
            history = None
            if "history" in header and op == wire.OP_GROUP_ADD:  # group_add(since=...)
                history = self.positions.recovered(client if added else None, header,
                                                   header["history"], frames[2:], member)
            self.answer(frames[0], header, added, history)
            return
        operation = OPERATIONS.get(op)
        if operation is None or len(frames) > 3:
            counters.incr("garbage")
            log.warning("dropped a message with unknown op %r (%d frames)", op, len(frames))
        elif client is None:
            counters.incr("dropped_to_closed")
        else:
            operation(client, header, frames[2] if len(frames) == 3 else b"")

    def membership(self, client: Client | None, op: str, group: Any) -> bool:
        if not isinstance(group, str) or not group:
            counters.incr("garbage")
            return False
        if client is None or client.pipeline.closed:
            return False  # it has left every group already
        if op == wire.OP_GROUP_ADD:
            self.clients.groups.add(group.encode(), client)
            return True
        return self.clients.groups.discard(group.encode(), client)

    def answer(self, worker: bytes, request: dict[str, Any], ok: bool,
               history: dict[str, Any] | None = None) -> None:
        """Only now that the table has changed does the worker's group_add return."""
        answer: dict[str, Any] = {"req": request.get("req"), "ok": ok}
        if history is not None:
            answer["history"] = history
        try:
            self.broker.send_multipart([worker, wire.encode(answer)], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.Again:  # the worker gives up after group_timeout and says so
            counters.incr("dropped_answers")
        self.reader.kick()

    def on_group(self, frames: list[bytes]) -> None:
        # [group, header, payload], and its position if the group keeps history
        if len(frames) != 3 and len(frames) != 4:
            counters.incr("garbage")
            log.warning("dropped a malformed group message (%d frames)", len(frames))
            return
        group, raw_header, payload = frames[0], frames[1], frames[2]
        counters.incr("group_received")  # against the workers' group_sends
        members = self.clients.groups.members(group)
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
            code = header.get("code", 1000)
            for client in targets:
                client.close(code, "")
            return
        if len(frames) == 4:  # its position spliced in once, for every member
            message = self.positions.message(group, header, payload, frames[3])
        else:
            message = Outgoing(header.get("kind"), payload, header)  # framed once, if at all
        for client in targets:
            client.deliver(message)


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
