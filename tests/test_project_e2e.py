"""zchannels from a project of your own, as a user gets it: a wheel built from this
repository, installed with Django into a fresh virtualenv outside it, a site made by
``django-admin startproject``, ``zchannels init`` and a consumer of the project's own,
then ``zchannels run``: the consumer answers a WebSocket and Django answers HTTP.

SLOW (about 30 s to 2 minutes): it builds a wheel, creates a virtualenv and installs
pyzmq, tornado, ujson, supervisor and Django into it from the package registry (pip's
cache makes reruns faster). If the registry cannot be reached the test fails, saying so.
"""
import os
import shlex
import shutil
import zipfile
import signal
import subprocess
import sys
import tempfile

import pytest

from harness import ROOT, echo_once, http_request, reserve_port, run, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

INSTALL_TIMEOUT = 300  # seconds for pip to install the wheel and Django
START_TIMEOUT = 60  # seconds for every process to announce it is ready
READY = {"broker": 1, "worker-default": 2, "interface": 2}  # ready/ files per role

HELLO_CONSUMER = '''\
from zchannels import consumer


@consumer("websocket.receive", path="/ws/hello")
def hello(message):
    message.reply_channel.send(text="hello from my project")
'''


def step(what, argv, timeout, **kwargs):
    """Run one setup command; fail the test with its output if it fails."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took longer than {timeout}s: {shlex.join(argv)}")
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit status {result.returncode}): {shlex.join(argv)}\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build_wheel(into):
    """The wheel, built from a copy of the sources so the build leaves nothing behind
    in the repository (setuptools builds in the source tree)."""
    source = os.path.join(into, "src")
    os.makedirs(source)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    shutil.copytree(os.path.join(ROOT, "runtime"), os.path.join(source, "runtime"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = os.path.join(into, "wheels")
    step("building the wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps",
                                "--disable-pip-version-check", "-w", wheels, source], 120)
    [wheel] = os.listdir(wheels)
    check_wheel(os.path.join(wheels, wheel))
    return os.path.join(wheels, wheel)


def check_wheel(path):
    """One package, `zchannels`, and no benchmark code in it (scripts/benchkit stays in
    the repository)."""
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"zchannels"}, tops
    assert not [name for name in names if "bench" in name.lower()]
    for room in ("api", "broker", "core", "interface", "ops", "testing", "wire", "worker"):
        assert f"zchannels/{room}/__init__.py" in names
    assert "zchannels/interface/dashboard.html" in names
    assert "zchannels/ops/templates/supervisord.conf" in names


def install(venv, wheel):
    step("creating the virtualenv", [sys.executable, "-m", "venv", venv], 120)
    try:
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install",
                        "--disable-pip-version-check", "--prefer-binary", wheel,
                        "django>=4.2,<6"], capture_output=True, text=True, check=True,
                       timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"installing the wheel and Django from the package registry took longer "
                    f"than {INSTALL_TIMEOUT}s: is the registry reachable?")
    except subprocess.CalledProcessError as e:
        pytest.fail("could not install the wheel and Django into a fresh virtualenv: is "
                    f"the package registry reachable?\n{e.stdout[-3000:]}\n{e.stderr[-3000:]}")


def ready_pids(run_dir):
    ready = os.path.join(run_dir, "ready")
    names = os.listdir(ready) if os.path.isdir(ready) else []
    return {name: int(name.rpartition(".")[2]) for name in names if not name.endswith(".tmp")}


def all_ready(run_dir):
    roles = [name.rpartition(".")[0] for name in ready_pids(run_dir)]
    return all(roles.count(role) == count for role, count in READY.items())


def test_installed_wheel_runs_a_django_project_with_its_own_consumers():
    work = tempfile.mkdtemp(prefix="zchannels-project-")
    run_dir = tempfile.mkdtemp(prefix="zpj", dir="/tmp")  # IPC paths: at most 107 bytes
    proc = None
    pids = {}
    output = open(os.path.join(work, "zchannels-run.out"), "w+")
    try:
        venv = os.path.join(work, "venv")
        install(venv, build_wheel(work))
        bin_dir = os.path.join(venv, "bin")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ZCHANNELS_", "DJANGO_")) and k not in
               ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        located = step("importing the installed package", [
            os.path.join(bin_dir, "python"), "-c", "import zchannels; print(zchannels.__file__)"],
            30, cwd=work, env=env)
        assert located.stdout.startswith(venv), "the test must run the installed wheel"

        sites = os.path.join(work, "sites")
        os.makedirs(sites)
        step("django-admin startproject", [os.path.join(bin_dir, "django-admin"),
                                           "startproject", "mysite"], 60, cwd=sites, env=env)
        project = os.path.join(sites, "mysite")
        step("zchannels init", [os.path.join(bin_dir, "zchannels"), "init"], 30,
             cwd=project, env=env)
        with open(os.path.join(project, "conf", "zchannels.toml")) as f:
            assert 'wsgi_app = "mysite.wsgi:application"' in f.read()
        assert os.path.isfile(os.path.join(project, "consumers", "example.py"))
        with open(os.path.join(project, "consumers", "hello.py"), "w") as f:
            f.write(HELLO_CONSUMER)

        reservation = reserve_port()
        port = reservation.getsockname()[1]
        try:
            proc = subprocess.Popen(
                [os.path.join(bin_dir, "zchannels"), "run"], cwd=project,
                env=dict(env, ZCHANNELS_PORT=str(port), ZCHANNELS_RUN_DIR=run_dir),
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

            def started():
                if proc.poll() is not None:
                    output.seek(0)
                    pytest.fail(f"zchannels run exited with {proc.returncode}:\n"
                                f"{output.read()[-3000:]}")
                return all_ready(run_dir)
            wait_until(started, START_TIMEOUT, "every process to be ready", interval=0.2)
        finally:
            reservation.close()
        pids = ready_pids(run_dir)

        # The project's consumer, found relative to the directory zchannels run started in.
        assert run(echo_once(f"ws://127.0.0.1:{port}/ws/hello", "hi")) \
            == "hello from my project"
        # Django with startproject's settings (DEBUG on, so ALLOWED_HOSTS allows
        # 127.0.0.1), through the WSGI fallback: the admin's login page.
        status, _, body = http_request(port, "GET", "/admin/login/")
        assert status == 200
        assert b"Django administration" in body or b"Django site admin" in body

        # The supervisorctl command zchannels run printed controls this copy.
        output.seek(0)
        [line] = [line for line in output.read().splitlines() if "control it with:" in line]
        command = shlex.split(line.split("control it with:", 1)[1])

        def all_running():  # RUNNING once up for supervisord's startsecs (1 s)
            # (exit status 3 while any is not RUNNING)
            status = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                    env=env)
            return status.returncode == 0 and status.stdout.count("RUNNING") == 5
        wait_until(all_running, 15, "supervisorctl to show 5 programs RUNNING", interval=0.3)

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc is not None and proc.poll() is None:  # only when the test failed early
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in {**pids, **ready_pids(run_dir)}.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        output.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
