"""ZeroMQ sockets inside the interface's asyncio loop, without a Future per message.

``zmq.asyncio`` creates a Future for every recv and send (about a quarter of the
interface's time in a round trip). Instead, one reader callback sits on the
socket's ZMQ_FD and drains the socket until ``zmq.Again``. The FD is
edge-triggered: it signals that the socket's state *may* have changed, and only
once. Two consequences, both handled here: a drain that stops early (to give
WebSocket I/O its turn) must reschedule itself, and a send on a socket that is
also read may swallow the signal for messages that arrived meanwhile, so after
sending, call `kick`.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, cast

import zmq

log = logging.getLogger("zchannels.zmqio")

BATCH = 256  # messages handled per turn of the loop before WebSocket I/O gets its turn


class SocketReader:
    def __init__(self, sock: zmq.Socket, handle: Callable[[list[bytes]], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.sock = sock
        self.handle = handle
        self.loop = loop or asyncio.get_running_loop()
        self.fd = cast(int, sock.getsockopt(zmq.FD))
        self.scheduled = False
        self.loop.add_reader(self.fd, self.drain)
        self.kick()  # messages may have arrived before the reader was added

    def drain(self) -> None:
        self.scheduled = False
        recv = self.sock.recv_multipart
        handle = self.handle
        for _ in range(BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as e:  # the socket was closed under us at shutdown
                log.debug("reader stopped: %s", e)
                return
            try:
                handle(frames)
            except Exception:
                log.exception("error handling a message; dropped it")
        self.kick()

    def kick(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.drain)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
