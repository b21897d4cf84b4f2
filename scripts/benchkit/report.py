"""What a bench run leaves behind: a table on stdout, a JSON file of every figure (with
the machine, versions and exact command) and a PNG plot (if matplotlib is installed)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

from benchkit.histogram import cdf_points
from zchannels.core.stats import Histogram

# Per mode: (figure key, label, format, higher is better) for the table and the ratios.
METRICS: dict[str, list[tuple[str, str, str, bool]]] = {
    "echo": [("rate", "round trips/s", "{:,.0f}", True),
             ("latency.p50", "RTT p50 (ms)", "ms", False),
             ("latency.p90", "RTT p90 (ms)", "ms", False),
             ("latency.p99", "RTT p99 (ms)", "ms", False),
             ("latency.max", "RTT max (ms)", "ms", False)],
    "broadcast": [("rate", "deliveries/s", "{:,.0f}", True),
                  ("latency.p50", "latency p50 (ms)", "ms", False),
                  ("latency.p90", "latency p90 (ms)", "ms", False),
                  ("latency.p99", "latency p99 (ms)", "ms", False),
                  ("latency.max", "latency max (ms)", "ms", False),
                  ("lost", "lost deliveries", "{:,}", False)],
    "idle": [("rss_per_connection", "RSS per connection (KiB)", "kib", False),
             ("rss_after", "server RSS with N open (MiB)", "mib", False)],
    "http": [("rate", "requests/s", "{:,.0f}", True),
             ("latency.p50", "latency p50 (ms)", "ms", False),
             ("latency.p90", "latency p90 (ms)", "ms", False),
             ("latency.p99", "latency p99 (ms)", "ms", False),
             ("latency.max", "latency max (ms)", "ms", False)],
}
OPERATION = {"echo": "round trip", "broadcast": "delivery", "http": "request"}
SINGLE_MODES = ("echo", "http")  # modes that also run 1 connection for latency
SINGLE = "1 connection: "  # label prefix of the 1-connection run's figures
# Per mode: the figure keys compared between systems, with a short column label.
RATIOS: dict[str, list[tuple[str, str]]] = {
    "echo": [("rate", "round trips/s"), ("latency.p50", "RTT p50"),
             ("latency.p99", "RTT p99"), ("single.latency.p50", "1-conn p50"),
             ("single.latency.p99", "1-conn p99"), ("cpu_per_op", "server CPU/op"),
             ("ctx_per_op", "ctx switches/op"), ("bytes_in_per_op", "bytes in/op")],
    "http": [("rate", "requests/s"), ("latency.p50", "p50"), ("latency.p99", "p99"),
             ("single.latency.p50", "1-conn p50"), ("single.latency.p99", "1-conn p99"),
             ("cpu_per_op", "server CPU/op"), ("ctx_per_op", "ctx switches/op")],
    "broadcast": [("rate", "deliveries/s"), ("latency.p50", "p50"), ("latency.p99", "p99"),
                  ("cpu_per_op", "server CPU/op"), ("ctx_per_op", "ctx switches/op"),
                  ("bytes_in_per_op", "bytes in/op")],
    "idle": [("rss_per_connection", "RSS/connection")],
}
EACH_ROUND = ("rate", "single.latency.p50", "cpu_per_op", "rss_per_connection")
# Rows and ratios only runs with --compression or --payload have (bytes on the wire):
# left out of the table, the ratios and the JSON's columns when no run has them.
WIRE = ("bytes_in_per_op", "bytes_out_per_message")
EXTRA_ROWS = [("connections", "opened", "{:,.0f}"), ("client CPU (cores)", "client_cpu", "{:.2f}"),
              ("busiest client process", "client_cpu_max_process", "{:.0%}"),
              ("server CPU (cores)", "server_cpu", "{:.2f}"),
              ("server processes", "server_processes", "{:,.0f}"),
              ("machine load average (1 min)", "loadavg.0", "{:.2f}")]


def rows(mode: str) -> list[tuple[str, str, str, bool]]:
    """Every row of the mode's table: (figure key, label, format, higher is better)."""
    found = list(METRICS[mode])
    if mode in OPERATION:
        op = OPERATION[mode]
        found += [("cpu_per_op", f"server CPU per {op} (µs)", "us", False),
                  ("ctx_per_op", f"context switches per {op}", "{:.2f}", False),
                  ("zmq_per_op", f"ZeroMQ messages per {op}", "{:.2f}", False)]
    if mode in ("echo", "broadcast"):
        found += [("bytes_in_per_op", f"bytes received per {OPERATION[mode]}", "{:,.1f}",
                   False),
                  ("bytes_out_per_message", "bytes sent per message", "{:,.1f}", False)]
    if mode in SINGLE_MODES:
        found += [(f"single.{key}", SINGLE + label, style, better)
                  for key, label, style, better in METRICS[mode]
                  if key in ("latency.p50", "latency.p99")]
        found.append(("single.cpu_per_op", f"{SINGLE}server CPU per {OPERATION[mode]} (µs)",
                      "us", False))
    found += [(key, label, style, False) for label, key, style in EXTRA_ROWS]
    return found


def lookup(figures: dict[str, Any], key: str) -> Any:
    value: Any = figures
    for part in key.split("."):
        if isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def fmt(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if style == "ms":
        return f"{value * 1000:.2f}"
    if style == "us":
        return f"{value * 1e6:,.0f}"
    if style == "kib":
        return f"{value / 1024:.1f}"
    if style == "mib":
        return f"{value / 1048576:.1f}"
    return style.format(value)


def header(document: dict[str, Any]) -> str:
    """What docs/benchmarks.md must show beside every figure: command, date, machine."""
    machine = document["machine"]
    model = machine.get("Model name")
    before, after = document.get("loadavg_before"), document.get("loadavg_after")

    def load(values: Any) -> str:
        return " / ".join(f"{v:.2f}" for v in values) if values else "?"
    commit = document.get("versions", {}).get("git_commit")
    return "\n".join([
        f"{document['title']}",
        f"command: {document['command']}",
        f"date:    {document['started']} to {document.get('finished', '?')}"
        + (f" (git {commit})" if commit else ""),
        f"machine: {machine.get('cpus')} cores" + (f" ({model})" if model else "")
        + f", load average (1 / 5 / 15 min) {load(before)} before, {load(after)} after"]
        + [f"{key + ':':<8} {text}" for key, text in document.get("wire", {}).items()])


def table(mode: str, columns: list[dict[str, Any]], compared: list[dict[str, Any]]) -> str:
    """The figures of every system side by side (medians over the rounds), then the
    ratios, then the warnings and notes of every run."""
    found = [row for row in rows(mode) if row[0] not in WIRE
             or any(c["median"].get(row[0]) is not None for c in columns)]
    width = max([30] + [len(label) for _, label, _, _ in found])
    cols = [max(14, len(c["name"])) for c in columns]
    lines = [" " * width + "  " + "  ".join(c["name"].rjust(w) for c, w in zip(columns, cols))]
    for key, label, style, _ in found:
        cells = [fmt(c["median"].get(key), style).rjust(w) for c, w in zip(columns, cols)]
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    lines += ratio_table(mode, compared)
    seen: set[tuple[str, str, str]] = set()
    for column in columns:
        for kind, items in (("WARNING", column["warnings"]), ("note", column["notes"])):
            for text in items:
                if (kind, column["name"], text) not in seen:
                    seen.add((kind, column["name"], text))
                    lines.append(f"{kind} ({column['name']}): {text}")
    return "\n".join(lines)


def ratio_table(mode: str, compared: list[dict[str, Any]]) -> list[str]:
    """One line per pair of systems: each ratio (median of the per-round ratios), the
    server CPU per operation of both beside it; then each round's ratios."""
    pairs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for c in compared:
        pairs.setdefault((c["system"], c["reference"]), {})[c["metric"]] = c
    if not any(c["ratio"] is not None for c in compared):
        return []
    metrics = [m for m in RATIOS[mode] if m[0] not in WIRE
               or any(m[0] in by_metric for by_metric in pairs.values())]
    rounds = max(len(c["rounds"]) for c in compared)
    names = [f"{a} vs {b}" for a, b in pairs]
    width = max([28] + [len(n) for n in names])
    cols = [max(10, len(label)) for _, label in metrics]
    lines = ["", "ratios, first system / second (" + (
        f"median of the {rounds} per-round ratios; " if rounds > 1 else "")
        + "higher is better for throughput, lower for the rest):",
             " " * width + "  " + "  ".join(label.rjust(w) for (_, label), w
                                            in zip(metrics, cols))]
    details = []
    for name, by_metric in zip(names, pairs.values()):
        cells = []
        for (key, _), w in zip(metrics, cols):
            row = by_metric.get(key)
            cells.append(("-" if row is None or row["ratio"] is None
                          else f"{row['ratio']:.2f}x").rjust(w))
        cpu = by_metric.get("cpu_per_op")
        beside = ""
        if cpu is not None and cpu["value"] is not None and cpu["reference_value"] is not None:
            beside = f"  ({fmt(cpu['value'], 'us')} vs {fmt(cpu['reference_value'], 'us')} µs)"
        lines.append(name.ljust(width) + "  " + "  ".join(cells) + beside)
        if rounds > 1:  # the headline ratios only; the JSON has every one
            each = [f"{label} " + " ".join("-" if r is None else f"{r:.2f}"
                                           for r in by_metric[key]["rounds"])
                    for key, label in metrics if key in by_metric and key in EACH_ROUND]
            details.append(f"  {name}: " + "; ".join(each))
    if details:
        lines += ["each round:"] + details
    return lines


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"uname": " ".join(platform.uname()), "cpus": os.cpu_count(),
                            "python": sys.version.split()[0]}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in lscpu.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "CPU max MHz"):
                info[name.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory"] = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def versions() -> dict[str, str]:
    import tornado
    import ujson
    import zmq
    found = {"tornado": tornado.version, "pyzmq": zmq.__version__,
             "libzmq": zmq.zmq_version(), "ujson": ujson.__version__}
    try:
        from importlib.metadata import version
        found["zchannels"] = version("zchannels")
    except Exception:  # not installed as a distribution
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            found["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def write_json(path: str, document: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def plot(path: str, mode: str, columns: list[dict[str, Any]]) -> str | None:
    """Latency distribution and throughput (or memory) of every system (its rounds merged,
    and their median), as a PNG. Returns why it was not drawn, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("matplotlib is not installed, so no PNG was drawn (the JSON and the table "
                "are complete); install it with: .venv/bin/pip install 'zchannels[bench]'")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, column in enumerate(columns):
        colour = f"C{index % 10}"
        for key, style, suffix in (("histogram", "-", ""),
                                   ("single_histogram", "--", ", 1 connection")):
            hist = Histogram.from_dict(column[key])
            if hist.count:
                xs, ys = cdf_points(hist)
                left.step([x * 1000 for x in xs], ys, style, where="post", color=colour,
                          label=column["name"] + suffix)
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of samples at or below")
    left.set_title(f"{mode}: latency distribution")
    left.grid(True, which="both", alpha=0.3)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)
    names = [column["name"] for column in columns]
    if mode == "idle":
        values = [(c["median"].get("rss_per_connection") or 0) / 1024 for c in columns]
        right.set_ylabel("server RSS per connection (KiB)")
        right.set_title("idle: memory per connection (lower is better)")
    else:
        values = [c["median"].get("rate") or 0 for c in columns]
        unit = {"echo": "round trips/s", "broadcast": "deliveries/s", "http": "requests/s"}
        right.set_ylabel(unit[mode])
        right.set_title(f"{mode}: throughput (higher is better)")
    bars = right.bar(range(len(names)), values,
                     color=["tab:blue" if c["system"] == "project" else "tab:gray"
                            for c in columns])
    right.set_xticks(range(len(names)))
    right.set_xticklabels(names, rotation=15, ha="right", fontsize=8)
    right.bar_label(bars, fmt="%.0f" if mode != "idle" else "%.1f", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
