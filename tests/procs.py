"""Real processes for end-to-end tests: start, wait until they answer, always stop."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = cond()
            if last:
                return last
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    """A child process whose output goes to a file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, args: list[str], home: Path, log: Path, env: dict | None = None,
                 nofile: tuple[int, int] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        full_env = dict(os.environ, FUSTOR_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))

        def limit() -> None:  # in the child, before exec: (soft, hard) RLIMIT_NOFILE
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.p = subprocess.Popen([sys.executable, "-m", "fustor.cli", *args], env=full_env,
                                  stdout=self._log, stderr=subprocess.STDOUT,
                                  preexec_fn=limit if nofile else None)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
        return self.p.returncode


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    def up():
        if not proc.alive():
            raise AssertionError(f"process exited:\n{proc.output()[-3000:]}")
        return httpx.get(url, timeout=1.0).status_code < 500

    wait_until(up, timeout, what=url)


def is_our_daemon(pid: int, home: Path) -> bool:
    """The PID still runs ``fustor.cli`` with our FUSTOR_HOME (not a reused PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"fustor.cli" in cmd and f"FUSTOR_HOME={home}".encode() in env


def kill_daemon(pid: int, home: Path) -> None:
    """SIGTERM, then SIGKILL after 10 s, a daemon we started, if it still runs."""
    if not is_our_daemon(pid, home):
        return
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if not is_our_daemon(pid, home):
            return
        time.sleep(0.05)
    if is_our_daemon(pid, home):
        os.kill(pid, signal.SIGKILL)
