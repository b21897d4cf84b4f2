"""Django's database connections in the workers, as Django's handlers look after them
per request (issue 20, item 2): ``close_old_connections`` before and after every event,
``CONN_MAX_AGE`` and ``CONN_HEALTH_CHECKS`` honoured. Against a real PostgreSQL --
Debian's ``postgresql`` (scripts/bootstrap installs it as root) -- that the test starts
in a directory of its own on a free port and stops at the end: the server terminates the
workers' connections (``pg_terminate_backend``), or restarts, between two events, and
the next event's query works.

The consumer answers each message with its connection's backend pid, so the test sees
which connection each event used."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import psycopg
import pytest
from tornado.websocket import websocket_connect

from django_project import ZchannelsRun, clean_env, make_project
from harness import read, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PG_TIMEOUT = 60  # seconds for initdb, or for the server to start, stop or restart
DATABASE, ROLE = "zc", "zc"

BACKEND_CONSUMER = '''\
from django.db import connection

from zchannels import consumer


@consumer("websocket.receive", path="/ws/backend")
def backend(message):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        message.reply_channel.send(text=str(cursor.fetchone()[0]))
'''
SETTINGS = '''\
import os as _os
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1",
    "PORT": _os.environ["ZC_PG_PORT"], "NAME": "zc", "USER": "zc",
    "CONN_MAX_AGE": float(_os.environ["ZC_CONN_MAX_AGE"]),
    "CONN_HEALTH_CHECKS": _os.environ["ZC_CONN_HEALTH_CHECKS"] == "1",
}}
'''


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: Debian keeps them in /usr/lib/postgresql/<v>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda path: int(path.split("/")[4]))
    path = found[-1] if found else shutil.which(name)
    assert path, (f"no {name}: install Debian's postgresql (scripts/bootstrap test does, "
                  "as root)")
    return path


class Postgres:
    """A PostgreSQL cluster of the test's own: initdb in a temporary directory, the
    server on a free loopback port, trust authentication for the role ``zc``. As root
    (CI), the server runs as the ``postgres`` user, which PostgreSQL insists on."""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="zcpg-")
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self.user = "postgres" if os.getuid() == 0 else None
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chown(self.base, account.pw_uid, account.pw_gid)
        with socket.socket() as probe:  # PostgreSQL cannot bind port 0 and say which
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.started = False

    def command(self, *argv: str) -> None:
        result = subprocess.run(argv, user=self.user, capture_output=True, text=True,
                                timeout=PG_TIMEOUT, cwd=self.base)
        assert result.returncode == 0, (f"{' '.join(argv)}: {result.stdout}\n{result.stderr}"
                                        f"\n{self.server_log()}")

    def server_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def pg_ctl(self, *args: str) -> None:
        self.command(pg_bin("pg_ctl"), "-D", self.data, "-w", "-t", str(PG_TIMEOUT), *args)

    def start(self) -> "Postgres":
        self.command(pg_bin("initdb"), "-D", self.data, "-U", ROLE, "--auth=trust",
                     "--no-sync", "-E", "UTF8")
        self.pg_ctl("-l", self.log, "-o",
                    f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off", "start")
        self.started = True
        with self.connect("postgres") as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def restart(self) -> None:
        self.pg_ctl("-l", self.log, "-m", "fast", "restart")  # with the options it had

    def connect(self, database: str = DATABASE) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname=database,
                               autocommit=True, connect_timeout=10)

    def terminate_others(self) -> int:
        """Terminate every connection to the test's database but this one (the
        workers'); how many there were."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (DATABASE,)).fetchall()
        return len(rows)

    def stop(self) -> None:
        if self.started:
            self.pg_ctl("-m", "immediate", "stop")
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    try:
        yield server.start()
    finally:
        server.stop()


def django_site(postgres: Postgres, conn_max_age: int, health_checks: bool):
    """A fresh project whose consumer reports its backend pid, on the test's PostgreSQL,
    and ``zchannels run`` in it (not started)."""
    env = clean_env(ZC_PG_PORT=str(postgres.port), ZC_CONN_MAX_AGE=str(conn_max_age),
                    ZC_CONN_HEALTH_CHECKS="1" if health_checks else "0")
    project = make_project({"backend.py": BACKEND_CONSUMER}, SETTINGS, env=env)
    return project, ZchannelsRun(project, env)


class Client:
    """One WebSocket to /ws/backend: `backend()` is the backend pid of the event's
    query (fails if the consumer failed: the socket is then closed with 1011)."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/ws/backend"

    def backends(self, count: int) -> list[int]:
        async def ask():
            ws = await websocket_connect(self.url)
            pids = []
            for _ in range(count):
                ws.write_message("?")
                answer = await read(ws, timeout=10)
                assert answer is not None, \
                    f"the consumer failed: closed with {ws.close_code} {ws.close_reason!r}"
                pids.append(int(answer))
            ws.close()
            return pids
        return run(ask(), timeout=60)


    def attempts(self, count: int) -> list[int | None]:
        """`count` events, each the backend pid of its query or None where the consumer
        failed (its socket closed with 1011: the next event goes on a new socket)."""
        async def ask():
            ws = await websocket_connect(self.url)
            answers: list[int | None] = []
            for _ in range(count):
                ws.write_message("?")
                answer = await read(ws, timeout=10)
                if answer is None:
                    assert ws.close_code == 1011, ws.close_code
                    ws = await websocket_connect(self.url)
                answers.append(None if answer is None else int(answer))
            ws.close()
            return answers
        return run(ask(), timeout=60)


EVENTS = 6  # per round: both workers get some


def test_conn_max_age_0_a_connection_per_event_and_a_terminated_one_is_never_reused(postgres):
    project, server = django_site(postgres, conn_max_age=0, health_checks=False)
    try:
        with server:
            client = Client(server.port)
            first = client.backends(EVENTS)
            # Closed at the end of every event, as Django does per request: a new one each.
            assert len(set(first)) == EVENTS, first
            postgres.terminate_others()
            after = client.backends(EVENTS)
            assert len(set(after)) == EVENTS and not set(after) & set(first), (first, after)
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_persistent_connections_are_kept_and_a_terminated_one_is_replaced(postgres):
    project, server = django_site(postgres, conn_max_age=600, health_checks=True)
    try:
        with server:
            client = Client(server.port)
            first = client.backends(EVENTS)
            # CONN_MAX_AGE: each worker keeps its one connection from event to event.
            assert len(set(first)) <= 2, first
            assert postgres.terminate_others() == len(set(first))
            # The next event's health check finds its connection dead and opens another.
            after = client.backends(EVENTS)
            assert not set(after) & set(first), (first, after)
            assert len(set(after)) <= 2, after
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_without_health_checks_only_the_first_query_on_a_dropped_connection_fails(postgres):
    """As in Django: the query fails, the event with it (1011), the broken connection is
    closed at the end of that event, and the worker's next event works."""
    project, server = django_site(postgres, conn_max_age=600, health_checks=False)
    try:
        with server:
            client = Client(server.port)
            first = client.backends(EVENTS)
            kept = set(first)
            assert len(kept) <= 2, first
            assert postgres.terminate_others() == len(kept)
            after = client.attempts(3 * EVENTS)
            failed = after.count(None)
            assert failed <= len(kept), after  # once per worker at most
            worked = [pid for pid in after if pid is not None]
            assert len(worked) >= 3 * EVENTS - len(kept) and not set(worked) & kept, after
            assert None not in after[-EVENTS:], after  # from then on, every event works
    finally:
        shutil.rmtree(project, ignore_errors=True)


@pytest.mark.parametrize("conn_max_age, health_checks", [(0, False), (600, True)])
def test_the_database_restarted_between_two_events(postgres, conn_max_age, health_checks):
    project, server = django_site(postgres, conn_max_age, health_checks)
    try:
        with server:
            client = Client(server.port)
            first = client.backends(EVENTS)
            postgres.restart()
            after = client.backends(EVENTS)
            assert not set(after) & set(first), (first, after)
    finally:
        shutil.rmtree(project, ignore_errors=True)
