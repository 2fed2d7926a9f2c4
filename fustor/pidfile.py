"""PID files and detached processes for `start -D`, `stop`, `reload`, `status` (fusion and agent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def running_pid(pid_file: Path) -> int | None:
    """The PID in ``pid_file`` if that process is alive; a stale file is removed."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return None
    except PermissionError:
        return pid
    return pid


def open_private_log(log_file: Path):
    """``log_file`` opened for appending, readable by its owner only: what a server prints
    can be a secret (fusion prints the keys it generated)."""
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)  # a log from an older version may be readable by all
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def spawn_detached(args: list[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start ``python -m fustor.cli ARGS`` in a new session, output appended to ``log_file``
    (mode 0600). ``env`` adds to the environment: the way to hand over a secret, since a
    command line is readable by every user."""
    with open_private_log(log_file) as log, open(os.devnull, "rb") as null:
        p = subprocess.Popen([sys.executable, "-m", "fustor.cli", *args], stdin=null, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **env} if env else None)
    return p.pid


def wait_for_pid_file(pid_file: Path, pid: int, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if running_pid(pid_file) == pid:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return False


def stop_pid(pid_file: Path, timeout: float = 30.0) -> str:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns what happened, in words."""
    pid = running_pid(pid_file)
    if pid is None:
        return "not running"
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pid_file.unlink(missing_ok=True)
            return f"stopped (PID {pid})"
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return f"killed after {timeout:.0f} s (PID {pid})"


def signal_pid(pid_file: Path, sig: int) -> int | None:
    pid = running_pid(pid_file)
    if pid is not None:
        os.kill(pid, sig)
    return pid


# -- what `start -D`, `stop` and `reload` of both CLIs say ------------------------------------
def start_daemon(name: str, pid_file: Path, args: list[str], log_file: Path,
                 env: dict[str, str] | None = None) -> str:
    """Start ``fustor ARGS`` detached unless one runs already; returns the line to print."""
    running = running_pid(pid_file)
    if running is not None:
        return f"{name} already running with PID: {running}"
    pid = spawn_detached(args, log_file, env)
    if not wait_for_pid_file(pid_file, pid):
        raise OSError(f"{name.lower()} did not start; see {log_file}")
    return f"{name} started in the background with PID: {pid} (log: {log_file})"


def stop_message(name: str, pid_file: Path) -> str:
    res = stop_pid(pid_file)
    return f"{name} is not running." if res == "not running" else f"{name} {res}."


def reload_message(name: str, pid_file: Path) -> str:
    pid = signal_pid(pid_file, signal.SIGHUP)
    return f"{name} is not running." if pid is None else f"Reload signal sent to PID {pid}."
