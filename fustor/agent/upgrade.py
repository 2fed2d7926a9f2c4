"""The `upgrade` command: install another fustor version, verify it, roll back on failure.

    skip if already at the version
    pip install fustor==V (timeout) ── fails ──► report, keep running the current version
    verify in a fresh interpreter: fustor's version == V ── no ──► reinstall the current
                                                                   version, report
    re-exec this process (same PID, same arguments): it opens new sessions

Runs in a worker thread, so heartbeats go on while pip works.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable

log = logging.getLogger("fustor.agent")

VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([abc]|rc|\.post|\.dev)?[0-9]*$")


KEY_ENV = "FUSTOR_AGENT_KEY"


class UpgradeError(Exception):
    pass


def _child_env() -> dict[str, str]:
    """pip and the check need no agent key; the re-exec'ed agent keeps it (same env)."""
    return {k: v for k, v in os.environ.items() if k != KEY_ENV}


def installed_version(python: str = sys.executable, timeout: float = 60.0) -> str:
    out = subprocess.run(
        [python, "-I", "-c", "import fustor.cli; from importlib.metadata import version; "
                       "print(version('fustor'))"],
        capture_output=True, text=True, timeout=timeout, env=_child_env(),
    )
    if out.returncode != 0:
        raise UpgradeError(f"fustor does not import in a fresh interpreter: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def pip_install(spec: str, index_url: str | None = None, find_links: str | None = None,
                timeout: float = 300.0) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", spec]
    if index_url:
        cmd += ["--index-url", index_url]
    if find_links:
        cmd += ["--find-links", find_links]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_child_env())
    except subprocess.TimeoutExpired:
        raise UpgradeError(f"pip install {spec} took more than {timeout:.0f} s") from None
    if out.returncode != 0:
        raise UpgradeError(f"pip install {spec} failed: {(out.stderr or out.stdout).strip()[-500:]}")


def upgrade(version: str, *, current: str, index_url: str | None = None,
            find_links: str | None = None, timeout: float = 300.0,
            reexec: Callable[[], None] | None = None) -> str:
    """Install fustor ``version``; returns what happened in words, or raises UpgradeError.

    On success ``reexec`` is called (default: replace this process with the same
    command line); it does not return when it re-executes.
    """
    if not version or not VERSION_RE.match(version):
        raise UpgradeError(f"not a version number: {version!r}")
    if version == current:
        return f"already at {version}"
    log.info("upgrade: installing fustor %s (running %s)", version, current)
    pip_install(f"fustor=={version}", index_url, find_links, timeout)
    try:
        got = installed_version()
    except (UpgradeError, subprocess.TimeoutExpired) as exc:
        got = f"unusable ({exc})"
    if got != version:
        log.error("upgrade: installed fustor reports %s, not %s; rolling back to %s", got, version, current)
        try:
            pip_install(f"fustor=={current}", index_url, find_links, timeout)
        except UpgradeError as exc:
            raise UpgradeError(f"verification failed ({got}) and the rollback failed too: {exc}") from None
        raise UpgradeError(f"verification failed: fustor reports {got} after installing {version}; "
                           f"rolled back to {current}")
    log.info("upgrade: fustor %s installed and verified; restarting", version)
    (reexec or restart)()
    return f"upgraded to {version}"


def restart() -> None:  # pragma: no cover - replaces the process
    # the command line as given (``python -m fustor.cli ...`` keeps its ``-m``; sys.argv
    # would turn it into a script path inside the package)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
