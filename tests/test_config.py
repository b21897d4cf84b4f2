"""Unit tests for zchannels.core.config: parsing, defaults, environment overrides and
validation of the TOML runtime configuration. No sockets are opened; endpoint
checks are pure string and path arithmetic."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import tomllib
from hypothesis import given
from hypothesis import strategies as st

from zchannels.core import config as config_module
from zchannels.core.config import (CLIENT_CHANNELS, DEFAULT_CONFIG_PATH, MAX_IPC_PATH_BYTES,
                                   Config, PoolConfig, load, parse)
from zchannels.core.exceptions import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / DEFAULT_CONFIG_PATH

FLOAT_KEYS = sorted(k for k, types in config_module._SCALARS.items() if float in types)
POSITIVE_FLOAT_KEYS = [k for k in FLOAT_KEYS if k in config_module._POSITIVE]
SERVER_KEYS = sorted([*config_module._SCALARS, *config_module._LISTS])


def _write(directory: Path, text: str | bytes, name: str = "zchannels.toml") -> str:
    path = directory / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return str(path)


def _same_but_source(a: Config, b: Config) -> bool:
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")


# --- defaults and the shipped file ---------------------------------------------------------

def test_missing_default_file_gives_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/zchannels.toml here
    config = load(environ={})
    assert config.source == DEFAULT_CONFIG_PATH
    assert (config.host, config.port, config.run_dir) == ("127.0.0.1", 8000, "run")
    assert config.consumers == ("consumers",)
    assert config.allowed_origins == ()
    assert config.pools == (PoolConfig(name="default", channels=("*",), capacity=1000,
                                       endpoint_in="ipc://run/pool-default.in",
                                       endpoint_out="ipc://run/pool-default.out"),)
    assert config.broker_clients == "ipc://run/broker-clients"
    assert config.broker_interfaces == "ipc://run/broker-interfaces"
    # Every scalar not touched by pools/endpoints is the dataclass default.
    for field in dataclasses.fields(Config):
        if field.name in config_module._SCALARS or field.name in config_module._LISTS:
            assert getattr(config, field.name) == field.default, field.name


def test_load_without_arguments_reads_os_environ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZCHANNELS_CONFIG", raising=False)
    monkeypatch.setenv("ZCHANNELS_PORT", "8123")
    assert load().port == 8123


def test_shipped_config_parses_and_equals_defaults():
    """Documented defaults, except that it mounts the demo WSGI application and keeps
    the demo chat rooms' history (but not the bench's)."""
    shipped = load(str(SHIPPED), environ={})
    assert shipped.source == str(SHIPPED)
    assert shipped.wsgi_app == "demo_wsgi:application"
    assert [rule.pattern for rule in shipped.history.groups] == ["chat.bench-*", "chat.*"]
    no_rules = dataclasses.replace(shipped.history, groups=())
    assert _same_but_source(dataclasses.replace(shipped, wsgi_app="", history=no_rules),
                            parse({}, environ={}))


def test_shipped_config_uses_only_known_tables_and_keys():
    with open(SHIPPED, "rb") as f:
        data = tomllib.load(f)
    assert set(data) <= {"server", "endpoints", "pools", "history"}
    assert set(data["server"]) == set(SERVER_KEYS), "every [server] key is documented"


# --- accepted values -----------------------------------------------------------------------

def test_int_for_float_key_becomes_float():
    config = parse({"server": {"handshake_timeout": 3}}, environ={})
    assert config.handshake_timeout == 3.0
    assert type(config.handshake_timeout) is float


def test_single_string_is_accepted_as_a_list():
    config = parse({"server": {"consumers": "apps", "allowed_origins": "https://a.example"}},
                   environ={})
    assert config.consumers == ("apps",)
    assert config.allowed_origins == ("https://a.example",)


def test_zero_disables_pings():
    config = parse({"server": {"ping_interval": 0, "ping_timeout": 0.0}}, environ={})
    assert (config.ping_interval, config.ping_timeout) == (0.0, 0.0)


def test_explicit_endpoints_are_kept_and_others_default():
    config = parse({"endpoints": {"broker_clients": "tcp://127.0.0.1:5001"}}, environ={})
    assert config.broker_clients == "tcp://127.0.0.1:5001"
    assert config.broker_interfaces == "ipc://run/broker-interfaces"


def test_pool_endpoints_default_into_run_dir_and_can_be_set():
    config = parse({"server": {"run_dir": "/tmp/zc"},
                    "pools": {"default": {"channels": ["*"], "capacity": 7,
                                          "endpoint_out": "tcp://127.0.0.1:6000"}}},
                   environ={})
    (pool,) = config.pools
    assert pool.capacity == 7
    assert pool.endpoint_in == "ipc:///tmp/zc/pool-default.in"
    assert pool.endpoint_out == "tcp://127.0.0.1:6000"


def test_ipc_path_limit_is_inclusive():
    # The longest default endpoint name is "broker-interfaces" (17 bytes): "/" + run + "/" + 17.
    run_dir = "/" + "r" * (MAX_IPC_PATH_BYTES - 19)
    config = parse({"server": {"run_dir": run_dir}}, environ={})
    assert len(config.broker_interfaces) - len("ipc://") == MAX_IPC_PATH_BYTES
    with pytest.raises(ConfigError, match=f"{MAX_IPC_PATH_BYTES + 1} bytes"):
        parse({"server": {"run_dir": run_dir + "r"}}, environ={})


# --- environment overrides -----------------------------------------------------------------

def test_environment_overrides_the_file(tmp_path):
    path = _write(tmp_path, '[server]\nport = 9000\nhost = "0.0.0.0"\nrun_dir = "var"\n'
                            'consumers = ["x"]\n')
    config = load(path, environ={
        "ZCHANNELS_PORT": "9100",
        "ZCHANNELS_HOST": "10.1.2.3",
        "ZCHANNELS_RUN_DIR": "/tmp/zc-run",
        "ZCHANNELS_CONSUMERS": os.pathsep.join(["apps", "", "more/apps"]),
    })
    assert config.port == 9100
    assert config.host == "10.1.2.3"
    assert config.run_dir == "/tmp/zc-run"
    assert config.consumers == ("apps", "more/apps")
    assert config.broker_clients == "ipc:///tmp/zc-run/broker-clients"
    assert config.pools[0].endpoint_in == "ipc:///tmp/zc-run/pool-default.in"


def test_empty_environment_values_do_not_override(tmp_path):
    path = _write(tmp_path, '[server]\nhost = "0.0.0.0"\nrun_dir = "var"\nconsumers = ["x"]\n')
    config = load(path, environ={"ZCHANNELS_HOST": "", "ZCHANNELS_RUN_DIR": "",
                                 "ZCHANNELS_CONSUMERS": ""})
    assert (config.host, config.run_dir, config.consumers) == ("0.0.0.0", "var", ("x",))


def test_port_zero_from_environment_means_any_port():
    assert parse({"server": {"port": 8000}}, environ={"ZCHANNELS_PORT": "0"}).port == 0


def test_zchannels_config_names_the_file(tmp_path):
    path = _write(tmp_path, "[server]\nport = 9001\n")
    config = load(environ={"ZCHANNELS_CONFIG": path})
    assert (config.port, config.source) == (9001, path)


def test_explicit_path_wins_over_zchannels_config(tmp_path):
    wanted = _write(tmp_path, "[server]\nport = 9002\n", "a.toml")
    other = _write(tmp_path, "[server]\nport = 9003\n", "b.toml")
    assert load(wanted, environ={"ZCHANNELS_CONFIG": other}).port == 9002


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_missing_explicit_file_is_an_error(tmp_path, how):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="does not exist") as info:
        if how == "argument":
            load(missing, environ={})
        else:
            load(environ={"ZCHANNELS_CONFIG": missing})
    assert missing in str(info.value)


@pytest.mark.parametrize("environ, fragments", [
    pytest.param({"ZCHANNELS_PORT": "eighty"}, ["ZCHANNELS_PORT", "'eighty'"], id="port-word"),
    pytest.param({"ZCHANNELS_PORT": ""}, ["ZCHANNELS_PORT"], id="port-empty"),
    pytest.param({"ZCHANNELS_PORT": "70000"}, ["port must be 0..65535", "70000"],
                 id="port-range"),
    pytest.param({"ZCHANNELS_CONSUMERS": os.pathsep}, ["consumers", "at least one"],
                 id="consumers-only-separators"),
    pytest.param({"ZCHANNELS_RUN_DIR": "/" + "d" * 120}, ["IPC path", "ZCHANNELS_RUN_DIR"],
                 id="run-dir-too-long"),
])
def test_bad_environment_values(environ, fragments):
    with pytest.raises(ConfigError) as info:
        parse({}, environ=environ)
    for fragment in fragments:
        assert fragment in str(info.value)


# --- load(): file-level errors -------------------------------------------------------------

@pytest.mark.parametrize("content", [
    pytest.param(b"[server\nport = 1\n", id="syntax-error"),
    pytest.param(b"[server]\nport = 1\nport = 2\n", id="duplicate-key"),
    pytest.param(b'[server]\nhost = "caf\xe9"\n', id="not-utf-8"),
])
def test_unreadable_toml_is_a_config_error(tmp_path, content):
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert path in str(info.value)


def test_a_directory_as_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(tmp_path), environ={})


def test_load_errors_name_the_file(tmp_path):
    path = _write(tmp_path, '[server]\nport = "x"\n')
    with pytest.raises(ConfigError, match=r"\[server\] port") as info:
        load(path, environ={})
    assert str(info.value).startswith(f"{path}: ")


# --- parse(): validation errors name the offending key -------------------------------------

def _server(**values):
    return {"server": values}


def _pools(**pools):
    return {"pools": pools}


NAN = float("nan")

PARSE_ERRORS = [
    pytest.param({"serverr": {}}, ["unknown table", "serverr"], id="unknown-table"),
    pytest.param({"server": 5}, ["server must be a table"], id="server-not-a-table"),
    pytest.param({"endpoints": ["tcp://x:1"]}, ["endpoints must be a table"],
                 id="endpoints-not-a-table"),
    pytest.param(_server(prot=8000), ["[server] has no key 'prot'", "port"],
                 id="unknown-server-key"),
    pytest.param({"endpoints": {"router": "tcp://h:1"}}, ["[endpoints] has no key 'router'"],
                 id="unknown-endpoints-key"),
    pytest.param(_server(port="x"), ["[server] port", "int", "'x'"], id="port-string"),
    pytest.param(_server(port=True), ["[server] port", "True"], id="port-bool"),
    pytest.param(_server(port=8000.0), ["[server] port", "8000.0"], id="port-float"),
    pytest.param(_server(port=-1), ["port must be 0..65535", "-1"], id="port-negative"),
    pytest.param(_server(port=65536), ["port must be 0..65535", "65536"], id="port-too-big"),
    pytest.param(_server(host=1), ["[server] host", "str"], id="host-int"),
    pytest.param(_server(handshake_timeout="5"), ["[server] handshake_timeout", "number"],
                 id="timeout-string"),
    pytest.param(_server(send_timeout=False), ["[server] send_timeout"], id="timeout-bool"),
    pytest.param(_server(handshake_timeout=0), ["handshake_timeout", "greater than 0"],
                 id="timeout-zero"),
    pytest.param(_server(event_timeout=-1.5), ["event_timeout", "greater than 0", "-1.5"],
                 id="timeout-negative"),
    pytest.param(_server(stats_interval=0.0), ["stats_interval", "greater than 0"],
                 id="interval-zero"),
    pytest.param(_server(send_timeout=NAN), ["send_timeout"], id="timeout-nan"),
    pytest.param(_server(ping_interval=-1), ["ping_interval", "0 (off) or more"],
                 id="ping-interval-negative"),
    pytest.param(_server(ping_timeout=-0.5), ["ping_timeout", "0 (off) or more"],
                 id="ping-timeout-negative"),
    pytest.param(_server(ping_timeout=NAN), ["ping_timeout"], id="ping-timeout-nan"),
    pytest.param(_server(ping_interval=10, ping_timeout=15),
                 ["ping_timeout (15) must not be longer than ping_interval (10)"],
                 id="ping-timeout-over-interval"),
    pytest.param(_server(send_timeout=float("inf")), ["send_timeout", "finite"],
                 id="timeout-infinite"),
    pytest.param(_server(max_message_bytes=0), ["max_message_bytes", "greater than 0"],
                 id="int-zero"),
    pytest.param(_server(max_queued_events=2.5), ["[server] max_queued_events", "int"],
                 id="int-float"),
    pytest.param(_server(consumers=[]), ["consumers", "at least one"], id="consumers-empty"),
    pytest.param(_server(consumers=["a", 1]), ["[server] consumers", "list of strings"],
                 id="consumers-not-strings"),
    pytest.param(_server(allowed_origins={"a": 1}), ["[server] allowed_origins"],
                 id="origins-table"),
    pytest.param({"pools": {}}, ["[pools]", "at least one"], id="pools-empty"),
    pytest.param({"pools": "default"}, ["[pools]", "at least one"], id="pools-not-a-table"),
    pytest.param(_pools(p=["*"]), ["[pools.p]", "must be a table"], id="pool-not-a-table"),
    pytest.param(_pools(p={"capacity": 5}), ["[pools.p]", "needs channels"],
                 id="pool-without-channels"),
    pytest.param(_pools(p={"channels": []}), ["[pools.p] channels", "must not be empty"],
                 id="pool-empty-channels"),
    pytest.param(_pools(p={"channels": [1]}), ["[pools.p] channels", "list of strings"],
                 id="pool-channels-not-strings"),
    pytest.param(_pools(p={"channels": ["*"], "size": 2}), ["[pools.p]", "'size'"],
                 id="pool-unknown-key"),
    pytest.param(_pools(p={"channels": ["*"], "capacity": 0}),
                 ["[pools.p] capacity", "greater than 0"], id="pool-capacity-zero"),
    pytest.param(_pools(p={"channels": ["*"], "capacity": "big"}), ["[pools.p] capacity"],
                 id="pool-capacity-string"),
    pytest.param(_pools(p={"channels": ["*"], "endpoint_in": 5}), ["[pools.p] endpoint_in"],
                 id="pool-endpoint-int"),
    pytest.param(_pools(chat={"channels": ["chat.*"]}),
                 ["no pool serves 'websocket.connect'", "websocket.*"], id="no-websocket-pool"),
    pytest.param(_pools(ws={"channels": ["websocket.connect", "websocket.receive"]}),
                 ["no pool serves 'websocket.disconnect'"], id="websocket-partly-served"),
    pytest.param(_pools(ws={"channels": ["websocket.*"]}),
                 ["no pool serves 'http.request'", "http.*"], id="no-http-pool"),
    pytest.param({"server": {"static_url": "static"}}, ["static_url", "'/'"],
                 id="static-url-relative"),
    pytest.param({"server": {"static_index": "a/index.html"}}, ["static_index"],
                 id="static-index-path"),
    pytest.param({"server": {"static_max_age": -1}}, ["static_max_age"],
                 id="static-max-age-negative"),
    pytest.param({"server": {"wsgi_app": "app.wsgi"}}, ["wsgi_app", "module:callable"],
                 id="wsgi-app-no-callable"),
    pytest.param({"server": {"max_body_bytes": 0}}, ["max_body_bytes", "greater than 0"],
                 id="max-body-zero"),
    pytest.param({"server": {"http_timeout": -1.0}}, ["http_timeout", "greater than 0"],
                 id="http-timeout-negative"),
    pytest.param({"endpoints": {"broker_interfaces": 5555}},
                 ["[endpoints] broker_interfaces", "str"],
                 id="endpoint-int"),
    pytest.param({"endpoints": {"broker_clients": "inproc://router"}},
                 ["broker_clients", "'inproc://router'", "ipc:// or tcp://"],
                 id="endpoint-inproc"),
    pytest.param(_pools(default={"channels": ["*"], "endpoint_out": "udp://h:1"}),
                 ["pool default out", "ipc:// or tcp://"], id="pool-endpoint-udp"),
    pytest.param({"endpoints": {"broker_interfaces": "tcp://127.0.0.1:5000",
                                "broker_clients": "tcp://127.0.0.1:5000"}},
                 ["broker_interfaces", "broker_clients", "share", "tcp://127.0.0.1:5000"],
                 id="duplicate-endpoints"),
    pytest.param(_pools(default={"channels": ["*"], "endpoint_in": "ipc://run/broker-clients"}),
                 ["broker_clients", "pool default in", "share"],
                 id="pool-endpoint-clashes-with-router"),
    pytest.param(_pools(a={"channels": ["*"]},
                        b={"channels": ["x"], "endpoint_out": "ipc://run/pool-a.out"}),
                 ["pool a out", "pool b out", "share"], id="two-pools-share-an-endpoint"),
    pytest.param(_server(run_dir="/" + "r" * 120), ["IPC path", "run_dir", "the limit is 107"],
                 id="run-dir-too-long"),
]


@pytest.mark.parametrize("data, fragments", PARSE_ERRORS)
def test_parse_errors_name_the_offending_key(data, fragments):
    with pytest.raises(ConfigError) as info:
        parse(data, source="test.toml", environ={})
    message = str(info.value)
    assert message.startswith("test.toml: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("name", ["a b", "a.b", "a/b", "", "-", "_", "pool!", "x:y", "é²"])
def test_bad_pool_names(name):
    with pytest.raises(ConfigError, match="pool names may use letters, digits, - and _ only") \
            as info:
        parse({"pools": {name: {"channels": ["*"]}}}, environ={})
    assert f"[pools.{name}]" in str(info.value)


@pytest.mark.parametrize("name", ["default", "ws-2", "slow_jobs", "A1"])
def test_good_pool_names(name):
    assert parse({"pools": {name: {"channels": ["*"]}}}, environ={}).pools[0].name == name


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- pool selection ------------------------------------------------------------------------

def test_pool_for_picks_first_matching_pool_in_file_order():
    config = parse(_pools(ws={"channels": ["websocket.*"]},
                          chat={"channels": ["chat.*", "websocket.receive"]},
                          default={"channels": ["*"]}), environ={})
    assert [p.name for p in config.pools] == ["ws", "chat", "default"]
    assert config.pool_for("websocket.receive").name == "ws"
    assert config.pool_for("chat.message").name == "chat"
    assert config.pool_for("billing.charge").name == "default"


def test_pool_for_order_matters():
    config = parse(_pools(default={"channels": ["*"]}, ws={"channels": ["websocket.*"]}),
                   environ={})
    assert config.pool_for("websocket.connect").name == "default"


def test_pool_for_globs_are_case_sensitive_and_may_match_nothing():
    config = parse(_pools(ws={"channels": ["websocket.*"]}, jobs={"channels": ["job.?"]},
                          web={"channels": ["http.*"]}), environ={})
    assert config.pool_for("other") is None
    assert config.pool_for("WEBSOCKET.connect") is None
    assert config.pool_for("job.1").name == "jobs"
    assert config.pool_for("job.12") is None


def test_pool_by_name():
    config = parse(_pools(ws={"channels": ["websocket.*"]}, default={"channels": ["*"]}),
                   environ={})
    assert config.pool("default").channels == ("*",)
    with pytest.raises(ConfigError, match="no pool named 'nope'") as info:
        config.pool("nope")
    assert "ws, default" in str(info.value)


# --- property tests ------------------------------------------------------------------------

@given(port=st.integers(min_value=0, max_value=65535))
def test_valid_port_round_trips_through_toml(port):
    config = parse(tomllib.loads(f"[server]\nport = {port}\n"), environ={})
    assert config.port == port


@given(port=st.integers().filter(lambda p: not 0 <= p <= 65535))
def test_invalid_port_is_rejected(port):
    with pytest.raises(ConfigError, match="port must be 0..65535"):
        parse({"server": {"port": port}}, environ={})


@given(key=st.sampled_from(FLOAT_KEYS),
       value=st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False))
def test_valid_positive_float_round_trips_through_toml(key, value):
    # ping_timeout may not exceed ping_interval: give it an interval at least as long.
    extra = f"ping_interval = {value!r}\n" if key == "ping_timeout" else ""
    config = parse(tomllib.loads(f"[server]\n{key} = {value!r}\n{extra}"), environ={})
    assert getattr(config, key) == value


@given(key=st.sampled_from(POSITIVE_FLOAT_KEYS),
       value=st.floats(max_value=0, allow_nan=False))
def test_non_positive_float_is_rejected(key, value):
    with pytest.raises(ConfigError, match=key):
        parse({"server": {key: value}}, environ={})


_scalars = st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
toml_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)
_plausible = st.one_of(
    toml_values,
    st.integers(min_value=-2, max_value=70_000),
    st.floats(min_value=-1, max_value=100),
    st.lists(st.sampled_from(["*", "websocket.*", "chat.*", "websocket.connect"]), max_size=3),
    st.sampled_from(["ipc://run/x", "tcp://127.0.0.1:5000", "ipc://run/broker-clients",
                     "inproc://x", "run", "/" + "r" * 100]),
)


def _table(keys):
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), _plausible,
                           max_size=5)


_pool_tables = st.dictionaries(
    st.one_of(st.sampled_from(["default", "ws", "a-b", "x_y"]), st.text(max_size=8)),
    st.one_of(_table(list(config_module._POOL_KEYS)), toml_values),
    max_size=3,
)
junk_configs = st.one_of(
    st.dictionaries(st.text(max_size=8), toml_values, max_size=4),
    st.fixed_dictionaries({}, optional={
        "server": st.one_of(_table(SERVER_KEYS), toml_values),
        "endpoints": st.one_of(_table(list(config_module._ENDPOINTS)), toml_values),
        "pools": st.one_of(_pool_tables, toml_values),
    }),
)


@given(data=junk_configs)
def test_junk_either_parses_or_raises_config_error(data):
    try:
        config = parse(data, environ={})
    except ConfigError:
        return
    assert isinstance(config, Config)
    assert 0 <= config.port <= 65535
    assert config.pools and config.consumers
    for channel in CLIENT_CHANNELS:
        assert config.pool_for(channel) is not None
    endpoints = list(config_module.all_endpoints(config).values())
    assert len(set(endpoints)) == len(endpoints)
    assert all(e.startswith(("ipc://", "tcp://")) for e in endpoints)



def test_the_router_keys_are_read_as_the_broker_keys_with_a_warning():
    """router_* were renamed broker_* when the router became the broker: the old names
    still work for one release, and say so."""
    with pytest.warns(FutureWarning, match="router_hwm is deprecated: call it broker_hwm"):
        config = parse({"server": {"router_hwm": 5},
                        "endpoints": {"router_clients": "ipc://run/c"}}, environ={})
    assert config.broker_hwm == 5 and config.broker_clients == "ipc://run/c"
    with pytest.raises(ConfigError, match="has both router_hwm and broker_hwm"):
        parse({"server": {"router_hwm": 5, "broker_hwm": 6}}, environ={})
