"""From the runs of every round to one figure per system and one ratio per pair (pure:
tested without processes).

Each system gets the median of its rounds for every figure. A ratio is taken within one
round (two systems measured seconds apart on the same machine), and the median of those
per-round ratios is reported, each round's beside it: on a shared machine, ratios within a
round move far less than absolute figures between rounds.

With ``--compression`` (run["compression"] true) a system is compared with the reference
systems that ran with compression too; with ``--compression both`` each system with
compression is also compared with itself without it.
"""
from __future__ import annotations

import statistics
from typing import Any

from benchkit.histogram import latency_histogram
from zchannels.core.stats import Histogram
from benchkit.report import RATIOS, WIRE, lookup, rows

# Systems every other system is compared with (run["system"] of their runs).
REFERENCES = ("baseline", "channels-async")


def median(values: list[Any]) -> float | None:
    """The median of the numbers among `values` (None and missing figures left out)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(numbers) if numbers else None


def wrong_answers(figures: dict[str, Any]) -> bool:
    """A run that got wrong answers has no ratio: its speed means nothing."""
    return any(f.get(k) for f in (figures, figures.get("single") or {})
               for k in ("bad_status", "mismatched"))


def columns(mode: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One column per system (in the order first run): the median of each table row over
    its rounds, its merged latency histogram, and its runs' warnings and notes."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    found = []
    # Bytes on the wire only when some run counted them (--compression, --payload).
    keys = [key for key, _, _, _ in rows(mode) if key not in WIRE
            or any(lookup(run["figures"], key) is not None for run in runs)]
    for name, own in by_name.items():
        latency, single = latency_histogram(), latency_histogram()
        for run in own:
            for merged, figures in ((latency, run["figures"]),
                                    (single, run["figures"].get("single") or {})):
                if figures.get("histogram"):
                    merged.merge(Histogram.from_dict(figures["histogram"]))
        found.append({
            "name": name, "system": own[0]["system"], "target": own[0].get("target"),
            "rounds": len(own),
            "median": {key: median([lookup(run["figures"], key) for run in own])
                       for key in keys},
            "each_round": {key: [lookup(run["figures"], key) for run in own]
                           for key in keys},
            "histogram": latency.to_dict(), "single_histogram": single.to_dict(),
            "warnings": [w for run in own for w in run["figures"].get("warnings", [])
                         + [f"1 connection: {x}" for x in
                            (run["figures"].get("single") or {}).get("warnings", [])]],
            "notes": [n for run in own for n in run["figures"].get("notes", [])]})
    return found


def comparisons(mode: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every system against each reference system loading the same target (raw Tornado
    or gunicorn, and Channels async) with the same compression; then every system with
    compression against itself without (--compression both): per metric, the ratio in
    each round and their median, beside both systems' medians."""
    targets: dict[Any, dict[str, dict[int, dict[str, Any]]]] = {}
    kinds: dict[str, str] = {}
    compressed: dict[str, bool] = {}
    plain_name: dict[str, str] = {}  # a system's name with compression -> without
    for run in runs:
        targets.setdefault(run.get("target"), {}).setdefault(run["name"], {})[
            run.get("round", 0)] = run
        kinds[run["name"]] = run["system"]
        compressed[run["name"]] = bool(run.get("compression"))
        if run.get("compression") and run.get("plain_name"):
            plain_name[run["name"]] = run["plain_name"]
    found = []
    for systems in targets.values():
        for deflate in sorted({compressed[n] for n in systems}):
            alike = {n: r for n, r in systems.items() if compressed[n] == deflate}
            references = [n for kind in REFERENCES for n in alike if kinds[n] == kind]
            for reference in references:
                for name in alike:
                    if name != reference and kinds[name] != "baseline":
                        found += compare(mode, name, reference, alike[name], alike[reference])
        for name in systems:
            if plain_name.get(name) in systems:
                found += compare(mode, name, plain_name[name], systems[name],
                                 systems[plain_name[name]])
    return found


def compare(mode: str, name: str, reference: str, mine: dict[int, dict[str, Any]],
            theirs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One system's runs against a reference's, by round: one entry per metric."""
    higher_better = {key: better for key, _, _, better in rows(mode)}
    labels = {key: label for key, label, _, _ in rows(mode)}
    shared = sorted(set(mine) & set(theirs))
    found = []
    for key, _ in RATIOS[mode]:
        if key in WIRE and all(lookup(run["figures"], key) is None
                               for run in [*mine.values(), *theirs.values()]):
            continue  # no bytes counted (without --compression or --payload)
        each = [None if wrong_answers(mine[r]["figures"])
                or wrong_answers(theirs[r]["figures"])
                else ratio(lookup(mine[r]["figures"], key),
                           lookup(theirs[r]["figures"], key)) for r in shared]
        found.append({
            "system": name, "reference": reference, "metric": key,
            "label": labels.get(key, key),
            "value": median([lookup(mine[r]["figures"], key) for r in mine]),
            "reference_value": median([lookup(theirs[r]["figures"], key)
                                       for r in theirs]),
            "ratio": median(each), "rounds": each,
            "higher_is_better": higher_better.get(key, False)})
    return found


def ratio(value: Any, base: Any) -> float | None:
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or not base:
        return None
    return value / base
