"""zchannels' pytest plugin: the ``zchannels_live_server`` fixture, and the live servers'
logs in the report of a test that failed.

pytest loads it by itself wherever zchannels is installed (the ``pytest11`` entry
point in setup.cfg, as pytest-django registers its own); there is nothing to add to a
conftest.py. The fixture is not called ``live_server``: that name is pytest-django's
(a Django development server in a thread).
"""
from __future__ import annotations

from typing import Any, Generator, Iterator

import pytest

from zchannels.testing.live import LOG_HEADER, LiveServer, running_servers

_MARKS = pytest.StashKey[dict[int, dict[str, int]]]()  # per test: each server's log_marks


@pytest.fixture
def zchannels_live_server_options() -> dict[str, Any]:
    """The `LiveServer` arguments of ``zchannels_live_server`` (none: the project in the
    current directory, as configured, one worker per pool, one interface). Override
    this fixture in a conftest.py, a module or a class to change them."""
    return {}


@pytest.fixture
def zchannels_live_server(zchannels_live_server_options: dict[str, Any]) -> Iterator[LiveServer]:
    """The project's real processes (broker, workers, interfaces) for one test, on a free
    port: ``zchannels_live_server.url`` (``http://127.0.0.1:<port>``), ``.ws_url``,
    ``.run_dir``, ``.logs()``. Stopped, and its run directory removed, when the test
    ends, whether it passed or failed."""
    with LiveServer(**zchannels_live_server_options) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # Where the logs of the servers already running end: a failure shows what follows.
    item.stash[_MARKS] = {id(server): server.log_marks() for server in running_servers()}
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield  # pluggy's Result (old-style wrapper: pytest 7 and 8 alike)
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    notes = getattr(call.excinfo.value, "__notes__", ()) if call.excinfo else ()
    if any(str(note).startswith(LOG_HEADER) for note in notes):
        return  # zchannels.testing.LiveServerTestCase attached them to the exception
    marks = item.stash.get(_MARKS, {})
    for server in running_servers():
        try:
            text = server.log_report(since=marks.get(id(server)))
        except OSError as e:  # its run directory is gone
            text = f"{LOG_HEADER} {server.run_dir}: no logs: {e}"
        report.sections.append((f"{LOG_HEADER} logs", text))
