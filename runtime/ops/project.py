"""``zchannels init`` and ``zchannels run``: zchannels in a project of your own.

The installed package carries the supervisord config and the default runtime config
as templates (``runtime/ops/templates/``). ``init`` gives the project a ``consumers/``
directory with an example consumer and a ``conf/zchannels.toml`` (a copy of the
defaults, with ``wsgi_app`` naming the project's Django WSGI application if it has
one). ``run`` does what the repository's ``scripts/run`` does, from the directory it
is started in: check the config, make the run directory (absolute, mode 0700, with
``logs/``), render the supervisord config into it with this interpreter and this
directory, and replace itself with supervisord in the foreground, so that Ctrl-C or
SIGTERM stops everything.

Everything is found relative to the directory ``run`` is started in, as every
process resolves it: ``conf/zchannels.toml`` (or ``--config``/``ZCHANNELS_CONFIG``),
the ``consumers`` directories, ``run_dir`` and the WSGI application's module.
"""
from __future__ import annotations

import fcntl
import os
import re
import shlex
import stat
import string
import sys
import sysconfig
from importlib import resources

from zchannels.core import config as config_module
from zchannels.core.exceptions import ConfigError
from zchannels.wire.process import prepare_run_dir

SUPERVISORD_TEMPLATE = "supervisord.conf"
RELOAD_TEMPLATE = "supervisord-reload.conf"
CONFIG_TEMPLATE = "zchannels.toml"
EXAMPLE_TEMPLATE = "example_consumer.py"
EXAMPLE_NAME = "example.py"  # what init calls the example in consumers/

# The line of the shipped config that names the repository's demo WSGI application.
_WSGI_LINE = re.compile(r'^wsgi_app = "[^"]*"', re.MULTILINE)
_APPLICATION = re.compile(r"^(application\s*[:=]|def application\s*\()", re.MULTILINE)


def template(name: str) -> str:
    return resources.files("zchannels.ops").joinpath("templates", name).read_text(encoding="utf-8")


# -- zchannels init -----------------------------------------------------------------

def find_wsgi_apps(project: str) -> list[str]:
    """``"pkg.wsgi:application"`` for every ``<project>/<pkg>/wsgi.py`` that defines
    ``application`` (what ``django-admin startproject`` writes), in name order."""
    found = []
    for name in sorted(os.listdir(project)):
        path = os.path.join(project, name, "wsgi.py")
        if name.startswith(".") or not name.isidentifier() or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        if _APPLICATION.search(source):
            found.append(f"{name}.wsgi:application")
    return found


def default_config(wsgi_app: str) -> str:
    """The shipped config with `wsgi_app` instead of the repository's demo application."""
    text, count = _WSGI_LINE.subn(lambda _: f"wsgi_app = {_toml_string(wsgi_app)}",
                                  template(CONFIG_TEMPLATE), count=1)
    assert count == 1, "the config template has no wsgi_app line"
    return text.replace("(which mounts the demo WSGI application)", "(set by zchannels init)")


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def init(project: str, wsgi_app: str | None = None) -> int:
    """Add ``consumers/example.py`` and ``conf/zchannels.toml`` to `project`; files
    that exist already are kept. Returns the exit status."""
    if wsgi_app is None:
        candidates = find_wsgi_apps(project)
        wsgi_app = candidates[0] if len(candidates) == 1 else ""
        if len(candidates) > 1:
            print(f"zchannels init: several WSGI applications ({', '.join(candidates)}); "
                  "none mounted: name one with --wsgi-app", file=sys.stderr)
    module, sep, attribute = wsgi_app.partition(":")
    if wsgi_app and not (sep and module and attribute.isidentifier()):
        print(f"zchannels init: --wsgi-app must look like 'package.module:callable', "
              f"not {wsgi_app!r}", file=sys.stderr)
        return 2
    consumers = os.path.join(project, "consumers")
    os.makedirs(consumers, exist_ok=True)
    _write_new(os.path.join(consumers, EXAMPLE_NAME), template(EXAMPLE_TEMPLATE))
    os.makedirs(os.path.join(project, "conf"), exist_ok=True)
    if _write_new(os.path.join(project, config_module.DEFAULT_CONFIG_PATH),
                  default_config(wsgi_app)):
        print(f"zchannels init: wsgi_app = {wsgi_app or '(none: other HTTP paths get 404)'}",
              file=sys.stderr)
    print("zchannels init: start it here with: zchannels run  (or zchannels run --reload)",
          file=sys.stderr)
    return 0


def _write_new(path: str, text: str) -> bool:
    """Create `path` with `text`, unless it exists; say which."""
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        print(f"zchannels init: kept {path} (it exists)", file=sys.stderr)
        return False
    print(f"zchannels init: wrote {path}", file=sys.stderr)
    return True


# -- zchannels run ------------------------------------------------------------------

def render(name: str, python: str, project: str) -> str:
    """Template `name` with this interpreter and project directory filled in.
    supervisord expands ``%(...)s`` in values and splits commands like a shell."""
    def value(text: str) -> str:
        return text.replace("%", "%%")
    return string.Template(template(name)).substitute(
        python=value(shlex.quote(python)), project=value(project))


# Which programs each host role runs (ZCHANNELS_ROLE, docs/deployment.md): the layer
# host the broker; an app host interfaces and workers; a workers host workers only.
ROLE_PROGRAMS = {
    "all": ("broker", "worker", "interface"),
    "layer": ("broker",),
    "app": ("worker", "interface"),
    "workers": ("worker",),
}


def supervisord_config(config: config_module.Config, python: str, project: str) -> str:
    """The rendered supervisord.conf for this host's role (`config.role`), with a worker
    program for every pool of `config` -- or of `config.worker_pools` -- (the template
    has the ``default`` pool's, which serves as the model)."""
    text = render(SUPERVISORD_TEMPLATE, python, project)
    start = text.index("\n[program:worker-default]\n") + 1
    end = text.index("\n[", start) + 1
    model = text[start:end]
    runs = ROLE_PROGRAMS[config.role]
    pools = [pool.name for pool in config.pools
             if not config.worker_pools or pool.name in config.worker_pools]
    workers = "\n".join(model.replace("worker-default", f"worker-{name}")
                        .replace("--pool default", f"--pool {name}")
                        for name in pools) if "worker" in runs else ""
    text = text[:start] + workers + text[end:]
    if "broker" not in runs:
        text = _without_section(_without_section(text, "group:layer"), "program:broker")
    if "interface" not in runs:
        text = _without_section(text, "program:interface")
    return text


# A worker prints to supervisord's output (the terminal). supervisord opens it by path,
# /dev/stdout, which fails (ENXIO) when that output is a socket -- systemd's journal --
# and then no worker would start: there, what workers print goes to their log file.
_WORKER_STDOUT = ("stdout_logfile = /dev/stdout\nstdout_logfile_maxbytes = 0\n"
                  "stderr_logfile = logs/%(program_name)s-%(process_num)s.log\n")
_WORKER_STDOUT_IN_LOG = ("stdout_logfile = logs/%(program_name)s-%(process_num)s.log\n"
                         "redirect_stderr = true\n")


def output_reopens() -> bool:
    """Can supervisord open its own output, which it inherits from this process, as
    /dev/stdout? (A terminal, a pipe or a file: yes; a socket: no.)"""
    try:
        os.close(os.open("/dev/stdout", os.O_WRONLY | os.O_APPEND))
    except OSError:
        return False
    return True


def append_to_output() -> None:
    """When this process's output (supervisord's, once it replaces this process) is a
    file, make its writes appends. The workers' output is opened again as /dev/stdout,
    appending; supervisord's own writes through the inherited descriptor would otherwise
    go at its own offset, over what the workers wrote (``zchannels run > run.log``)."""
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_APPEND)
    except OSError:
        pass


def workers_print_to_log(text: str) -> str:
    """`text` (a rendered supervisord.conf) with the workers' stdout in their log file."""
    return text.replace(_WORKER_STDOUT, _WORKER_STDOUT_IN_LOG)


def _without_section(text: str, name: str) -> str:
    """`text` without the ``[name]`` section (up to the next section or the end)."""
    start = text.index(f"\n[{name}]\n") + 1
    end = text.find("\n[", start)
    return text[:start] + (text[end + 1:] if end >= 0 else "")


def prepare(config_path: str | None, reload: bool,
            log_level: str) -> tuple[list[str], config_module.Config, str]:
    """Check everything, from the current directory (the project), and write the run
    directory: (supervisord's argv, the config, the absolute run directory). Sets the
    environment every process reads, as scripts/run does."""
    project = os.getcwd()
    config = config_module.load(config_path)  # a bad config stops here, with its reason
    for directory in config.consumers:
        if not os.path.isdir(directory):
            raise ConfigError(f"no consumers directory {directory!r} in {project}: run "
                              "`zchannels init` there, or start `zchannels run` in your "
                              "project's directory")
    run_dir = os.path.abspath(config.run_dir)
    prepare_run_dir(run_dir)
    os.chmod(run_dir, 0o700)
    os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
    os.environ["ZCHANNELS_RUN_DIR"] = run_dir
    os.environ["ZCHANNELS_LOG_LEVEL"] = log_level
    if config_path:  # the processes run in the project too; absolute all the same
        os.environ["ZCHANNELS_CONFIG"] = os.path.abspath(config_path)
    python = sys.executable
    conf = os.path.join(run_dir, SUPERVISORD_TEMPLATE)
    text = supervisord_config(config, python, project)
    _write(conf, text if output_reopens() else workers_print_to_log(text))
    if reload:
        conf = os.path.join(run_dir, RELOAD_TEMPLATE)
        _write(conf, render(RELOAD_TEMPLATE, python, project))
    return [python, "-m", "supervisor.supervisord", "-n", "-c", conf], config, run_dir


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run(config_path: str | None, reload: bool, log_level: str) -> int:
    """``zchannels run``: supervisord in the foreground, in place of this process."""
    argv, config, run_dir = prepare(config_path, reload, log_level)
    reloading = ", workers restarted on changes: logs/reloader.log" if reload else ""
    serving = (f"http://{config.host}:{config.port}/" if "interface" in
               ROLE_PROGRAMS[config.role] else f"no interfaces here (role {config.role})")
    print(f"zchannels: {serving}  (role {config.role}, project {os.getcwd()}, "
          f"run dir {run_dir}{reloading})\n"
          f"zchannels: control it with: {supervisorctl_command(run_dir)} status",
          file=sys.stderr, flush=True)
    os.chdir(run_dir)  # supervisord's socket, pid file and logs go there
    append_to_output()
    os.execv(argv[0], argv)


def supervisorctl_command(run_dir: str) -> str:
    script = os.path.join(sysconfig.get_path("scripts"), "supervisorctl")
    program = script if os.access(script, os.X_OK) else \
        f"{shlex.quote(sys.executable)} -m supervisor.supervisorctl"
    return f"{program} -c {shlex.quote(os.path.join(run_dir, SUPERVISORD_TEMPLATE))}"
