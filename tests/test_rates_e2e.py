"""Rates that tell the truth (issue 21, item 8): under a steady load, the dashboard (its
JSON stream and the page's tiles, in a headless Chromium) and ``zchannels status
--watch`` at a short and a longer interval read within 10 % of it on every refresh.

Every process writes its stats file at its own moment; a rate made of one process's
counters and another's time (the newest file's) jumped between 0 and twice the load."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from harness import ROOT, LoadThread, checked_system, dashboard_events, read, wait_until

pytestmark = pytest.mark.e2e

TOKEN = "dashboard-token-for-the-rates-test_0123"
PATH = "/_zchannels/dashboard"
STATS_INTERVAL = 2.0  # seconds: the default
PER_CLIENT = 10.0  # messages a second from each of two clients, one on each interface
LOAD = 2 * PER_CLIENT  # events/s, and echoes (messages out/s)
TOLERANCE = 0.10
# From the load's start until every rate shown spans only the load: a file up to one
# interval old, its span of one interval (at least 2 s), and the page's snapshot up to
# a second old.
WARM_UP = 2 * STATS_INTERVAL + 1.5  # seconds
READINGS_FOR = 5.0  # seconds of readings, every source at once
LOAD_AT_MOST = 40.0  # seconds: the load stops by itself after this, whatever happens


@pytest.fixture(scope="module")
def system():
    with checked_system(server={"dashboard_token": TOKEN,
                                "stats_interval": STATS_INTERVAL}) as running:
        yield running


class SteadyLoad(LoadThread):
    """Two echo clients, one on each interface, each sending PER_CLIENT messages a second
    on a fixed schedule (so the rate does not drift with the echo's latency), on a
    thread of their own, until the block ends."""

    def __init__(self, system):
        super().__init__(system, timeout=LOAD_AT_MOST + 30)
        self.started_at = 0.0
        self.sent = 0

    async def clients(self):
        by_interface, extras = {}, []
        while len(by_interface) < 2:
            ws = await self.system.connect("/test/echo-rc")
            rc = (await read(ws))[3:]
            name = self.system.interface_name_of(rc)
            (extras if name in by_interface else by_interface.setdefault(name, [])).append(ws)
            assert len(extras) < 60, "the kernel put every connection on one interface"
        for ws in extras:
            ws.close()
        return [sockets[0] for sockets in by_interface.values()]

    async def scenario(self):
        clients = await self.clients()
        self.started_at = time.monotonic()
        self.ready.set()

        async def client(ws, offset):
            n = 0
            while not self.done.is_set() \
                    and time.monotonic() - self.started_at < LOAD_AT_MOST:
                due = self.started_at + offset + n / PER_CLIENT
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                ws.write_message(str(n))
                assert await read(ws) == str(n)
                self.sent += 1
                n += 1
            ws.close()
        await asyncio.gather(*(client(ws, i / LOAD) for i, ws in enumerate(clients)))

    def __enter__(self):
        super().__enter__()
        assert self.ready.wait(30), "the load's clients did not connect"
        assert self.error is None, self.error
        return self


def watch_status(system, interval: float, count: int, out: list):
    """`zchannels status --watch INTERVAL --count COUNT`: (events/s, messages out/s) of
    each screen's traffic line, appended to `out` as the screens come."""
    proc = subprocess.Popen([sys.executable, "-m", "zchannels", "status", "--watch",
                             str(interval), "--count", str(count)], cwd=ROOT, env=system.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("zchannels status"):
                out.append(None)  # a screen: its traffic line follows, or it has none
            match = re.match(r"traffic +events/s (\S+) .* messages out/s (\S+)", line)
            if match:
                out[-1] = match.groups()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def dashboard_stream(system, seconds: float, out: list):
    """The dashboard's snapshots for `seconds`: (events/s, messages out/s) of each."""
    conn, response = dashboard_events(system, TOKEN)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            line = response.readline()
            if line.startswith(b"data: "):
                figures = json.loads(line[len(b"data: "):]).get("rates") or {}
                out.append((figures.get("events"), figures.get("deliveries")))
    finally:
        conn.close()


def page_tiles(page, seconds: float, out: list):
    """The page's events/s and messages out/s tiles, once a second for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(tuple(page.text_content(f"#{tile}").replace(",", "")
                         for tile in ("events-rate", "deliveries-rate")))
        time.sleep(1.0)


def off_the_load(readings) -> list:
    """The readings (events/s, messages out/s) that are not within TOLERANCE of LOAD."""
    wrong = []
    for reading in readings:
        try:
            if reading is None or any(abs(float(v) - LOAD) > TOLERANCE * LOAD
                                      for v in reading):
                wrong.append(reading)
        except (TypeError, ValueError):  # "?", "-", None: no figure where one was due
            wrong.append(reading)
    return wrong


def test_the_dashboard_and_status_watch_read_a_steady_load_on_every_refresh(
        system, browser):
    page = browser.new_page()
    try:
        page.goto(f"http://127.0.0.1:{system.port}{PATH}?token={TOKEN}", timeout=15_000)
        wait_until(lambda: page.text_content("#state") == "live", 15, "the page's stream")
        with SteadyLoad(system) as load:
            time.sleep(max(0.0, load.started_at + WARM_UP - time.monotonic()))
            short, longer, stream, tiles = [], [], [], []
            readers = [threading.Thread(target=watch_status, args=(system, 0.5, 9, short)),
                       threading.Thread(target=watch_status, args=(system, 2.5, 2, longer)),
                       threading.Thread(target=dashboard_stream,
                                        args=(system, READINGS_FOR, stream))]
            for reader in readers:
                reader.start()
            page_tiles(page, READINGS_FOR, tiles)
            for reader in readers:
                reader.join(30)
            assert not any(reader.is_alive() for reader in readers)
            elapsed = time.monotonic() - load.started_at
            sent = load.sent
    finally:
        page.close()
    # The load itself was steady: its clients kept to their schedule.
    assert abs(sent / elapsed - LOAD) <= 0.02 * LOAD, (sent, elapsed)
    assert len(short) == 9 and len(longer) == 2 and len(stream) >= 4 and len(tiles) >= 4
    readings = {"status --watch 0.5": short, "status --watch 2.5": longer,
                "dashboard stream": stream, "dashboard page": tiles}
    wrong = {source: off_the_load(values) for source, values in readings.items()}
    assert not any(wrong.values()), \
        f"readings off {LOAD:g}/s by more than {TOLERANCE:.0%}: {wrong}; all: {readings}"


def test_a_stats_file_names_an_earlier_write_of_its_own_process(system):
    """What the readers take each process's rates from (runtime/core/stats.py)."""
    stats = os.path.join(system.run_dir, "stats")

    def files():
        found = []
        for name in os.listdir(stats):
            if not name.endswith(".json"):
                continue  # being written
            with open(os.path.join(stats, name)) as f:
                found.append(json.load(f))
        return found if all("previous" in data for data in found) else None
    for data in wait_until(files, 3 * STATS_INTERVAL + 5, "every file to name a previous"):
        span = data["time"] - data["previous"]["time"]
        assert STATS_INTERVAL <= span < 2 * STATS_INTERVAL + 1, (data["role"], span)
        assert set(data["previous"]) == {"time", "counters", "histograms"}
