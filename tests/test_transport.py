"""runtime/wire/transport.py, runtime/wire/keys.py and the config's checks of tcp:// endpoints,
on real ZeroMQ sockets over loopback TCP in this process: CURVE lets in the allowed
keys only (refusals logged and counted), a plaintext peer or a wrong server key gets
nowhere, heartbeats and keepalive are set. The same across network namespaces, with the
whole system: tests/test_hosts_e2e.py."""
import logging
import os
import socket
import stat
import time
from dataclasses import replace

import pytest
import zmq

from zchannels.core import config as config_module
from zchannels.wire import keys, transport
from zchannels.ops.cli import main as cli_main
from zchannels.core.exceptions import ConfigError
from zchannels.core.stats import counters

TIMEOUT_MS = 2000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def key_dir(tmp_path):
    keys.create(str(tmp_path / "keys"), ["app-1", "app-2"])
    return tmp_path / "keys"


def host_config(curve_dir, role, endpoint, **server):
    return config_module.parse(
        {"server": {"curve_dir": str(curve_dir), "role": role, **server},
         "endpoints": {"broker_clients": endpoint}}, environ={})


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    transport.release(ctx)
    ctx.destroy(linger=0)


def pair(context, key_dir, client_config=None, plain_client=False):
    """A CURVE ROUTER bound as the layer host does, and a DEALER connected as app-1
    (or per `client_config`, or plaintext)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    layer = host_config(key_dir / "layer", "layer", endpoint)
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    router.rcvtimeo = TIMEOUT_MS
    transport.bind(router, endpoint, layer)
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.rcvtimeo = TIMEOUT_MS
    if plain_client:
        dealer.connect(endpoint)
    else:
        app = client_config or host_config(key_dir / "app-1", "app", endpoint)
        transport.connect(dealer, endpoint, replace(app, broker_clients=endpoint))
    return router, dealer


def talks(router, dealer, timeout_ms=800):
    """Whether a message from the dealer reaches the router within `timeout_ms` (sent
    again every 100 ms: a refused peer has no pipe until it has reconnected)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        try:
            dealer.send(b"hello", zmq.NOBLOCK)
        except zmq.Again:
            pass
        if router.poll(100):
            return True
    return False


# -- keys -----------------------------------------------------------------------------

def test_keys_layout_and_permissions(key_dir):
    layer, app = key_dir / "layer", key_dir / "app-1"
    assert sorted(os.listdir(layer)) == ["allowed", "server.key", "server.key_secret"]
    assert sorted(os.listdir(layer / "allowed")) == ["app-1.key", "app-2.key"]
    assert sorted(os.listdir(app)) == ["client.key", "client.key_secret", "server.key"]
    for secret in (layer / "server.key_secret", app / "client.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for directory in (key_dir, layer, app):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (app / "server.key").read_bytes() == (layer / "server.key").read_bytes()
    assert (layer / "allowed" / "app-1.key").read_bytes() == (app / "client.key").read_bytes()


def test_keys_cli_adds_a_client_and_refuses_to_overwrite(key_dir, capsys):
    assert cli_main(["keys", "--dir", str(key_dir), "--client", "app-9"]) == 0
    out = capsys.readouterr().out
    assert "app host app-9" in out and "allowed/app-9.key" in out
    assert (key_dir / "layer" / "allowed" / "app-9.key").exists()
    assert cli_main(["keys", "--dir", str(key_dir)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["keys", "--dir", str(key_dir), "--client", "layer"]) == 2


# -- the config ------------------------------------------------------------------------

def test_tcp_off_loopback_without_keys_says_how_to_make_them():
    with pytest.raises(ConfigError, match="zchannels keys"):
        config_module.parse({"endpoints": {"broker_clients": "tcp://10.0.0.1:7001"}},
                            environ={})
    with pytest.raises(ConfigError, match="zchannels keys"):
        config_module.parse({"pools": {"default": {"channels": ["*"],
                                                  "endpoint_in": "tcp://*:7002"}}},
                            environ={})


def test_tcp_on_loopback_without_keys_is_allowed_and_insecure_tcp_allows_the_rest():
    config_module.parse({"endpoints": {"broker_clients": "tcp://127.0.0.1:7001"}}, environ={})
    config = config_module.parse({"server": {"insecure_tcp": True},
                                  "endpoints": {"broker_clients": "tcp://10.0.0.1:7001"}},
                                 environ={})
    assert config.insecure_tcp


def test_key_directory_is_checked(key_dir):
    endpoint = "tcp://10.0.0.1:7001"
    host_config(key_dir / "layer", "layer", endpoint)
    host_config(key_dir / "app-1", "app", endpoint)
    with pytest.raises(ConfigError, match="has no client.key"):
        host_config(key_dir / "layer", "app", endpoint)
    with pytest.raises(ConfigError, match="has no server.key_secret"):
        host_config(key_dir / "app-1", "layer", endpoint)
    os.chmod(key_dir / "app-1" / "client.key_secret", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        host_config(key_dir / "app-1", "app", endpoint)
    os.chmod(key_dir / "layer", 0o777)
    with pytest.raises(ConfigError, match="chmod 700"):
        host_config(key_dir / "layer", "layer", endpoint)
    with pytest.raises(ConfigError, match="not a directory"):
        host_config(key_dir / "nowhere", "app", endpoint)
    with pytest.raises(ConfigError, match="contradict"):
        host_config(key_dir / "app-1", "app", endpoint, insecure_tcp=True)


def test_role_heartbeat_and_worker_pools_are_checked():
    with pytest.raises(ConfigError, match="role"):
        config_module.parse({"server": {"role": "boss"}}, environ={})
    with pytest.raises(ConfigError, match="heartbeat_timeout"):
        config_module.parse({"server": {"heartbeat_timeout": 0}}, environ={})
    with pytest.raises(ConfigError, match="no pool named"):
        config_module.parse({"server": {"worker_pools": ["nope"]}}, environ={})
    config = config_module.parse({}, environ={"ZCHANNELS_ROLE": "app",
                                              "ZCHANNELS_WORKER_POOLS": "default"})
    assert (config.role, config.worker_pools) == ("app", ("default",))
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (1.0, 3.0)


def test_is_loopback():
    assert transport.is_loopback("tcp://127.0.0.1:1")
    assert transport.is_loopback("tcp://[::1]:1")
    assert transport.is_loopback("tcp://localhost:1")
    for endpoint in ("tcp://*:1", "tcp://0.0.0.0:1", "tcp://eth0:1", "tcp://10.1.2.3:1",
                     "tcp://example.com:1"):
        assert not transport.is_loopback(endpoint)


# -- CURVE on real sockets --------------------------------------------------------------

def test_an_allowed_client_talks_and_heartbeats_and_keepalive_are_set(context, key_dir):
    router, dealer = pair(context, key_dir)
    assert talks(router, dealer)
    assert router.recv_multipart()[1] == b"hello"
    assert router.curve_server
    assert (dealer.heartbeat_ivl, dealer.heartbeat_timeout, dealer.heartbeat_ttl) \
        == (1000, 3000, 3000)
    assert (dealer.tcp_keepalive, dealer.tcp_keepalive_idle, dealer.tcp_keepalive_intvl,
            dealer.tcp_keepalive_cnt) == (1, 5, 1, 5)


def test_a_key_not_in_the_allow_list_is_refused_counted_and_logged(context, key_dir, caplog):
    os.unlink(key_dir / "layer" / "allowed" / "app-2.key")
    counters.clear()
    app2 = host_config(key_dir / "app-2", "app", "tcp://127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="zchannels.transport"):
        router, dealer = pair(context, key_dir, client_config=app2)
        assert not talks(router, dealer)
    assert counters.get("curve_refused", 0) >= 1
    assert "refused a CURVE connection from client key" in caplog.text
    assert (key_dir / "app-2" / "client.key").read_text().split('public-key = "')[1][:40] \
        in caplog.text


def test_a_key_added_to_the_allow_list_is_let_in_without_restarting_the_broker(context,
                                                                            key_dir):
    allowed = key_dir / "layer" / "allowed" / "app-2.key"
    saved = allowed.read_bytes()
    allowed.unlink()
    app2 = host_config(key_dir / "app-2", "app", "tcp://127.0.0.1:1")
    router, dealer = pair(context, key_dir, client_config=app2)
    assert not talks(router, dealer, 500)
    allowed.write_bytes(saved)
    time.sleep(transport.ALLOW_RELOAD_INTERVAL)
    # libzmq does not reconnect after an authentication failure: the refused process
    # must be restarted (docs/deployment.md), here a new socket.
    late = context.socket(zmq.DEALER)
    late.linger = 0
    transport.connect(late, router.last_endpoint.decode(), app2)
    assert talks(router, late)


def test_a_plaintext_peer_cannot_talk_to_a_curve_socket(context, key_dir):
    router, dealer = pair(context, key_dir, plain_client=True)
    assert not talks(router, dealer)


def test_a_wrong_server_key_is_refused(context, key_dir, tmp_path):
    other = tmp_path / "other"
    keys.create(str(other), ["app-1"])
    # app-1's own key is allowed, but it expects another layer host's public key.
    (key_dir / "app-1" / "server.key").write_bytes((other / "layer" / "server.key").read_bytes())
    router, dealer = pair(context, key_dir)
    assert not talks(router, dealer)


def test_each_process_says_at_start_how_its_tcp_endpoints_are_protected(key_dir, caplog):
    plain = config_module.parse({"server": {"insecure_tcp": True},
                                 "endpoints": {"broker_clients": "tcp://10.0.0.1:7001"}},
                                environ={})
    loopback = config_module.parse({"endpoints": {"broker_clients": "tcp://127.0.0.1:7001"}},
                                   environ={})
    curve = host_config(key_dir / "app-1", "app", "tcp://10.0.0.1:7001")
    with caplog.at_level(logging.INFO, logger="zchannels.transport"):
        transport.describe(plain)
        transport.describe(loopback)
        transport.describe(curve)
        transport.describe(config_module.parse({}, environ={}))  # IPC: nothing to say
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(messages) == 3
    assert messages[0][0] == "WARNING" and "insecure_tcp = true" in messages[0][1]
    assert messages[1][0] == "INFO" and "loopback without CURVE" in messages[1][1]
    assert messages[2][0] == "INFO" and "use CURVE" in messages[2][1]


def test_a_process_checks_its_keys_at_start_and_says_what_is_wrong(context, key_dir, tmp_path,
                                                                    caplog):
    """The refused side hears nothing from libzmq: each process checks once at start."""
    os.unlink(key_dir / "layer" / "allowed" / "app-2.key")
    router, _ = pair(context, key_dir)
    endpoint = router.last_endpoint.decode()
    other = tmp_path / "other"
    keys.create(str(other), [])
    (key_dir / "app-1" / "server.key").write_bytes((other / "layer" / "server.key").read_bytes())
    with caplog.at_level(logging.INFO, logger="zchannels.transport"):
        assert transport.check_keys_now(host_config(key_dir / "layer", "all", endpoint)) == "ok"
        assert transport.check_keys_now(host_config(key_dir / "app-2", "app", endpoint)) \
            == "refused"
        assert transport.check_keys_now(host_config(key_dir / "app-1", "app", endpoint)) \
            == "failed"
        assert transport.check_keys_now(
            host_config(key_dir / "app-2", "app", f"tcp://127.0.0.1:{free_port()}"),
            timeout=0.3) == "no answer"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2
    assert "refused this host's CURVE key" in errors[0] and "restart" in errors[0]
    assert "server.key" in errors[1]
