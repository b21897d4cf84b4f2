"""The reloader's eyes: what the watched files look like now, and a wake-up when they change.

A `Snapshot` is the modification time and size of every watched file; two snapshots
compared say what changed. The reloader takes one every `POLL_INTERVAL`, and, where the
kernel has inotify (Linux), also the moment anything happens in a watched directory:
a save is then seen within milliseconds instead of a quarter of a second on average.
inotify is reached through ``ctypes`` (no dependency to install); where it is missing or
refuses (another kernel, no watches left), polling alone does the work, and on a file
system whose changes inotify does not see (some network mounts and containers' bind
mounts) the polling still does. A few hundred ``stat`` calls four times a second cost
nothing next to a development server.
"""
from __future__ import annotations

import ctypes
import errno
import importlib.util
import logging
import os
import select
import struct
from typing import Iterable

log = logging.getLogger("zchannels.reloader")

POLL_INTERVAL = 0.25  # seconds between two scans when nothing wakes the reloader up

Snapshot = dict[str, tuple[int, int]]  # path -> (mtime in ns, size)


def scan(directories: Iterable[str], files: Iterable[str],
         any_file_under: Iterable[str] = ()) -> Snapshot:
    """Stat every ``*.py`` under `directories` (recursively: helper modules and packages
    too), every path in `files` and every file under `any_file_under` (templates); a
    missing file is simply absent. Hidden names (editors' swap files), backups (``x~``)
    and ``__pycache__`` are skipped."""
    found: Snapshot = {}
    for directory in directories:
        for path in _walk(directory):
            if path.endswith(".py"):
                _stat_into(found, path)
    for directory in any_file_under:
        for path in _walk(directory):
            _stat_into(found, path)
    for path in files:
        _stat_into(found, path)
    return found


def _walk(directory: str) -> Iterable[str]:
    for parent, subdirs, names in os.walk(directory):
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and d != "__pycache__"]
        for name in names:
            if not name.startswith(".") and not name.endswith("~"):  # editors' backups
                yield os.path.join(parent, name)


def directories_of(directories: Iterable[str], files: Iterable[str]) -> set[str]:
    """Every directory to watch for `scan` over the same arguments: the trees of
    `directories` and the directories the `files` are in (a save by renaming a new file
    over the old one, as many editors do, is an event of the directory)."""
    found = set()
    for directory in directories:
        for parent, subdirs, _ in os.walk(directory):
            subdirs[:] = [d for d in subdirs if not d.startswith(".") and d != "__pycache__"]
            found.add(parent)
    found.update(os.path.dirname(path) for path in files)
    return {d for d in found if os.path.isdir(d)}


def _stat_into(found: Snapshot, path: str) -> None:
    try:
        st = os.stat(path)
    except OSError:
        return
    found[path] = (st.st_mtime_ns, st.st_size)


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """``["/x/chat.py (changed)", ...]``, in path order."""
    described = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            described.append(f"{path} (removed)")
        elif path not in before:
            described.append(f"{path} (added)")
        elif before[path] != after[path]:
            described.append(f"{path} (changed)")
    return described


def forget_bytecode(before: Snapshot, after: Snapshot) -> None:
    """Delete the cached bytecode of every changed file. Python trusts a ``.pyc``
    whose recorded source size and mtime (in whole seconds) match: an edit that
    keeps the size within the second of the last import would run stale code."""
    for path, stamp in after.items():
        if before.get(path) != stamp and path.endswith(".py"):
            try:
                os.unlink(importlib.util.cache_from_source(path))
            except (OSError, ValueError):
                pass


# -- waking up -----------------------------------------------------------------------

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000  # the watch is gone (its directory was removed)
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class Waker:
    """Sleeps until the next scan is due: `POLL_INTERVAL` at most, less when inotify
    reports an event in a watched directory or `wake` is called (a stop signal)."""

    def __init__(self, use_inotify: bool = True) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.inotify_fd = -1
        self.watches: dict[str, int] = {}  # directory -> watch descriptor
        self._libc: ctypes.CDLL | None = None
        if use_inotify:
            self._open_inotify()

    @property
    def uses_inotify(self) -> bool:
        return self.inotify_fd >= 0

    def _open_inotify(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init = libc.inotify_init1
        except (OSError, AttributeError):  # not Linux (or not glibc/musl)
            log.info("no inotify here: noticing changes by polling every %g s", POLL_INTERVAL)
            return
        fd = init(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.warning("inotify_init1 failed (%s): noticing changes by polling every %g s",
                        os.strerror(ctypes.get_errno()), POLL_INTERVAL)
            return
        self._libc, self.inotify_fd = libc, fd

    def watch(self, directories: set[str]) -> None:
        """Watch exactly `directories` (added and dropped as the set changes)."""
        if self._libc is None:
            return
        for directory in set(self.watches) - directories:
            self._libc.inotify_rm_watch(self.inotify_fd, self.watches.pop(directory))
        for directory in sorted(directories - set(self.watches)):
            wd = self._libc.inotify_add_watch(self.inotify_fd, os.fsencode(directory),
                                              WATCH_MASK)
            if wd >= 0:
                self.watches[directory] = wd
                continue
            error = ctypes.get_errno()
            if error == errno.ENOSPC:  # fs.inotify.max_user_watches reached
                log.warning("no inotify watches left for %s (raise fs.inotify.max_user_"
                            "watches): it is polled every %g s", directory, POLL_INTERVAL)
            # ENOENT and the like: it went away since the scan; the next scan sees it

    def wait(self, timeout: float) -> bool:
        """Sleep for `timeout` seconds at most. True if an event or `wake` ended it."""
        fds = [self.wake_r] + ([self.inotify_fd] if self.inotify_fd >= 0 else [])
        readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        for fd in readable:
            self._drain(fd)
        return bool(readable)

    def _drain(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            if fd == self.inotify_fd:
                self._forget_ignored(data)

    def _forget_ignored(self, data: bytes) -> None:
        """Drop the watches the kernel removed (their directory was deleted), so a
        directory made again under the same name is watched again."""
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            if mask & IN_IGNORED:
                for directory, watched in list(self.watches.items()):
                    if watched == wd:
                        del self.watches[directory]

    def wake(self) -> None:
        """End the current `wait` (safe from a signal handler)."""
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:  # already woken
            pass

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w, self.inotify_fd):
            if fd >= 0:
                os.close(fd)
        self.inotify_fd = -1
