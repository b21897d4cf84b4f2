"""``scripts/bench MODE`` (``python -m runtime.bench``, ``zchannels bench``): load a
running zchannels, and with ``--baseline`` the raw-Tornado (or gunicorn) ceiling in the
same run, then print a table and write a JSON file and a PNG plot."""
from __future__ import annotations

import argparse
import os
import secrets
import shlex
import sys
import tempfile
import time
from typing import Any, Callable
from urllib.parse import urlsplit

from . import report, servers
from .baseline import Baseline, start_gunicorn, start_tornado
from .runner import BenchError, run_load

MODES = ("echo", "broadcast", "idle", "http")
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CONNECTIONS = {"echo": 50, "idle": 1000, "http": 50}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=MODES, help="echo: closed-loop round trips on /ws/echo; "
                   "broadcast: one chat room (/ws/chat/<room>), fixed rate or flood; idle: "
                   "connections held open, server memory per connection; http: GET requests")
    p.add_argument("--url", default=DEFAULT_URL, help="the server (default %(default)s); a "
                   "path in it replaces the mode's default path")
    p.add_argument("--path", action="append", help="http: a path to request (repeatable; "
                   "default /hello, the HTTP consumer, and /app/hello, the WSGI fallback)")
    p.add_argument("--baseline", action="store_true", help="also run the same load against "
                   "raw Tornado (gunicorn for WSGI paths) started by the bench, and print ratios")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load (default 5)")
    p.add_argument("-c", "--connections", type=int,
                   help="echo/http: connections, each a closed loop (default 50); "
                   "idle: connections held (default 1000)")
    p.add_argument("--size", type=int, default=32, help="echo: message bytes (default 32)")
    p.add_argument("--subscribers", type=int, default=1000,
                   help="broadcast: members of the room (default 1000)")
    p.add_argument("--publishers", type=int, default=2,
                   help="broadcast: members that also publish (default 2)")
    p.add_argument("--rate", type=float, default=0.0, help="broadcast: messages per second "
                   "from all publishers together; 0 (default): flood")
    p.add_argument("--window", type=int, default=10, help="broadcast flood: messages each "
                   "publisher keeps in flight (default 10)")
    p.add_argument("--processes", type=int, default=max(2, os.cpu_count() or 2),
                   help="client processes (default: one per core, at least 2)")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait after the load "
                   "for what is still on its way before counting it lost (default 10)")
    p.add_argument("--quiet", type=float, default=1.0, help="broadcast: seconds without a "
                   "delivery that end the drain (default 1)")
    p.add_argument("--run-dir", default=os.environ.get("ZCHANNELS_RUN_DIR", "run"),
                   help="zchannels run directory, to find the server processes "
                   "(ready/<role>.<pid>) for CPU and memory (default $ZCHANNELS_RUN_DIR or run)")
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


def endpoints(mode: str, url: str, paths: list[str] | None) -> list[str]:
    """The URLs the mode loads (one run each): ws:// for WebSocket modes, http:// for http."""
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
    if mode == "broadcast":
        return [f"{base}/ws/chat/bench-{secrets.token_hex(3)}"]
    return [f"{base}/ws/echo"]


def spec_for(args: argparse.Namespace, url: str) -> dict[str, Any]:
    connections = args.connections or DEFAULT_CONNECTIONS.get(args.mode, 50)
    spec = {"url": url, "duration": args.duration, "drain": args.drain, "quiet": args.quiet,
            "processes": args.processes, "size": args.size, "connections": connections,
            "subscribers": args.subscribers,
            "publishers": min(args.publishers, args.subscribers),
            "rate": args.rate, "window": args.window}
    if args.mode == "idle":
        spec["duration"] = 0.0  # one echo per connection proves it open; then it idles
    if args.mode != "broadcast":
        spec["processes"] = max(1, min(args.processes, connections))
    return spec


def title(mode: str, args: argparse.Namespace) -> str:
    if mode == "broadcast":
        kind = "flood" if args.rate <= 0 else f"{args.rate:g} msg/s"
        return f"broadcast, {args.subscribers:,} subscribers, {kind}"
    if mode == "idle":
        return f"idle, {args.connections or DEFAULT_CONNECTIONS['idle']:,} connections"
    return f"{mode}, {args.connections or DEFAULT_CONNECTIONS[mode]} connections, " \
        f"{args.duration:g} s"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.processes < 1 or args.duration <= 0 and args.mode != "idle":
        raise SystemExit("scripts/bench: --processes must be >= 1 and --duration > 0")
    show = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
    targets = endpoints(args.mode, args.url, args.path)
    command = " ".join(shlex.quote(a) for a in [os.environ.get("ZCHANNELS_BENCH_PROG",
                                                               "scripts/bench")]
                       + list(sys.argv[1:] if argv is None else argv))

    def project_pids() -> list[int]:
        if args.server_pid:
            return servers.with_descendants(args.server_pid)
        return sorted(servers.zchannels_pids(args.run_dir))

    if args.mode == "idle" and not project_pids():
        print(f"scripts/bench: no running zchannels process found in {args.run_dir}/ready "
              "(idle measures server memory): give --run-dir or --server-pid", file=sys.stderr)
        return 2

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{title(args.mode, args)} -- {command}", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        for url in targets:
            project = measure(args, url, f"{args.name} {urlsplit(url).path}"
                              if len(targets) > 1 else args.name, "project", project_pids, show)
            runs.append(project)
            if args.baseline:
                base = run_baseline(args, url, show)
                runs.append(base)
                pairs.append((project, base))
    except BenchError as e:
        print(f"scripts/bench: {e}", file=sys.stderr)
        return 1
    compared = report.comparisons(args.mode, pairs)
    print(report.table(args.mode, runs, compared))
    os.makedirs(args.results_dir, exist_ok=True)
    stem = os.path.join(args.results_dir, f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    document = {"mode": args.mode, "title": title(args.mode, args), "command": command,
                "argv": sys.argv if argv is None else argv, "started": started,
                "machine": report.machine(), "versions": report.versions(),
                "options": vars(args), "runs": runs, "comparisons": compared}
    report.write_json(stem + ".json", document)
    print(f"figures: {stem}.json", file=sys.stderr)
    if not args.no_plot:
        why_not = report.plot(stem + ".png", args.mode, runs)
        print(f"note: {why_not}" if why_not else f"plot: {stem}.png", file=sys.stderr)
    return 1 if any(problems(run["figures"]) for run in runs) else 0


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


def measure(args: argparse.Namespace, url: str, name: str, system: str,
            pids: Callable[[], list[int]], show: bool) -> dict[str, Any]:
    spec = spec_for(args, url)
    figures = run_load(args.mode, spec, pids, name, show)
    return {"name": name, "system": system, "url": url, "spec": spec, "figures": figures}


def run_baseline(args: argparse.Namespace, url: str, show: bool) -> dict[str, Any]:
    """Start the matching baseline, run the identical load against it, stop it."""
    parts = urlsplit(url)
    workdir = tempfile.mkdtemp(prefix="zcbench")
    wsgi = args.mode == "http" and parts.path.startswith("/app/")
    fds = args.connections or 0 if args.mode == "idle" else 0
    server: Baseline = start_gunicorn(workdir, args.http_workers) if wsgi \
        else start_tornado(workdir, fds)
    try:
        base_url = f"{parts.scheme}://{server.base}{parts.path}" \
            + (f"?{parts.query}" if parts.query else "")
        run = measure(args, base_url, server.name, "baseline", server.pids, show)
        run["figures"]["warnings"] += [f"baseline server: {note}" for note in server.notes]
        return run
    finally:
        server.stop()
