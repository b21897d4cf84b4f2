"""The channel layer as a synchronous process sees it: plain blocking ZeroMQ sockets.

A worker creates one `Layer` after it has forked; consumers reach it through the
module functions `send`, `group_add`, `group_discard` and `group_send`, and
through ``message.reply_channel``. Any other process (a cron job, a management
command) may call `connect(config)` and use the same functions.

Everything except `send` to a named channel goes through one DEALER to the
broker, in order: replies, membership requests, group messages, and a worker's
credit. That one pipe is what keeps a connection's consecutive events' messages
in order wherever they go (promise 8).

The last operation a consumer sends to its own connection is held back for as
long as the consumer keeps running Python without touching the layer, so that it
can travel in one ZeroMQ message with the event's "done" and the worker's credit:
an echo is then four messages end to end instead of seven. It is never held
while the consumer waits or computes: a flusher thread sends it as soon as it
can run, which is when the consumer blocks (I/O, sleep) or after the
interpreter's switch interval (5 ms) of pure computation; any other layer call
sends it first, too.

Sends block for at most ``send_timeout`` seconds when the next hop is full,
then raise `ChannelFull`: a consumer is never made to wait forever, and memory
never grows without bound.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import secrets
import threading
import time
from typing import Any, overload

import zmq

from . import transport, wire
from .config import Config, PoolConfig
from .exceptions import ChannelFull, GroupError, InvalidGroupName, NotInConsumer, UnknownChannel
from .history import Recovery, Rules
from .message import ReplyChannel
from .presence import MAX_ANSWER_MEMBERS, Member, check_info
from .stats import counters

log = logging.getLogger("runtime.layer")

LINGER = 1000  # ms a closing socket may keep flushing what consumers already sent
FLUSHER_JOIN = 1.0  # seconds to wait for the flusher thread at close
FLUSH_TICK = 0.001  # seconds between the flusher's looks while events keep coming
FLUSH_PARK = 0.05  # seconds without a held operation before the flusher sleeps until woken

TO, GROUP, HISTORY, QUERY = wire.VERB_TO, wire.VERB_GROUP, wire.VERB_HISTORY, wire.VERB_QUERY


def check_group_name(group: Any) -> str:
    """`group` if it can name a group: a non-empty string of printable characters, at
    most 200 bytes of UTF-8 (`wire.MAX_NAME_BYTES`); otherwise `InvalidGroupName`,
    counted (``invalid_group_names``). Every group function checks its name so; call
    this first for a name made of what a client sent, to refuse the client before
    starting anything for it (a stream, a hold)."""
    try:
        return wire.check_name(group, "group")
    except InvalidGroupName:
        counters.incr("invalid_group_names")
        raise


class Layer:
    def __init__(self, config: Config, context: zmq.Context | None = None,
                 identity: str | None = None, endpoint: str | None = None) -> None:
        """`endpoint`: where this process meets the broker -- a worker its pool's
        ``endpoint_out``; any other process ``router_clients``."""
        self.config = config
        self.context = context or zmq.Context.instance()
        self.identity = (identity or f"w{os.getpid()}-{secrets.token_hex(3)}").encode()
        self._send_timeout_ms = int(config.send_timeout * 1000)
        self.broker = self._socket(zmq.DEALER, endpoint or config.router_clients,
                                   routing_id=self.identity)
        self.pools: dict[str, zmq.Socket] = {}
        self.history_rules = Rules(config.history.groups)  # which groups keep history
        self._requests = itertools.count(1)
        # Events the broker sent while a consumer waited for a membership answer.
        self.inbox: collections.deque[list[bytes]] = collections.deque()
        # The route of the event a worker is running, and how many messages its consumer
        # has sent there: the "done" tells the interface, which can then tell whether
        # one was lost on the way (in a broker that died).
        self.current_route: tuple[bytes, int] | None = None
        self.current_sends = 0
        # The consumer's last operation for its own connection, not sent yet, and the
        # thread that sends it if the consumer goes on running. The lock guards the
        # broker socket and `pending`.
        self.lock = threading.Lock()
        self.pending: list[bytes] | None = None
        self.wakeup = threading.Condition(self.lock)
        self.closed = False
        self.flusher: threading.Thread | None = None
        # Hold the last operation for the done: set by start_flusher (tests set it alone
        # to see what rides with the done without a thread's timing in the way).
        self.holding = False
        self.parked = False  # the flusher sleeps until an operation is held
        self.last_held = 0.0  # monotonic seconds

    def _socket(self, kind: int, endpoint: str, routing_id: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.linger = LINGER
        sock.sndtimeo = self._send_timeout_ms
        if routing_id is not None:
            sock.routing_id = routing_id
        transport.connect(sock, endpoint, self.config)
        return sock

    # -- sending ---------------------------------------------------------

    def _send(self, sock: zmq.Socket, frames: list[bytes], what: str, subject: object) -> None:
        """Send, or raise ChannelFull naming ``what % subject`` (formatted only then:
        this is the per-message path)."""
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            counters.incr("channel_full")
            raise ChannelFull(f"{what % (subject,)} is full: not accepted within "
                              f"{self.config.send_timeout:g}s") from None
        counters.incr("zmq_sent")

    def _relay(self, frames: list[bytes]) -> None:
        """Send an operation for a connection to the broker (lock held)."""
        self._send(self.broker, frames, "the route to interface %s", frames[1])
        counters.incr("to_router")  # what the broker lost when it died: docs/operations.md

    def _flush(self) -> None:
        """Send the held operation, if there is one (lock held)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._relay(pending)

    def to_interface(self, reply_channel: ReplyChannel | str, header: dict[str, Any],
                     payload: bytes | None = None) -> None:
        """Send an operation for one connection to the interface that owns it."""
        if isinstance(reply_channel, ReplyChannel):
            route = reply_channel.route  # parsed once, when it was made
        else:
            route = wire.split_reply_channel(reply_channel)
        header["conn"] = route[1]
        frames = [TO, route[0], wire.encode(header)]
        if payload is not None:
            frames.append(payload)
        with self.lock:
            self._flush()
            if route == self.current_route:  # no new tuple: this is the per-message path
                self.current_sends += 1
                if self.holding:
                    self.pending = frames  # maybe it can ride with the done
                    if self.parked:
                        self.wakeup.notify()
                    else:  # it looks every FLUSH_TICK: no thread to wake per message
                        self.last_held = time.monotonic()
                    return
            self._relay(frames)

    def send(self, channel: str, content: dict[str, Any] | None = None,
             payload: bytes = b"", delay: float | None = None) -> None:
        """Send a message to a named channel; a worker of the pool serving it runs its
        consumer. With `delay` (seconds), the broker keeps it that long first."""
        wire.check_name(channel, "channel")
        pool = self.config.pool_for(channel)
        if pool is None:
            raise UnknownChannel(f"no pool serves channel {channel!r}")
        header = dict(content or {})
        header["channel"] = channel
        frames = [wire.encode(header), bytes(payload)]
        if delay is not None:
            later = b"%s%d" % (wire.VERB_LATER, wire.check_delay(delay))
            frames = [later, wire.VERB_TO_POOL, pool.name.encode(), *frames]
        with self.lock:
            self._flush()
            if delay is not None:
                self._send(self.broker, frames, "the broker, for channel %r,", channel)
                counters.incr("delayed_sends")
            else:
                self._send(self._pool_socket(pool), frames, "channel %r", channel)

    def _pool_socket(self, pool: PoolConfig) -> zmq.Socket:
        sock = self.pools.get(pool.name)
        if sock is None:
            sock = self.pools[pool.name] = self._socket(zmq.PUSH, pool.endpoint_in)
        return sock

    def group_send(self, group: str, text: str | None = None, bytes: bytes | None = None,
                   close: int | None = None, event: str | None = None,
                   id: str | int | None = None, delay: float | None = None) -> None:
        """Deliver one message to every member of `group`: a text or binary frame, or,
        with ``close=CODE``, a close. One ZeroMQ message to the broker and one from it
        to each interface, whatever the group's size. `event` and `id` name the
        Server-Sent Event that HTTP event-stream members receive; WebSocket members
        ignore them. With `delay` (seconds), the broker keeps it that long first: it
        reaches whoever is a member then."""
        check_group_name(group)
        header, payload = wire.group_message(text, bytes, close, event, id)
        frames = [GROUP, group.encode(), wire.encode(header), payload]
        if delay is not None:
            frames.insert(0, b"%s%d" % (wire.VERB_LATER, wire.check_delay(delay)))
        with self.lock:
            self._flush()
            self._send(self.broker, frames, "group %r", group)
        counters.incr("group_sends")  # a delayed one too: see the broker's "delayed" gauge
        if delay is not None:
            counters.incr("delayed_sends")

    # -- a worker's events -------------------------------------------------

    def begin_event(self, route: tuple[bytes, int] | None) -> None:
        self.current_route = route
        self.current_sends = 0

    def end_event(self, done: bytes, handled: int, credit: bool = True) -> None:
        """The consumer has returned: send the event's done (encoded, for the current
        route) with the worker's credit (unless it is stopping), and with the held
        operation if there is one."""
        route = self.current_route
        assert route is not None
        self.current_route = None
        verb = b"%s%d" % (wire.VERB_DONE, handled) if credit else TO
        with self.lock:
            pending, self.pending = self.pending, None
            if pending is None:
                frames = [verb, route[0], done]
            else:
                frames = [verb, *pending[1:]]
                if len(frames) == 3:
                    frames.append(b"")  # no payload
                frames.append(done)
            self._relay(frames)

    def credit(self, word: bytes, block: bool = False) -> None:
        """A bare credit (READY or BYE) to the broker; dropped if it cannot go now."""
        with self.lock:
            self._flush()
            try:
                self.broker.send(word, 0 if block else zmq.NOBLOCK)
                counters.incr("zmq_sent")
            except zmq.Again:  # the broker is away; the next READY will tell it
                pass

    def next_event(self, timeout_ms: int = 0) -> list[bytes] | None:
        """The next event the broker sent, within `timeout_ms`; answers and bounces that
        nobody waits for any more are read and counted on the way."""
        if self.inbox:
            return self.inbox.popleft()
        deadline = time.monotonic() + timeout_ms / 1000
        with self.lock:
            while True:
                try:  # the worker's poll has usually just said there is one
                    frames = self.broker.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    remaining = int((deadline - time.monotonic()) * 1000)
                    if remaining <= 0 or not self.broker.poll(remaining):
                        return None
                    continue
                if frames[0] == wire.TO_WORKER_EVENT:
                    return frames[1:]
                answer = self._answer(frames)
                if answer is not None and "req" in answer and answer.get("ok") is not False:
                    counters.incr("late_answers")

    # -- membership --------------------------------------------------------

    @overload
    def group_add(self, group: str, reply_channel: ReplyChannel | str, *,
                  info: Any = None, announce: bool = False) -> bool: ...
    @overload
    def group_add(self, group: str, reply_channel: ReplyChannel | str,
                  since: str, *, info: Any = None, announce: bool = False) -> Recovery: ...

    def group_add(self, group: str, reply_channel: ReplyChannel | str,
                  since: str | None = None, *, info: Any = None,
                  announce: bool = False) -> bool | Recovery:
        """Add a connection to a group. When this returns, every later group_send
        from any process reaches it, and `group_members` lists it with `info` (any
        JSON value, up to 4 KiB encoded: a user name, say). With `announce`, the group
        is told, ``{"type": "join", "group", "member", "info"}``, and told again
        (``"leave"``) when it leaves or closes. False if the connection has already
        closed.

        With `since` (the last position the client saw, ``"<epoch>:<offset>"``), the
        connection first gets every message the group sent after it, then the live
        ones; the result is a `Recovery` (true if added) that says whether that was
        possible. An HTTP request with a ``Last-Event-ID`` header recovers from it by
        itself when the group keeps history (docs/consumers.md#history-and-recovery)."""
        if since is None and isinstance(reply_channel, ReplyChannel) \
                and reply_channel.since is not None \
                and self.history_rules.rule_for(check_group_name(group).encode()):
            since = reply_channel.since
        if since is None:
            return bool(self._membership(wire.OP_GROUP_ADD, group, reply_channel,
                                         info=info, announce=announce).get("ok"))
        if not isinstance(since, str):
            raise TypeError(f"since must be a position string, not {type(since).__name__}")
        return Recovery.from_answer(self._membership(
            wire.OP_GROUP_ADD, group, reply_channel, since, info, announce))

    def group_discard(self, group: str, reply_channel: ReplyChannel | str) -> bool:
        """Remove a connection from a group; no group_send after this returns reaches it.
        False if it was not a member (or has closed)."""
        return bool(self._membership(wire.OP_GROUP_DISCARD, group, reply_channel).get("ok"))

    def group_members(self, group: str) -> list[Member]:
        """Every member of `group` on every interface, with the info it joined with, as
        the broker knows them now (docs/consumers.md#presence: how stale that can be)."""
        answer = self._query(group, "members")
        if not answer.get("ok"):
            raise GroupError(f"group {group!r} has {answer.get('size')} members, more than "
                             f"group_members returns ({MAX_ANSWER_MEMBERS}): use group_size")
        return [Member(channel, info) for channel, info in answer["members"]]

    def group_size(self, group: str) -> int:
        """How many members `group` has, on every interface."""
        return int(self._query(group, "size")["size"])

    def _query(self, group: str, what: str) -> dict[str, Any]:
        check_group_name(group)
        request = next(self._requests)
        header = wire.encode({"req": request, "group": group, "what": what})
        with self.lock:
            self._flush()  # what this consumer did before comes first
            self._send(self.broker, [QUERY, header], "%s", "the route to the broker")
            return self._await_answer(request, f"group_{what}({group!r})")

    def _membership(self, op: str, group: str, reply_channel: ReplyChannel | str,
                    since: str | None = None, info: Any = None,
                    announce: bool = False) -> dict[str, Any]:
        """The owning interface's answer to a membership request: ``{"ok": ...}``."""
        check_group_name(group)
        name = str(reply_channel)
        route = (reply_channel.route if isinstance(reply_channel, ReplyChannel)
                 else wire.split_reply_channel(reply_channel))
        request = next(self._requests)
        fields = {"op": op, "group": group, "req": request, "conn": route[1]}
        if since is not None:
            fields["since"] = since  # the broker answers with the group's history
        if info is not None:
            fields["info"] = check_info(info)
        if announce:
            fields["announce"] = True
        header = wire.encode(fields)
        # The interface answers once its table has changed: that confirmation is
        # what makes membership immediate (no slow-joiner race with group sends).
        deadline = time.monotonic() + self.config.group_timeout
        with self.lock:
            self._flush()
            self._relay([TO if since is None else HISTORY, route[0], header])
            if route == self.current_route:
                self.current_sends += 1
            return self._await_answer(request, f"{op} {group!r} for {name}: the owning "
                                      "interface", deadline)

    def _await_answer(self, request: int, what: str,
                      deadline: float | None = None) -> dict[str, Any]:
        """The answer to `request`, keeping the events that come meanwhile (lock held)."""
        if deadline is None:
            deadline = time.monotonic() + self.config.group_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.broker.poll(int(remaining * 1000) + 1):
                counters.incr("group_timeouts")
                raise GroupError(f"{what} did not answer within "
                                 f"{self.config.group_timeout:g}s")
            frames = self.broker.recv_multipart()
            if frames[0] == wire.TO_WORKER_EVENT:
                self.inbox.append(frames[1:])  # for after this consumer
                continue
            answer = self._answer(frames)
            if answer is not None and answer.get("req") == request:
                return answer

    def _answer(self, frames: list[bytes]) -> dict[str, Any] | None:
        """An answer to a membership request, or a bounce (lock held)."""
        if len(frames) == 3 and frames[0] == wire.TO_WORKER_BOUNCE:
            # The interface that owned the connection is gone, so the connection is too.
            counters.incr("unreachable_interface")
            log.debug("interface %r is gone; dropped a message for it", frames[1])
            try:
                original = wire.decode(frames[2])
            except ValueError:
                return None
            return {"req": original.get("req"), "ok": False, "bounced": True}
        if len(frames) != 3 or frames[0] != wire.TO_WORKER_ANSWER:
            counters.incr("garbage")
            log.warning("dropped a malformed message from the broker (%d frames)", len(frames))
            return None
        try:
            return wire.decode(frames[2])
        except ValueError as e:
            counters.incr("garbage")
            log.warning("dropped a malformed answer from the broker: %s", e)
            return None

    # -- the flusher -------------------------------------------------------

    def start_flusher(self) -> None:
        """Let the consumer's last operation for its connection wait for the done (see
        the module docstring): a worker calls this once it is set up."""
        self.holding = True
        self.flusher = threading.Thread(target=self._flush_while_running, daemon=True,
                                        name="zchannels-flusher")
        self.flusher.start()

    def _flush_while_running(self) -> None:
        """Send a held operation whenever this thread gets to run: the consumer has
        blocked (I/O, sleep) or computed past the interpreter's switch interval. While
        events keep coming it looks every FLUSH_TICK, which costs less than waking it
        for each one; after FLUSH_PARK without a held operation it sleeps until one is."""
        while True:
            with self.wakeup:
                if self.closed:
                    return
                if self.pending is not None:
                    try:
                        self._flush()
                    except ChannelFull as e:
                        # The consumer has moved on; its done will tell the interface
                        # that a message is missing, and the connection is closed (1011).
                        log.error("could not send a message for %s: %s",
                                  self.current_route, e)
                elif time.monotonic() - self.last_held > FLUSH_PARK:
                    self.parked = True
                    self.wakeup.wait()
                    self.parked = False
                    self.last_held = time.monotonic()
                    continue
            time.sleep(FLUSH_TICK)

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
            try:
                self._flush()
            except ChannelFull as e:
                log.error("at close: %s", e)
        if self.flusher is not None:
            self.flusher.join(FLUSHER_JOIN)
        for sock in (self.broker, *self.pools.values()):
            sock.close()
        self.pools.clear()


_current: Layer | None = None


def set_current(layer: Layer | None) -> None:
    global _current
    _current = layer


def current() -> Layer:
    if _current is None:
        raise NotInConsumer("no channel layer in this process: call this from a consumer, "
                            "or first call runtime.layer.connect(config)")
    return _current


def connect(config: Config) -> Layer:
    """Open a layer for a process that is not a worker (scripts, management commands)."""
    layer = Layer(config, identity=f"c{os.getpid()}-{secrets.token_hex(3)}")
    set_current(layer)
    return layer


def send(channel: str, content: dict[str, Any] | None = None, payload: bytes = b"",
         delay: float | None = None) -> None:
    current().send(channel, content, payload, delay=delay)


@overload
def group_add(group: str, reply_channel: ReplyChannel | str, *, info: Any = None,
              announce: bool = False) -> bool: ...
@overload
def group_add(group: str, reply_channel: ReplyChannel | str, since: str, *,
              info: Any = None, announce: bool = False) -> Recovery: ...


def group_add(group: str, reply_channel: ReplyChannel | str,
              since: str | None = None, *, info: Any = None,
              announce: bool = False) -> bool | Recovery:
    """`Layer.group_add`: with `since`, recover what the client missed; `info`, what
    `group_members` shows of it; `announce`, tell the group when it joins and leaves."""
    extra: dict[str, Any] = {}  # only what is asked for: a test's fake layer may lack them
    if info is not None:
        extra["info"] = info
    if announce:
        extra["announce"] = True
    if since is None:
        return current().group_add(group, reply_channel, **extra)
    return current().group_add(group, reply_channel, since, **extra)


def group_members(group: str) -> list[Member]:
    return current().group_members(group)


def group_size(group: str) -> int:
    return current().group_size(group)


def group_discard(group: str, reply_channel: ReplyChannel | str) -> bool:
    return current().group_discard(group, reply_channel)


def group_send(group: str, text: str | None = None, bytes: bytes | None = None,
               close: int | None = None, event: str | None = None,
               id: str | int | None = None, delay: float | None = None) -> None:
    current().group_send(group, text=text, bytes=bytes, close=close, event=event, id=id,
                         delay=delay)


def reply_channel(name: str) -> ReplyChannel:
    """A ReplyChannel from its name, e.g. one passed along in a task message."""
    return ReplyChannel(name, current())
