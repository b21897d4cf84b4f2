"""What a bench run leaves behind: a table on stdout, a JSON file of every figure (with
the machine, versions and exact command) and a PNG plot (if matplotlib is installed)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any

from .histogram import Histogram

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
    if style == "kib":
        return f"{value / 1024:.1f}"
    if style == "mib":
        return f"{value / 1048576:.1f}"
    return style.format(value)


def ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or not base:
        return None
    return value / base


def comparisons(mode: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    """For each (project run, baseline run): every metric and project / baseline."""
    rows = []
    for project, base in pairs:
        # A run that got wrong answers has no ratio: its speed means nothing.
        wrong = any(run["figures"].get(k) for run in (project, base)
                    for k in ("bad_status", "mismatched"))
        for key, label, _, higher_better in METRICS[mode]:
            mine, theirs = lookup(project["figures"], key), lookup(base["figures"], key)
            rows.append({"project": project["name"], "baseline": base["name"], "metric": key,
                         "label": label, "value": mine, "baseline_value": theirs,
                         "ratio": None if wrong else ratio(mine, theirs),
                         "higher_is_better": higher_better})
    return rows


def table(mode: str, runs: list[dict[str, Any]], compared: list[dict[str, Any]]) -> str:
    """The figures of every run side by side, then the ratios."""
    metrics = METRICS[mode]
    names = [run["name"] for run in runs]
    width = max([26] + [len(label) for _, label, _, _ in metrics])
    cols = [max(14, len(n)) for n in names]
    lines = [" " * width + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols))]
    extra_rows = [("connections", "opened", "{:,}"), ("client CPU (cores)", "client_cpu", "{:.2f}"),
                  ("busiest client process", "client_cpu_max_process", "{:.0%}"),
                  ("server CPU (cores)", "server_cpu", "{:.2f}"),
                  ("machine load average (1 min)", "loadavg.0", "{:.2f}")]
    rows = [(label, key, style) for key, label, style, _ in metrics] + \
        [(label, key, style) for label, key, style in extra_rows]
    for label, key, style in rows:
        cells = [fmt(lookup(run["figures"], key), style).rjust(c) for run, c in zip(runs, cols)]
        lines.append(label.ljust(width) + "  " + "  ".join(cells))
    shown = [c for c in compared if c["ratio"] is not None]
    if shown:
        lines.append("")
        lines.append("ratio (project / baseline; higher is better for throughput, "
                     "lower for latency and memory):")
        for c in shown:
            lines.append(f"  {c['label']:<{width}} {c['project']} / {c['baseline']}: "
                         f"{c['ratio']:.2f}x")
    for run in runs:
        for warning in run["figures"].get("warnings", []):
            lines.append(f"WARNING ({run['name']}): {warning}")
    return "\n".join(lines)


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


def plot(path: str, mode: str, runs: list[dict[str, Any]]) -> str | None:
    """Latency distribution and throughput (or memory), project vs baseline, as a PNG.
    Returns why it was not drawn, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("matplotlib is not installed, so no PNG was drawn (the JSON and the table "
                "are complete); install it with: .venv/bin/pip install 'zchannels[bench]'")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        hist = Histogram.from_dict(run["figures"]["histogram"])
        if hist.count:
            xs, ys = hist.cdf_points()
            left.step([x * 1000 for x in xs], ys, where="post", label=run["name"])
    left.set_xscale("log")
    left.set_xlabel("latency (ms, log scale)")
    left.set_ylabel("fraction of samples at or below")
    left.set_title(f"{mode}: latency distribution")
    left.grid(True, which="both", alpha=0.3)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=8)
    names = [run["name"] for run in runs]
    if mode == "idle":
        values = [(run["figures"].get("rss_per_connection") or 0) / 1024 for run in runs]
        right.set_ylabel("server RSS per connection (KiB)")
        right.set_title("idle: memory per connection (lower is better)")
    else:
        values = [run["figures"].get("rate") or 0 for run in runs]
        unit = {"echo": "round trips/s", "broadcast": "deliveries/s", "http": "requests/s"}
        right.set_ylabel(unit[mode])
        right.set_title(f"{mode}: throughput (higher is better)")
    bars = right.bar(range(len(names)), values,
                     color=["tab:blue" if run["system"] == "project" else "tab:gray"
                            for run in runs])
    right.set_xticks(range(len(names)))
    right.set_xticklabels(names, rotation=15, ha="right", fontsize=8)
    right.bar_label(bars, fmt="%.0f" if mode != "idle" else "%.1f", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
