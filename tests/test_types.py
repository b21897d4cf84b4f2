"""The package type-checks (mypy, setup.cfg's [mypy] settings), as scripts/typecheck runs it:
runtime/ read as the package zchannels through a link."""
import os
import subprocess
import sys

from harness import ROOT


def test_mypy_finds_no_issue_in_the_package(tmp_path):
    os.symlink(os.path.join(ROOT, "runtime"), tmp_path / "zchannels")
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           os.path.join(ROOT, "setup.cfg"), "--cache-dir",
                           str(tmp_path / "cache"), "-p", "zchannels"],
                          cwd=tmp_path, env={**os.environ, "MYPYPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
