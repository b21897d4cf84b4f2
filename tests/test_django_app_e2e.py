"""A Django project's own consumers under ``zchannels run``, as a developer meets them
(issue 20, item 1): in a fresh ``startproject`` site, a consumer module that starts as
every Django module does, with models imported at the top, serves; one that does not
import is said once on the terminal with its file and line, every request is answered
503 at once, nothing restarts into FATAL, and once it is fixed and the workers restarted
it serves again. (Runs the repository's installed package; test_project_e2e.py covers the
built wheel.)"""
import shutil
import sys
import time

import pytest
from tornado.websocket import websocket_connect

from django_project import ZchannelsRun, make_project, step, wait_for_text
from harness import http_request, read, run, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

USERS_CONSUMER = '''\
from django.contrib.auth.models import User  # at the top, as every Django module starts

from zchannels import consumer


@consumer("http.request", path="/users")
def count(message):
    message.reply_channel.respond(f"{User.objects.count()} users")


@consumer("websocket.receive", path="/ws/users")
def exists(message):
    message.reply_channel.send(text=str(User.objects.filter(username=message.text).exists()))
'''
BROKEN_LINE = 4
BROKEN_CONSUMER = '''\
from zchannels import consumer


ANSWER = ("unclosed"
'''
ANSWER_MS = 1000  # the bound: a request to an application that does not import


def test_a_consumer_module_that_imports_models_at_the_top_serves():
    project = make_project({"users.py": USERS_CONSUMER})
    try:
        step([sys.executable, "manage.py", "shell", "-c",
              "from django.contrib.auth.models import User; User.objects.create_user('ada')"],
             project)
        with ZchannelsRun(project) as server:
            status, _, body = http_request(server.port, "GET", "/users")
            assert (status, body) == (200, b"1 users")

            async def ask(name):
                ws = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws/users")
                ws.write_message(name)
                answer = await read(ws)
                ws.close()
                return answer
            assert run(ask("ada")) == "True"
            assert run(ask("bob")) == "False"
            # Django's own pages through the WSGI fallback, in the same workers.
            assert http_request(server.port, "GET", "/admin/login/")[0] == 200
            assert [info.get("application") for info in server.ready_info("worker-default")] \
                == [None, None]
            output = server.output()
        assert "Traceback" not in output and "FATAL" not in output, output
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_a_consumer_that_does_not_import_is_told_once_answered_503_and_serves_once_fixed():
    project = make_project({"users.py": USERS_CONSUMER, "broken.py": BROKEN_CONSUMER})
    broken = f"{project}/consumers/broken.py"
    where = f"{broken}, line {BROKEN_LINE}: SyntaxError"
    try:
        with ZchannelsRun(project) as server:
            # Both workers are up (ready) and say so in their logs; one told the terminal.
            for index in (0, 1):
                wait_for_text(lambda: server.log(f"worker-default-{index}"),
                              "WITHOUT its application", 10, f"worker {index}'s warning")
                assert where in server.log(f"worker-default-{index}")
            assert [info["application"] for info in server.ready_info("worker-default")] \
                == ["failed to import", "failed to import"]

            # Every request answered at once: 503, the application's paths and Django's.
            for path in ("/users", "/admin/login/", "/users", "/anything"):
                started = time.monotonic()
                status, _, body = http_request(server.port, "GET", path)
                took_ms = (time.monotonic() - started) * 1000
                assert status == 503 and b"the application failed to import" in body, \
                    (path, status, body)
                assert took_ms < ANSWER_MS, f"{path}: 503 after {took_ms:.0f} ms"

            async def refused():
                ws = await websocket_connect(f"ws://127.0.0.1:{server.port}/ws/users")
                answer = await read(ws)
                return answer, ws.close_code, ws.close_reason
            assert run(refused()) == (None, 1011, "application failed to import")
            wait_until(lambda: server.counters("worker-default").get("app_unavailable", 0) >= 5,
                       10, "the workers to count the events they could not run")

            # No restart loop: the workers stay RUNNING (supervisord's startsecs is 1 s).
            wait_until(lambda: [state for name, state in server.statuses().items()
                                if name.startswith("worker-")] == ["RUNNING", "RUNNING"],
                       10, "both workers RUNNING")
            output = server.output()
            assert output.count(where) == 1, output
            assert "THE APPLICATION FAILED TO IMPORT" in output
            assert "FATAL" not in output and "exited: worker" not in output, output

            # Fixed, and the workers restarted: it serves, and nothing more is told.
            with open(broken, "w") as f:
                f.write(BROKEN_CONSUMER.replace('("unclosed"', '"closed"'))
            restarted = server.supervisorctl("restart", "worker-default:*")
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            def answers():
                status, _, body = http_request(server.port, "GET", "/users")
                return (status, body) == (200, b"0 users")
            wait_until(answers, 30, "the fixed application to answer", interval=0.2)
            assert server.output().count(where) == 1
    finally:
        shutil.rmtree(project, ignore_errors=True)
