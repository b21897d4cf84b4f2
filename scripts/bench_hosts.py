"""scripts/bench-hosts: the bench with clients and interfaces on host A, workers on host
B (network namespaces, tcp:// with CURVE), then on one host, in the same run."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import System  # noqa: E402
from hosts import Cluster, Host, Layout, Network, make_keys  # noqa: E402

POOLS = {"default": ["*"]}
BENCH_TIMEOUT = 600  # seconds for one bench run, whatever its options


def bench(mode, url, run_dir, duration, extra, namespace=None):
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    command = [*prefix, sys.executable, "-m", "benchkit", mode, "--url", url,
               "--duration", str(duration), "--run-dir", run_dir, "--no-plot",
               "--progress", "off", *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, timeout=BENCH_TIMEOUT,
                   env=dict(os.environ, ZCHANNELS_BENCH_PROG="scripts/bench"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("modes", nargs="*", default=["echo", "broadcast"],
                        choices=["echo", "broadcast"])
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if os.geteuid() != 0:
        sys.exit("scripts/bench-hosts needs root (ip netns)")
    network = Network(["a", "b"])
    cluster = single = None
    key_base = tempfile.mkdtemp(prefix="zckeys")
    try:
        network.up()
        if network.fallback:
            sys.exit(f"no network namespaces: {network.fallback}")
        key_dirs = make_keys(os.path.join(key_base, "keys"), ["a", "b"])
        layout = Layout(network, "a", list(POOLS))
        cluster = Cluster(network, [
            Host("a", network, layout, POOLS, key_dirs["layer"], "layer", interfaces=2,
                 server={"stats_interval": 2.0}),
            Host("b", network, layout, POOLS, key_dirs["b"], "app",
                 workers={"default": 2}, server={"stats_interval": 2.0}),
        ]).start()
        host_a = cluster["a"]
        single = System(workers=2, interfaces=2, server={"stats_interval": 2.0}).start()
        for mode in args.modes:
            print(f"\n== {mode}: clients and interfaces on host A, workers on host B "
                  f"({host_a.address}, tcp + CURVE) ==", flush=True)
            bench(mode, f"http://{host_a.address}:{host_a.port}", host_a.run_dir,
                  args.duration, extra, network.namespaces["a"])
            print(f"\n== {mode}: the same on one host (IPC) ==", flush=True)
            bench(mode, f"http://127.0.0.1:{single.port}", single.run_dir, args.duration,
                  extra)
    finally:
        if single is not None:
            single.stop() if args.keep else single.cleanup()
        if cluster is not None:
            cluster.stop() if args.keep else cluster.cleanup()
        network.cleanup()
        shutil.rmtree(key_base, ignore_errors=True)
        if args.keep and cluster is not None:
            print("run directories:", *(h.run_dir for h in cluster.hosts.values()),
                  single.run_dir if single else "")


if __name__ == "__main__":
    main()
