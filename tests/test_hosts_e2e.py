"""Three hosts, each a network namespace (tests/hosts.py): work crosses hosts over
tcp:// with CURVE, and nothing else gets in.

- layer: the broker only, bound on its address.
- A: an interface, the only worker of pool ``west`` (``hosts.*``), a worker of pool
  ``spread`` (``spread.*``, served on both app hosts).
- B: an interface, the only workers of pool ``default`` (everything else: every
  WebSocket event), a worker of ``spread``.

Each host has only its own keys (the directories of ``zchannels keys``); the layer
host's allow-list has A's and B's public keys.
"""
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import zmq
from tornado.websocket import websocket_connect

from harness import ROOT, read, run, wait_until
from hosts import three_hosts
from zchannels.core import config as config_module
from zchannels.wire import keys, frames as wire
from zchannels.api.client import Client
from zchannels.worker.link import WorkerLink as Layer

pytestmark = pytest.mark.e2e

POOLS = {"west": ["hosts.*"], "spread": ["spread.*"], "default": ["*"]}
MEMBERS = 500
HEARTBEAT_BOUND = 1.0 + 3.0  # heartbeat_interval + heartbeat_timeout (the defaults)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with three_hosts(str(tmp_path_factory.mktemp("keys") / "keys"), POOLS,
                     a={"workers": {"west": 1, "spread": 1}, "interfaces": 1},
                     b={"workers": {"default": 2, "spread": 1}, "interfaces": 1}) as cluster:
        yield cluster
        unexpected = cluster.unexpected_errors()
        assert not unexpected, "processes logged unexpected errors:\n" + "\n".join(unexpected)


def connect(host, path):
    return websocket_connect(host.url(path))


def app_config(host, curve_dir=None):
    """`host`'s config as a process of that host reads it (another key directory)."""
    environ = {"ZCHANNELS_CURVE_DIR": curve_dir} if curve_dir else {}
    return config_module.load(host.config_path, environ=environ)


async def read_until(ws, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        message = await read(ws, max(0.1, deadline - time.monotonic()))
        assert message is not None, "closed"
        if predicate(message):
            return message


def test_the_hosts_are_separate_namespaces(cluster):
    """As root (CI), the real thing is required: namespaces that cannot be made fail
    here rather than falling back quietly."""
    network = cluster.network
    if network.fallback:
        if os.geteuid() == 0 and not os.environ.get("ZCHANNELS_TEST_NO_NETNS"):
            pytest.fail(f"running as root, but no network namespaces: {network.fallback}")
        pytest.skip(f"no namespaces here: {network.fallback}")
    assert len(set(network.addresses.values())) == 3
    assert all(name.startswith("zc-") for name in network.namespaces.values())


def test_chat_between_a_client_on_a_and_one_on_b(cluster):
    async def scenario():
        a = await connect(cluster["a"], "/ws/chat/hosts?name=alice")
        b = await connect(cluster["b"], "/ws/chat/hosts?name=bob")
        await asyncio.sleep(0.2)  # both joined (the handshake ends when the join has)
        a.write_message(json.dumps({"text": "hello from A"}))
        got = await read_until(b, lambda m: '"hello from A"' in m)
        b.write_message(json.dumps({"text": "hello from B"}))
        back = await read_until(a, lambda m: '"hello from B"' in m)
        a.close()
        b.close()
        return json.loads(got), json.loads(back)
    got, back = run(scenario())
    assert (got["user"], back["user"]) == ("alice", "bob")


def test_echo_from_a_is_served_by_a_worker_that_only_runs_on_b(cluster):
    async def scenario():
        ws = await connect(cluster["a"], "/ws/echo")
        ws.write_message("ping")
        echoed = await read(ws)
        ws.close()
        where = await connect(cluster["a"], "/test/hosts/where")
        where.write_message("who")
        answer = await read(where)
        where.close()
        return echoed, answer
    assert run(scenario()) == ("ping", "who from b")
    assert "default" not in cluster["a"].workers


def test_new_members_on_b_each_get_the_group_send_after_their_group_add_on_a(cluster):
    """The connect consumer runs on B; group_add and the group_send right after it run
    on A's only `west` worker; every member is on B's interface. 10 groups of 50."""
    async def member(i, gate):
        async with gate:
            ws = await connect(cluster["b"], f"/test/hosts/member/many-{i % 10}")
            first = await read(ws, 20)
            assert isinstance(first, str) and first.startswith("rc:"), first
            mine = f"hello {first[3:]} True a"
            await read_until(ws, lambda m: m == mine, timeout=30)
            return ws

    async def scenario():
        gate = asyncio.Semaphore(100)
        sockets = await asyncio.gather(*(member(i, gate) for i in range(MEMBERS)))
        for ws in sockets:
            ws.close()
        return len(sockets)
    assert run(scenario(), timeout=90) == MEMBERS


def test_a_pool_is_served_by_workers_on_both_hosts(cluster):
    with Client(app_config(cluster["a"])) as client:
        assert client.wait_for_broker(5)
        for n in range(20):
            client.send("spread.work", {"n": n})

    def ran():
        lines = cluster["a"].records() + cluster["b"].records()
        return lines if len([line for line in lines if line[0] == "spread"]) == 20 else None
    lines = wait_until(ran, 10, "20 spread messages to run")
    assert {line[2] for line in lines if line[0] == "spread"} == {"a", "b"}


# -- who may talk to the layer host -------------------------------------------------------

async def maybe_read(ws, timeout=1.5):
    try:
        return await read(ws, timeout)
    except asyncio.TimeoutError:
        return None


def group_send_as(config, group, text, plain=False):
    """A group_send through a layer with `config`'s keys (or none), left unflushed."""
    context = zmq.Context()
    try:
        if plain:
            sock = context.socket(zmq.DEALER)
            sock.connect(config.broker_clients)
            header, payload = wire.group_message(text, None, None, None, None)
            sock.send_multipart([wire.VERB_GROUP, group.encode(), wire.encode(header),
                                 payload])
            time.sleep(0.5)
        else:
            layer = Layer(replace(config, send_timeout=1.0), context,
                          identity=f"c{os.getpid()}-test")
            layer.group_send(group, text=text)
            time.sleep(0.5)  # (close would wait for it to leave; it never will)
    finally:
        context.destroy(linger=0)


def broker_counter(cluster, name):
    counts = cluster["layer"].settled_counters("broker")
    return counts.get(name, 0)


def test_only_allowed_keys_with_the_right_server_key_get_in(cluster, tmp_path):
    host = cluster["a"]
    before = broker_counter(cluster, "curve_refused")
    keys.add_client(cluster.key_base, "rogue")  # (the layer host's copy is not updated)
    rogue = os.path.join(cluster.key_base, "rogue")
    # A's own (allowed) key, but another layer host's public key.
    other = tmp_path / "other"
    keys.create(str(other), [])
    impostor = tmp_path / "impostor"
    os.makedirs(impostor, mode=0o700)
    for name in ("client.key", "client.key_secret"):
        data = open(os.path.join(host.curve_dir, name), "rb").read()
        with open(impostor / name, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as f:
            f.write(data)
    (impostor / "server.key").write_bytes((other / "layer" / "server.key").read_bytes())

    async def scenario():
        ws = await connect(host, "/test/quiet/guarded")
        assert await read(ws) == "joined True"
        # Control: A's own keys reach the member.
        group_send_as(app_config(host), "guarded", "from a")
        assert await maybe_read(ws, 5) == "from a"
        # A key the layer host has never seen: refused (counted and logged, below).
        group_send_as(app_config(host, rogue), "guarded", "from a stranger")
        # No CURVE at all: the handshake cannot even start.
        group_send_as(app_config(host), "guarded", "in plaintext", plain=True)
        # The right client key, the wrong server key.
        group_send_as(app_config(host, str(impostor)), "guarded", "to the wrong server")
        assert await maybe_read(ws, 1.0) is None
        ws.close()
    run(scenario())
    wait_until(lambda: broker_counter(cluster, "curve_refused") > before, 5,
               "the refusal to be counted")
    rogue_key = open(os.path.join(rogue, "client.key")).read().split('public-key = "')[1][:40]
    assert rogue_key in cluster["layer"].logs()["broker"]

    # A process started with the stranger's keys says so in its own log, at start.
    log_path = tmp_path / "rogue-worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cluster.network.prefix("a"), sys.executable, "-m", "zchannels", "worker",
             "--pool", "spread"], cwd=ROOT, env=dict(host.env, ZCHANNELS_CURVE_DIR=rogue),
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "refused this host's CURVE key" in log_path.read_text(), 15,
                   "the refused worker to log why")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_a_host_whose_cable_is_pulled_is_noticed_within_the_heartbeat_bound(cluster):
    """B's link goes down (no FIN) while a worker of B and one of A each run a message of
    pool `spread`: the broker drops B's workers within heartbeat_interval +
    heartbeat_timeout, and hands the message B held to A's worker, marked redelivered.
    Back up, B's workers are back by themselves. (Last: what a dead interface's
    connections become is beyond this module.)"""
    network = cluster.network
    if network.fallback:
        pytest.skip(f"no link to pull without namespaces: {network.fallback}")
    layer = cluster["layer"]

    def workers(pool):
        counts = layer.settled_counters("broker")
        return counts.get(f"pool_free_workers{{pool={pool}}}", 0) \
            + counts.get(f"pool_busy_workers{{pool={pool}}}", 0)

    def slow_records():
        return [line for line in cluster["a"].records() + cluster["b"].records()
                if line[0] == "slow"]
    wait_until(lambda: workers("default") == 2 and workers("spread") == 2, 5,
               "every worker to be known")
    with Client(app_config(cluster["a"])) as client:
        for n in (1, 2):
            client.send("spread.slow", {"n": n, "seconds": 3})
    started = wait_until(lambda: len(slow_records()) == 2 and slow_records(), 5,
                         "both spread workers to start a slow message")
    held_by_b = next(line[1] for line in started if line[2] == "b")
    cut = time.monotonic()
    network.set_link("b", up=False)
    try:
        wait_until(lambda: workers("default") == 0, HEARTBEAT_BOUND + 4,
                   "the broker to drop B's workers")
        noticed = time.monotonic() - cut
        redelivered = wait_until(
            lambda: [line for line in slow_records() if line[1] == held_by_b
                     and line[2] == "a"], 5, "B's message to be run on A")
    finally:
        network.set_link("b", up=True)
    print(f"\nB's workers dropped {noticed:.1f}s after its cable was pulled "
          f"(bound {HEARTBEAT_BOUND:g}s + stats interval)")
    assert noticed < HEARTBEAT_BOUND + 2.5  # (+ the stats files' interval, and slack)
    assert redelivered[0][3] == "True"
    healed = time.monotonic()
    wait_until(lambda: workers("default") == 2, 10, "B's workers to come back")
    print(f"back {time.monotonic() - healed:.1f}s after the cable was back")
