"""zchannels in a project of your own (runtime/ops/project.py), without starting processes:
the shipped templates match the repository's own configs, init writes what it says,
run prepares the run directory and a supervisord config that supervisor accepts."""
import configparser
import os
import shlex
import stat

import pytest

from harness import ROOT
from zchannels.core import config as config_module
from zchannels.ops import project
from zchannels.core.exceptions import ConfigError

# What must be the same in the shipped template and conf/: everything supervisord
# does with the programs, only the paths (command's interpreter, directory) differ.
PROGRAM_KEYS = ("programs", "priority", "stopwaitsecs", "numprocs", "autorestart",
                "startsecs", "process_name", "stdout_logfile", "redirect_stderr")


def sections(text):
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def programs(text):
    """{section: {key: value}} of the [program:*] and [group:*] sections, the
    command reduced to what follows the interpreter (``-m zchannels worker ...``)."""
    found = {}
    for name, values in sections(text).items():
        if not name.startswith(("program:", "group:")):
            continue
        kept = {k: v for k, v in values.items() if k in PROGRAM_KEYS}
        if "command" in values:
            kept["command"] = shlex.split(values["command"])[1:]
        found[name] = kept
    return found


def repo_file(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", ["supervisord.conf", "supervisord-reload.conf"])
def test_shipped_supervisord_templates_have_the_programs_of_conf(name):
    shipped = programs(project.render(name, "/venv/bin/python", "/project"))
    assert shipped == programs(repo_file("conf", name))
    assert shipped, "no programs compared"


def test_shipped_reload_template_includes_the_main_one_like_conf():
    shipped = sections(project.template(project.RELOAD_TEMPLATE))
    assert shipped["include"] == sections(repo_file("conf", "supervisord-reload.conf"))["include"]


def test_shipped_default_config_is_conf_zchannels_toml():
    assert project.template(project.CONFIG_TEMPLATE) == repo_file("conf", "zchannels.toml")


def test_rendered_config_runs_the_interpreter_in_the_project():
    text = project.render(project.SUPERVISORD_TEMPLATE, "/my venv/bin/python", "/p%q")
    broker = sections(text)["program:broker"]
    assert shlex.split(broker["command"]) == ["/my venv/bin/python", "-m", "zchannels", "broker"]
    assert broker["directory"] == "/p%%q"  # supervisord expands %(...)s in values


def test_every_pool_gets_a_worker_program():
    config = config_module.parse({"pools": {"fast": {"channels": ["x.*"]},
                                            "default": {"channels": ["*"]}}})
    text = project.supervisord_config(config, "/py", "/project")
    found = sections(text)
    workers = [name for name in found if name.startswith("program:worker-")]
    assert workers == ["program:worker-fast", "program:worker-default"]
    assert found["program:worker-fast"]["command"] == "/py -m zchannels worker --pool fast"
    assert found["program:worker-fast"]["numprocs"] == "2"


@pytest.mark.parametrize("role, worker_pools, expected", [
    ("all", [], ["group:layer", "program:broker", "program:worker-heavy",
                 "program:worker-default", "program:interface"]),
    ("layer", [], ["group:layer", "program:broker"]),
    ("app", [], ["program:worker-heavy", "program:worker-default", "program:interface"]),
    ("app", ["default"], ["program:worker-default", "program:interface"]),
    ("workers", ["heavy"], ["program:worker-heavy"]),
])
def test_each_host_role_runs_only_its_programs(role, worker_pools, expected):
    """ZCHANNELS_ROLE (docs/deployment.md): the layer host the broker, an app host
    interfaces and workers, a workers host the workers of its worker_pools only."""
    config = config_module.parse({"server": {"role": role, "worker_pools": worker_pools},
                                  "pools": {"heavy": {"channels": ["heavy.*"]},
                                            "default": {"channels": ["*"]}}}, environ={})
    found = sections(project.supervisord_config(config, "/py", "/project"))
    assert [name for name in found if name.startswith(("program:", "group:"))] == expected
    assert "supervisord" in found and "supervisorctl" in found


def make_django_like(directory, name="mysite"):
    os.makedirs(os.path.join(directory, name))
    with open(os.path.join(directory, name, "wsgi.py"), "w") as f:
        f.write("from django.core.wsgi import get_wsgi_application\n\n"
                "application = get_wsgi_application()\n")


def test_init_writes_consumers_and_a_config_naming_the_django_app(tmp_path, capsys):
    make_django_like(tmp_path)
    assert project.init(str(tmp_path)) == 0
    assert os.path.isfile(tmp_path / "consumers" / "example.py")
    loaded = config_module.load(str(tmp_path / "conf" / "zchannels.toml"), environ={})
    assert loaded.wsgi_app == "mysite.wsgi:application"
    assert loaded.consumers == ("consumers",)
    # Otherwise the shipped defaults, comments and all.
    written = (tmp_path / "conf" / "zchannels.toml").read_text().splitlines()
    shipped = project.template(project.CONFIG_TEMPLATE).splitlines()
    assert len(written) == len(shipped)
    assert [a for a, b in zip(written, shipped) if a != b][1:] == [
        'wsgi_app = "mysite.wsgi:application"  # WSGI app for HTTP paths no consumer claims']
    assert "wsgi_app = mysite.wsgi:application" in capsys.readouterr().err


def test_init_keeps_existing_files_and_takes_wsgi_app_from_the_option(tmp_path, capsys):
    (tmp_path / "consumers").mkdir()
    (tmp_path / "consumers" / "example.py").write_text("# mine\n")
    assert project.init(str(tmp_path), "app:wsgi") == 0
    assert (tmp_path / "consumers" / "example.py").read_text() == "# mine\n"
    assert config_module.load(str(tmp_path / "conf/zchannels.toml"), environ={}).wsgi_app \
        == "app:wsgi"
    assert project.init(str(tmp_path), "other:app") == 0
    assert "kept" in capsys.readouterr().err
    assert config_module.load(str(tmp_path / "conf/zchannels.toml"), environ={}).wsgi_app \
        == "app:wsgi"


def test_init_mounts_nothing_when_it_finds_no_single_app(tmp_path, capsys):
    make_django_like(tmp_path, "one")
    make_django_like(tmp_path, "two")
    assert project.init(str(tmp_path)) == 0
    assert "one.wsgi:application, two.wsgi:application" in capsys.readouterr().err
    assert config_module.load(str(tmp_path / "conf/zchannels.toml"), environ={}).wsgi_app == ""


def test_init_refuses_a_malformed_wsgi_app(tmp_path):
    assert project.init(str(tmp_path), "no-colon") == 2
    assert not os.path.exists(tmp_path / "conf")


@pytest.fixture
def clean_environ(monkeypatch):
    for key in ("ZCHANNELS_CONFIG", "ZCHANNELS_RUN_DIR", "ZCHANNELS_CONSUMERS",
                "ZCHANNELS_PORT", "ZCHANNELS_LOG_LEVEL"):
        monkeypatch.delenv(key, raising=False)


def test_run_needs_the_consumers_directory_of_the_current_directory(tmp_path, monkeypatch,
                                                                      clean_environ):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no consumers directory 'consumers' in .*zchannels init"):
        project.prepare(None, False, "INFO")


def test_run_prepares_the_run_directory_and_a_config_supervisor_accepts(tmp_path, monkeypatch,
                                                                         clean_environ):
    from supervisor.options import ServerOptions
    assert project.init(str(tmp_path), "") == 0
    monkeypatch.chdir(tmp_path)
    argv, config, run_dir = project.prepare(None, True, "DEBUG")
    assert run_dir == str(tmp_path / "run")
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert os.path.isdir(os.path.join(run_dir, "logs"))
    assert os.environ["ZCHANNELS_RUN_DIR"] == run_dir
    assert os.environ["ZCHANNELS_LOG_LEVEL"] == "DEBUG"
    assert argv[-2:] == ["-c", os.path.join(run_dir, "supervisord-reload.conf")]
    monkeypatch.chdir(run_dir)
    options = ServerOptions()
    options.realize(args=argv[-2:])
    found = {p.name: p for group in options.process_group_configs for p in group.process_configs}
    assert sorted(found) == ["broker", "interface-0", "interface-1", "reloader",
                             "worker-default-0", "worker-default-1"]
    assert found["broker"].directory == str(tmp_path)
    assert found["broker"].command.split()[1:] == ["-m", "zchannels", "broker"]
    from supervisor.options import ClientOptions
    client = ClientOptions()
    client.realize(args=["-c", os.path.join(run_dir, "supervisord.conf")])
    assert client.serverurl == f"unix://{run_dir}/supervisor.sock"
