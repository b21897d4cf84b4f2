"""The package's layout: one room per role, imports that run one way, no import cycle.

Every import of a zchannels module is counted -- at the top of a module, inside a
function, under ``if TYPE_CHECKING:`` -- read from the source with `ast`, without
importing anything. A package's ``__init__`` re-exporting its own room is not a cycle:
Python imports a parent package before its modules, and that edge is not counted.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "runtime")  # installed as the package `zchannels`
PACKAGE = "zchannels"

# Each room may import the rooms after it in this list, and none before it.
ROOMS = ["ops", "testing", "worker", "interface", "broker", "api", "wire", "core"]


def module_name(path: str) -> str:
    rel = os.path.relpath(path, SOURCE)[:-len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join([PACKAGE, *rel])


def modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(SOURCE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[module_name(path)] = path
    return found


def imports_of(path: str, name: str, known: set[str]) -> set[str]:
    """The zchannels modules `path` imports, wherever in the file the import stands."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from zchannels.wire import frames` imports the module zchannels.wire.frames
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known
                       else module for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, name, known) for name, path in found.items()}


def room_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = iter(range(10**6))

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


def test_rooms_import_only_the_rooms_below_them() -> None:
    wrong = []
    for name, targets in graph().items():
        room = room_of(name)
        if room is None:
            continue
        for target in targets:
            other = room_of(target)
            if other is not None and ROOMS.index(other) < ROOMS.index(room):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_the_top_of_the_package_is_its_rooms() -> None:
    top = sorted(entry for entry in os.listdir(SOURCE)
                 if not entry.startswith((".", "__pycache__")))
    assert top == sorted([*ROOMS, "__init__.py", "__main__.py", "py.typed"])
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse(open(os.path.join(SOURCE, room, "__init__.py")).read()))
        assert doc, f"{room}/__init__.py says what lives there"
    doc = ast.get_docstring(ast.parse(open(os.path.join(SOURCE, "__init__.py")).read()))
    assert all(f"{room}/" in doc for room in ROOMS)


def test_the_source_folder_is_not_importable_as_runtime() -> None:
    """From a checkout, `import runtime` would load a second copy of every module (two
    route registries, two counters): it says what to import instead."""
    done = subprocess.run([sys.executable, "-c", "import runtime"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "import zchannels" in done.stderr


# Tornado's private attributes that zchannels borrows (interface/compat.py wraps each).
TORNADO_INTERNALS = ("ws_connection", "server_terminated", "max_write_buffer_size",
                     "connection.stream", ".stream.socket", "_read_message", "_on_frame_data")


def test_tornado_internals_are_borrowed_only_in_compat() -> None:
    """tests/test_tornado_compat.py has a test per borrowed internal, and setup.cfg bounds
    Tornado to the versions those tests ran on."""
    offenders = []
    for name, path in modules().items():
        if name == "zchannels.interface.compat":
            continue
        source = open(path, encoding="utf-8").read()
        offenders += [f"{name}: {needle}" for needle in TORNADO_INTERNALS if needle in source]
    assert offenders == []
