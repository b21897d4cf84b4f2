"""A worker under ``--reload`` (development): what it imported, and a quick stop.

supervisord-reload.conf sets `RELOAD_VARIABLE` for every program; a worker that sees it
does two things more (`attach`, called once its code is loaded), and nothing otherwise.

**It writes down what it imported from the project**, for the reloader to watch. The
project's code a worker runs is not only what it imports at start: Django imports
``urls.py`` and the views at the first request, template tags at the first render. So
each worker writes ``<run_dir>/imported/<role>.<pid>`` before it says it is ready, and
again when it has imported more: a thread looks every `RECORD_INTERVAL` whether
``sys.modules`` grew (as Django's autoreloader finds new modules). Each file is listed
with its modification time and size when the worker first listed it, so an edit made
after the worker imported it counts even if the reloader learns of the file later. A
module whose import failed is not in ``sys.modules``, yet its fix must be seen: the
project's files in the traceback of every exception the worker logs (a consumer's, or
Django's 500 for a view that does not import) are listed too.

"The project" is every ``.py`` file outside the standard library, the installed
packages and zchannels itself (`is_library`): the modules of a Django project
(settings, urls, views, models, template tags, its apps), the consumers and their
helpers, a package of your own installed editable. zchannels is left out even when it
runs from a checkout: a reload restarts the workers only, and a change to zchannels may
be in the interface or the broker, which would go on running the old code beside the
new; restart the whole server for that. Django's template directories are listed too
(lines starting with `DIRECTORY_MARK`), the project's and its apps' outside the
installed packages: Django's cached template loader (used with DEBUG too since Django
4.1) keeps a template it has read until runserver's autoreloader resets it; here a
restart of the workers does.

**It stops at once when the reloader restarts it.** The reloader has supervisord stop
it (SIGTERM, as always) and then sends `RESTART_SIGNAL`: the worker finishes the event
in hand and goes, without first taking queued work until none has come for 0.2 s. That
drain is for a shutdown, where the interfaces have just closed their sockets and their
disconnect events must run; in a reload the interfaces stay, and what is queued waits
in the broker for the new workers. It also looks for a stop request every
`RELOAD_POLL_MS` instead of every 200 ms.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from dataclasses import dataclass, field
from types import TracebackType
from typing import Iterable, TypeGuard

from zchannels.wire.process import Service

log = logging.getLogger("zchannels.reloader")

RELOAD_VARIABLE = "ZCHANNELS_RELOAD"  # "1": a worker records what it imports
RECORD_INTERVAL = 0.5  # seconds between two looks at sys.modules
RESTART_SIGNAL = signal.SIGUSR1  # from the reloader, after SIGTERM: stop without the drain
RELOAD_POLL_MS = 50  # how often a worker under the reloader looks for a stop request
DIRECTORY_MARK = "dir "  # a line naming a template directory, not a module file
LIBRARY_MARK = "lib "  # a line naming a library module (`PRELOADED`) imported
# The libraries whose modules the reloader's processes standing by import ahead (see
# standby.py): Django is written to be imported before it is set up, and it is most of
# what a Django project's start costs.
PRELOADED = ("django.",)
SUBDIRECTORY = "imported"  # under the run directory

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

Stamp = tuple[int, int]  # (mtime in ns, size), as the reloader's snapshots have them


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib",
                                                       "platlib"))}
    return (_PACKAGE_DIR, *(os.path.abspath(root) + os.sep for root in roots))


def is_library(path: str) -> bool:
    """The standard library, installed packages and zchannels itself: not the project's
    code, and not what a reload is for."""
    return os.path.abspath(path).startswith(_library_roots())


def _is_project_file(path: object) -> TypeGuard[str]:
    return isinstance(path, str) and path.endswith(".py") and not is_library(path)


def project_files(modules: Iterable[object]) -> set[str]:
    """The absolute paths of the ``.py`` files of `modules` that are the project's."""
    return {os.path.abspath(path) for module in modules
            if _is_project_file(path := getattr(module, "__file__", None))}


def files_of_error(error: BaseException | None) -> set[str]:
    """The project's files in the traceback of `error` and of the exceptions it was
    raised from or during, and the file a SyntaxError points at."""
    found: set[str] = set()
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb: TracebackType | None = error.__traceback__
        found.update(frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb)
                     if _is_project_file(frame.f_code.co_filename))
        if isinstance(error, SyntaxError) and _is_project_file(error.filename):
            found.add(str(error.filename))
        error = error.__cause__ or error.__context__
    return {os.path.abspath(path) for path in found if os.path.isfile(path)}


def template_directories() -> set[str]:
    """Django's template directories outside the libraries, when Django is set up (and
    none otherwise: this never sets it up, nor imports it)."""
    apps = sys.modules.get("django.apps")
    if apps is None or not apps.apps.ready:
        return set()
    try:
        from django.template.autoreload import get_template_directories
        found = get_template_directories()
    except Exception:  # an odd TEMPLATES setting is for the first render to report
        log.debug("no template directories", exc_info=True)
        return set()
    return {os.path.abspath(str(path)) for path in found
            if os.path.isdir(path) and not is_library(str(path))}


def path_of(run_dir: str, role: str, pid: int | None = None) -> str:
    return os.path.join(run_dir, SUBDIRECTORY, f"{role}.{os.getpid() if pid is None else pid}")


@dataclass
class Record:
    """One worker's list: its project files, each as it was when the worker first
    listed it, and the template directories."""
    files: dict[str, Stamp] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    libraries: set[str] = field(default_factory=set)  # module names, `PRELOADED` only


def write(run_dir: str, role: str, record: Record) -> None:
    path = path_of(run_dir, role)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    lines = [f"{mtime} {size} {name}" for name, (mtime, size) in sorted(record.files.items())]
    lines += [DIRECTORY_MARK + name for name in sorted(record.directories)]
    lines += [LIBRARY_MARK + name for name in sorted(record.libraries)]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)  # the reloader never reads half a list


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class Recorder(logging.Handler):
    """Writes this process's list now, whenever ``sys.modules`` grows, and at once when an
    exception logged names files not listed yet (it is a logging handler on the root
    logger: the process may be stopped before the thread looks again)."""

    def __init__(self, run_dir: str, role: str) -> None:
        super().__init__(logging.ERROR)
        self.run_dir = run_dir
        self.role = role
        self.seen_modules = 0
        self.record = Record(directories=template_directories())  # fixed by the settings
        self.updating = threading.Lock()  # the thread and a logging call may both update

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            files = files_of_error(record.exc_info[1]) - self.record.files.keys()
            if files:
                try:
                    self.update(files)
                except OSError:  # the run directory went away: nothing to tell
                    pass

    def update(self, failed: Iterable[str] = ()) -> None:
        with self.updating:
            modules = list(sys.modules.values())  # a copy: imports may go on meanwhile
            self.seen_modules = len(modules)
            new = (project_files(modules) | set(failed)) - self.record.files.keys()
            stamps = {path: stamp for path in new if (stamp := _stamp(path)) is not None}
            libraries = {name for name in list(sys.modules) if name.startswith(PRELOADED)}
            if stamps or libraries - self.record.libraries or \
                    not os.path.exists(path_of(self.run_dir, self.role)):
                self.record.files.update(stamps)
                self.record.libraries |= libraries
                write(self.run_dir, self.role, self.record)

    def follow(self) -> None:
        """Record again whenever more modules have been imported, until the process ends."""
        while True:
            time.sleep(RECORD_INTERVAL)
            if len(sys.modules) != self.seen_modules:
                try:
                    self.update()
                except OSError as e:  # the run directory went away: nothing to tell
                    log.warning("could not record the imported files: %s", e)


def attach(service: Service) -> None:
    """Under ``--reload``: stop at once on `RESTART_SIGNAL`, and write down what this
    process imported from the project, kept up to date by a daemon thread. Nothing
    without `RELOAD_VARIABLE`. The reloader sends the signal only to a process whose list
    it has seen, so the handler is set first."""
    if os.environ.get(RELOAD_VARIABLE) != "1":
        return
    service.POLL_INTERVAL_MS = RELOAD_POLL_MS

    def restart(signum: int, frame: object) -> None:
        log.info("restarted by the reloader: stopping without waiting for more work")
        service.stopping = True  # the loop ends after the event in hand
    signal.signal(RESTART_SIGNAL, restart)
    record_imports(service.config.run_dir, service.role)


def record_imports(run_dir: str, role: str) -> None:
    """Write what this process imported from the project, and keep it up to date from a
    daemon thread."""
    recorder = Recorder(run_dir, role)
    recorder.update()
    logging.getLogger().addHandler(recorder)
    threading.Thread(target=recorder.follow, name="zchannels-imports", daemon=True).start()


def read(run_dir: str) -> dict[int, Record]:
    """pid -> its `Record`, for every list in `run_dir`."""
    directory = os.path.join(run_dir, SUBDIRECTORY)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        pid = name.rpartition(".")[2]
        if not pid.isdigit():  # a .tmp being written
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:  # removed meanwhile
            continue
        record = Record()
        for line in lines:
            if line.startswith(DIRECTORY_MARK):
                record.directories.add(line[len(DIRECTORY_MARK):])
                continue
            if line.startswith(LIBRARY_MARK):
                record.libraries.add(line[len(LIBRARY_MARK):])
                continue
            mtime, size, path = (line.split(" ", 2) + ["", ""])[:3]
            if mtime.isdigit() and size.isdigit() and path:
                record.files[path] = int(mtime), int(size)
        found[int(pid)] = record
    return found


def listed(run_dir: str) -> set[int]:
    """The pids that have a list in `run_dir`."""
    directory = os.path.join(run_dir, SUBDIRECTORY)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return {int(pid) for name in names if (pid := name.rpartition(".")[2]).isdigit()}


def forget(run_dir: str, pids: Iterable[int]) -> None:
    """Remove the lists of `pids` (processes that have ended)."""
    gone = set(pids)
    directory = os.path.join(run_dir, SUBDIRECTORY)
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        pid = name.rpartition(".")[2]
        if pid.isdigit() and int(pid) in gone:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
