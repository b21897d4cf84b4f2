"""scripts/fuzz against a harness system, with a small frame count."""
import subprocess
import sys

import pytest

from harness import ROOT, checked_system

pytestmark = pytest.mark.e2e


def test_the_fuzz_script_leaves_well_behaved_clients_undisturbed():
    with checked_system() as system:
        before = {name: proc.pid for name, proc in system.processes.items()}
        result = subprocess.run(
            [sys.executable, "scripts/fuzz.py", "--port", str(system.port), "--run-dir",
             system.run_dir, "--frames", "4000", "--duration", "60", "--echo", "4",
             "--chat", "3", "--seed", "7"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "fuzz: OK" in result.stdout
        sent = {line.split(":")[0].strip(): int(line.split(":")[1])
                for line in result.stdout.splitlines() if line.strip().startswith("sent ")}
        # WebSocket, HTTP, and every socket the broker binds.
        assert sum(sent.values()) >= 4000 and set(sent) == {
            "sent ws frames", "sent http requests", "sent zmq broker-interfaces",
            "sent zmq broker-clients", "sent zmq pool-default.in",
            "sent zmq pool-default.out"}, sent
        assert {name: proc.pid for name, proc in system.processes.items()
                if proc.poll() is None} == before
