"""The docs against the code: each fact of the reference checked where it lives, and
every code example run.

- docs/reference/config.md names every config key of runtime/core/config.py (and
  runtime/core/history_rules.py: every ``[history]`` limit) with its type and default,
  every environment variable the code reads, the renamed keys -- and nothing the code
  lacks.
- docs/reference/close-codes.md lists exactly the WebSocket close codes the code uses.
- docs/reference/counters.md lists exactly the counters, gauges and histograms the code
  counts, each of the kind the code makes it.
- No doc uses the old names (``import runtime``, ``router_*`` keys, ``to_router``),
  every ``runtime/...`` path a doc names exists, every link between docs resolves (file
  and anchor), docs/architecture.md maps every module and names only tests that exist.
- Every ```python block of README.md and docs/**/*.md runs:

  * a block with a ``def test_...`` runs under pytest in a subprocess, from the
    repository root (so ``consumers`` is the shipped demo), or, in a doc that builds a
    project of its own (blocks marked ``<!-- file: PATH -->``), from that project;
  * a block that declares consumers (``@consumer``, ``.register(...)``) is loaded into a
    `zchannels.testing.TestServer` and driven: a WebSocket opened on each of its paths,
    sent a frame and closed, an HTTP request to each, a message to each named channel.
    Its consumers may fail on the made-up input (a `KeyError`, a `ValueError`), but not
    with an error that shows the example itself is broken (`NameError`,
    `AttributeError`, `TypeError`, `ImportError`);
  * any other block runs as a script in a subprocess, with a timeout, in an empty
    directory with a run directory of its own (so a client's sends reach no server).

  A block that cannot run alone is marked on the line before its fence,
  ``<!-- not-run: the reason -->``. Marked blocks are not collected (a skip would count
  as passing): `test_examples_run_and_the_marked_ones_are_few` checks that they are
  exactly the expected few (``MARKED``: doc, first line, reason), prints them, and how
  many ran.

  In a doc with ``<!-- file: PATH -->`` (or ``<!-- append: PATH -->``) blocks, the
  project is built first: the ``django-admin startproject`` and ``zchannels init`` lines of
  its ```sh blocks are replayed, then those blocks are written to their paths.
- Every ```toml block parses and uses only tables and keys the configuration knows.
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unicodedata
from typing import Any

import pytest

from zchannels.core import config as config_module
from zchannels.core import history_rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RUNTIME = os.path.join(ROOT, "runtime")
REFERENCE = os.path.join(DOCS, "reference")


def doc_files() -> list[str]:
    return [os.path.join(ROOT, "README.md"),
            *sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))]


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# -- markdown -----------------------------------------------------------------------------

@dataclasses.dataclass
class Block:
    path: str  # the markdown file
    line: int  # of the opening fence, from 1
    lang: str
    code: str
    markers: dict[str, str]  # from the HTML comments just before the fence

    @property
    def name(self) -> str:
        return f"{rel(self.path)}:{self.line}"


FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*([\w-]+)\s*:\s*(.*?)\s*-->\s*$")


def blocks(path: str) -> list[Block]:
    """The fenced code blocks of a markdown file that name a language, with the
    markers on the lines just before each."""
    lines = read(path).split("\n")
    found = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start, markers = i, {}
        j = i - 1
        while j >= 0 and MARKER.match(lines[j]):
            key, value = MARKER.match(lines[j]).groups()
            markers[key] = value
            j -= 1
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if lang:
            found.append(Block(path, start + 1, lang.lower(), "\n".join(body) + "\n",
                               markers))
        i += 1
    return found


def tables(text: str, header: str) -> list[tuple[str, list[str]]]:
    """Rows of every table whose header row starts with `header`, with the heading
    (## or ###) above the table."""
    rows: list[tuple[str, list[str]]] = []
    heading = ""
    in_table = in_table_header = False
    for line in text.split("\n"):
        if line.startswith("#"):
            heading = line
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not in_table:
                in_table = line.startswith(header)
                in_table_header = True
                continue
            if in_table_header:  # the |---| line
                in_table_header = False
                continue
            rows.append((heading, cells))
        else:
            in_table = False
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, links reduced to their text,
    punctuation dropped, spaces made hyphens."""
    text = heading.strip().lstrip("#").strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    out = []
    for ch in text:
        if ch in " -":
            out.append("-")
        elif ch == "_" or unicodedata.category(ch)[0] in "LN":
            out.append(ch)
    return "".join(out)


def anchors(path: str) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in read(path).split("\n"):
        if FENCE.match(line):
            in_code = not in_code
        if not in_code and re.match(r"^#{1,6} ", line):
            base = slug(line)
            name, n = base, 1
            while name in found:
                name, n = f"{base}-{n}", n + 1
            found.add(name)
    return found


# -- (a) configuration keys ------------------------------------------------------------------

TYPE_NAMES = {(str,): "string", (int,): "integer", (int, float): "number", (bool,): "boolean"}


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return repr(value)


def code_config_keys() -> dict[str, dict[str, tuple[str, str]]]:
    """{table: {key: (type name, default literal or "required")}} from the code."""
    defaults = config_module.parse({})
    probe = config_module.parse({"server": {"run_dir": "<run_dir>"},
                                 "pools": {"NAME": {"channels": ["*"]}}})
    server = {}
    for key, types in config_module._SCALARS.items():
        server[key] = (TYPE_NAMES[types], toml_literal(getattr(defaults, key)))
    for key in config_module._LISTS:
        server[key] = ("list of strings", toml_literal(getattr(defaults, key)))
    endpoints = {key: ("string", getattr(probe, key)) for key in config_module._ENDPOINTS}
    pool = probe.pools[0]
    pool_types = {"channels": "list of strings", "capacity": "integer",
                  "endpoint_in": "string", "endpoint_out": "string"}
    assert set(pool_types) == set(config_module._POOL_KEYS), "a pool key this test lacks"
    pools = {key: (pool_types[key], "required" if key == "channels"
                   else toml_literal(getattr(pool, key)) if key == "capacity"
                   else getattr(pool, key))
             for key in config_module._POOL_KEYS}
    limits = history_rules.parse_config({}, "defaults")
    history = {**{key: ("integer", toml_literal(getattr(limits, key)))
                  for key in history_rules._COUNTS},
               **{key: ("number", toml_literal(getattr(limits, key)))
                  for key in history_rules._RATES}}
    assert {"max_bytes", "max_groups"} <= set(history), "the [history] keys moved"
    assert {f.name for f in dataclasses.fields(history_rules.HistoryConfig)} \
        == {"groups", *history}, "a [history] key this test lacks"
    rule_fields = {f.name: f for f in dataclasses.fields(history_rules.HistoryRule)}
    rule_types = {"pattern": "string", "size": "integer", "seconds": "number", "key": "string"}
    assert set(rule_types) == set(rule_fields), "a [[history.groups]] key this test lacks"
    rules = {key: (rule_types[key], "required" if key == "pattern"
                   else toml_literal(rule_fields[key].default)) for key in rule_types}
    return {"[server]": server, "[endpoints]": endpoints, "[pools.NAME]": pools,
            "[history]": history, "[[history.groups]]": rules}


def doc_config_keys() -> dict[str, dict[str, tuple[str, str]]]:
    text = read(os.path.join(REFERENCE, "config.md"))
    found: dict[str, dict[str, tuple[str, str]]] = {}
    table = None
    for line in text.split("\n"):
        if line.startswith("## "):
            names = ticked(line)
            table = names[0] if names else None
        if table is None or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        key = ticked(cells[0])[0]
        found.setdefault(table, {})
        assert key not in found[table], f"{table} {key} is in config.md twice"
        found[table][key] = (cells[1], cells[2])
    return found


def test_every_config_key_is_in_the_reference_with_its_type_and_default():
    code, doc = code_config_keys(), doc_config_keys()
    assert set(doc) == set(code), f"config.md's tables {sorted(doc)} are not {sorted(code)}"
    problems = []
    for table, keys in code.items():
        for key, (type_name, default) in keys.items():
            if key not in doc[table]:
                problems.append(f"{table} {key} is missing from config.md")
                continue
            doc_type, doc_default = doc[table][key]
            if doc_type != type_name:
                problems.append(f"{table} {key}: config.md says {doc_type!r}, the code "
                                f"{type_name!r}")
            shown = ticked(doc_default) or ([doc_default] if doc_default == "required" else [])
            accepted = {default}
            if re.fullmatch(r"-?\d+\.0", default):  # 30.0 may be written 30
                accepted.add(default[:-2])
            if not accepted & set(shown):
                problems.append(f"{table} {key}: config.md's default {doc_default!r} is not "
                                f"the code's {default}")
        for key in doc[table]:
            if key not in keys:
                problems.append(f"{table} {key} is in config.md but not in the code")
    assert not problems, "\n".join(problems)


def env_names_in_code() -> set[str]:
    names = set()
    for path in glob.glob(os.path.join(RUNTIME, "**", "*.py"), recursive=True):
        names |= set(re.findall(r"ZCHANNELS_[A-Z_]+", read(path)))
    return names


def test_the_environment_variables_are_those_the_code_reads():
    rows = tables(read(os.path.join(REFERENCE, "config.md")), "| Variable |")
    documented = {ticked(cells[0])[0]: cells[1] for _, cells in rows}
    assert set(documented) == env_names_in_code()
    defaults = config_module.parse({})
    keys = [*config_module._SCALARS, *config_module._LISTS]
    for key in keys:
        variable = f"ZCHANNELS_{key.upper()}"
        value = "7" if config_module._SCALARS.get(key, (str,))[0] in (int, float) else "zz-probe"
        try:
            read_it = getattr(config_module.parse({}, environ={variable: value}), key) \
                != getattr(defaults, key)
        except config_module.ConfigError:
            read_it = True  # read, and the probe's value refused
        says = ticked(documented.get(variable, ""))
        if read_it:
            assert says == [key], f"{variable} sets {key}; config.md says {says}"
        else:
            assert variable not in documented, f"config.md lists {variable}; the code ignores it"


def test_the_renamed_keys_are_those_the_code_still_reads():
    rows = tables(read(os.path.join(REFERENCE, "config.md")), "| Old name |")
    documented = {}
    for _, (old, new) in rows:
        table, old_key = re.fullmatch(r"`\[(\w+)\] (\w+)`", old).groups()
        documented[(table, old_key)] = ticked(new)[0]
    assert documented == config_module.DEPRECATED_KEYS


# -- (b) close codes --------------------------------------------------------------------------

def close_codes_in_code() -> dict[int, set[str]]:
    """Every WebSocket close code the code uses: the CLOSE_* constants anywhere in
    runtime/ and the demo consumers, and the codes the interface, worker and API modules
    write as literals (a close call, a default, a header's code)."""
    found: dict[int, set[str]] = {}
    constant = re.compile(r"\bCLOSE_[A-Z_]+\s*=\s*(\d{4})\b")
    literals = [re.compile(p) for p in (r"\bclose\(\s*(\d{4})\b",
                                        r"""["']code["']\s*,\s*(\d{4})\b""",
                                        r"\bclose_code\s*=\s*(\d{4})\b",
                                        r"\bcode:\s*int\s*=\s*(\d{4})\b")]
    everywhere = [*glob.glob(os.path.join(RUNTIME, "**", "*.py"), recursive=True),
                  *glob.glob(os.path.join(ROOT, "consumers", "*.py"))]
    for path in everywhere:
        text = read(path)
        patterns = [constant]
        if os.path.basename(os.path.dirname(path)) in ("interface", "worker", "api"):
            patterns += literals
        for pattern in patterns:
            for code in pattern.findall(text):
                found.setdefault(int(code), set()).add(rel(path))
    return found


def test_the_close_codes_in_the_reference_are_those_the_code_uses():
    rows = tables(read(os.path.join(REFERENCE, "close-codes.md")), "| Code |")
    documented = [int(cells[0]) for _, cells in rows]
    assert len(documented) == len(set(documented)), "a close code listed twice"
    used = close_codes_in_code()
    assert set(used) >= {1000, 1001, 1011, 4404}, "the search for close codes finds nothing"
    missing = {code: sorted(where) for code, where in used.items() if code not in documented}
    extra = set(documented) - set(used)
    assert not missing, f"close codes the code uses and close-codes.md lacks: {missing}"
    assert not extra, f"close-codes.md lists codes the code does not use: {sorted(extra)}"


# -- (c) counters -------------------------------------------------------------------------------

NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def _string(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "labelled" \
            and node.args:
        return _string(node.args[0])
    return None


def counted_names() -> dict[str, set[str]]:
    """{name: kinds} of everything runtime/ counts, read from the source with `ast`:
    ``incr(x)`` and ``count(x)`` (the in-memory layer's) make counters, the keys of
    ``counters.gauges`` gauges, ``counters.histograms.setdefault(x, ...)`` histograms,
    where x is a name, a ``labelled(name, ...)`` or a variable or attribute assigned one in
    the same module -- or a parameter of the function that counts it, and then whatever the
    module's calls of that function pass for it (``keep_out(ring, TOO_LARGE, ...)``). A
    ``labelled(name, ...)`` whose use the source does not show is "labelled"."""
    found: dict[str, set[str]] = {}

    def add(name: str | None, kind: str) -> None:
        if name and NAME.match(name):
            found.setdefault(name, set()).add(kind)

    for path in glob.glob(os.path.join(RUNTIME, "**", "*.py"), recursive=True):
        tree = ast.parse(read(path), path)
        assigned: dict[str, str] = {}  # variable or attribute -> the labelled name in it
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and _string(node.value) is not None:
                for target in node.targets:
                    key = getattr(target, "id", None) or getattr(target, "attr", None)
                    if key:
                        assigned[key] = _string(node.value)

        def named(node: ast.AST) -> str | None:
            key = getattr(node, "id", None) or getattr(node, "attr", None)
            return _string(node) or (assigned.get(key) if key else None)

        # Counters named by a parameter: {function name: (its parameters, [(index, kind)])}.
        through: dict[str, tuple[list[str], list[tuple[int, str]]]] = {}
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = [a.arg for a in function.args.args]
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("incr", "count") and node.args \
                        and isinstance(node.args[0], ast.Name) \
                        and node.args[0].id in params and node.args[0].id not in assigned:
                    through.setdefault(function.name, (params, []))[1].append(
                        (params.index(node.args[0].id), "counter"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if called not in through:
                continue
            params, uses = through[called]
            bound = isinstance(node.func, ast.Attribute) and params[:1] in (["self"], ["cls"])
            for index, kind in uses:
                index -= 1 if bound else 0
                if 0 <= index < len(node.args):
                    add(named(node.args[index]), kind)

        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                attr = func.attr if isinstance(func, ast.Attribute) else None
                owner = func.value if isinstance(func, ast.Attribute) else None
                if isinstance(func, ast.Name) and func.id in ("incr", "count"):
                    attr = func.id  # a counting function passed in: count("name")
                if attr in ("incr", "count") and node.args:
                    add(named(node.args[0]), "counter")
                elif attr == "setdefault" and isinstance(owner, ast.Name) \
                        and owner.id == "counters" and node.args:
                    add(named(node.args[0]), "counter")
                elif attr == "setdefault" and isinstance(owner, ast.Attribute) \
                        and owner.attr == "histograms" and node.args:
                    add(named(node.args[0]), "histogram")
                elif attr == "update" and isinstance(owner, ast.Attribute) \
                        and owner.attr == "gauges":
                    for keyword in node.keywords:
                        add(keyword.arg, "gauge")
                    for arg in node.args:
                        if isinstance(arg, ast.Dict):
                            for key in arg.keys:
                                add(named(key) if key is not None else None, "gauge")
                elif getattr(func, "id", None) == "labelled" and node.args:
                    add(_string(node.args[0]), "labelled")
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Subscript) \
                            and isinstance(target.value, ast.Attribute) \
                            and target.value.attr == "gauges":
                        add(named(target.slice), "gauge")
    # The interface's census gauges are registered by name from a tuple.
    from zchannels.interface import observe
    for name in observe.KINDS:
        add(name, "gauge")
    return found


def documented_counters() -> dict[str, set[str]]:
    rows = tables(read(os.path.join(REFERENCE, "counters.md")), "| Name | Kind |")
    found: dict[str, set[str]] = {}
    for _, cells in rows:
        name = ticked(cells[0])[0].split("{")[0]
        found.setdefault(name, set()).add(cells[1])
    return found


def test_the_counters_in_the_reference_are_those_the_code_counts():
    code, doc = counted_names(), documented_counters()
    assert len(code) > 100, "the search for counters finds too little"
    missing = sorted(set(code) - set(doc))
    extra = sorted(set(doc) - set(code))
    assert not missing, f"counted in runtime/, missing from counters.md: {missing}"
    assert not extra, f"in counters.md, counted nowhere in runtime/: {extra}"
    wrong = {name: (sorted(doc[name]), sorted(kinds)) for name, kinds in code.items()
             if (kinds - {"labelled"}) and not (kinds - {"labelled"}) <= doc[name]}
    assert not wrong, f"kinds that differ, (counters.md, code): {wrong}"


def test_the_metrics_refusals_and_losses_are_documented_counters():
    from zchannels.core import metrics
    doc = documented_counters()
    named = [*metrics.REFUSALS, *metrics.LOSSES]
    assert named and not [name for name in named if name not in doc]


# -- old names, paths, links ------------------------------------------------------------------

OLD_NAMES = [
    (re.compile(r"\bfrom runtime\b|\bimport runtime\b"), "import zchannels"),
    (re.compile(r"python3? -m runtime\b"), "python -m zchannels"),
    (re.compile(r"\brouter_(hwm|interfaces|clients)\b"), "broker_*"),
    (re.compile(r"\b(to|from)_router\b"), "to_broker/from_broker"),
    (re.compile(r"zchannels bench\b"), "scripts/bench"),
    (re.compile(r"\bruntime\.(?!py)[a-z_]+"), "zchannels.<room>.<module>"),
]


def test_no_doc_uses_the_old_names():
    """The decision records tell the history and may name the old names; so may the
    table of renamed keys in config.md. Nothing else."""
    problems = []
    for path in [*doc_files(), os.path.join(DOCS, "grafana-dashboard.json")]:
        if rel(path).startswith(os.path.join("docs", "decisions")):
            continue
        section = ""
        for number, line in enumerate(read(path).split("\n"), 1):
            if line.startswith("## "):
                section = line
            if path.endswith("config.md") and section == "## Renamed keys":
                continue
            for pattern, new in OLD_NAMES:
                if pattern.search(line):
                    problems.append(f"{rel(path)}:{number}: {line.strip()[:100]} (say {new})")
    assert not problems, "\n".join(problems)


def test_every_runtime_path_a_doc_names_exists():
    """(The decision records tell what was, and may name what is no more.)"""
    missing = []
    for path in doc_files():
        if rel(path).startswith(os.path.join("docs", "decisions")):
            continue
        for name in set(re.findall(r"\bruntime/[\w/.-]*[\w/]", read(path))):
            if not os.path.exists(os.path.join(ROOT, name)):
                missing.append(f"{rel(path)}: {name}")
    assert not missing, "\n".join(sorted(missing))


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_link_between_docs_resolves():
    broken = []
    for path in doc_files():
        text = read(path)
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # not links inside code
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            goal = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
                if file_part else path
            if not os.path.exists(goal):
                broken.append(f"{rel(path)}: {target} (no such file)")
            elif anchor and goal.endswith(".md") and anchor not in anchors(goal):
                broken.append(f"{rel(path)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_architecture_maps_every_module():
    text = read(os.path.join(DOCS, "architecture.md"))
    mapped = set(re.findall(r"`(runtime/[\w/]+\.py)`", text))
    modules = {rel(p) for p in glob.glob(os.path.join(RUNTIME, "**", "*.py"), recursive=True)
               if not p.endswith("__init__.py") or os.path.dirname(p) == RUNTIME}
    assert not modules - mapped, f"modules missing from architecture.md: {sorted(modules - mapped)}"


def test_every_test_the_docs_name_exists():
    missing = []
    for path in doc_files():
        for file, name in re.findall(r"`(tests/\w+\.py)::(\w+)`", read(path)):
            source = os.path.join(ROOT, file)
            if not os.path.exists(source) or not re.search(rf"def {name}\(", read(source)):
                missing.append(f"{rel(path)}: {file}::{name}")
    assert not missing, "\n".join(missing)


# -- TOML blocks ----------------------------------------------------------------------------

def test_every_toml_block_uses_known_keys():
    known = {"server": {*config_module._SCALARS, *config_module._LISTS},
             "endpoints": set(config_module._ENDPOINTS),
             "history": {*history_rules._COUNTS, *history_rules._RATES, "groups"}}
    problems = []
    count = 0
    for path in doc_files():
        for block in blocks(path):
            if block.lang != "toml":
                continue
            count += 1
            try:
                data = tomllib.loads(block.code)
            except tomllib.TOMLDecodeError as e:
                problems.append(f"{block.name}: {e}")
                continue
            for table, content in data.items():
                if table == "pools":
                    for name, pool in content.items():
                        problems += [f"{block.name}: [pools.{name}] {k}" for k in pool
                                     if k not in config_module._POOL_KEYS]
                elif table in known:
                    problems += [f"{block.name}: [{table}] {k}" for k in content
                                 if k not in known[table]]
                    for rule in content.get("groups", []) if table == "history" else []:
                        problems += [f"{block.name}: [[history.groups]] {k}" for k in rule
                                     if k not in ("pattern", "size", "seconds", "key")]
                else:
                    problems.append(f"{block.name}: no table [{table}]")
    assert count and not problems, "\n".join(problems)


# -- (6) every python example runs -----------------------------------------------------------

def python_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks(path) if b.lang in ("python", "py")]


def kind_of(block: Block) -> str:
    if "not-run" in block.markers:
        return "marked"
    if re.search(r"^\s*(async\s+)?def test_", block.code, re.M):
        return "test"
    if re.search(r"@(\w+\.)?consumer\(|\.register\(", block.code):
        return "consumers"
    if {"file", "append"} & set(block.markers):
        return "part"
    return "script"


EXAMPLE_ENV = {"TOKEN_SECRET": "a-secret-for-the-doc-examples"}  # what the examples read


@pytest.fixture(scope="session")
def projects(tmp_path_factory):
    """The project a doc builds with `file:` blocks, by doc path (built on first use)."""
    built: dict[str, str] = {}

    def project(doc: str) -> str | None:
        file_blocks = [b for b in blocks(doc) if {"file", "append"} & set(b.markers)]
        if not file_blocks:
            return None
        if doc not in built:
            directory = str(tmp_path_factory.mktemp("project"))
            for block in blocks(doc):
                if block.lang in ("sh", "shell", "bash", "console"):
                    for line in block.code.split("\n"):
                        replay(line.split("#")[0].strip(), directory)
            for block in file_blocks:
                target = os.path.join(directory, block.markers.get("file")
                                      or block.markers["append"])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "a" if "append" in block.markers else "w") as f:
                    f.write(("\n" if "append" in block.markers else "") + block.code)
            built[doc] = directory
        return built[doc]

    return project


def replay(line: str, directory: str) -> None:
    """Run the lines of a doc's shell blocks that build a project."""
    words = shlex.split(line) if line else []
    if words[:2] == ["django-admin", "startproject"]:
        command = [sys.executable, "-m", "django", *words[1:]]
    elif words[:2] == ["zchannels", "init"]:
        command = [sys.executable, "-m", "zchannels", *words[1:]]
    else:
        return
    subprocess.run(command, cwd=directory, check=True, capture_output=True, timeout=60)


def script_env(run_dir: str) -> dict[str, str]:
    env = dict(os.environ, **EXAMPLE_ENV, ZCHANNELS_RUN_DIR=run_dir)
    env.pop("ZCHANNELS_CONFIG", None)
    return env


def run_test_block(block: Block, cwd: str, tmp_path, run_dir: str) -> None:
    target = block.markers.get("file")
    if target:
        test_file = os.path.join(cwd, target)
    else:
        test_file = os.path.join(str(tmp_path), f"test_doc_example_{block.line}.py")
        with open(test_file, "w") as f:
            f.write(block.code)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), test_file],
        cwd=cwd, env=script_env(run_dir), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{block.name}:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout


@pytest.fixture
def run_dir():
    """A run directory of the example's own, short enough for IPC paths (107 bytes)."""
    directory = tempfile.mkdtemp(prefix="zcdoc-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def sample_path(pattern: re.Pattern[str]) -> str | None:
    """A path the compiled route pattern matches, or None."""
    source = pattern.pattern.lstrip("^").rstrip("$")
    for value in ("lobby", "1"):
        candidate = re.sub(r"\(\?P<\w+>[^)]*\)", value, source)
        candidate = re.sub(r"\\(.)", r"\1", candidate)
        if pattern.match(candidate):
            return candidate
    return None


BROKEN_EXAMPLE = (NameError, AttributeError, TypeError, ImportError, SyntaxError)


def drive_consumers(block: Block, code: str, directory: str) -> None:
    from zchannels.testing import TestServer
    module = os.path.join(directory, "consumers_of_the_example.py")
    with open(module, "w") as f:
        f.write(code)
    server = TestServer(consumers=[directory])
    routes = server.registry.routes
    assert routes, f"{block.name} declares no consumer"
    with server:
        server.expect_error(".")  # judged below, by the kind of error
        ws_paths, http_paths, channels = [], [], []
        for route in routes:
            if route.path is None:
                if not route.channel.startswith(("websocket.", "http.")):
                    channels.append(route.channel)
                continue
            path = sample_path(route.path)
            assert path, f"{block.name}: no sample path for {route.path.pattern}"
            (ws_paths if route.channel.startswith("websocket.") else http_paths).append(path)
        for path in dict.fromkeys(ws_paths):
            ws = server.websocket(path + "?name=ann")
            if ws.accepted and not ws.closed:
                ws.send(text='{"text": "hi"}')
                if not ws.closed:
                    ws.close()
        for path in dict.fromkeys(http_paths):
            response = server.http("GET", path)
            if not response.complete:
                response.close()
        for channel in dict.fromkeys(channels):
            server.send(channel, {})
        broken = [error for error in server.errors
                  if isinstance(error.exception, BROKEN_EXAMPLE)]
    assert not broken, f"{block.name}:\n" + "\n".join(e.text for e in broken)


def drive_in_django_project(block: Block, project: str, run_dir: str) -> None:
    """`drive_consumers` for a consumer module of a doc's Django project: in a child
    process in the project, where `TestServer` sets Django up from the project's
    configuration as the workers do (so the module may import models at the top), and
    this process's Django stays as it was."""
    module = os.path.join(project, block.markers.get("file") or block.markers["append"])
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
              "import tempfile, test_docs; "
              f"[block] = [b for b in test_docs.blocks({block.path!r}) "
              f"if b.line == {block.line}]; "
              f"test_docs.drive_consumers(block, test_docs.read({module!r}), "
              f"tempfile.mkdtemp(dir={run_dir!r}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=project,
                            env=script_env(run_dir), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{block.name}:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"


def import_part(block: Block, project: str, run_dir: str) -> None:
    """A module of a doc's project (a Django view, a URLconf, settings): imported there,
    after ``django.setup()`` in a Django project."""
    target = block.markers.get("file") or block.markers["append"]
    module = target[:-len(".py")].replace("/", ".")
    code = f"import importlib; importlib.import_module({module!r})"
    env = script_env(run_dir)
    manage = os.path.join(project, "manage.py")
    if os.path.exists(manage):
        settings = re.search(r"DJANGO_SETTINGS_MODULE['\"],\s*['\"]([\w.]+)", read(manage))
        env["DJANGO_SETTINGS_MODULE"] = settings.group(1)
        code = "import django; django.setup(); " + code
    result = subprocess.run([sys.executable, "-c", code], cwd=project, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{block.name}:\n{result.stderr[-4000:]}"


def run_script(block: Block, tmp_path, run_dir: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.code)
    result = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path),
                            env=script_env(run_dir), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"{block.name}:\n{result.stderr[-4000:]}"


def runnable_blocks() -> list[Block]:
    """The python blocks that run: every one but those marked not-run, which are not
    collected (a skipped test would count as passing) but checked by
    `test_examples_run_and_the_marked_ones_are_few`."""
    return [b for b in python_blocks() if kind_of(b) != "marked"]


@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.name)
def test_python_example(block, projects, tmp_path, run_dir, monkeypatch):
    kind = kind_of(block)
    assert kind != "marked"
    if kind == "test":
        run_test_block(block, projects(block.path) or ROOT, tmp_path, run_dir)
    elif kind == "consumers":
        for name, value in EXAMPLE_ENV.items():
            monkeypatch.setenv(name, value)
        code = block.code
        target = block.markers.get("file") or block.markers.get("append")
        if target:  # the module as the doc's project assembles it from its blocks
            project = projects(block.path)
            code = read(os.path.join(project, target))
            if os.path.exists(os.path.join(project, "manage.py")):
                drive_in_django_project(block, project, run_dir)
                return
        drive_consumers(block, code, str(tmp_path))
    elif kind == "part":
        import_part(block, projects(block.path), run_dir)
    else:
        run_script(block, tmp_path, run_dir)


MAX_MARKED = 12  # blocks that cannot run alone: keep them few

# Every block marked not-run, by (doc, its first line), with the reason it gives: the
# signatures of consumers.md, which are not code (`-> Recovery` after a call), and the
# Django LiveServerTestCase of test-consumers.md, which Django's test runner runs in a
# new project (tests/test_live_server_django.py). Marking another block, or changing one
# of these, means changing this list too.
MARKED = {
    ("docs/consumers.md", "consumer(channel: str, path: str | None = None)"): "a signature",
    ("docs/consumers.md", "group_add(group: str, reply_channel: ReplyChannel | str, *, "
                          "info=None,"): "signatures",
    ("docs/consumers.md", 'group_add(group, reply_channel, since="a41f0c9e1:17") -> Recovery'):
        "a signature",
    ("docs/consumers.md", 'send(channel: str, content: dict | None = None, payload: bytes = '
                          'b"") -> None'): "a signature",
    ("docs/howto/test-consumers.md", "# mysite/tests.py"):
        "Django's test runner runs it (tests/test_live_server_django.py)",
}


def test_examples_run_and_the_marked_ones_are_few(capsys):
    found = python_blocks()
    kinds = [kind_of(b) for b in found]
    marked = [b for b in found if kind_of(b) == "marked"]
    with capsys.disabled():
        print(f"\ndocs: {len(found)} python examples: {len(found) - len(marked)} run "
              f"({kinds.count('test')} tests, {kinds.count('consumers')} consumer modules "
              f"driven in a TestServer, {kinds.count('part')} modules of a doc's project "
              f"imported in it, {kinds.count('script')} scripts), {len(marked)} "
              f"marked not-run:")
        for block in marked:
            print(f"  {block.name}: {block.markers['not-run']!r}: "
                  f"{block.code.splitlines()[0] if block.code.strip() else ''}")
    assert len(runnable_blocks()) == len(found) - len(marked)
    assert all(block.markers["not-run"] for block in marked), "not-run needs a reason"
    found_marked = {(rel(b.path), b.code.strip().splitlines()[0]): b.markers["not-run"]
                    for b in marked}
    assert len(found_marked) == len(marked), "two marked blocks start with the same line"
    assert found_marked == MARKED, (f"the blocks marked not-run are not the expected ones: "
                                    f"{found_marked}")
    assert len(found) - len(marked) >= 30
    assert len(marked) <= MAX_MARKED
