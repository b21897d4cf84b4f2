"""The broker: the one relay between the interfaces and the workers.

It is the ZeroMQ guide's load-balancing broker, extended to carry everything
that flows between the two sides:

- events: each pool's input (PULL) to a free worker of that pool (`poolqueue`);
- whatever a worker sends a connection (replies, accept, close, HTTP responses,
  membership requests) to the interface that owns it, read from the reply
  channel's interface id, and the interfaces' answers back;
- group messages: one message in, one out to each interface, which fans it out
  to its own members, framing the WebSocket message once.

One echo is four ZeroMQ messages: interface -> broker -> worker, and the worker's
reply, its "done" and its credit in one message -> broker -> interface.

Everything a worker sends goes through its one DEALER, and the broker handles it
in order and sends everything for one interface through one pipe. So whatever
the consumers of a connection's consecutive events send -- to its reply channel,
to other connections, to groups -- reaches every interface in the order of those
events (promise 8): event N+1 is dispatched only after event N's done has reached
the interface, behind everything event N sent.

It keeps no routing table: a message for an interface that is gone fails
(ROUTER_MANDATORY), is counted, and is bounced to the worker that sent it, so a
waiting ``group_add`` learns at once. After a (re)start, peers reconnect in any
order: workers flush what they queued while the broker was away, usually before
the interfaces are back. So for a moment everything bound for interfaces is held,
in order, until every interface that has connected has said hello (at least
SETTLE, at most STARTUP_GRACE seconds), and only then sent on.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import re
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from zchannels.wire import transport, frames as wire
from zchannels.core.config import Config
from zchannels.broker.history import Keeper
from zchannels.broker.pools import Pool
from zchannels.wire.frames import MAX_ANSWER_MEMBERS
from zchannels.broker.presence import OpenSockets, Presence, abandoned_disconnect
from zchannels.wire.process import Service
from zchannels.core.stats import counters

log = logging.getLogger("zchannels.broker")

BATCH = 512  # messages moved from one socket before looking at the others
SETTLE = 0.3  # seconds after a start before anything goes to interfaces, at least
STARTUP_GRACE = 3.0  # seconds after a start at most before sending to whoever is there
SETTLE_POLL_MS = 20  # how often the settling is checked while messages are held
STOP_LINGER_MS = 500  # how long what was passed on at stop may take to leave
MAX_DELAYED = 100_000  # delayed messages the broker keeps at once; beyond, refused
# Senders remembered for routing answers back. A sender that is waiting for an answer has
# just sent its request, so it is among the newest: forgetting the oldest is safe.
MAX_PEERS = 10_000

LATER, TO_POOL = wire.VERB_LATER, wire.VERB_TO_POOL

READY, BYE, TO, DONE, GROUP = (wire.VERB_READY, wire.VERB_BYE, wire.VERB_TO, wire.VERB_DONE,
                               wire.VERB_GROUP)
ANSWER, BOUNCE, FROM_GROUP = wire.TO_WORKER_ANSWER, wire.TO_WORKER_BOUNCE, wire.FROM_GROUP
HISTORY, QUERY, PRESENCE = wire.VERB_HISTORY, wire.VERB_QUERY, wire.PRESENCE
# A group message's origin frame: the reply channel of the connection whose event sent it.
ORIGIN = re.compile(rb"[^!]{1,200}![0-9]{1,20}")
NOTICE_HEADER = wire.encode({"op": wire.OP_SEND, "kind": wire.KIND_TEXT})
PROBE_INTERVAL = 0.1  # seconds between looks for a gone interface while one is missing
# Seconds the interfaces are probed after any connection to their socket closed. The count
# of connections alone can hide a death: another peer (an interface that restarts and has
# not said hello yet, a stray client) may have connected meanwhile.
PROBE_AFTER_DISCONNECT = 1.0
HELD = tuple[zmq.Socket | None, list[Any]]  # (socket of the sender, frames); None: group


class Broker(Service):
    def __init__(self, config: Config) -> None:
        super().__init__(config, "broker")
        self.interfaces = self._router(config.broker_interfaces)
        self.interface_monitor = self.interfaces.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.clients = self._router(config.broker_clients)
        self.pools = [Pool(pool, self.socket, config) for pool in config.pools]
        self.monitors = [self.interface_monitor, *(pool.monitor for pool in self.pools)]
        self.sockets[:0] = self.monitors  # closed before the sockets they watch
        for sock in (self.interfaces, self.interface_monitor, self.clients,
                     *(p.workers for p in self.pools), *(p.monitor for p in self.pools)):
            self.poller.register(sock, zmq.POLLIN)
        self.reading: dict[Pool, bool] = {pool: False for pool in self.pools}
        self.known: dict[bytes, None] = {}  # interfaces that said hello: group messages go here
        self.connected = 0  # connections on the interface socket (its monitor)
        self.presence = Presence()  # who is in which group (runtime/broker/presence.py)
        self.websockets = OpenSockets()  # every interface's open WebSockets
        # Interfaces found gone whose sockets' disconnects ran: one that comes back is
        # told to drop those sockets (bounded; oldest forgotten first).
        self.abandoned: dict[bytes, None] = {}
        self.probed_at = 0.0  # when the interfaces were last probed (`find_gone_interfaces`)
        self.probe_until = 0.0  # probe until then (a connection closed), or 0.0
        self.peers: dict[bytes, zmq.Socket] = {}  # worker or client -> the socket it is on
        self.started = time.monotonic()
        self.startup: list[HELD] | None = []  # held for the interfaces until they are back
        # Delayed messages: (due, order, frames), soonest first, and a PUSH to each
        # pool's own input for the named-channel ones (they queue like any other).
        self.delayed: list[tuple[float, int, list[bytes]]] = []
        self._order = itertools.count()
        self.pool_inputs: dict[bytes, zmq.Socket] = {}
        for pool in self.pools:
            push = self.pool_inputs[pool.pool.name.encode()] = self.socket(zmq.PUSH)
            transport.connect(push, pool.pool.endpoint_in, config)
        counters.gauges.update(
            free_workers=lambda: sum(len(p.ready) for p in self.pools),
            busy_workers=lambda: sum(len(p.holding) for p in self.pools),
            interfaces=lambda: len(self.known),
            held=lambda: len(self.startup or ()),
            delayed=lambda: len(self.delayed),
            presence_groups=lambda: len(self.presence.groups),
            presence_members=self.presence.total,
            open_websockets=self.websockets.total)
        # Group history (runtime/broker/history.py): None when no rule keeps any, and then a
        # group message costs nothing more than before.
        self.history = Keeper(config.history) if config.history.enabled else None
        if self.history is not None:
            keeper = self.history
            counters.gauges.update(history_groups=lambda: len(keeper.rings),
                                   history_bytes=lambda: keeper.bytes)

    def _router(self, endpoint: str) -> zmq.Socket:
        sock = self.socket(zmq.ROUTER)
        sock.router_mandatory = 1
        sock.sndhwm = sock.rcvhwm = self.config.broker_hwm
        transport.bind(sock, endpoint, self.config)
        return sock

    def run(self) -> None:
        log.info("broker up: interfaces at %s, other senders at %s, pools %s",
                 self.config.broker_interfaces, self.config.broker_clients,
                 ", ".join(f"{p.pool.name} (in {p.pool.endpoint_in}, workers at "
                           f"{p.pool.endpoint_out}, capacity {p.pool.capacity})"
                           for p in self.pools))
        self.serve()

    def poll(self) -> dict[zmq.Socket, int]:
        # Backpressure by pausing reads: a pool's input is read only while one of its
        # workers is free.
        for pool, reading in self.reading.items():
            taking = pool.taking()
            if taking != reading:
                self.reading[pool] = taking
                if taking:
                    self.poller.register(pool.incoming, zmq.POLLIN)
                else:
                    self.poller.unregister(pool.incoming)
        timeout = SETTLE_POLL_MS if self.startup is not None else self.POLL_INTERVAL_MS
        if self.delayed:
            due_in = self.delayed[0][0] - time.monotonic()
            timeout = max(0, min(timeout, int(due_in * 1000) + 1))
        return dict(self.poller.poll(timeout))

    def step(self, ready: dict[zmq.Socket, int]) -> None:
        if self.interface_monitor in ready:
            self.from_interface_monitor()
        if self.interfaces in ready:
            self.from_interfaces()
        for pool in self.pools:
            if pool.workers in ready:
                self.from_senders(pool.workers, pool)
            # After the workers' messages: a READY from a new connection that reuses a
            # dead worker's fd may come before the monitor reports that fd closed.
            if pool.monitor in ready:
                pool.from_monitor()
            pool.release()
            if pool.incoming in ready:
                pool.from_senders()
        if self.clients in ready:
            self.from_senders(self.clients, None)
        if self.delayed and self.delayed[0][0] <= time.monotonic():
            self.release_delayed()
        if self.startup is not None:
            self.settle()
        if self.history is not None:
            self.history.sweep()
        if self.probe_until or len(self.known) > self.connected:
            self.find_gone_interfaces()

    def closing(self) -> None:
        # What workers have sent is passed on, not dropped with the sockets: a restart
        # of the broker alone (the interfaces still up) then loses no reply.
        if self.startup is not None:
            self.release_startup("stopping")
        for sock, pool in ((p.workers, p) for p in self.pools):
            self.from_senders(sock, pool)
        self.from_senders(self.clients, None)
        self.from_interfaces()
        self.interfaces.linger = STOP_LINGER_MS
        # What is still queued now will not run or arrive: count it, not lose it silently.
        for pool in self.pools:
            lost = pool.drop_queued()
            if lost:
                counters.incr("dropped_at_stop", lost)
                log.warning("stopping with %d message(s) queued for pool %s; they are lost",
                            lost, pool.pool.name)
        if self.delayed:
            counters.incr("dropped_at_stop", len(self.delayed))
            log.warning("stopping with %d delayed message(s) not yet due; they are lost",
                        len(self.delayed))

    # -- from workers and other senders ---------------------------------------

    def from_senders(self, sock: zmq.Socket, pool: Pool | None) -> None:
        """Messages from a pool's workers (`pool`), or from other processes (None)."""
        for _ in range(BATCH):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            sender = parts[0].bytes
            verb = parts[1].bytes if len(parts) > 1 else b""
            kind = verb[:1]
            if kind == TO and len(parts) in (4, 5, 6) and verb == TO:
                self.remember(sender, sock)
                self.to_interface(sock, [parts[2].bytes, sender, *parts[3:]])
            elif kind == DONE and pool is not None and len(parts) in (4, 6) \
                    and verb[1:].isdigit():
                self.remember(sender, sock)
                self.to_interface(sock, [parts[2].bytes, sender, *parts[3:]])
                pool.credit(sender, READY + verb[1:], parts[1].get(zmq.SRCFD))
            elif kind == GROUP and verb == GROUP and (len(parts) == 5 or len(parts) == 6
                                                      and ORIGIN.fullmatch(parts[5].bytes)):
                # A sixth frame: the connection whose event sent it (its history allowance).
                self.group([part.bytes for part in parts[2:5]],
                           parts[5].bytes if len(parts) == 6 else None)
            elif kind == QUERY and len(parts) == 3 and verb == QUERY:
                self.remember(sender, sock)
                self.presence_query(sock, sender, parts[2].bytes)
            elif kind == HISTORY and len(parts) == 4 and verb == HISTORY:
                self.remember(sender, sock)
                self.history_join(sock, [parts[2].bytes, sender, parts[3].bytes])
            elif kind == LATER and verb[1:].isdigit() and (
                    len(parts) == 6 and parts[2].bytes in (GROUP, TO_POOL)
                    or len(parts) == 7 and parts[2].bytes == GROUP
                    and ORIGIN.fullmatch(parts[6].bytes)):
                self.later(int(verb[1:]), [part.bytes for part in parts[2:]])
            elif kind in (READY, BYE) and pool is not None and len(parts) == 2:
                if not pool.credit(sender, verb, parts[1].get(zmq.SRCFD)):
                    self.garbage(sender, len(parts))
                elif kind == BYE:
                    self.peers.pop(sender, None)
                else:
                    self.remember(sender, sock)
            else:
                self.garbage(sender, len(parts))

    def remember(self, sender: bytes, sock: zmq.Socket) -> None:
        """Where to send `sender` the answers to its membership requests. Bounded: every
        cron job that sends to a reply channel is a new sender."""
        if sender not in self.peers and len(self.peers) >= MAX_PEERS:
            del self.peers[next(iter(self.peers))]
        self.peers[sender] = sock

    def garbage(self, sender: bytes, frames: int) -> None:
        counters.incr("garbage")
        log.warning("dropped a malformed message from %r (%d frames)", sender, frames)

    def to_interface(self, sock: zmq.Socket, frames: list[Any]) -> None:
        """Send [interface, sender, header, ...] on, or bounce it to the sender."""
        if self.startup is not None:
            self.hold(sock, frames)
            return
        try:
            self.interfaces.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as e:
            self.bounce(sock, frames, e.errno)
            return
        counters.incr("to_interfaces")
        counters.incr("zmq_sent")

    def bounce(self, sock: zmq.Socket, frames: list[Any], error: int | None) -> None:
        """Count a message that cannot be delivered, and tell the process that sent it."""
        interface, sender, header = frames[0], frames[1], frames[2]
        if error == zmq.EAGAIN:
            counters.incr("dropped_interface_full")
            log.warning("interface %r is not keeping up: dropped a message", interface)
        else:  # EHOSTUNREACH: the interface is gone (it stopped or died)
            self.interface_gone(interface)
            counters.incr("unreachable_interface")
            log.debug("interface %r is not connected; bouncing to %r", interface, sender)
        try:
            sock.send_multipart([sender, BOUNCE, interface, header], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.ZMQError:
            counters.incr("dropped_bounces")

    def group(self, frames: list[bytes], origin: bytes | None = None) -> None:
        """One group message ([group, header, payload]) to every interface: each fans it
        out to its own members. `origin`: the reply channel of the connection whose
        event sent it, if one did (what it may add to history is limited)."""
        if not frames[0]:
            counters.incr("garbage")
            log.warning("dropped a group message without a group name")
            return
        if self.startup is not None:
            self.hold(None, frames if origin is None else [*frames, origin])
            return
        counters.incr("group_messages")
        history = self.history
        if history is not None:  # one dict lookup for a group that keeps none
            ring = history.cache.get(frames[0])
            if ring is not False:
                # Kept (or kept out), and its position appended.
                frames = history.stamp(frames, ring, origin)
        send = self.interfaces.send_multipart
        gone: list[bytes] | None = None
        for interface in list(self.known):
            try:
                send([interface, FROM_GROUP, *frames], zmq.NOBLOCK)
            except zmq.ZMQError as e:
                if e.errno == zmq.EAGAIN:
                    counters.incr("dropped_interface_full")
                    log.warning("interface %r is not keeping up: dropped a group message",
                                interface)
                else:  # EHOSTUNREACH: gone, and this may be the first to notice
                    counters.incr("unreachable_interface")
                    gone = (gone or []) + [interface]
                continue
            counters.incr("zmq_sent")
        # After the fan-out: the leaves it announces come behind this message everywhere.
        for interface in gone or ():
            self.interface_gone(interface)

    def history_join(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        """A group_add with ``since`` ([interface, sender, header]): relay it with what
        the group sent after that position (or why that cannot be had) in one message.
        Everything the group sent before is in the interface's pipe ahead of it, all it
        sends after comes behind it: the member gets the missed messages, then the live
        ones, with no gap and no repeat (docs/consumers.md#history-and-recovery)."""
        if self.startup is not None:  # judged when released, in order with the rest
            self.hold(sock, [HISTORY, *frames])
            return
        try:
            header = wire.decode(frames[2])
            group, since = header["group"], header["since"]
            if not isinstance(group, str) or not group or not isinstance(since, str):
                raise ValueError(f"group {group!r}, since {since!r}")
        except (ValueError, KeyError) as e:
            counters.incr("garbage")
            log.warning("dropped a malformed history request from %r: %s", frames[1], e)
            return
        replay: list[bytes] = []
        if self.history is None:
            result = Keeper.nothing_kept()
        else:
            result, replay = self.history.recover(group.encode(), since)
        header["history"] = result
        self.to_interface(sock, [frames[0], frames[1], wire.encode(header), *replay])

    # -- delayed messages ------------------------------------------------------

    def later(self, delay_ms: int, frames: list[bytes]) -> None:
        """Keep [G, group, header, payload, origin?] or [S, pool, header, payload] until
        it is due."""
        if delay_ms > wire.MAX_DELAY * 1000 or (
                frames[0] == TO_POOL and frames[1] not in self.pool_inputs) or not frames[1]:
            counters.incr("garbage")
            log.warning("dropped a delayed message for %r due in %d ms", frames[1], delay_ms)
        elif len(self.delayed) >= MAX_DELAYED:
            counters.incr("delayed_refused")
            log.warning("%d delayed messages are waiting: refused one for %r", MAX_DELAYED,
                        frames[1])
        else:
            due = time.monotonic() + delay_ms / 1000
            heapq.heappush(self.delayed, (due, next(self._order), frames))
            counters.incr("delayed_accepted")

    def release_delayed(self) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, frames = heapq.heappop(self.delayed)
            counters.incr("delayed_released")
            if frames[0] == GROUP:
                self.group(frames[1:4], frames[4] if len(frames) == 5 else None)
                continue
            try:  # into the pool's input, where it queues like any other message
                self.pool_inputs[frames[1]].send_multipart(frames[2:], zmq.NOBLOCK)
                counters.incr("zmq_sent")
            except zmq.Again:
                counters.incr("delayed_refused")
                log.warning("pool %s is full: dropped a delayed message for it",
                            frames[1].decode(errors="replace"))

    # -- from interfaces ---------------------------------------------------------

    def from_interfaces(self) -> None:
        interfaces = self.interfaces
        for _ in range(BATCH):
            try:
                frames = interfaces.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 3:
                counters.incr("garbage")
                log.warning("dropped a malformed message from interface %r (%d frames)",
                            frames[0], len(frames))
                continue
            interface, to, header = frames
            if to == wire.PING:
                self.hello(interface, header)
                continue
            if to == PRESENCE:
                if interface in self.abandoned:  # from before it dropped its sockets
                    counters.incr("dropped_presence")
                else:
                    self.presence_changes(interface, header)
                continue
            # An answer to a worker's membership request.
            sock = self.peers.get(to)
            try:
                if sock is None:
                    raise zmq.ZMQError(zmq.EHOSTUNREACH)
                sock.send_multipart([to, ANSWER, interface, header], zmq.NOBLOCK)
                counters.incr("zmq_sent")
            except zmq.ZMQError:
                # The worker that asked has gone (restarted); nobody waits for this answer.
                counters.incr("unreachable_worker")

    def from_interface_monitor(self) -> None:
        while self.interface_monitor.poll(0):
            event = recv_monitor_message(self.interface_monitor)
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.connected += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connected -= 1
                self.probe_until = time.monotonic() + PROBE_AFTER_DISCONNECT

    def hello(self, interface: bytes, header: bytes) -> None:
        """An interface saying hello: it is (back) and wants group messages. One that
        was found gone, and whose sockets' disconnects ran, is told to drop them first
        (ABANDONED), until it says hello as one that has (``{"abandoned": true}``)."""
        answer = wire.PONG
        if interface in self.abandoned:
            if header == wire.HELLO_ABANDONED:
                del self.abandoned[interface]
            else:
                answer = wire.ABANDONED
        if answer == wire.PONG:
            self.known[interface] = None
        try:
            self.interfaces.send_multipart([interface, wire.PING, answer], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.ZMQError:
            counters.incr("dropped_pongs")

    # -- presence (runtime/broker/presence.py) --------------------------------------------

    def presence_changes(self, interface: bytes, raw: bytes) -> None:
        """An interface's membership changes: {"changes": [[group, reply channel, joined,
        info, announce], ...]}; with "reset", first forget all it said before: a
        snapshot after a reconnect, silent (its members were announced when they joined)."""
        try:
            header = wire.decode(raw)
            changes = header["changes"]
            reset = header.get("reset") is True
            if not isinstance(changes, list):
                raise ValueError("changes is not a list")
        except (ValueError, KeyError) as e:
            counters.incr("garbage")
            log.warning("dropped malformed presence changes from %r: %s", interface, e)
            return
        presence, sockets = self.presence, self.websockets
        if reset:
            presence.forget_interface(interface, quiet=True)
            sockets.forget(interface)
        for opened in header.get("opened") or ():
            if isinstance(opened, list) and len(opened) == 2 \
                    and all(isinstance(x, str) for x in opened):
                sockets.opened(interface, opened[0], opened[1])
        for change in changes:
            if not (isinstance(change, list) and len(change) == 5 and isinstance(change[0], str)
                    and isinstance(change[1], str) and isinstance(change[2], bool)):
                counters.incr("garbage")
                log.warning("dropped a malformed presence change from %r: %.200r",
                            interface, change)
                continue
            group, channel, joined, info, announce = change
            if joined:
                told = presence.joined(interface, group, channel, info, announce is True,
                                       quiet=reset)
            else:
                told = presence.left(interface, group, channel)
            if told is not None:
                self.announce(group, told)
        for closed in header.get("closed") or ():
            if isinstance(closed, str):
                sockets.closed(interface, closed)

    def announce(self, group: str, notice: bytes) -> None:
        """A member's join or leave, to its group (for members that joined with announce)."""
        counters.incr("presence_notices")
        self.group([group.encode(), NOTICE_HEADER, notice])

    def presence_query(self, sock: zmq.Socket, sender: bytes, raw: bytes) -> None:
        """[Q, {"req", "group", "what": "members"|"size"}]: answered at once, from the
        broker's view."""
        try:
            header = wire.decode(raw)
            group, what = header["group"], header.get("what", "members")
            if not isinstance(group, str) or what not in ("members", "size"):
                raise ValueError(f"group {group!r}, what {what!r}")
        except (ValueError, KeyError) as e:
            counters.incr("garbage")
            log.warning("dropped a malformed presence query from %r: %s", sender, e)
            return
        counters.incr("presence_queries")
        answer: dict[str, Any] = {"req": header.get("req"), "ok": True}
        if what == "size":
            answer["size"] = self.presence.size(group)
        else:
            members = self.presence.members(group)
            if len(members) > MAX_ANSWER_MEMBERS:
                answer.update(ok=False, size=len(members))
            else:
                answer["members"] = members
        try:
            sock.send_multipart([sender, ANSWER, b"", wire.encode(answer)], zmq.NOBLOCK)
            counters.incr("zmq_sent")
        except zmq.ZMQError:
            counters.incr("unreachable_worker")

    def find_gone_interfaces(self) -> None:
        """A connection closed, or there are fewer connections than interfaces that said
        hello: one of them may be gone. The monitor does not say which, so each is sent a
        pong (which an interface takes as a repeated answer to its hello) until the send
        fails for the gone ones."""
        now = time.monotonic()
        if now >= self.probe_until:
            self.probe_until = 0.0
            if len(self.known) <= self.connected:
                return
        if now - self.probed_at < PROBE_INTERVAL:
            return
        self.probed_at = now
        for interface in list(self.known):
            try:
                self.interfaces.send_multipart([interface, wire.PING, wire.PONG], zmq.NOBLOCK)
                counters.incr("zmq_sent")
            except zmq.ZMQError as e:
                if e.errno == zmq.EHOSTUNREACH:
                    self.interface_gone(interface)

    def interface_gone(self, interface: bytes) -> None:
        """An interface stopped or died: it gets no group messages, its members leave
        every group (announced where asked for), and the disconnect consumers of its
        open WebSockets run, once each, marked abandoned (promise 9).

        Every path that finds an interface unreachable comes here, whichever is first:
        a probe (`find_gone_interfaces`), a bounced operation (`bounce`), a group
        message's fan-out (`group`). Once per incarnation: it is no longer known until
        it says hello again."""
        if interface not in self.known:
            return
        del self.known[interface]
        members = len(self.presence.interfaces.get(interface, ()))
        sockets = self.websockets.forget(interface)
        # A stopped interface closed its sockets first: only a dead one leaves any.
        log.log(logging.WARNING if sockets else logging.INFO,
                "interface %s is gone: %d open WebSocket(s) abandoned (their disconnects "
                "run here), %d membership(s) left", interface.decode(errors="replace"),
                len(sockets), members)
        counters.incr("interfaces_gone")
        for group, notice in self.presence.forget_interface(interface):
            self.announce(group, notice)
        if sockets:
            if len(self.abandoned) >= MAX_PEERS:
                del self.abandoned[next(iter(self.abandoned))]
            self.abandoned[interface] = None
        self.run_disconnects(sockets)

    def run_disconnects(self, sockets: dict[str, str]) -> None:
        """Each socket's websocket.disconnect, into the input of the pool that serves
        it, as an interface would have sent it; one the pool cannot take is counted."""
        pool = self.config.pool_for("websocket.disconnect")
        push = self.pool_inputs.get(pool.name.encode()) if pool is not None else None
        for channel, path in sockets.items():
            try:
                if push is None:
                    raise zmq.Again()
                push.send_multipart(abandoned_disconnect(channel, path), zmq.NOBLOCK)
                counters.incr("zmq_sent")
                counters.incr("abandoned_disconnects")
            except zmq.Again:
                counters.incr("abandoned_dropped")
                log.error("pool %s is full: the disconnect of %s (its interface died) "
                          "will not run", pool.name if pool else "?", channel)

    # -- after a start ---------------------------------------------------------

    def hold(self, sock: zmq.Socket | None, frames: list[Any]) -> None:
        self.startup_held().append((sock, frames))
        if len(self.startup_held()) >= self.config.broker_hwm:
            self.release_startup("the hold is full")

    def startup_held(self) -> list[HELD]:
        assert self.startup is not None
        return self.startup

    def settle(self) -> None:
        """Send what was held once every interface that connected has said hello."""
        elapsed = time.monotonic() - self.started
        if elapsed > STARTUP_GRACE:
            self.release_startup(f"{STARTUP_GRACE:g}s after start")
        elif elapsed > SETTLE and len(self.known) >= self.connected:
            self.release_startup(f"{len(self.known)} interface(s) back")

    def release_startup(self, why: str) -> None:
        held, self.startup = self.startup_held(), None
        log.info("sending to interfaces (%s): %d message(s) held since start", why, len(held))
        for sock, frames in held:
            if sock is None:
                self.group(frames[:3], frames[3] if len(frames) == 4 else None)
            elif frames[0] == HISTORY:  # (never an interface id)
                self.history_join(sock, frames[1:])
            else:
                self.to_interface(sock, frames)


def run(config: Config) -> None:
    Broker(config).run()
