"""``scripts/bench MODE`` (``python -m benchkit`` with scripts/ on the path): load a
running zchannels, and with ``--baseline`` the raw-Tornado (or gunicorn) ceiling and with
``--channels`` Django Channels 4 in the same invocation, alternating, then print a table
and write a JSON file and a PNG plot."""
from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import shlex
import sys
import tempfile
import time
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from benchkit import accounting, payloads, report, servers, summary, wirebytes, wsclient
from benchkit.baseline import DEFLATE_SUFFIX, ROOT, Baseline, start_gunicorn, start_tornado
from benchkit.channels import DEFAULT_VENV, FLAVOURS, ChannelsServers, SetupError
from benchkit.runner import BenchError, run_load

MODES = ("echo", "broadcast", "idle", "http", "chat-bytes")
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CONNECTIONS = {"echo": 50, "idle": 1000, "http": 50, "chat-bytes": 10}
DEFAULT_SIZE = 32  # bytes of an echo message (--payload x)
# --compression: which runs offer permessage-deflate, per system and round, in order.
COMPRESSION_VARIANTS = {"off": (False,), "on": (True,), "both": (False, True)}
LATENCY_RATE = 500.0  # messages/s at most in the 1-connection latency run


EPILOG = """\
what each mode runs, per system and round:
  echo, http  a throughput run with -c connections (default 50), each a closed loop;
              then a latency run with 1 connection, sending the next message when the
              last is answered but at most --latency-rate per second; each --duration
              seconds (--no-latency: only the throughput run)
  broadcast   one run; idle: connections opened, checked, held, memory read
  chat-bytes  -c members (default 10) join one chat room, then --messages chat lines
              (default 200) go one at a time, each awaited by every member; once
              without permessage-deflate and once with it (zchannels must run with
              compression = true): bytes on the socket per delivered message, and
              the ratio on / off. Seconds, not --duration.

compression (--compression on|both; echo, broadcast, idle, chat-bytes):
  the clients offer "permessage-deflate; server_no_context_takeover" and fail unless
  the server agrees; they send their messages compressed (each distinct one compressed
  once, at level 1, on its own) and inflate what arrives with RSV1. zchannels must run
  with compression = true in its config (ZCHANNELS_CONFIG); a connection that does not
  offer it is not compressed, so one server serves --compression both. raw Tornado gets
  its own permessage-deflate (get_compression_options: level 1, mem_level 8). Runs
  with it are named "<system> +deflate"; with both, each system is compared with
  itself without it too. Bytes read and written per operation are then shown (frames
  and their headers, after the handshake).

beside every figure:
  server CPU per round trip (request, delivery): user + system CPU of every server
  process (/proc/<pid>/stat) over the load and its drain, divided by the answers
  ZeroMQ messages per round trip: the growth of the zmq_sent counters in the stats
  files (<run-dir>/stats/<role>.<pid>.json) of every server process, from a file
  written after the connections went quiet to one written after the last answer (the
  bench waits up to 3 x --stats-interval for them), divided by the answers; '-' when a
  process wrote no such file, the server counts no zmq_sent, or there is no ZeroMQ
  (raw Tornado, gunicorn, Channels)

comparisons:
  --baseline and --channels run in the same invocation, alternating: each round runs
  zchannels, raw Tornado (gunicorn for /app/ paths), Channels 4 async, Channels 4 sync,
  each with the same load. The table shows each system's median over --rounds rounds;
  each ratio is taken within a round and the median of the per-round ratios is shown,
  with every round's ratio below it. The output and the JSON start with the command,
  the date and the machine (cores, model, load average before and after).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=MODES, help="echo: closed-loop round trips on /ws/echo; "
                   "broadcast: one chat room (/ws/chat/<room>), fixed rate or flood; idle: "
                   "connections held open, server memory per connection; http: GET requests")
    p.add_argument("--url", default=DEFAULT_URL, help="the server (default %(default)s); a "
                   "path in it replaces the mode's default path")
    p.add_argument("--path", action="append", help="http: a path to request (repeatable; "
                   "default /hello, the HTTP consumer, and /app/hello, the WSGI fallback)")
    p.add_argument("--baseline", action="store_true", help="also run the same load against "
                   "raw Tornado (gunicorn for WSGI paths) started by the bench, and print ratios")
    p.add_argument("--channels", action="store_true", help="also run Django Channels 4 "
                   "(one Daphne process, channels_redis on a Redis server; async, then sync "
                   "consumers) started by the bench from --channels-venv; install it with "
                   "scripts/bench-channels --install")
    p.add_argument("--channels-venv", default=DEFAULT_VENV, help="the virtualenv holding "
                   "channels, daphne, channels_redis (default $CHANNELS_VENV or %(default)s)")
    p.add_argument("--rounds", type=int, help="rounds of every system, alternating; "
                   "medians are reported (default 3 with --baseline or --channels, else 1)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load (default 5)")
    p.add_argument("--no-latency", action="store_true", help="echo, http: skip the "
                   "1-connection latency run after the throughput run")
    p.add_argument("--latency-rate", type=float, default=LATENCY_RATE, help="echo, http: "
                   "most messages (requests) per second of the 1-connection run, which "
                   "otherwise sends each as soon as the last is answered (default "
                   "%(default)g, under zchannels' default rate_limit of 1000/s per "
                   "connection, beyond which it closes the connection; 0: no limit)")
    p.add_argument("--stats-interval", type=float, help="seconds between two writes of a "
                   "server process's stats file (default: stats_interval of "
                   "$ZCHANNELS_CONFIG or conf/zchannels.toml)")
    p.add_argument("-c", "--connections", type=int,
                   help="echo/http: connections, each a closed loop (default 50); "
                   "idle: connections held (default 1000)")
    p.add_argument("--size", type=int, help="echo: message bytes (default 32, or "
                   f"{payloads.CHAT_BYTES} with --payload chat); broadcast with --payload "
                   "chat: bytes of the event each member receives, about")
    p.add_argument("--payload", choices=("x", "chat"), default="x", help="echo, broadcast: "
                   "x (default): numbered filler (name:seq:xxx...; broadcast 'B name seq "
                   "time'); chat: chat-like JSON as the chat demo sends it "
                   "(scripts/benchkit/payloads.py), which compresses as chat does")
    p.add_argument("--compression", nargs="?", const="on", default="off",
                   choices=tuple(COMPRESSION_VARIANTS), help="permessage-deflate: on "
                   "(--compression alone), or both: every system without it, then with "
                   "it, in each round (see below); default off")
    p.add_argument("--messages", type=int, default=200,
                   help="chat-bytes: chat messages sent (default 200)")
    p.add_argument("--subscribers", type=int, default=1000,
                   help="broadcast: members of the room (default 1000)")
    p.add_argument("--publishers", type=int, default=2,
                   help="broadcast: members that also publish (default 2)")
    p.add_argument("--rate", type=float, default=0.0, help="broadcast: messages per second "
                   "from all publishers together; 0 (default): flood")
    p.add_argument("--history", action="store_true", help="broadcast: also load a room "
                   "whose group keeps history (history-bench-..., under the shipped "
                   "config's chat.* rule; the bench-... room keeps none), alternating with "
                   "the plain room in every round: the cost of history, same run "
                   "(docs/consumers.md#history-and-recovery)")
    p.add_argument("--window", type=int, default=10, help="broadcast flood: messages each "
                   "publisher keeps in flight (default 10)")
    p.add_argument("--processes", type=int, default=max(2, os.cpu_count() or 2),
                   help="client processes (default: one per core, at least 2)")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait after the load "
                   "for what is still on its way before counting it lost (default 10)")
    p.add_argument("--quiet", type=float, default=1.0, help="broadcast: seconds without a "
                   "delivery that end the drain (default 1)")
    p.add_argument("--run-dir", default=os.environ.get("ZCHANNELS_RUN_DIR", "run"),
                   help="zchannels run directory, to find every server process "
                   "(ready/<role>.<pid>, stats/<role>.<pid>.json) for CPU, memory and "
                   "ZeroMQ messages (default "
                   "$ZCHANNELS_RUN_DIR or run)")
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="measure these processes (and their children) instead (repeatable)")
    p.add_argument("--name", default="zchannels", help="what the measured server is called "
                   "in the table (default zchannels)")
    p.add_argument("--http-workers", type=int, default=2,
                   help="gunicorn worker processes for the http baseline (default 2)")
    p.add_argument("--results-dir", default="bench-results",
                   help="where the JSON and PNG go (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr (auto: when it is a terminal)")
    return p


def endpoints(mode: str, url: str, paths: list[str] | None,
              history: bool = False) -> list[str]:
    """The URLs the mode loads (one run each): ws:// for WebSocket modes, http:// for http.
    `history` (broadcast): a room that keeps history too, after the one that does not."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "ws"):
        raise SystemExit(f"scripts/bench: --url must be http:// or ws://, not {url!r}")
    scheme = "http" if mode == "http" else "ws"
    base = f"{scheme}://{parts.netloc}"
    given = parts.path not in ("", "/")
    query = f"?{parts.query}" if parts.query else ""
    if mode == "http":
        chosen = paths or ([parts.path + query] if given else ["/hello", "/app/hello"])
        return [base + path for path in chosen]
    if given:
        return [base + parts.path + query]
    if mode in ("broadcast", "chat-bytes"):
        rooms = [f"{base}/ws/chat/bench-{secrets.token_hex(3)}"]
        if history and mode == "broadcast":  # chat.history-bench-* is kept, chat.bench-* not
            rooms.append(f"{base}/ws/chat/history-bench-{secrets.token_hex(3)}")
        return rooms
    return [f"{base}/ws/echo"]


def spec_for(args: argparse.Namespace, url: str, compression: bool = False
             ) -> dict[str, Any]:
    connections = args.connections or DEFAULT_CONNECTIONS.get(args.mode, 50)
    spec = {"url": url, "duration": args.duration, "drain": args.drain, "quiet": args.quiet,
            "processes": args.processes, "size": args.size, "connections": connections,
            "subscribers": args.subscribers,
            "publishers": min(args.publishers, args.subscribers),
            "rate": args.rate, "window": args.window}
    if compression:  # what the clients do on the wire (modes.wire_options)
        spec["compression"] = True
    if args.payload != "x":
        spec["payload"] = args.payload
    if args.mode == "idle":
        spec["duration"] = 0.0  # one echo per connection proves it open; then it idles
    if args.mode != "broadcast":
        spec["processes"] = max(1, min(args.processes, connections))
    return spec


def title(mode: str, args: argparse.Namespace) -> str:
    return plain_title(mode, args) + wire_title(mode, args)


def wire_title(mode: str, args: argparse.Namespace) -> str:
    """What the title says of --compression and --payload (nothing by default)."""
    said = ""
    if mode == "chat-bytes" or args.compression == "both":
        said += "; permessage-deflate off, then on"
    elif args.compression == "on":
        said += "; permessage-deflate on"
    if args.payload == "chat" and mode in ("echo", "broadcast"):
        said += f"; chat-like JSON payload of about {args.size} bytes"
    elif args.compression != "off" and mode in ("echo", "idle"):
        said += f"; {args.size}-byte numbered payload"
    return said


def plain_title(mode: str, args: argparse.Namespace) -> str:
    rounds = args.rounds or 1
    medians = f"; medians of {rounds} rounds" if rounds > 1 else ""
    if mode == "chat-bytes":
        return f"chat-bytes, {args.connections or DEFAULT_CONNECTIONS[mode]} members, " \
            f"{args.messages} messages{medians}"
    if mode == "broadcast":
        kind = "flood" if args.rate <= 0 else f"{args.rate:g} msg/s"
        return f"broadcast, {args.subscribers:,} subscribers, {kind}{medians}"
    if mode == "idle":
        return f"idle, {args.connections or DEFAULT_CONNECTIONS['idle']:,} connections{medians}"
    pace = f" at <= {args.latency_rate:g}/s" if args.latency_rate > 0 else ""
    single = "" if args.no_latency else f", then 1 connection{pace}, {args.duration:g} s"
    return f"{mode}, {args.connections or DEFAULT_CONNECTIONS[mode]} connections, " \
        f"{args.duration:g} s{single}{medians}"


def configured_stats_interval() -> float:
    """stats_interval of the config scripts/run would read ($ZCHANNELS_CONFIG or
    conf/zchannels.toml), else its default."""
    from zchannels.core.config import Config, ConfigError, load
    path = os.environ.get("ZCHANNELS_CONFIG") or os.path.join(ROOT, "conf", "zchannels.toml")
    try:
        return load(path).stats_interval
    except (ConfigError, OSError):
        return Config().stats_interval


class Project:
    """The running zchannels under test (given by --url; the bench neither starts nor
    stops it). Its processes are found in --run-dir, or given by --server-pid."""

    system = "project"
    notes: list[str] = []

    def __init__(self, args: argparse.Namespace, url: str, compression: bool = False) -> None:
        self.name = args.name + (DEFLATE_SUFFIX if compression else "")
        self.compression = compression
        self.base = urlsplit(url).netloc
        self.server_pid = args.server_pid
        self.run_dir = args.run_dir
        # Another server's processes (--server-pid) keep no zchannels stats files.
        self.stats = None if args.server_pid else \
            accounting.StatsSource(args.run_dir, args.stats_interval)

    def pids(self) -> list[int]:
        if self.server_pid:
            return servers.with_descendants(self.server_pid)
        return servers.server_pids(self.run_dir)

    def stop(self) -> None:
        pass


class Server(Protocol):
    """A system under load for one run: the running zchannels (Project), or a server the
    bench started to compare with (baseline.Baseline: raw Tornado, gunicorn, Daphne)."""

    name: str
    notes: list[str]  # what keeps it from taking the whole load
    compression: bool  # the bench's clients offer it permessage-deflate

    @property
    def system(self) -> str:
        """run["system"]: project, baseline, channels-async or channels-sync."""

    @property
    def base(self) -> str:
        """host:port it listens on."""

    @property
    def stats(self) -> accounting.StatsSource | None:
        """Where its processes write zmq_sent (None: no ZeroMQ)."""

    def pids(self) -> list[int]:
        """Every process of it now, for CPU and memory."""

    def stop(self) -> None:
        """Stop it, if the bench started it (by its PID, bounded in time)."""


def plan(args: argparse.Namespace, url: str,
         channels: ChannelsServers | None) -> list[Callable[[], Server]]:
    """The systems one round runs against `url`, in order, each as a function that
    starts it: zchannels, then raw Tornado (gunicorn for WSGI paths), then Channels 4
    with async and with sync consumers (not for WSGI paths: Django is the application
    there, as on /hello)."""
    parts = urlsplit(url)
    wsgi = args.mode == "http" and parts.path.startswith("/app/")
    variants = COMPRESSION_VARIANTS[args.compression]  # each system off, then on
    starters: list[Callable[[], Server]] = [functools.partial(Project, args, url, deflate)
                                            for deflate in variants]
    if args.baseline:
        starters += [functools.partial(start_baseline, args, wsgi, deflate)
                     for deflate in variants]
    if channels is not None and not wsgi:
        starters += [functools.partial(channels.start_daphne, flavour) for flavour in FLAVOURS]
    return starters


def start_baseline(args: argparse.Namespace, wsgi: bool, compression: bool = False
                   ) -> Baseline:
    """Raw Tornado (with permessage-deflate, if `compression`), or for a WSGI path
    gunicorn, in a fresh directory of its own."""
    workdir = tempfile.mkdtemp(prefix="zcbench")
    if wsgi:
        return start_gunicorn(workdir, args.http_workers)
    return start_tornado(workdir, args.connections or 0 if args.mode == "idle" else 0,
                         compression)


def check_wire_options(args: argparse.Namespace) -> None:
    """--compression, --payload, --size, --messages: refuse what cannot be measured, and
    settle the payload size."""
    if args.compression != "off" and (args.mode == "http" or args.channels):
        raise SystemExit("scripts/bench: --compression is for the WebSocket modes of "
                         "zchannels and raw Tornado (not http, not --channels)")
    if args.mode == "chat-bytes" and (args.channels or args.messages < 1):
        raise SystemExit("scripts/bench: chat-bytes needs --messages >= 1, and compares "
                         "zchannels (and with --baseline raw Tornado) only")
    if args.size is None:
        args.size = payloads.CHAT_BYTES if args.payload == "chat" else DEFAULT_SIZE


def wire_description(args: argparse.Namespace) -> dict[str, Any] | None:
    """What the report says of compression and payload (None by default)."""
    if args.compression == "off" and args.payload == "x" and args.mode != "chat-bytes":
        return None
    found: dict[str, Any] = {}
    if args.compression != "off" or args.mode == "chat-bytes":
        found["compression"] = (
            ("off, then on" if args.mode == "chat-bytes" or args.compression == "both"
             else "on") + f": clients offer '{wsclient.DEFLATE_OFFER}' and send each message "
            f"compressed on its own (zlib level {wsclient.CLIENT_LEVEL}); zchannels as its "
            "config says (compression = true; level compression_level); raw Tornado "
            f"{baseline_options()}")
    if args.mode in ("echo", "broadcast"):
        found["payload"] = (f"chat-like JSON of about {args.size} bytes "
                            "(scripts/benchkit/payloads.py)" if args.payload == "chat"
                            else f"numbered filler, {args.size} bytes")
    return found


def baseline_options() -> str:
    from benchkit.baseline import COMPRESSION_OPTIONS
    return f"get_compression_options {COMPRESSION_OPTIONS}"


async def deflate_agreed(url: str) -> str | None:
    """None when the server at `url` agrees to permessage-deflate, else why not."""
    try:
        ws = await wsclient.connect(url, 10.0, deflate=True)
    except (OSError, asyncio.TimeoutError, wsclient.HandshakeError) as e:
        return f"{type(e).__name__}: {e}"
    ws.close()
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.processes < 1 or args.duration <= 0 and args.mode != "idle":
        raise SystemExit("scripts/bench: --processes must be >= 1 and --duration > 0")
    if args.rounds is not None and args.rounds < 1:
        raise SystemExit("scripts/bench: --rounds must be >= 1")
    if args.mode == "idle" and (args.rounds or 1) > 1:
        # Its figure is memory growth: after the first round the running server reuses
        # what earlier connections made Python allocate, and shows almost none.
        raise SystemExit("scripts/bench: idle measures one round on a freshly started "
                         "server; repeat it with a restart in between instead of --rounds")
    check_wire_options(args)
    args.rounds = args.rounds or (3 if (args.baseline or args.channels)
                                  and args.mode != "idle" else 1)
    if args.stats_interval is None:
        args.stats_interval = configured_stats_interval()
    show = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
    targets = endpoints(args.mode, args.url, args.path, args.history)
    command = " ".join(shlex.quote(a) for a in [os.environ.get("ZCHANNELS_BENCH_PROG",
                                                               "scripts/bench")]
                       + list(sys.argv[1:] if argv is None else argv))
    if args.mode == "idle" and not Project(args, args.url).pids():
        print(f"scripts/bench: no running zchannels process found in {args.run_dir}/ready "
              "(idle measures server memory): give --run-dir or --server-pid", file=sys.stderr)
        return 2
    if args.compression != "off" or args.mode == "chat-bytes":
        why_not = asyncio.run(deflate_agreed(targets[0]))
        if why_not:
            print(f"scripts/bench: {targets[0]} does not do permessage-deflate ({why_not}): "
                  "run zchannels with compression = true, e.g. a copy of conf/zchannels.toml "
                  "with that line changed, given as ZCHANNELS_CONFIG=<copy> scripts/run",
                  file=sys.stderr)
            return 2
    channels = None
    if args.channels:
        try:
            channels = ChannelsServers(args.channels_venv)
        except SetupError as e:
            print(f"scripts/bench: {e}", file=sys.stderr)
            return 2

    document: dict[str, Any] = {
        "mode": args.mode, "title": title(args.mode, args), "command": command,
        "argv": sys.argv if argv is None else argv, "started": utc_now(),
        "machine": report.machine(), "loadavg_before": os.getloadavg(),
        "versions": report.versions(), "options": vars(args), "rounds": args.rounds}
    if channels is not None:
        document["versions"]["channels"] = channels.versions()
    wire = wire_description(args)
    if wire is not None:
        document["wire"] = wire
    print(f"{document['title']} -- {command}", file=sys.stderr)
    if args.mode == "chat-bytes":
        return wirebytes.run(args, targets[0], document)
    runs: list[dict[str, Any]] = []
    try:
        for round_index in range(args.rounds):
            for url in targets:
                for start in plan(args, url, channels):
                    server = start()
                    try:
                        runs.append(measure(args, url, server, round_index, len(targets) > 1,
                                            show))
                    finally:
                        server.stop()
    except (BenchError, RuntimeError) as e:
        print(f"scripts/bench: {e}", file=sys.stderr)
        return 1
    finally:
        if channels is not None:
            channels.stop()
    document.update(finished=utc_now(), loadavg_after=os.getloadavg())
    columns = summary.columns(args.mode, runs)
    compared = summary.comparisons(args.mode, runs)
    print(report.header(document))
    print(report.table(args.mode, columns, compared))
    document.update(runs=runs, columns=[{k: v for k, v in c.items() if "histogram" not in k}
                                        for c in columns], comparisons=compared)
    os.makedirs(args.results_dir, exist_ok=True)
    stem = os.path.join(args.results_dir, f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    report.write_json(stem + ".json", document)
    print(f"figures: {stem}.json", file=sys.stderr)
    if not args.no_plot:
        why_not = report.plot(stem + ".png", args.mode, columns)
        print(f"note: {why_not}" if why_not else f"plot: {stem}.png", file=sys.stderr)
    return 1 if any(problems(f) for run in runs
                    for f in (run["figures"], run["figures"].get("single")) if f) else 0


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def problems(figures: dict[str, Any]) -> list[str]:
    """What makes a run's figures untrustworthy (the exit status is 1 if any)."""
    found = []
    if not figures.get("balanced", True):
        found.append("the counts do not add up")
    if figures["opened"] < figures["wanted"]:
        found.append("not every connection could be opened")
    if figures.get("mismatched") or figures.get("bad_status"):
        found.append("wrong answers")
    return found


def measure(args: argparse.Namespace, url: str, server: Server, round_index: int,
            several_targets: bool, show: bool) -> dict[str, Any]:
    """Run the load against one started server: the throughput run, then (echo, http)
    the 1-connection latency run. One run record of the JSON."""
    parts = urlsplit(url)
    name = server.name + (f" {parts.path}" if several_targets
                          and server.system != "baseline" else "")
    url = f"{parts.scheme}://{server.base}{parts.path}" + (f"?{parts.query}"
                                                           if parts.query else "")
    label = name + (f" ({round_index + 1}/{args.rounds})" if args.rounds > 1 else "")
    spec = spec_for(args, url, server.compression)
    figures = run_load(args.mode, spec, server.pids, label, show, server.stats)
    if args.mode in report.SINGLE_MODES and not args.no_latency:
        single = {**spec, "connections": 1, "processes": 1, "pace": args.latency_rate}
        figures["single"] = run_load(args.mode, single, server.pids, f"{label}, 1 conn", show)
    figures["warnings"] += [f"{server.system} server: {note}" for note in server.notes]
    run = {"name": name, "system": server.system, "target": parts.path,
           "round": round_index, "url": url, "spec": spec, "figures": figures}
    if args.compression != "off":  # summary.comparisons: this system with and without it
        run.update(compression=server.compression,
                   plain_name=name.replace(DEFLATE_SUFFIX, "", 1))
    return run
