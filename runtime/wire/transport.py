"""Where every ZeroMQ socket of the system binds or connects: `bind` and `connect`.

An ``ipc://`` endpoint is bound or connected as it is: the run directory's 0700 mode
is its protection. A ``tcp://`` endpoint gets, on every connection:

- **CURVE** (libzmq's own authentication and encryption) when the config names a
  key directory (``curve_dir``, made by ``zchannels keys``; layout in `zchannels.wire.keys`).
  The side that binds -- the broker, on the layer host -- is the CURVE server with
  the layer host's key pair, and a ZAP handler (`Gatekeeper`, a thread of the
  broker) lets in only the client public keys in ``curve_allow_dir``, logging and
  counting every other one (``curve_refused``). A connecting side uses this host's
  client key pair and the layer host's public key, so a peer with the wrong server
  key never completes its handshake either. Without keys a ``tcp://`` endpoint is
  plaintext: allowed on loopback, or anywhere with ``insecure_tcp = true`` (the
  config refuses anything else, `zchannels.core.config`).
- **ZeroMQ heartbeats**: a PING every ``heartbeat_interval`` seconds, and the
  connection is dropped when nothing has come for ``heartbeat_timeout`` after one
  (the peer is told the same as ``HEARTBEAT_TTL``). A host that vanished without a
  FIN (power off, cable pulled) is noticed within interval + timeout, 4 s with the
  defaults; the broker's socket monitors then see the disconnect, and a connecting
  side reconnects by itself when the peer is back.
- **TCP keepalive**, the kernel's own check underneath, for when heartbeats are off.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from zchannels.core.config import (CLIENT_PUBLIC, CLIENT_SECRET, SERVER_PUBLIC, SERVER_SECRET,
                                   allow_dir, is_loopback, is_tcp, tcp_host)
from zchannels.core.stats import counters

from zchannels.core.config import Config

log = logging.getLogger("zchannels.transport")

ZAP_DOMAIN = "zchannels"
REFUSAL_LOG_INTERVAL = 60.0  # seconds between log lines for one refused key (a refused
# peer retries every 100 ms; every refusal is counted, not every one logged)
ALLOW_RELOAD_INTERVAL = 1.0  # seconds: the allow-list directory is re-read at most this
# often, so adding an app host's key needs no restart of the broker
KEY_CHECK_TIMEOUT = 60.0  # seconds a process's start-up check of its keys waits for the
# layer host (a layer host that is not up yet is not an error of the keys)



def bind(sock: zmq.Socket, endpoint: str, config: Config) -> None:
    """Bind `sock` (the broker's sockets: the layer host's side of every connection)."""
    if is_tcp(endpoint):
        _tcp_options(sock, endpoint, config)
        if config.curve_dir:
            public, secret = _load(config, SERVER_SECRET)
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_server = True
            sock.zap_domain = ZAP_DOMAIN.encode()
            gatekeeper(sock.context, config)  # before the bind: no handshake unchecked
    sock.bind(endpoint)


def connect(sock: zmq.Socket, endpoint: str, config: Config) -> None:
    """Connect `sock` (interfaces, workers, other processes: the app hosts' side)."""
    if is_tcp(endpoint):
        _tcp_options(sock, endpoint, config)
        if config.curve_dir:
            public, secret = client_pair(config)
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = _load(config, SERVER_PUBLIC)[0]
    sock.connect(endpoint)


def client_pair(config: Config) -> tuple[bytes, bytes]:
    """This host's client key pair; the layer host (which may have none) uses its
    server pair, which its own gatekeeper always lets in."""
    if os.path.exists(os.path.join(config.curve_dir, CLIENT_SECRET)):
        return _load(config, CLIENT_SECRET)
    return _load(config, SERVER_SECRET)


def _load(config: Config, name: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(os.path.join(config.curve_dir, name))
    return public, secret or b""


def _tcp_options(sock: zmq.Socket, endpoint: str, config: Config) -> None:
    if ":" in tcp_host(endpoint):  # an IPv6 address: libzmq needs to be told
        sock.ipv6 = True
    if config.heartbeat_interval > 0:
        sock.heartbeat_ivl = int(config.heartbeat_interval * 1000)
        sock.heartbeat_timeout = int(config.heartbeat_timeout * 1000)
        # (libzmq sends the TTL in deciseconds, at most 6553.5 s)
        sock.heartbeat_ttl = min(int(config.heartbeat_timeout * 1000), 6_553_500)
    sock.tcp_keepalive = 1
    sock.tcp_keepalive_idle = config.tcp_keepalive_idle
    sock.tcp_keepalive_intvl = config.tcp_keepalive_interval
    sock.tcp_keepalive_cnt = config.tcp_keepalive_count


def describe(config: Config, check_keys: bool = False) -> None:
    """Log, once at a process's start, how its tcp:// endpoints are protected; with
    `check_keys`, check in the background that the layer host lets this host's key in
    (`check_keys_now`)."""
    from zchannels.core.config import all_endpoints
    tcp = {what: e for what, e in all_endpoints(config).items() if is_tcp(e)}
    if not tcp:
        return
    if config.curve_dir:
        log.info("tcp endpoints use CURVE (keys in %s; heartbeat every %gs, peer dropped "
                 "after %gs of silence)", config.curve_dir, config.heartbeat_interval,
                 config.heartbeat_timeout)
        if check_keys and is_tcp(config.broker_clients):
            threading.Thread(target=check_keys_now, args=(config,), daemon=True,
                             name="zchannels-key-check").start()
    elif config.insecure_tcp and not all(is_loopback(e) for e in tcp.values()):
        log.warning("insecure_tcp = true: %s carry messages unauthenticated and "
                    "unencrypted; anyone who can reach them can inject messages "
                    "(make keys with `zchannels keys`)", ", ".join(sorted(tcp.values())))
    else:
        log.info("tcp endpoints on loopback without CURVE (no curve_dir): %s",
                 ", ".join(sorted(tcp.values())))


HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def check_keys_now(config: Config, timeout: float = KEY_CHECK_TIMEOUT) -> str:
    """One handshake with the layer host (at ``broker_clients``) with this host's keys,
    in a context of its own: "ok", "refused" or "failed" (both logged as errors: the
    refused process itself would otherwise say nothing, and libzmq does not retry a
    refused connection), or "no answer" within `timeout` seconds."""
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        connect(sock, config.broker_clients, config)
        if not monitor.poll(int(timeout * 1000)):
            return "no answer"
        event = recv_monitor_message(monitor)["event"]
    except zmq.ZMQError as e:  # a check, not the process's business: never fatal
        log.warning("could not check this host's CURVE keys: %s", e)
        return "failed"
    finally:
        context.destroy(linger=0)
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        log.debug("the layer host at %s accepts this host's CURVE key", config.broker_clients)
        return "ok"
    public = client_pair(config)[0].decode()
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        log.error("the layer host at %s refused this host's CURVE key %s: it is not in its "
                  "allow-list. Copy %s there (curve_allow_dir), then restart this host's "
                  "processes: libzmq does not retry a refused connection",
                  config.broker_clients, public,
                  os.path.join(config.curve_dir, CLIENT_PUBLIC))
        return "refused"
    log.error("the CURVE handshake with %s failed: is %s the layer host's public key, and "
              "is that the layer host?", config.broker_clients,
              os.path.join(config.curve_dir, SERVER_PUBLIC))
    return "failed"


# -- the layer host's gatekeeper (ZAP) ---------------------------------------------------

class AllowList:
    """The ZAP credentials provider: the public keys in the allow-list directory, plus
    the layer host's own. Called in the authenticator's thread, once per handshake."""

    def __init__(self, directory: str, own_key: bytes) -> None:
        self.directory = directory
        self.own_key = own_key
        self.keys: set[bytes] = set()
        self.loaded_at = -ALLOW_RELOAD_INTERVAL
        self.logged: dict[bytes, float] = {}  # refused key -> when it was last logged
        self.error = ""  # why the directory could not be read last time (logged once)
        self.lock = threading.Lock()

    def reload(self) -> None:
        keys = set()
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as e:
            if str(e) != self.error:
                log.error("cannot read the CURVE allow-list %s: %s; only the layer host's "
                          "own key is let in", self.directory, e)
            self.error = str(e)
            names = []
        else:
            self.error = ""
        for name in names:
            if not name.endswith(".key"):
                continue
            try:
                public, _ = zmq.auth.load_certificate(os.path.join(self.directory, name))
            except (OSError, ValueError) as e:
                log.warning("skipped %s in the CURVE allow-list: %s", name, e)
                continue
            keys.add(public)
        self.keys = keys
        self.loaded_at = time.monotonic()

    def callback(self, domain: str, key: bytes) -> bool:
        with self.lock:
            if key == self.own_key:
                return True
            if time.monotonic() - self.loaded_at > ALLOW_RELOAD_INTERVAL:
                self.reload()
            if key in self.keys:
                return True
            counters.incr("curve_refused")
            now = time.monotonic()
            if now - self.logged.get(key, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
                if len(self.logged) > 1000:
                    self.logged.clear()
                self.logged[key] = now
                log.warning("refused a CURVE connection from client key %s: not in the "
                            "allow-list %s (counted as curve_refused; logged once a "
                            "minute per key)", key.decode(errors="replace"), self.directory)
            return False


_gatekeepers: dict[int, ThreadAuthenticator] = {}


def gatekeeper(context: zmq.Context, config: Config) -> ThreadAuthenticator:
    """The ZAP handler of `context`, started on first use (one per context)."""
    found = _gatekeepers.get(id(context))
    if found is not None:
        return found
    counters.setdefault("curve_refused", 0)  # shown as 0 until a refusal
    auth = ThreadAuthenticator(context, log=logging.getLogger("zchannels.transport.zap"))
    auth.start()
    allow = AllowList(allow_dir(config), _load(config, SERVER_PUBLIC)[0])
    allow.reload()
    auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=allow)
    _gatekeepers[id(context)] = auth
    log.info("CURVE: letting in the %d client key(s) of %s", len(allow.keys), allow.directory)
    return auth


def release(context: zmq.Context) -> None:
    """Stop `context`'s ZAP handler, if it has one: before the context is ended (its
    socket would keep ``term`` waiting)."""
    auth = _gatekeepers.pop(id(context), None)
    if auth is not None:
        auth.stop()
