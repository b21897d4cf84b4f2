"""Several "hosts" on this machine for a test: each a network namespace of its own.

`Network` makes one namespace per host (``ip netns add zc-<tag>-<host>``), a veth
pair per host with one end in the namespace and the other in a bridge of the test's
own in the root namespace, and addresses ``10.231.<n>.<i>/24`` (the bridge, where the
test process itself is, gets ``.254``). Nothing is routed beyond the bridge.

`Host` is one host of a deployment: its own run directory, config file, key directory
(only its own keys: the test copies each host's directory of ``zchannels keys``, so
the secret keys never meet), and processes started inside its namespace with
``ip netns exec`` -- the command supervisord would run (``python -m zchannels ROLE``).

Without root, or where namespaces cannot be made (or with ZCHANNELS_TEST_NO_NETNS=1),
every host is on loopback with its own run directory and ports, and `Network.fallback`
says so (printed to stderr, and the tests that need real separation skip, saying why).

Cleanup always runs (fixtures' finalizers, and ``atexit`` besides): every process is
stopped by its PID, then the namespaces and the bridge this test made are deleted --
never anything else.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any, Iterator

from harness import DEMO_CONSUMERS, ROOT, TEST_CONSUMERS, System

from zchannels.wire import keys

IP_TIMEOUT = 10.0  # seconds for one `ip` command
SUBNET_PREFIX = "10.231"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT,
                          check=check)


class Network:
    """The namespaces, veths and bridge of one test module (or loopback, as a fallback)."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts
        self.tag = secrets.token_hex(2)
        self.namespaces: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.links: dict[str, str] = {}  # host -> its veth end in the root namespace
        self.bridge = f"zc{self.tag}br"
        self.made_bridge = False
        self.fallback = ""  # why the hosts share loopback instead, if they do
        self.test_address = "127.0.0.1"  # where the test process reaches the hosts from

    def up(self) -> "Network":
        atexit.register(self.cleanup)
        if os.environ.get("ZCHANNELS_TEST_NO_NETNS"):  # to try the fallback as root
            return self._loopback("ZCHANNELS_TEST_NO_NETNS is set")
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return self._loopback("not root" if os.geteuid() else "no ip command")
        try:
            self._make()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            self.cleanup()
            detail = getattr(e, "stderr", "") or str(e)
            return self._loopback(f"ip netns failed: {detail.strip()}")
        return self

    def _loopback(self, why: str) -> "Network":
        self.fallback = why
        self.namespaces.clear()
        self.addresses = {host: "127.0.0.1" for host in self.hosts}
        print(f"\nhosts: network namespaces unavailable ({why}); the hosts share loopback, "
              "each with its own run directory and ports", file=sys.stderr)
        return self

    def _subnet(self) -> int:
        """A 10.231.<n>.0/24 no route of this machine uses (another test run's bridge)."""
        routes = ip("-4", "route", "show").stdout
        for _ in range(50):
            n = secrets.randbelow(250) + 1
            if f"{SUBNET_PREFIX}.{n}." not in routes:
                return n
        raise OSError(f"no free {SUBNET_PREFIX}.n.0/24 subnet")

    def _make(self) -> None:
        n = self._subnet()
        ip("link", "add", self.bridge, "type", "bridge")
        self.made_bridge = True
        ip("addr", "add", f"{SUBNET_PREFIX}.{n}.254/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self.test_address = f"{SUBNET_PREFIX}.{n}.254"
        for i, host in enumerate(self.hosts, start=1):
            namespace = f"zc-{self.tag}-{host}"
            ip("netns", "add", namespace)
            self.namespaces[host] = namespace
            outside, inside = f"zc{self.tag}{i}o", f"zc{self.tag}{i}i"
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.links[host] = outside
            ip("link", "set", inside, "netns", namespace)
            ip("link", "set", outside, "master", self.bridge)
            ip("link", "set", outside, "up")
            address = f"{SUBNET_PREFIX}.{n}.{i}"
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
            ip("-n", namespace, "link", "set", inside, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            self.addresses[host] = address

    def prefix(self, host: str) -> list[str]:
        """What runs a command inside `host`'s namespace (it execs: the PID is the
        command's own)."""
        namespace = self.namespaces.get(host)
        return ["ip", "netns", "exec", namespace] if namespace else []

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) `host`'s cable: no FIN, no RST, packets just stop."""
        ip("link", "set", self.links[host], "up" if up else "down")

    def cleanup(self) -> None:
        """Delete what this object made, and only that (deleting a namespace deletes
        its veth end, and with it the pair)."""
        for namespace in list(self.namespaces.values()):
            ip("netns", "delete", namespace, check=False)
        self.namespaces.clear()
        for link in list(self.links.values()):
            ip("link", "delete", link, check=False)  # already gone, normally
        self.links.clear()
        if self.made_bridge:
            ip("link", "delete", self.bridge, check=False)
            self.made_bridge = False


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class Layout:
    """Where the layer host binds: one tcp:// endpoint per socket of the broker."""

    def __init__(self, network: Network, layer: str, pools: list[str]) -> None:
        address = network.addresses[layer]
        if network.fallback:  # sharing loopback with everything else: free ports
            ports = iter(free_port(address) for _ in range(2 + 2 * len(pools)))
        else:  # the namespace's ports are its own
            ports = iter(range(7001, 7003 + 2 * len(pools)))
        self.endpoints = {"broker_interfaces": f"tcp://{address}:{next(ports)}",
                          "broker_clients": f"tcp://{address}:{next(ports)}"}
        self.pools = {pool: (f"tcp://{address}:{next(ports)}",
                             f"tcp://{address}:{next(ports)}") for pool in pools}


class Host(System):
    """One host: `role` (layer, app, workers), `workers` per pool, `interfaces`."""

    def __init__(self, name: str, network: Network, layout: Layout,
                 pools: dict[str, list[str]], key_dir: str, role: str,
                 workers: dict[str, int] | None = None, interfaces: int = 0,
                 server: dict[str, Any] | None = None) -> None:
        super().__init__(interfaces=interfaces, consumers=(DEMO_CONSUMERS, TEST_CONSUMERS),
                         env={"ZCHANNELS_TEST_HOST": name})
        self.name = name
        self.network = network
        self.address = network.addresses[name]
        self.role = role
        self.workers = workers or {}
        self.curve_dir = os.path.join(self.run_dir, "keys")
        shutil.copytree(key_dir, self.curve_dir)  # this host's own keys, nobody else's
        os.chmod(self.curve_dir, 0o700)
        settings = {"host": self.address, "stats_interval": 0.2, "role": role,
                    "curve_dir": self.curve_dir, **(server or {})}
        lines = ["[server]"] + [f"{k} = {_toml(v)}" for k, v in settings.items()]
        lines += ["[endpoints]"] + [f"{k} = {_toml(v)}" for k, v in layout.endpoints.items()]
        for pool, channels in pools.items():
            endpoint_in, endpoint_out = layout.pools[pool]
            lines += [f"[pools.{pool}]", f"channels = {_toml(channels)}",
                      f"endpoint_in = {_toml(endpoint_in)}",
                      f"endpoint_out = {_toml(endpoint_out)}"]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.run_dir, f"{name}.log"), "ab")
        proc = subprocess.Popen(
            [*self.network.prefix(self.name), sys.executable, "-m", "zchannels", *args],
            cwd=ROOT,
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = proc
        self.arguments[name] = args
        return proc

    def launch(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """Start the broker (layer host) and the workers, without waiting."""
        started = []
        if self.role in ("layer", "all"):
            started.append(("broker", self.spawn("broker", "broker")))
        for pool, count in self.workers.items():
            for i in range(count):
                started.append((f"worker-{pool}", self.start_worker(i, pool, wait=False)))
        return started

    def url(self, path: str) -> str:
        return f"ws://{self.address}:{self.port}{path}"


def _toml(value: Any) -> str:
    return json.dumps(value)  # a JSON string, number, bool or list is TOML too


class Cluster:
    """A deployment: the hosts of one network, started together, stopped together."""

    def __init__(self, network: Network, hosts: list[Host]) -> None:
        self.network = network
        self.hosts = {host.name: host for host in hosts}

    def start(self) -> "Cluster":
        launched = [(host, role, proc) for host in self.hosts.values()
                    for role, proc in host.launch()]
        for host, role, proc in launched:
            host.wait_ready(role, proc)
        for host in self.hosts.values():
            for i in range(host.interfaces):
                host.start_interface(i)
        return self

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def stop(self) -> None:
        """SIGTERM every app host's processes at once, wait (SIGKILL after the
        harness's STOP_TIMEOUT), then the layer host's: the broker goes last."""
        apps = [host for host in self.hosts.values() if host.role != "layer"]
        for host in apps:
            for proc in host.processes.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        for host in apps:
            host.stop()  # (SIGTERM again is harmless) waits, and kills what is left
        for host in self.hosts.values():
            host.stop()

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            for host in self.hosts.values():
                shutil.rmtree(host.run_dir, ignore_errors=True)

    def unexpected_errors(self) -> list[str]:
        return [f"{host.name}/{line}" for host in self.hosts.values()
                for line in host.unexpected_errors()]


def make_keys(base: str, app_hosts: list[str]) -> dict[str, str]:
    """`zchannels keys` for a layer host and `app_hosts`: host -> its key directory."""
    keys.create(base, app_hosts)
    return {"layer": os.path.join(base, keys.LAYER),
            **{host: os.path.join(base, host) for host in app_hosts}}


@contextlib.contextmanager
def three_hosts(key_base: str, pools: dict[str, list[str]], a: dict[str, Any],
                b: dict[str, Any]) -> Iterator[Cluster]:
    """A started cluster of a layer host (the broker) and app hosts ``a`` and ``b``
    (`a`, `b`: their Host keyword arguments: workers, interfaces), each with its own
    keys; stopped and its namespaces removed at the end, whatever happened."""
    network = Network(["layer", "a", "b"])
    cluster = None
    try:
        network.up()
        key_dirs = make_keys(key_base, ["a", "b"])
        layout = Layout(network, "layer", list(pools))
        cluster = Cluster(network, [
            Host("layer", network, layout, pools, key_dirs["layer"], "layer"),
            Host("a", network, layout, pools, key_dirs["a"], "app", **a),
            Host("b", network, layout, pools, key_dirs["b"], "app", **b),
        ])
        cluster.key_base = key_base
        cluster.start()
        yield cluster
    finally:
        try:
            if cluster is not None:
                cluster.cleanup()
        finally:
            network.cleanup()
