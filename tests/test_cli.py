"""The command line: configuration errors are clear, stats shows every process."""
import json
import os
import subprocess
import sys

import pytest

from harness import ROOT, checked_system


def zchannels(*args, env=None):
    return subprocess.run([sys.executable, "-m", "zchannels", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=30)


def test_check_config_prints_the_resolved_config():
    result = zchannels("check-config", env={"ZCHANNELS_PORT": "8123"})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["port"] == 8123
    assert config["pools"]["default"]["channels"] == ["*"]
    assert [rule["pattern"] for rule in config["history"]["groups"]] == ["chat.bench-*", "chat.*"]


@pytest.mark.parametrize("args, env, message", [
    (["check-config"], {"ZCHANNELS_PORT": "eighty"},
     "ZCHANNELS_PORT must be a whole number, not 'eighty'"),
    (["--config", "/nonexistent/z.toml", "broker"], {},
     "config file '/nonexistent/z.toml' does not exist"),
    (["worker", "--pool", "nope"], {}, "no pool named 'nope'; configured pools: default"),
])
def test_configuration_errors_exit_2_with_the_reason(args, env, message):
    result = zchannels(*args, env=env)
    assert result.returncode == 2
    assert "zchannels: configuration error:" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("role", ["router", "forwarder", "queue"])
def test_the_roles_the_broker_replaced_are_refused_with_the_valid_ones(role):
    """The broker is the router, the forwarder and every pool's queue in one process:
    their old roles are not silently accepted."""
    result = zchannels(role, "--pool", "default")
    assert result.returncode == 2
    assert f"invalid choice: '{role}'" in result.stderr and "'broker'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_value_in_the_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nevent_timeout = "soon"\n')
    result = zchannels("check-config", env={"ZCHANNELS_CONFIG": str(path)})
    assert result.returncode == 2
    assert f"{path}: [server] event_timeout must be a int or number, not 'soon'" \
        in result.stderr


@pytest.mark.e2e
def test_stats_lists_every_running_process():
    with checked_system() as system:
        env = {"ZCHANNELS_RUN_DIR": system.run_dir}
        as_json = zchannels("stats", "--json", env=env)
        assert as_json.returncode == 0, as_json.stderr
        roles = sorted(p["role"] for p in json.loads(as_json.stdout))
        assert roles == ["broker", "interface", "interface", "worker-default",
                         "worker-default"]
        table = zchannels("stats", env=env)
        assert table.returncode == 0
        interface_lines = [l for l in table.stdout.splitlines() if l.startswith("interface")]
        assert len(interface_lines) == 2 and "connections=0" in interface_lines[0]
