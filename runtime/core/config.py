"""Runtime configuration: one TOML file with documented defaults, plus environment overrides.

Every process reads the same file (``conf/zchannels.toml`` unless ``--config`` or
``ZCHANNELS_CONFIG`` names another), so endpoints and limits always agree between
the interfaces, the broker and the workers. Relative paths are taken
from the directory the process runs in (supervisord runs everything from the
project root). Unknown keys are errors, so a typo never silently becomes a default.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import math
import os
import stat
import tomllib
import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping, cast

from zchannels.core.exceptions import ConfigError
from zchannels.core.history_rules import HistoryConfig, parse_config as _parse_history

DEFAULT_CONFIG_PATH = "conf/zchannels.toml"

MIN_TOKEN_BYTES = 32  # publish_token, metrics_token, dashboard_token: shorter ones are refused
TOKEN_ADVICE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# Linux keeps AF_UNIX paths in a 108-byte sun_path, NUL included.
MAX_IPC_PATH_BYTES = 107

WEBSOCKET_CHANNELS = ("websocket.connect", "websocket.receive", "websocket.disconnect")
HTTP_CHANNELS = ("http.request", "http.disconnect")
CLIENT_CHANNELS = WEBSOCKET_CHANNELS + HTTP_CHANNELS  # events the interface sends to pools


@dataclass(frozen=True)
class PoolConfig:
    """A set of worker processes that serve the channels matching `channels` (glob patterns)."""

    name: str
    channels: tuple[str, ...]
    capacity: int = 1000  # messages queued for the pool before new work is refused
    endpoint_in: str = ""  # senders PUSH here (the pool queue's input)
    endpoint_out: str = ""  # workers' DEALERs connect here and ask for work

    def serves(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.channels)


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    run_dir: str = "run"
    consumers: tuple[str, ...] = ("consumers",)
    static_dir: str = "consumers/static"
    static_url: str = "/static/"  # files of static_dir are served under this prefix
    static_index: str = "index.html"  # served at / if it exists in static_dir; "": no
    static_max_age: int = 3600  # seconds clients may cache a static file (Cache-Control)
    wsgi_app: str = ""  # "module:callable" run for HTTP paths no consumer claims
    max_body_bytes: int = 10 * 1024 * 1024  # larger HTTP request bodies: 413
    http_timeout: float = 30.0  # seconds for a response to start (else 504)
    sse_heartbeat: float = 15.0  # seconds between comment lines on an idle SSE stream
    allowed_origins: tuple[str, ...] = ()  # empty: only the page's own host may connect
    max_message_bytes: int = 1024 * 1024  # larger incoming frames close with 1009
    max_connections: int = 20_000  # per interface process: WebSockets + HTTP requests
    rate_limit: float = 1000.0  # WebSocket messages per second per connection (0: off)
    rate_burst: int = 2000  # messages a connection may send at once above rate_limit
    handshake_timeout: float = 10.0  # seconds the connect consumer has to accept or reject
    event_timeout: float = 60.0  # seconds a consumer may hold one event before 1011
    max_queued_events: int = 64  # per connection; beyond it the socket stops being read
    max_outbound_bytes: int = 4 * 1024 * 1024  # buffered for one client (else close 1008)
    group_timeout: float = 5.0  # seconds group_add/group_discard wait for confirmation
    send_timeout: float = 5.0  # seconds a consumer's send may block before ChannelFull
    ping_interval: float = 20.0  # seconds between WebSocket pings; 0 disables
    ping_timeout: float = 20.0  # seconds without a pong before closing; 0 off; default:
    # the same as ping_interval, which it may not exceed
    broker_hwm: int = 100_000  # messages buffered per peer on the broker's router sockets
    stats_interval: float = 2.0  # seconds between writes of each process's counters
    publish_path: str = "/_zchannels/publish"  # the interfaces' HTTP publish API
    publish_token: str = ""  # its bearer token; "": the API is off
    # permessage-deflate (RFC 7692), docs/operations.md "WebSocket compression"
    compression: bool = False  # negotiate it with clients that offer it
    compression_level: int = 1  # zlib level 0..9 for what the server sends (0: stored)
    compression_mem_level: int = 8  # zlib memLevel 1..9 of the server's compressors
    compression_window_bits: int = 15  # 9..15: largest LZ77 window, each direction
    compression_min_bytes: int = 32  # smaller messages are sent uncompressed
    # The operator's view (docs/operations.md "Metrics", "Live dashboard")
    metrics_path: str = "/_zchannels/metrics"  # Prometheus text format; "": off
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")  # addresses/networks it serves
    metrics_token: str = ""  # if set, a bearer token the metrics request must carry too
    dashboard_path: str = "/_zchannels/dashboard"  # the live dashboard page (and /events)
    dashboard_token: str = ""  # the token that opens it; "": the dashboard is off
    operator_hosts: tuple[str, ...] = ()  # Host names (beside loopback) they answer to
    token_failure_limit: int = 10  # wrong tokens per client address per window (0: off)
    token_failure_window: float = 60.0  # seconds; beyond the limit: 429 with Retry-After
    # Group history ([history] table, runtime/broker/history.py, docs/consumers.md)
    history: HistoryConfig = HistoryConfig()
    pools: tuple[PoolConfig, ...] = ()
    # Several hosts (docs/deployment.md, runtime/wire/transport.py)
    role: str = "all"  # which programs this host runs: all, layer, app or workers
    worker_pools: tuple[str, ...] = ()  # pools whose workers this host runs; (): all
    curve_dir: str = ""  # this host's CURVE keys (zchannels keys); "": none
    curve_allow_dir: str = ""  # layer host: allowed client public keys; "": curve_dir/allowed
    insecure_tcp: bool = False  # allow tcp:// off loopback without CURVE (with a warning)
    heartbeat_interval: float = 1.0  # seconds between ZeroMQ PINGs on tcp (0: off)
    heartbeat_timeout: float = 3.0  # seconds of silence after a PING before dropping a peer
    tcp_keepalive_idle: int = 5  # seconds idle before the kernel's first keepalive probe
    tcp_keepalive_interval: int = 1  # seconds between keepalive probes
    tcp_keepalive_count: int = 5  # unanswered probes before the kernel drops the connection
    broker_interfaces: str = ""  # interfaces' DEALERs connect to the broker here
    broker_clients: str = ""  # processes that are not workers send through the broker here
    source: str = "<defaults>"

    def pool_for(self, channel: str) -> PoolConfig | None:
        """The first pool, in file order, whose patterns match `channel`."""
        for pool in self.pools:
            if pool.serves(channel):
                return pool
        return None

    def pool(self, name: str) -> PoolConfig:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise ConfigError(
            f"{self.source}: no pool named {name!r}; "
            f"configured pools: {', '.join(p.name for p in self.pools)}"
        )


_SCALARS: dict[str, tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "run_dir": (str,),
    "static_dir": (str,),
    "static_url": (str,),
    "static_index": (str,),
    "static_max_age": (int,),
    "wsgi_app": (str,),
    "max_body_bytes": (int,),
    "http_timeout": (int, float),
    "sse_heartbeat": (int, float),
    "max_message_bytes": (int,),
    "max_connections": (int,),
    "rate_limit": (int, float),
    "rate_burst": (int,),
    "handshake_timeout": (int, float),
    "event_timeout": (int, float),
    "max_queued_events": (int,),
    "max_outbound_bytes": (int,),
    "group_timeout": (int, float),
    "send_timeout": (int, float),
    "ping_interval": (int, float),
    "ping_timeout": (int, float),
    "broker_hwm": (int,),
    "stats_interval": (int, float),
    "publish_path": (str,),
    "publish_token": (str,),
    "compression": (bool,),
    "compression_level": (int,),
    "compression_mem_level": (int,),
    "compression_window_bits": (int,),
    "compression_min_bytes": (int,),
    "metrics_path": (str,),
    "metrics_token": (str,),
    "dashboard_path": (str,),
    "dashboard_token": (str,),
    "token_failure_limit": (int,),
    "token_failure_window": (int, float),
    "role": (str,),
    "curve_dir": (str,),
    "curve_allow_dir": (str,),
    "insecure_tcp": (bool,),
    "heartbeat_interval": (int, float),
    "heartbeat_timeout": (int, float),
    "tcp_keepalive_idle": (int,),
    "tcp_keepalive_interval": (int,),
    "tcp_keepalive_count": (int,),
}
_LISTS = ("consumers", "allowed_origins", "metrics_allow", "operator_hosts", "worker_pools")
HOST_ROLES = ("all", "layer", "app", "workers")  # ZCHANNELS_ROLE
_ENDPOINTS = ("broker_interfaces", "broker_clients")
_POSITIVE = (
    "max_message_bytes",
    "max_connections",
    "rate_burst",
    "max_body_bytes",
    "http_timeout",
    "sse_heartbeat",
    "handshake_timeout",
    "event_timeout",
    "max_queued_events",
    "max_outbound_bytes",
    "group_timeout",
    "send_timeout",
    "broker_hwm",
    "stats_interval",
    "token_failure_window",
    "heartbeat_timeout",
    "tcp_keepalive_idle",
    "tcp_keepalive_interval",
    "tcp_keepalive_count",
)
_POOL_KEYS = ("channels", "capacity", "endpoint_in", "endpoint_out")
# Keys renamed when the router became the broker: still read, with a warning, for one
# release (0.2 drops them). (table, old key) -> new key.
DEPRECATED_KEYS = {
    ("server", "router_hwm"): "broker_hwm",
    ("endpoints", "router_interfaces"): "broker_interfaces",
    ("endpoints", "router_clients"): "broker_clients",
}

DEFAULT_POOLS: Mapping[str, Mapping[str, Any]] = {"default": {"channels": ["*"]}}


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if it exists) and apply environment overrides.

    `path` None means ``ZCHANNELS_CONFIG`` or ``conf/zchannels.toml``; a path that
    was asked for explicitly must exist, the default one may be missing.
    """
    environ = os.environ if environ is None else environ
    explicit = path or environ.get("ZCHANNELS_CONFIG")
    path = explicit or DEFAULT_CONFIG_PATH
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path!r} does not exist") from None
        data = {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
    return parse(data, source=path, environ=environ)


def parse(
    data: Mapping[str, Any], source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    """Build a validated Config from parsed TOML (the ``[server]``, ``[endpoints]``
    and ``[pools.NAME]`` tables) and environment overrides."""
    environ = {} if environ is None else environ
    unknown = set(data) - {"server", "endpoints", "pools", "history"}
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {sorted(unknown)}; "
                          "expected [server], [endpoints], [pools.NAME], [history]")
    server = _renamed(_table(data, "server", source), "server", source)
    values: dict[str, Any] = {}
    for key, raw in server.items():
        where = f"{source}: [server] {key}"
        if key in _SCALARS:
            values[key] = _check_type(raw, _SCALARS[key], where)
        elif key in _LISTS:
            values[key] = _string_list(raw, where)
        else:
            raise ConfigError(f"{source}: [server] has no key {key!r}; known keys: "
                              f"{', '.join(sorted([*_SCALARS, *_LISTS]))}")
    for key, raw in _renamed(_table(data, "endpoints", source), "endpoints", source).items():
        if key not in _ENDPOINTS:
            raise ConfigError(f"{source}: [endpoints] has no key {key!r}; "
                              f"known keys: {', '.join(_ENDPOINTS)}")
        values[key] = _check_type(raw, (str,), f"{source}: [endpoints] {key}")

    _apply_environment(values, environ, source)
    # As in Tornado, the pong may take as long as the interval unless told otherwise.
    values.setdefault("ping_timeout", values.get("ping_interval", Config.ping_interval))
    config = Config(source=source, **values)
    _check_ranges(config)
    pools = _parse_pools(data.get("pools", DEFAULT_POOLS), config, source)
    config = replace(config, pools=pools, history=_parse_history(data.get("history"), source),
                     **_default_endpoints(config))
    _check_endpoints(config)
    for name in config.worker_pools:
        config.pool(name)  # an unknown pool is an error that lists the pools
    _check_tcp(config)
    return config


def _table(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source}: {name} must be a table ([{name}])")
    return table


def _renamed(table: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    """`table` with its deprecated keys under their new names (each one warned about)."""
    result = dict(table)
    for (where, old), new in DEPRECATED_KEYS.items():
        if where != name or old not in result:
            continue
        if new in result:
            raise ConfigError(f"{source}: [{name}] has both {old} and {new}; {old} is the "
                              f"old name of {new}: keep only {new}")
        warnings.warn(f"{source}: [{name}] {old} is deprecated: call it {new}",
                      FutureWarning, stacklevel=2)
        result[new] = result.pop(old)
    return result


def _check_type(value: Any, types: tuple[type, ...], where: str) -> Any:
    # bool is an int in Python, but `port = true` is a mistake, not port 1.
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = " or ".join("number" if t is float else t.__name__ for t in types)
        raise ConfigError(f"{where} must be a {names}, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # TOML allows nan and inf
        raise ConfigError(f"{where} must be a finite number, not {value!r}")
    return float(cast(float, value)) if float in types else value


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, not {value!r}")
    return tuple(value)


def _apply_environment(values: dict[str, Any], environ: Mapping[str, str], source: str) -> None:
    port = environ.get("ZCHANNELS_PORT")
    if port is not None:
        try:
            values["port"] = int(port)
        except ValueError:
            raise ConfigError(f"ZCHANNELS_PORT must be a whole number, not {port!r}") from None
    if environ.get("ZCHANNELS_HOST"):
        values["host"] = environ["ZCHANNELS_HOST"]
    if environ.get("ZCHANNELS_RUN_DIR"):
        values["run_dir"] = environ["ZCHANNELS_RUN_DIR"]
    if environ.get("ZCHANNELS_CONSUMERS"):
        values["consumers"] = tuple(p for p in environ["ZCHANNELS_CONSUMERS"].split(os.pathsep) if p)
    if environ.get("ZCHANNELS_PUBLISH_TOKEN"):  # a secret is better kept out of the file
        values["publish_token"] = environ["ZCHANNELS_PUBLISH_TOKEN"]
    for key in ("metrics_token", "dashboard_token"):  # secrets too
        if environ.get(f"ZCHANNELS_{key.upper()}"):
            values[key] = environ[f"ZCHANNELS_{key.upper()}"]
    for key in ("role", "curve_dir"):  # what differs between the hosts of one config
        if environ.get(f"ZCHANNELS_{key.upper()}"):
            values[key] = environ[f"ZCHANNELS_{key.upper()}"]
    if environ.get("ZCHANNELS_WORKER_POOLS"):
        values["worker_pools"] = tuple(p for p in environ["ZCHANNELS_WORKER_POOLS"].split(",")
                                       if p)


def _check_ranges(config: Config) -> None:
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"{config.source}: port must be 0..65535, not {config.port}")
    for key in _POSITIVE:
        if getattr(config, key) <= 0:
            raise ConfigError(f"{config.source}: [server] {key} must be greater than 0, "
                              f"not {getattr(config, key)}")
    for key in ("ping_interval", "ping_timeout"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{config.source}: [server] {key} must be 0 (off) or more")
    if config.ping_interval and config.ping_timeout > config.ping_interval:
        # Tornado waits for a pong only until the next ping is due.
        raise ConfigError(f"{config.source}: [server] ping_timeout ({config.ping_timeout:g}) "
                          f"must not be longer than ping_interval ({config.ping_interval:g})")
    if config.rate_limit < 0:
        raise ConfigError(f"{config.source}: [server] rate_limit must be 0 (off) or more")
    if config.static_max_age < 0:
        raise ConfigError(f"{config.source}: [server] static_max_age must be 0 or more")
    if not (config.static_url.startswith("/") and config.static_url.endswith("/")
            and len(config.static_url) > 1):
        raise ConfigError(f"{config.source}: [server] static_url must start and end with "
                          f"'/' (like \"/static/\"), not {config.static_url!r}")
    if "/" in config.static_index:
        raise ConfigError(f"{config.source}: [server] static_index is a file name in "
                          f"static_dir, not a path: {config.static_index!r}")
    if config.wsgi_app:
        module, sep, name = config.wsgi_app.partition(":")
        if not (sep and module and name.isidentifier()):
            raise ConfigError(f"{config.source}: [server] wsgi_app must look like "
                              f"'package.module:callable', not {config.wsgi_app!r}")
    if not config.consumers:
        raise ConfigError(f"{config.source}: [server] consumers must name at least one directory")
    _check_publish(config)
    _check_compression(config)
    _check_hosts(config)
    _check_operator_view(config)


def _check_compression(config: Config) -> None:
    for key, low, high in (("compression_level", 0, 9), ("compression_mem_level", 1, 9),
                           ("compression_window_bits", 9, 15)):
        if not low <= getattr(config, key) <= high:
            raise ConfigError(f"{config.source}: [server] {key} must be {low}..{high}, "
                              f"not {getattr(config, key)}")
    if config.compression_min_bytes < 0:
        raise ConfigError(f"{config.source}: [server] compression_min_bytes must be 0 or more")


def _check_hosts(config: Config) -> None:
    if config.role not in HOST_ROLES:
        raise ConfigError(f"{config.source}: [server] role (or ZCHANNELS_ROLE) must be one "
                          f"of {', '.join(HOST_ROLES)}, not {config.role!r}")
    if config.heartbeat_interval < 0:
        raise ConfigError(f"{config.source}: [server] heartbeat_interval must be 0 (off) "
                          "or more")
    if config.curve_dir and config.insecure_tcp:
        raise ConfigError(f"{config.source}: [server] curve_dir and insecure_tcp = true "
                          "contradict each other: CURVE, or plaintext tcp; set one")


def _check_operator_view(config: Config) -> None:
    """metrics_* and dashboard_*: paths, the allow-list, tokens."""
    paths = {"metrics_path": config.metrics_path, "dashboard_path": config.dashboard_path}
    for key, path in paths.items():
        if path == "" and key == "metrics_path":
            continue  # metrics off
        if not (path.startswith("/") and len(path) > 1 and path.isascii()
                and path.isprintable() and not any(c in path for c in " ?#")):
            raise ConfigError(f"{config.source}: [server] {key} must be a URL path such "
                              f"as \"/_zchannels/{key[:-5]}\" (no spaces, ? or #), not "
                              f"{path!r}")
    taken = {config.publish_path: "publish_path"}
    if config.metrics_path:
        taken.setdefault(config.metrics_path, "metrics_path")
    for path in (config.dashboard_path, config.dashboard_path.rstrip("/") + "/events"):
        if path in taken:
            raise ConfigError(f"{config.source}: [server] dashboard_path {path!r} is "
                              f"{taken[path]} already")
    if config.metrics_path == config.publish_path:
        raise ConfigError(f"{config.source}: [server] metrics_path and publish_path are both "
                          f"{config.publish_path!r}")
    for entry in config.metrics_allow:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"{config.source}: [server] metrics_allow: {entry!r} is not an "
                              "IP address or network (such as \"127.0.0.1\" or "
                              "\"10.0.0.0/8\")") from None
    if config.metrics_token and not (config.metrics_token.isascii()
                                     and config.metrics_token.isprintable()
                                     and " " not in config.metrics_token):
        raise ConfigError(f"{config.source}: [server] metrics_token (or "
                          "ZCHANNELS_METRICS_TOKEN) must be printable ASCII without spaces")
    _check_token_strength(config, "metrics_token")
    # It travels in a URL and a cookie: the characters neither needs to escape.
    if config.dashboard_token and not all(c.isascii() and (c.isalnum() or c in "-._~")
                                          for c in config.dashboard_token):
        raise ConfigError(f"{config.source}: [server] dashboard_token (or "
                          "ZCHANNELS_DASHBOARD_TOKEN) may use letters, digits and - . _ ~ "
                          f"only ({TOKEN_ADVICE})")
    _check_token_strength(config, "dashboard_token")
    for entry in config.operator_hosts:
        if host_and_port(entry) is None:
            raise ConfigError(f"{config.source}: [server] operator_hosts: {entry!r} is not a "
                              "host name or address, with an optional port (such as "
                              "\"ops.example.com\", \"10.0.0.5:8000\" or \"[fd00::5]\")")
    if config.token_failure_limit < 0:
        raise ConfigError(f"{config.source}: [server] token_failure_limit must be 0 (off) "
                          f"or more, not {config.token_failure_limit}")


def _check_token_strength(config: Config, key: str) -> None:
    """A token is a password that a script can try at network speed: long and random."""
    token: str = getattr(config, key)
    if not token:
        return  # off
    where = f"{config.source}: [server] {key} (or ZCHANNELS_{key.upper()})"
    size = len(token.encode())
    if size < MIN_TOKEN_BYTES:
        raise ConfigError(f"{where} is {size} bytes; a token needs at least "
                          f"{MIN_TOKEN_BYTES} random ones ({TOKEN_ADVICE})")
    if len(set(token)) == 1:
        raise ConfigError(f"{where} is one character repeated; use a random one "
                          f"({TOKEN_ADVICE})")


def host_and_port(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header value (or an operator_hosts entry) as (lower-case name, port or
    None); None if it is not one: ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``."""
    value = value.strip().lower()
    if value.startswith("["):
        address, bracket, rest = value[1:].partition("]")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return None
        name = f"[{address}]"
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if colon else None
        labels = name.split(".")
        if not name or not all(label and len(label) <= 63 and label.isascii()
                               and label.replace("-", "").replace("_", "").isalnum()
                               for label in labels):
            return None
    if port_text is None:
        return name, None
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) <= 65535):
        return None
    return name, int(port_text)


def _check_publish(config: Config) -> None:
    path, token = config.publish_path, config.publish_token
    if not (path.startswith("/") and len(path) > 1 and path.isascii() and path.isprintable()
            and not any(c in path for c in " ?#")):
        raise ConfigError(f"{config.source}: [server] publish_path must be a URL path such "
                          f"as \"/_zchannels/publish\" (no spaces, ? or #), not {path!r}")
    # It travels in an HTTP header: printable ASCII, and no spaces (RFC 6750 b64token).
    if token and not (token.isascii() and token.isprintable() and " " not in token):
        raise ConfigError(f"{config.source}: [server] publish_token (or "
                          "ZCHANNELS_PUBLISH_TOKEN) must be printable ASCII without spaces")
    _check_token_strength(config, "publish_token")


def _parse_pools(raw: Any, config: Config, source: str) -> tuple[PoolConfig, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{source}: [pools] must contain at least one [pools.NAME] table")
    pools = []
    for name, table in raw.items():
        where = f"{source}: [pools.{name}]"
        if not name.isascii() or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}: pool names may use letters, digits, - and _ only")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        unknown = set(table) - set(_POOL_KEYS)
        if unknown:
            raise ConfigError(f"{where} has no key(s) {sorted(unknown)}; "
                              f"known keys: {', '.join(_POOL_KEYS)}")
        if "channels" not in table:
            raise ConfigError(f"{where} needs channels = [\"glob\", ...]")
        channels = _string_list(table["channels"], f"{where} channels")
        if not channels:
            raise ConfigError(f"{where} channels must not be empty")
        capacity = _check_type(table.get("capacity", 1000), (int,), f"{where} capacity")
        if capacity <= 0:
            raise ConfigError(f"{where} capacity must be greater than 0, not {capacity}")
        ipc = f"ipc://{config.run_dir}/pool-{name}"
        pools.append(PoolConfig(
            name=name,
            channels=channels,
            capacity=capacity,
            endpoint_in=_check_type(table.get("endpoint_in", ipc + ".in"), (str,),
                                    f"{where} endpoint_in"),
            endpoint_out=_check_type(table.get("endpoint_out", ipc + ".out"), (str,),
                                     f"{where} endpoint_out"),
        ))
    result = tuple(pools)
    probe = Config(pools=result)
    for channel in CLIENT_CHANNELS:
        if probe.pool_for(channel) is None:
            raise ConfigError(f"{source}: no pool serves {channel!r}; add a pattern such as "
                              f"\"{channel.split('.')[0]}.*\" to a pool's channels")
    return result


def _default_endpoints(config: Config) -> dict[str, Any]:
    names = {
        "broker_interfaces": "broker-interfaces",
        "broker_clients": "broker-clients",
    }
    return {key: getattr(config, key) or f"ipc://{config.run_dir}/{name}"
            for key, name in names.items()}


def all_endpoints(config: Config) -> dict[str, str]:
    endpoints = {key: getattr(config, key) for key in _ENDPOINTS}
    for pool in config.pools:
        endpoints[f"pool {pool.name} in"] = pool.endpoint_in
        endpoints[f"pool {pool.name} out"] = pool.endpoint_out
    return endpoints


def _check_endpoints(config: Config) -> None:
    seen: dict[str, str] = {}
    for what, endpoint in all_endpoints(config).items():
        if not endpoint.startswith(("ipc://", "tcp://")):
            raise ConfigError(f"{config.source}: endpoint {what} = {endpoint!r} must start "
                              "with ipc:// or tcp://")
        if endpoint.startswith("ipc://"):
            path = os.path.abspath(endpoint[len("ipc://"):])
            if len(path.encode()) > MAX_IPC_PATH_BYTES:
                raise ConfigError(
                    f"{config.source}: IPC path for {what} is {len(path.encode())} bytes "
                    f"({path}); the limit is {MAX_IPC_PATH_BYTES}: use a shorter run_dir "
                    "(ZCHANNELS_RUN_DIR)")
        if endpoint in seen:
            raise ConfigError(f"{config.source}: {what} and {seen[endpoint]} share "
                              f"the endpoint {endpoint}")
        seen[endpoint] = what



def _check_tcp(config: Config) -> None:
    """tcp:// off loopback needs CURVE keys (or an explicit insecure_tcp); keys must be
    there, complete for this host's role, and private."""
    tcp = {what: e for what, e in all_endpoints(config).items() if e.startswith("tcp://")}
    if not config.curve_dir:
        exposed = [f"{what} = {e}" for what, e in tcp.items() if not _loopback(e)]
        if exposed and not config.insecure_tcp:
            raise ConfigError(
                f"{config.source}: {'; '.join(exposed)} can be reached from other hosts, "
                "and tcp:// endpoints there need CURVE keys: make them with "
                "`zchannels keys --dir keys --clients N` (it says which directory goes to "
                "which host) and set [server] curve_dir on each host (or ZCHANNELS_CURVE_DIR); "
                "or, on a private network only, insecure_tcp = true")
        return
    check_dir(config, bool(tcp))


def _loopback(endpoint: str) -> bool:
    return is_loopback(endpoint)


# -- endpoints ---------------------------------------------------------------------

def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def tcp_host(endpoint: str) -> str:
    """The address part of ``tcp://HOST:PORT`` (brackets of an IPv6 address removed)."""
    rest = endpoint[len("tcp://"):]
    if ";" in rest:  # tcp://source;destination: the destination is what is reached
        rest = rest.split(";", 1)[1]
    host = rest.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(endpoint: str) -> bool:
    """Whether a ``tcp://`` endpoint is on this host's loopback only."""
    host = tcp_host(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a DNS name: reachable from elsewhere
        return False


def allow_dir(config: "Config") -> str:
    return config.curve_allow_dir or os.path.join(config.curve_dir, "allowed")


# -- CURVE key files (made by `zchannels keys`, zchannels/wire/keys.py) ----------------

SERVER_PUBLIC, SERVER_SECRET = "server.key", "server.key_secret"
CLIENT_PUBLIC, CLIENT_SECRET = "client.key", "client.key_secret"


def check_dir(config: Config, tcp: bool) -> None:
    """`config.curve_dir` holds what this host's role needs, readable, and private."""
    where = f"{config.source}: [server] curve_dir {config.curve_dir!r}"
    directory = config.curve_dir
    if not os.path.isdir(directory):
        raise ConfigError(f"{where} is not a directory: make keys with `zchannels keys "
                          "--dir keys --clients N` and copy this host's directory there")
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & 0o022:
        raise ConfigError(f"{where} may be written by others (mode {mode:o}): "
                          f"chmod 700 {directory}")
    if config.role in ("layer", "all"):
        needed = [SERVER_PUBLIC, SERVER_SECRET]
    else:
        needed = [SERVER_PUBLIC, CLIENT_PUBLIC, CLIENT_SECRET]
    for name in needed:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            hint = ("the layer host's directory (keys/layer)" if name.startswith("server")
                    and config.role in ("layer", "all") else "this app host's directory "
                    "(keys/<name>)")
            raise ConfigError(f"{where} has no {name} (role {config.role}): copy "
                              f"{hint} of `zchannels keys` there")
        if name.endswith("_secret"):
            file_mode = stat.S_IMODE(os.stat(path).st_mode)
            if file_mode & 0o077:
                raise ConfigError(f"{where}: the secret key {name} may be read by others "
                                  f"(mode {file_mode:o}): chmod 600 {path}")
        import zmq.auth  # only here: the config itself needs no ZeroMQ
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{where}: {name} is not a key file: {e}") from None
        if name.endswith("_secret") and not secret:
            raise ConfigError(f"{where}: {name} holds no secret key")
    if config.role == "layer" and tcp and not os.path.isdir(allow_dir(config)):
        raise ConfigError(f"{config.source}: [server] curve_allow_dir {allow_dir(config)!r} "
                          "is not a directory: the layer host lets in the app hosts' public "
                          "keys from there")
