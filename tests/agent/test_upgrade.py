"""The `upgrade` command: refuses nonsense, reports a failed install and keeps running.
The full install → verify → re-exec path runs in a throwaway venv with locally built wheels."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fustor.agent import upgrade as up

REPO = Path(__file__).resolve().parents[2]


def current() -> str:
    return up.installed_version()


def test_same_version_is_a_no_op_and_nonsense_is_refused():
    assert up.upgrade(current(), current=current(), reexec=lambda: pytest.fail("re-exec")) \
        == f"already at {current()}"
    for bad in ("", "latest", "1.0; rm -rf /", "--index-url=x"):
        with pytest.raises(up.UpgradeError, match="not a version"):
            up.upgrade(bad, current=current(), reexec=lambda: pytest.fail("re-exec"))


def test_a_failed_install_is_reported_and_changes_nothing(tmp_path):
    empty = tmp_path / "index"
    empty.mkdir()
    before = current()
    with pytest.raises(up.UpgradeError, match="pip install fustor==99.0.0 failed"):
        up.upgrade("99.0.0", current=before, index_url=empty.as_uri(), timeout=120,
                   reexec=lambda: pytest.fail("re-exec after a failed install"))
    assert current() == before


def build_wheel(tmp_path: Path, version: str, broken: bool = False) -> None:
    src = tmp_path / f"src-{version}"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__",
                                                              "build", "tests", "bench"))
    py = src / "pyproject.toml"
    py.write_text(py.read_text().replace('version = "0.1.0"', f'version = "{version}"'))
    if broken:
        (src / "fustor" / "cli.py").write_text("raise ImportError('this build is broken')\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path / "wheels"), str(src)], check=True, timeout=300)


@pytest.mark.network
def test_upgrade_installs_verifies_and_rolls_back_a_broken_release(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    for v, broken in (("0.1.0", False), ("0.2.0", False), ("0.3.0", True)):
        build_wheel(tmp_path, v, broken)
    wheels = str(tmp_path / "wheels")
    subprocess.run([py, "-m", "pip", "install", "-q", "--find-links", wheels, "fustor==0.1.0"],
                   check=True, timeout=600)
    script = (
        "import sys; from fustor.agent import upgrade as up\n"
        "try:\n"
        "    print(up.upgrade(sys.argv[1], current='0.1.0', find_links=sys.argv[2],"
        " reexec=lambda: print('RE-EXEC')))\n"
        "except up.UpgradeError as e:\n"
        "    print('ERROR', e)\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    good = subprocess.run([py, "-c", script, "0.2.0", wheels], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert "RE-EXEC" in good.stdout and "upgraded to 0.2.0" in good.stdout, good.stdout + good.stderr
    assert up.installed_version(py) == "0.2.0"
    bad = subprocess.run([py, "-c", script.replace("current='0.1.0'", "current='0.2.0'"), "0.3.0", wheels],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert "ERROR verification failed" in bad.stdout and "RE-EXEC" not in bad.stdout, bad.stdout + bad.stderr
    assert up.installed_version(py) == "0.2.0"  # rolled back to the running version
