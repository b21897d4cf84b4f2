"""``zchannels <role>`` / ``python -m runtime <role>``: how every process is started.

supervisord, the tests and the development runner all start the same code this
way, so there is one path to production behaviour.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import config as config_module
from .exceptions import ConfigError
from .process import prepare_run_dir, setup_logging

log = logging.getLogger("runtime.cli")

ROLES = ("interface", "worker", "broker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zchannels", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="runtime config file "
                        f"(default: $ZCHANNELS_CONFIG or {config_module.DEFAULT_CONFIG_PATH})")
    parser.add_argument("--log-level", default=os.environ.get("ZCHANNELS_LOG_LEVEL", "INFO"))
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    interface = roles.add_parser("interface", help="Tornado HTTP/WebSocket front end")
    interface.add_argument("--port", type=int, help="override the configured port (0: any)")
    worker = roles.add_parser("worker", help="run consumers for one pool")
    worker.add_argument("--pool", default="default")
    roles.add_parser("broker", help="the relay: pool queues, replies, group messages")
    roles.add_parser("check-config", help="validate the config and print it")
    roles.add_parser("bench", help="load a running server (see scripts/bench --help)",
                     add_help=False)
    stats = roles.add_parser("stats", help="print the counters of every running process")
    stats.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the load scripts have their own options (runtime/bench)
        from .bench.cli import main as bench_main
        os.environ.setdefault("ZCHANNELS_BENCH_PROG", "zchannels bench")
        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return run_role(args)
    except ConfigError as e:
        print(f"zchannels: configuration error: {e}", file=sys.stderr)
        return 2


def run_role(args: argparse.Namespace) -> int:
    config = config_module.load(args.config)
    if args.role == "check-config":
        print(json.dumps(_describe(config), indent=2))
        return 0
    if args.role == "stats":
        return _print_stats(config, args.json)
    prepare_run_dir(config.run_dir)
    if args.role == "interface":
        from .interface import main as interface_main
        interface_main(config, args.port)
    elif args.role == "worker":
        from .routing import load_consumers
        from .worker import Worker
        config.pool(args.pool)  # an unknown pool name is a configuration error
        load_consumers(config.consumers)
        Worker(config, args.pool).run()
    elif args.role == "broker":
        from .broker import run as broker_run
        broker_run(config)
    return 0


def _describe(config: config_module.Config) -> dict[str, object]:
    data = {k: v for k, v in vars(config).items() if k != "pools"}
    data["pools"] = {p.name: vars(p) for p in config.pools}
    return data


def _print_stats(config: config_module.Config, as_json: bool) -> int:
    from .stats import collect
    processes = collect(config.run_dir)
    if as_json:
        print(json.dumps(processes, indent=2))
        return 0
    if not processes:
        print(f"no running zchannels processes have written stats in {config.run_dir}/stats")
        return 1
    for data in processes:
        values = {**data.get("gauges", {}), **data.get("counters", {})}
        shown = " ".join(f"{k}={v}" for k, v in sorted(values.items())) or "(nothing counted)"
        print(f"{data['role']:<18} pid {data['pid']:<7} {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
