"""``zchannels <role>`` / ``python -m zchannels <role>``: how every process is started.

supervisord, the tests and the development runner all start the same code this
way, so there is one path to production behaviour.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import BinaryIO

from zchannels.core import config as config_module
from zchannels.core.exceptions import ConfigError
from zchannels.wire.process import prepare_run_dir, setup_logging

log = logging.getLogger("zchannels.cli")

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
    worker.add_argument("--standby", action="store_true", help="(the reloader's stand-in) "
                        "import zchannels, then wait for a line on stdin before loading "
                        "the consumers")
    roles.add_parser("broker", help="the relay: pool queues, replies, group messages")
    reloader = roles.add_parser("reloader", help="development (scripts/run --reload): "
                                "restart the workers when the project's code changes")
    reloader.add_argument("--check", action="store_true", help="import the consumers and "
                          "the WSGI application as a worker does, report, and exit")
    reloader.add_argument("--standby", action="store_true", help="with --check: import "
                          "zchannels, then wait for a line on stdin before checking (the "
                          "reloader keeps one such check started ahead)")
    roles.add_parser("check-config", help="validate the config and print it")
    keys = roles.add_parser("keys", help="make the CURVE keys of a deployment on several "
                            "hosts: the layer host's pair and one per app host")
    keys.add_argument("--dir", default="keys", help="where to write them (default: keys), "
                      "one directory per host")
    keys.add_argument("--clients", type=int, default=1, metavar="N",
                      help="app hosts to make keys for: app-1 .. app-N (default 1)")
    keys.add_argument("--client", metavar="NAME", help="add one app host's keys to an "
                      "existing --dir")
    init = roles.add_parser("init", help="add consumers/ (with an example) and "
                            "conf/zchannels.toml to the project in the current directory")
    init.add_argument("--wsgi-app", metavar="MODULE:CALLABLE", help="the WSGI application "
                      "for HTTP paths no consumer claims (default: the */wsgi.py found here)")
    start = roles.add_parser("run", help="start every process under supervisord, in the "
                             "foreground, for the project in the current directory")
    start.add_argument("--reload", action="store_true", help="development: restart the "
                       "workers when the project's code changes")
    stats = roles.add_parser("stats", help="print the counters of every running process")
    stats.add_argument("--json", action="store_true")
    status = roles.add_parser("status", help="one screen: every process with its CPU and "
                              "memory, the rates, the pools' depths")
    # const: status.WATCH_DEFAULT (not imported here: it brings prometheus_client along)
    status.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 2; 0.1..3600) until Ctrl-C")
    status.add_argument("--count", type=int, metavar="N",
                        help="with --watch: stop after N screens")
    send = roles.add_parser("send", help="send a message to a named channel (exit status "
                            "1 if it is refused)")
    send.add_argument("channel")
    send.add_argument("content", nargs="?", default="{}", metavar="JSON|-",
                      help="the message's content, a JSON object (default {}); - reads it "
                      "from stdin")
    group_send = roles.add_parser("group-send", help="send a message to every member of a "
                                  "group (exit status 1 if it is refused)")
    group_send.add_argument("group")
    group_send.add_argument("message", nargs="?", metavar="TEXT|-",
                            help="the message; - (or nothing, from a pipe) reads stdin, "
                            "without one trailing newline")
    kind = group_send.add_mutually_exclusive_group()
    kind.add_argument("--json", action="store_true",
                      help="the message must be valid JSON (sent as a text message)")
    kind.add_argument("--bytes", action="store_true",
                      help="send a binary message: stdin's bytes as they are, or the "
                      "argument as UTF-8")
    group_send.add_argument("--event", help="the event name Server-Sent Event members see")
    group_send.add_argument("--id", help="the event id Server-Sent Event members see")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return run_role(args)
    except ConfigError as e:
        print(f"zchannels: configuration error: {e}", file=sys.stderr)
        return 2


def run_role(args: argparse.Namespace) -> int:
    if args.role in ("init", "run"):  # a project of your own (runtime/ops/project.py)
        from zchannels.ops import project
        if args.role == "init":
            return project.init(os.getcwd(), args.wsgi_app)
        return project.run(args.config, args.reload, args.log_level)
    if args.role == "keys":  # needs no configuration
        from zchannels.wire import keys
        return keys.main(args.dir, args.clients, args.client)
    config = config_module.load(args.config)
    if args.role == "check-config":
        print(json.dumps(_describe(config), indent=2))
        return 0
    if args.role == "stats":
        return _print_stats(config, args.json)
    if args.role == "status":
        from zchannels.core.status import main as status_main
        return status_main(config, args.watch, args.count)
    if args.role in ("send", "group-send"):
        return send_command(config, args, sys.stdin.buffer)
    if args.role in ("worker", "reloader"):  # they import the project's code
        project_on_path()
    prepare_run_dir(config.run_dir)
    if args.role == "interface":
        from zchannels.interface import main as interface_main
        interface_main(config, args.port)
    elif args.role == "worker":
        from zchannels.worker.worker import Worker
        config.pool(args.pool)  # an unknown pool name is a configuration error
        if args.standby:  # the reloader's stand-in: imported ahead, told when to load
            from zchannels.worker import standby
            if not standby.wait_for_cue(config):
                return 0  # the reloader went away before it needed it
        worker = Worker(config, args.pool)  # it imports the application (worker/app.py)
        if args.standby and not standby.wait_to_serve():
            return 0  # the reloader went away before it needed it
        worker.run()
    elif args.role == "broker":
        from zchannels.broker.broker import run as broker_run
        broker_run(config)
    elif args.role == "reloader":
        from zchannels.worker.reloader import main as reloader_main
        return reloader_main(config, args.config, args.check, args.standby)
    return 0


def project_on_path() -> None:
    """Make the project in the current directory importable, as ``python -m`` and
    ``manage.py`` do: the ``zchannels`` console script starts with its own directory
    (``.venv/bin``) on ``sys.path`` instead, where ``mysite.wsgi`` is not."""
    here = os.getcwd()
    if not {"", ".", here} & set(sys.path):
        sys.path.insert(0, here)


def _describe(config: config_module.Config) -> dict[str, object]:
    data = {k: v for k, v in vars(config).items() if k not in ("pools", "history")}
    for key in ("publish_token", "metrics_token", "dashboard_token"):
        if data.get(key):  # a secret: say only that there is one
            data[key] = "<set>"
    data["pools"] = {p.name: vars(p) for p in config.pools}
    data["history"] = dataclasses.asdict(config.history)
    return data


def _print_stats(config: config_module.Config, as_json: bool) -> int:
    from zchannels.core.stats import collect
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


class UsageError(ValueError):
    """The message given on the command line cannot be sent as it is (exit status 2)."""


def send_command(config: config_module.Config, args: argparse.Namespace,
                 stdin: BinaryIO) -> int:
    """``send`` and ``group-send``: 0 sent, 1 refused (or no broker), 2 a usage error."""
    from zchannels.api.client import Client
    from zchannels.core.exceptions import ChannelFull, UnknownChannel
    from zchannels.wire.frames import check_name
    name = args.channel if args.role == "send" else args.group
    try:
        check_name(name, "channel" if args.role == "send" else "group")
        if args.role == "send":
            content = channel_content(args.content, stdin)
        else:
            text, data = group_message(args.message, stdin, as_json=args.json,
                                       as_bytes=args.bytes)
    except ValueError as e:  # a UsageError, or a bad name
        print(f"zchannels {args.role}: {e}", file=sys.stderr)
        return 2
    if args.role == "send" and config.pool_for(name) is None:
        print(f"zchannels send: no pool serves channel {name!r} (see [pools] in "
              f"{config.source})", file=sys.stderr)
        return 1
    client = Client(config)
    try:
        if not client.wait_for_broker(config.send_timeout):
            print(f"zchannels {args.role}: no broker at {config.broker_clients} within "
                  f"{config.send_timeout:g}s: is the server running, with this "
                  "configuration and run directory?", file=sys.stderr)
            return 1
        if args.role == "send":
            client.send(name, content)
        else:
            client.group_send(name, text=text, bytes=data, event=args.event, id=args.id)
    except (ChannelFull, UnknownChannel) as e:
        print(f"zchannels {args.role}: refused: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()  # waits for the message to leave
    return 0


def read_argument(value: str | None, stdin: BinaryIO) -> bytes | None:
    """The bytes of `value`, or stdin's for "-" (or for no value when stdin is a pipe);
    None when there is neither."""
    if value == "-" or (value is None and not stdin.isatty()):
        return stdin.read()
    return None if value is None else value.encode()


def channel_content(value: str, stdin: BinaryIO) -> dict[str, object]:
    raw = read_argument(value, stdin)
    try:
        content = json.loads(raw or b"")
    except ValueError as e:
        raise UsageError(f"the content is not valid JSON: {e}") from None
    if not isinstance(content, dict):
        raise UsageError(f"the content must be a JSON object, not {type(content).__name__}")
    return content


def group_message(value: str | None, stdin: BinaryIO, as_json: bool = False,
                  as_bytes: bool = False) -> tuple[str | None, bytes | None]:
    """(text, bytes) for group_send, one of them None: from the argument or stdin."""
    raw = read_argument(value, stdin)
    if raw is None:
        raise UsageError("give the message as an argument, or - to read it from stdin")
    if as_bytes:
        return None, raw
    if value in ("-", None):  # what `echo` and most editors add
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise UsageError("the message is not UTF-8 text; use --bytes to send it as binary") \
            from None
    if as_json:
        try:
            json.loads(text)
        except ValueError as e:
            raise UsageError(f"the message is not valid JSON: {e}") from None
    return text, None


if __name__ == "__main__":
    sys.exit(main())
