"""zchannels.testing.LiveServerTestCase under Django's test runner, as a Django project
runs its tests: in a subprocess, ``python -m django test`` (``manage.py test``).

- On the test site (tests/apps/djsite, its tests in djsite/live_tests.py): a user the
  test creates logs in through a Django view of the live server, and a consumer reads
  it; when a test fails, the processes' logs are under its traceback; either way none
  of the server's processes is alive afterwards and its run directory is gone.
- The example of docs/howto/test-consumers.md, in a project made as the doc says:
  ``django-admin startproject mysite``, ``zchannels init``, the doc's consumer, test and
  settings line, ``python manage.py test``.
"""
import json
import os
import re
import subprocess
import sys

from harness import ROOT, assert_nothing_left
from test_docs import blocks

APPS = os.path.join(ROOT, "tests", "apps")
DOC = os.path.join(ROOT, "docs", "howto", "test-consumers.md")
RUN_TIMEOUT = 180  # seconds for one `python -m django test`
COMMAND_TIMEOUT = 60  # seconds for startproject, init


def django_test(tmp_path, **env):
    """``python -m django test djsite.live_tests``: (the result, what its tests recorded)."""
    record = tmp_path / "record.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "django", "test", "djsite.live_tests", "-v", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT,
        env=dict(os.environ, PYTHONPATH=APPS, DJANGO_SETTINGS_MODULE="djsite.live_settings",
                 DJSITE_TEST_DB=str(tmp_path / "test.sqlite3"),
                 DJSITE_LIVE_RECORD=str(record), **env))
    recorded = [json.loads(line) for line in record.read_text().splitlines()] \
        if record.exists() else []
    return result, recorded


def test_a_row_the_test_commits_is_read_by_a_view_and_a_consumer_on_the_live_server(tmp_path):
    result, recorded = django_test(tmp_path)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "test_a_user_made_in_the_test_is_seen_by_the_view_and_the_consumer" in result.stderr
    assert re.search(r"^Ran 1 test", result.stderr, re.M), result.stderr[-3000:]
    [server] = recorded
    assert_nothing_left(server)
    assert not (tmp_path / "test.sqlite3").exists()  # Django removed its test database


def test_a_failed_test_shows_the_processes_logs_and_leaves_nothing_behind(tmp_path):
    result, recorded = django_test(tmp_path, DJSITE_LIVE_FAIL="1")
    assert result.returncode == 1, result.stderr[-6000:]
    assert re.search(r"^FAILED \(failures=1\)", result.stderr, re.M), result.stderr[-3000:]
    failure = result.stderr[result.stderr.index("FAIL: test_fails_after_a_consumer_raised"):]
    report = failure[failure.index("zchannels live server http://127.0.0.1:"):]
    assert "ConsumerBoom: boom requested by the test" in report  # the worker's traceback
    assert len(recorded) == 2  # one server for the class: the same in both tests
    assert recorded[0]["run_dir"] == recorded[1]["run_dir"]
    assert_nothing_left(recorded[0])


def test_the_docs_django_example_in_a_new_project(tmp_path):
    consumer, = (b.code for b in blocks(DOC) if b.code.startswith("# consumers/users.py"))
    tests, = (b.code for b in blocks(DOC) if b.code.startswith("# mysite/tests.py"))
    setting, = re.findall(r'`(DATABASES\["default"\]\["TEST"\] = [^`]+)`', open(DOC).read())
    project = tmp_path / "project"
    project.mkdir()
    for command in (["django", "startproject", "mysite", "."], ["zchannels", "init"]):
        subprocess.run([sys.executable, "-m", *command], cwd=project, check=True,
                       capture_output=True, timeout=COMMAND_TIMEOUT)
    (project / "consumers" / "users.py").write_text(consumer)
    (project / "mysite" / "tests.py").write_text(tests)
    with open(project / "mysite" / "settings.py", "a") as f:
        f.write("\n" + setting + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZCHANNELS_", "DJANGO_"))}
    result = subprocess.run([sys.executable, "manage.py", "test", "-v", "2"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "test_the_server_sees_what_the_test_wrote" in result.stderr
    assert re.search(r"^Ran 1 test", result.stderr, re.M), result.stderr[-3000:]
