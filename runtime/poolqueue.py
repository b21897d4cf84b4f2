"""A pool's queue: the one place every sender PUSHes to and every worker of the pool PULLs from.

It is a ZeroMQ streamer device (``zmq.proxy`` between a PULL and a PUSH
socket), so messages cross it at C speed with no Python per message. Its
capacity is the high-water mark of its input side: when it is full, senders'
non-blocking sends fail and the work is refused visibly (WebSocket close 1013,
HTTP 503, `ChannelFull`), never queued without bound. The bound is approximate:
besides the high-water marks, each IPC hop's kernel socket buffer holds some
messages (about 170 small ones), so a worker stuck in a slow consumer can have
that many events waiting behind it while other workers are idle.
"""
from __future__ import annotations

import logging
import signal
import threading

import zmq

from .config import Config
from .process import announce_ready, withdraw_ready

log = logging.getLogger("runtime.poolqueue")

WORKER_SIDE_HWM = 1  # messages queued towards each worker beyond the kernel's buffer


def run(config: Config, pool_name: str) -> None:
    pool = config.pool(pool_name)
    context = zmq.Context()
    frontend = context.socket(zmq.PULL)
    frontend.rcvhwm = pool.capacity
    frontend.bind(pool.endpoint_in)
    backend = context.socket(zmq.PUSH)
    backend.sndhwm = WORKER_SIDE_HWM
    backend.bind(pool.endpoint_out)

    role = f"queue-{pool.name}"

    def stop(signum: int, frame: object) -> None:
        # zmq.proxy only returns when the context is terminated; do that from
        # another thread so this handler returns at once.
        log.info("received %s, stopping", signal.Signals(signum).name)
        threading.Thread(target=context.term, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announce_ready(config.run_dir, role)
    log.info("queue for pool %s up: in %s, out %s, capacity %d", pool.name,
             pool.endpoint_in, pool.endpoint_out, pool.capacity)
    try:
        zmq.proxy(frontend, backend)
    except zmq.ContextTerminated:
        pass
    finally:
        withdraw_ready(config.run_dir, role)
        frontend.close(linger=0)
        backend.close(linger=0)
        log.info("queue for pool %s stopped", pool.name)
