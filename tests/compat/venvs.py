"""Separate venvs holding the original Fustor 0.8.17 wheels, and processes run from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import Proc

PIP_TIMEOUT = 600


def run_or_fail(args: list[str], what: str, timeout: float) -> None:
    """Run a setup command; on failure or timeout fail the test with its output."""
    try:
        r = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-5000:], (e.stderr or b"")[-5000:]
        pytest.fail(f"{what}: timed out after {timeout}s\nstdout:\n{out[0]!r}\nstderr:\n{out[1]!r}")
    if r.returncode != 0:
        pytest.fail(f"{what}: exit code {r.returncode}\nstdout:\n{r.stdout[-5000:]}\n"
                    f"stderr:\n{r.stderr[-5000:]}")


def make_venv(tmp_path_factory, name: str, requirements: list[str], executable: str) -> Path:
    """A fresh venv with ``requirements`` installed; fails the test if ``executable`` is missing."""
    venv = tmp_path_factory.mktemp(name) / "venv"
    run_or_fail([sys.executable, "-m", "venv", str(venv)], "creating the venv", timeout=120)
    run_or_fail([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                 *requirements], "pip install " + " ".join(requirements), timeout=PIP_TIMEOUT)
    exe = venv / "bin" / executable
    assert exe.exists(), f"{exe} missing after installing {requirements}"
    return venv


class VenvProc(Proc):
    """``<venv>/bin/<executable> start`` in the foreground; output to a file, stopped like Proc."""

    def __init__(self, venv: Path, executable: str, home: Path, log: Path, cwd: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # closed by stop()
        env = dict(os.environ, FUSTOR_HOME=str(home), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.p = subprocess.Popen([str(venv / "bin" / executable), "start"], env=env, cwd=cwd,
                                  stdout=self._log, stderr=subprocess.STDOUT)
