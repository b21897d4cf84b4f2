"""Helpers of scripts/autobahn: write the wstest spec, wait for the server, summarize.

    python scripts/autobahn_summary.py spec --url ws://127.0.0.1:PORT/ws/echo \
        --cases '1.*,7.*' --outdir DIR --out spec.json
    python scripts/autobahn_summary.py wait --port PORT --path /ws/echo --timeout 60
    python scripts/autobahn_summary.py summary --report DIR [--agent zchannels] [--elapsed S]

`summary` prints counts per behavior and per closing behavior, then every case whose
behavior is FAILED or UNIMPLEMENTED (or whose closing behavior is FAILED or UNCLEAN),
with its description and result lines from the case's own JSON file, and exits 1 if
there is any such case (2 if the report is missing). `summarize` is pure: it takes the
parsed index.json entries and case files and returns the text and the verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from typing import Any, Mapping

AGENT = "zchannels"
DEFAULT_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*",
                 "10.*", "12.*", "13.*")
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED")
CLOSE_BEHAVIORS = ("OK", "WRONG CODE", "FAILED BY CLIENT", "INFORMATIONAL", "UNCLEAN",
                   "FAILED")
FAILING = ("FAILED", "UNIMPLEMENTED")
FAILING_CLOSE = ("FAILED", "UNCLEAN")
DESCRIPTION_CHARS = 300  # of a case's description in the summary (some run to pages)


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort "9.10.2" after "9.2.1", as the report does."""
    return tuple(int(part) for part in re.findall(r"\d+", case_id))


def make_spec(url: str, cases: list[str], outdir: str, agent: str = AGENT) -> dict[str, Any]:
    return {
        "outdir": outdir,
        "servers": [{"agent": agent, "url": url}],
        "cases": cases,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }


def parse_cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    if not cases:
        raise ValueError("--cases needs at least one case pattern, e.g. '1.*,7.*'")
    return cases


def _one_line(text: Any, limit: int = DESCRIPTION_CHARS) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summarize(entries: Mapping[str, Mapping[str, Any]],
              details: Mapping[str, Mapping[str, Any]],
              elapsed: float | None = None, agent: str = AGENT) -> tuple[str, bool]:
    """The summary text of one agent's results, and whether every case passed.

    `entries` is index.json's table for the agent (case id -> behavior, behaviorClose,
    duration, remoteCloseCode); `details` maps case ids to their parsed case files
    (only the failing ones are read; a missing one is reported as such).
    """
    ids = sorted(entries, key=case_key)
    counts: dict[str, int] = {}
    close_counts: dict[str, int] = {}
    for case_id in ids:
        entry = entries[case_id]
        counts[entry.get("behavior", "?")] = counts.get(entry.get("behavior", "?"), 0) + 1
        close = entry.get("behaviorClose", "?")
        close_counts[close] = close_counts.get(close, 0) + 1
    failing = [c for c in ids if entries[c].get("behavior") in FAILING
               or entries[c].get("behaviorClose") in FAILING_CLOSE]

    def line_of(table: dict[str, int], known: tuple[str, ...]) -> str:
        names = list(known) + sorted(set(table) - set(known))
        return ", ".join(f"{name} {table.get(name, 0)}" for name in names)

    case_ms = sum(int(entries[c].get("duration") or 0) for c in ids)
    out = [f"Autobahn|Testsuite results for {agent}: {len(ids)} cases"
           + (f", {elapsed:.1f} s in all" if elapsed is not None else "")
           + f" (cases themselves: {case_ms / 1000:.1f} s)",
           f"  behavior:      {line_of(counts, BEHAVIORS)}",
           f"  behaviorClose: {line_of(close_counts, CLOSE_BEHAVIORS)}"]
    if not ids:
        out.append("NO CASES RAN: check the case patterns and wstest's output")
        return "\n".join(out), False
    if failing:
        out.append(f"{len(failing)} failing case(s):")
        for case_id in failing:
            entry, detail = entries[case_id], details.get(case_id)
            out.append(f"  {case_id}: behavior {entry.get('behavior')}, close "
                       f"{entry.get('behaviorClose')} (remote close code "
                       f"{entry.get('remoteCloseCode')}, {entry.get('duration')} ms)")
            if detail is None:
                out.append(f"      (no case file {entry.get('reportfile', '?')})")
                continue
            out.append(f"      description: {_one_line(detail.get('description'))}")
            out.append(f"      expectation: {_one_line(detail.get('expectation'))}")
            out.append(f"      result:      {_one_line(detail.get('result'))}")
            out.append(f"      close:       {_one_line(detail.get('resultClose'))}")
    else:
        out.append("every case passed (OK, NON-STRICT or INFORMATIONAL, closed properly)")
    return "\n".join(out), not failing


def load_report(report_dir: str, agent: str = AGENT) -> tuple[dict[str, Any], dict[str, Any]]:
    """index.json's entries for `agent`, and the case files of the failing cases."""
    with open(os.path.join(report_dir, "index.json")) as f:
        index = json.load(f)
    entries = index.get(agent, {})
    details = {}
    for case_id, entry in entries.items():
        if entry.get("behavior") in FAILING or entry.get("behaviorClose") in FAILING_CLOSE:
            try:
                with open(os.path.join(report_dir, entry.get("reportfile", ""))) as f:
                    details[case_id] = json.load(f)
            except (OSError, ValueError):
                pass
    return entries, details


def process_running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet waited for, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_ready(host: str, port: int, path: str, timeout: float,
               pid: int | None = None) -> str | None:
    """None once a WebSocket at `path` echoes a message back, else the last error
    (at once if the server's process `pid` has ended)."""
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    async def echo_once() -> None:
        conn = await websocket_connect(f"ws://{host}:{port}{path}", connect_timeout=2)
        try:
            conn.write_message("ready?")
            reply = await conn.read_message()
            if reply != "ready?":
                raise RuntimeError(f"echo answered {reply!r}")
        finally:
            conn.close()

    deadline = time.monotonic() + timeout
    error = "not tried"
    while time.monotonic() < deadline:
        if pid is not None and not process_running(pid):
            return f"the server (pid {pid}) has exited"
        try:
            with socket.create_connection((host, port), timeout=1):
                pass
            IOLoop.current().run_sync(echo_once, timeout=5)
            return None
        except Exception as e:  # refused while starting, timeout while workers start
            error = f"{type(e).__name__}: {e}"
        time.sleep(0.3)
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    spec = sub.add_parser("spec", help="write the fuzzingclient spec")
    spec.add_argument("--url", required=True)
    spec.add_argument("--cases", default=",".join(DEFAULT_CASES))
    spec.add_argument("--outdir", required=True)
    spec.add_argument("--agent", default=AGENT)
    spec.add_argument("--out", required=True)
    wait = sub.add_parser("wait", help="wait until the server echoes")
    wait.add_argument("--host", default="127.0.0.1")
    wait.add_argument("--port", type=int, required=True)
    wait.add_argument("--path", default="/ws/echo")
    wait.add_argument("--timeout", type=float, default=60.0)
    wait.add_argument("--pid", type=int, help="give up when this process ends")
    summary = sub.add_parser("summary", help="summarize a report directory")
    summary.add_argument("--report", required=True)
    summary.add_argument("--agent", default=AGENT)
    summary.add_argument("--elapsed", type=float)
    args = parser.parse_args(argv)

    if args.command == "spec":
        try:
            cases = parse_cases(args.cases)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        with open(args.out, "w") as f:
            json.dump(make_spec(args.url, cases, args.outdir, args.agent), f, indent=2)
        return 0
    if args.command == "wait":
        error = wait_ready(args.host, args.port, args.path, args.timeout, args.pid)
        if error is not None:
            print(f"server not ready: {error}", file=sys.stderr)
            return 1
        return 0
    try:
        entries, details = load_report(args.report, args.agent)
    except (OSError, ValueError) as e:
        print(f"no usable report in {args.report}: {e}", file=sys.stderr)
        return 2
    text, passed = summarize(entries, details, args.elapsed, args.agent)
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
