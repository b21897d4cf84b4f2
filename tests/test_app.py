"""The application of a process (runtime/worker/app.py): Django set up from the
configured settings module before the consumers and the WSGI application; a failure to
import told with its file and line; the dispatcher it gets; what `zchannels.testing`
refuses. Whatever sets Django up runs in a fresh interpreter (a child process), so this
test process stays as it was."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from django_project import clean_env, make_project
from zchannels.api import routing
from zchannels.testing import TestServer
from zchannels.worker import app
from zchannels.worker.dispatch import APP_UNAVAILABLE_BODY, CLOSE_APP_UNAVAILABLE

CHILD_TIMEOUT = 60  # seconds for one child interpreter

USERS_CONSUMER = '''\
from django.contrib.auth.models import User

from zchannels import consumer


@consumer("http.request", path="/users")
def count(message):
    message.reply_channel.respond(f"{User.objects.count()} users")
'''


def child(script: str, cwd: str, **env: str) -> tuple[int, str]:
    """Run `script` in a fresh Python in `cwd`: (exit status, stdout + stderr)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd,
                            env=clean_env(**env), capture_output=True, text=True,
                            timeout=CHILD_TIMEOUT)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def project():
    """A fresh startproject site (migrated, SQLite) whose consumer imports a model at
    the top; tests that change it copy it."""
    path = make_project({"users.py": USERS_CONSUMER})
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(project, tmp_path):
    """A copy of `project` of the test's own."""
    copy = str(tmp_path / "site")
    shutil.copytree(project, copy)
    return copy


# -- which settings --------------------------------------------------------------------

def test_the_settings_module_is_read_from_the_wsgi_module_without_running_it(
        tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "wsgi.py").write_text(
        "import os\nfrom django.core.wsgi import get_wsgi_application\n\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'pkg.settings')\n"
        "application = get_wsgi_application()\n")
    (package / "other.py").write_text('import os\nos.environ["DJANGO_SETTINGS_MODULE"] = '
                                      '"pkg.settings_other"\n')
    (package / "flask.py").write_text("application = object()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert app.settings_module("pkg.wsgi:application") == "pkg.settings"
    assert app.settings_module("pkg.other:application") == "pkg.settings_other"
    assert app.settings_module("pkg.flask:application") is None
    assert app.settings_module("missing.wsgi:application") is None
    assert app.settings_module("") is None
    assert "pkg" not in sys.modules
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "elsewhere.settings")
    assert app.settings_module("pkg.wsgi:application") == "elsewhere.settings"
    assert app.named_settings("pkg.wsgi:application") == "pkg.settings"


# -- loading, as a worker does -------------------------------------------------------

LOAD = """
    import json
    from zchannels.core import config
    from zchannels.worker import app
    application = app.load_or_fail(config.load(), http=True)
    failure = application.failure
    print(json.dumps({
        "django": application.django,
        "routes": [route.path.pattern for route in application.registry.routes if route.path],
        "wsgi": application.wsgi_app is not None,
        "dispatcher": type(application.dispatcher()).__name__,
        "failure": failure and failure.description,
        "traceback": failure and failure.traceback}))
"""


def load_in(cwd: str, **env: str) -> dict:
    status, output = child(LOAD, cwd, **env)
    assert status == 0, output
    return json.loads(output.splitlines()[-1])


def test_django_is_set_up_before_the_consumers_from_the_wsgi_apps_settings(site):
    loaded = load_in(site)
    assert loaded["failure"] is None, loaded["traceback"]
    assert loaded["django"] and loaded["wsgi"]
    assert "^/users$" in loaded["routes"]
    assert loaded["dispatcher"] == "DjangoDispatcher"


def test_a_project_without_django_gets_the_plain_dispatcher(tmp_path):
    (tmp_path / "consumers").mkdir()
    (tmp_path / "consumers" / "hi.py").write_text(
        "from zchannels import consumer\n\n"
        "@consumer('http.request', path='/hi')\ndef hi(message):\n    pass\n")
    status, output = child(LOAD.replace('print(json', 'import sys\n    '
                                        'assert "django" not in sys.modules\n    print(json'),
                           str(tmp_path))
    assert status == 0, output
    loaded = json.loads(output.splitlines()[-1])
    assert (loaded["django"], loaded["dispatcher"], loaded["failure"]) \
        == (False, "Dispatcher", None)


@pytest.mark.parametrize("where, source, line, error", [
    ("consumers/broken.py", "from zchannels import consumer\nX = (\n", 2, "SyntaxError"),
    ("consumers/broken.py", "import os\nimport no_such_module_here\n", 2,
     "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("mysite/wsgi.py", "import os\n"  # the line that names the settings is kept
     "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
     "raise RuntimeError('the WSGI module is broken')\n", 3,
     "RuntimeError: the WSGI module is broken"),
    ("mysite/settings.py", "from django.core.exceptions import ImproperlyConfigured\n"
     "raise ImproperlyConfigured('SECRET_KEY is missing')\n", 2,
     "ImproperlyConfigured: SECRET_KEY is missing"),
])
def test_an_application_that_does_not_import_is_a_failure_with_its_file_and_line(
        site, where, source, line, error):
    path = os.path.join(site, where)
    with open(path, "w") as f:
        f.write(source)
    loaded = load_in(site)
    assert loaded["failure"].startswith(f"{path}, line {line}: {error}"), loaded["failure"]
    assert "Django is not set up" not in loaded["failure"]  # its settings were named
    assert path in loaded["traceback"] and "runtime/worker" not in loaded["traceback"]
    assert loaded["routes"] == [] and loaded["dispatcher"] == "UnavailableDispatcher"


def test_models_without_django_settings_fail_with_a_hint(site):
    # No wsgi_app, no DJANGO_SETTINGS_MODULE: nothing says which settings to use.
    config = os.path.join(site, "conf", "zchannels.toml")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace('wsgi_app = "mysite.wsgi:application"', 'wsgi_app = ""'))
    loaded = load_in(site)
    assert loaded["failure"].startswith(
        f"{site}/consumers/users.py, line 1: ImproperlyConfigured: Requested setting"), \
        loaded["failure"]
    assert loaded["failure"].endswith("(Django is not set up: set DJANGO_SETTINGS_MODULE, "
                                      "or mount the project with wsgi_app, whose module "
                                      "names its settings)")
    # The variable alone is enough.
    loaded = load_in(site, DJANGO_SETTINGS_MODULE="mysite.settings")
    assert loaded["failure"] is None and loaded["dispatcher"] == "DjangoDispatcher"


def test_djangos_logging_config_does_not_silence_zchannels(site):
    with open(os.path.join(site, "mysite", "settings.py"), "a") as f:
        f.write("\nLOGGING = {'version': 1}  # disable_existing_loggers: true\n")
    status, output = child("""
        import logging
        from zchannels.worker import app
        before = logging.getLogger("zchannels.worker")
        assert app.setup_django("mysite.settings")
        print("disabled:", before.disabled, logging.getLogger("zchannels.api.routing").disabled)
    """, site)
    assert (status, output.split()[-3:]) == (0, ["disabled:", "False", "False"]), output


def test_the_reloaders_check_sets_django_up_as_a_worker_does(site):
    result = subprocess.run([sys.executable, "-m", "zchannels", "--log-level", "WARNING",
                             "reloader", "--check"], cwd=site, env=clean_env(),
                            capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    from zchannels.worker import reloader
    report = reloader.parse_report(result.stdout, result.returncode)
    assert report.ok, (report.error, report.details)
    assert os.path.join(site, "consumers", "users.py") in report.files


# -- telling the developer ------------------------------------------------------------

def test_a_failure_is_told_once_per_supervisord_and_again_once_it_imported(tmp_path):
    run_dir = str(tmp_path)
    assert app._first_to_tell(run_dir, "a.py, line 1: SyntaxError")
    assert not app._first_to_tell(run_dir, "a.py, line 1: SyntaxError")  # the other worker
    assert app._first_to_tell(run_dir, "a.py, line 2: SyntaxError")  # another failure
    assert app._first_to_tell(run_dir, "a.py, line 1: SyntaxError")
    app.forget_failure(run_dir)  # it imported
    assert app._first_to_tell(run_dir, "a.py, line 1: SyntaxError")
    with open(tmp_path / app.FAILURE_FILE) as f:
        assert f.read() == f"{os.getppid()}\na.py, line 1: SyntaxError"


def test_report_failure_logs_and_prints_once(tmp_path, capsys, caplog):
    from zchannels.core import config as config_module
    config = config_module.parse({"server": {"run_dir": str(tmp_path)}})
    failure = app.Failure("/p/consumers/x.py, line 3: SyntaxError: bad", "Traceback ...")
    with caplog.at_level(logging.ERROR, logger="zchannels.worker"):
        app.report_failure(failure, config, "worker-default")
        app.report_failure(failure, config, "worker-default")
    printed = capsys.readouterr().out
    assert printed.count("/p/consumers/x.py, line 3: SyntaxError: bad") == 1, printed
    assert "restart the workers (supervisorctl restart worker-default:*)" in printed
    assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
        "the application failed to import: /p/consumers/x.py, line 3: SyntaxError: bad"] * 2


def test_an_unavailable_application_answers_every_event_at_once():
    with TestServer(routing.Registry()) as server:
        server.dispatcher = app.Application(
            routing.Registry(), failure=app.Failure("x.py, line 1: SyntaxError", "")
        ).dispatcher(count=server.layer.count)
        response = server.http("GET", "/anything")
        assert (response.status, response.text) == (503, APP_UNAVAILABLE_BODY)
        ws = server.websocket("/ws/anything")
        assert (ws.close_code, ws.close_reason) == (CLOSE_APP_UNAVAILABLE,
                                                   "application failed to import")
        server.send("tasks.resize", {"image": 1})  # a named channel's message: dropped
        # the request, the connect and its disconnect, the named channel's message
        assert server.layer.counters["app_unavailable"] == 4
        assert not server.errors


# -- zchannels.testing: Django as the workers have it -----------------------------------

def test_the_test_server_sets_django_up_as_a_worker_does(site):
    status, output = child("""
        from django.db import connection, transaction
        from zchannels.testing import TestServer
        server = TestServer(consumers=["consumers"])  # settings from conf/zchannels.toml
        from django.contrib.auth.models import User
        assert server.http("GET", "/users").text == "0 users"
        assert connection.connection is None  # CONN_MAX_AGE 0: closed after the event
        with transaction.atomic():  # as a TestCase holds one: left alone
            User.objects.create_user("ada")
            assert server.http("GET", "/users").text == "1 users"
            assert connection.connection is not None
        print("ok")
    """, site)
    assert (status, output.split()[-1:]) == (0, ["ok"]), output


def test_the_test_server_refuses_other_settings_than_the_workers(site):
    shutil.copy(os.path.join(site, "mysite", "settings.py"),
                os.path.join(site, "mysite", "test_settings.py"))
    script = """
        import django, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.test_settings"
        django.setup()
        from zchannels.testing import SetupMismatch, TestServer
        try:
            TestServer(consumers=["consumers"])
        except SetupMismatch as e:
            print("refused:", e)
        TestServer(consumers=["consumers"], settings="mysite.test_settings")  # on purpose
        print("named: ok")
    """
    status, output = child(script, site)
    assert status == 0, output
    assert "refused: Django is set up with the settings module 'mysite.test_settings', but " \
           "the workers set it up with 'mysite.settings' (from the module of wsgi_app " \
           "'mysite.wsgi:application')" in output, output
    assert output.rstrip().endswith("named: ok"), output


def test_the_test_server_refuses_consumers_that_used_django_before_it_was_set_up(site):
    with open(os.path.join(site, "early.py"), "w") as f:
        f.write("from django.conf import settings\n\nfrom zchannels.api import routing\n\n"
                "registry = routing.Registry()\n\n\n"
                "@registry.consumer('http.request', path='/debug')\n"
                "def debug(message):\n"
                "    message.reply_channel.respond(str(settings.DEBUG))\n")
    status, output = child("""
        import os
        os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
        import early  # before Django is set up
        import django
        django.setup()
        from zchannels.testing import SetupMismatch, TestServer
        try:
            TestServer(early.registry)
        except SetupMismatch as e:
            print("refused:", e)
        import importlib, sys
        del sys.modules["early"]
        late = importlib.import_module("early")  # after: as a worker imports it
        assert TestServer(late.registry).http("GET", "/debug").text == "True"
        print("after: ok")
    """, site)
    assert status == 0, output
    assert f"refused: the consumer module early ({site}/early.py) uses Django and was " \
           "imported before Django was set up" in output, output
    assert output.rstrip().endswith("after: ok"), output


# -- the terminal: what supervisord does with a worker's output ---------------------

def test_workers_print_to_the_terminal_unless_it_is_a_socket(tmp_path):
    from zchannels.core import config as config_module
    from zchannels.ops import project
    config = config_module.parse({"pools": {"default": {"channels": ["*"]},
                                            "tasks": {"channels": ["tasks.*"]}}})
    text = project.supervisord_config(config, "/venv/bin/python", "/p")
    assert text.count("stdout_logfile = /dev/stdout\n") == 2  # a worker program per pool
    in_log = project.workers_print_to_log(text)
    assert "stdout_logfile = /dev/stdout" not in in_log
    to_log = "stdout_logfile = logs/%(program_name)s-%(process_num)s.log\nredirect_stderr = true\n"
    assert in_log.count(to_log) == text.count(to_log) + 2  # the interfaces' are as they were
    probe = "from zchannels.ops import project; import sys; " \
            "sys.stderr.write(str(project.output_reopens()))"
    left, right = __import__("socket").socketpair()
    with left, right, open(tmp_path / "out", "w") as file:
        for stdout, expected in ((right, "False"), (file, "True"), (subprocess.PIPE, "True")):
            result = subprocess.run([sys.executable, "-c", probe], stdout=stdout,
                                    stderr=subprocess.PIPE, text=True, timeout=CHILD_TIMEOUT)
            assert result.stderr == expected, (stdout, result.stderr)


def test_zchannels_run_makes_a_file_output_append(tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as file:  # as a shell's `>` opens it
        result = subprocess.run(
            [sys.executable, "-c", "import fcntl, os; from zchannels.ops import project; "
             "project.append_to_output(); "
             "print(bool(fcntl.fcntl(1, fcntl.F_GETFL) & os.O_APPEND), flush=True)"],
            stdout=file, timeout=CHILD_TIMEOUT)
    assert result.returncode == 0 and out.read_text() == "True\n"
