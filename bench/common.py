"""What the benchmarks do alike: a scratch dir, a free port, fusion and agents as child
processes logging to a file, their memory and CPU time, and timing samples and their percentiles.

Only the measuring is shared; each script names its own figures (JSON keys) and rounds
them as it always has (``pct``'s ``digits``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


@contextmanager
def scratch_dir(prefix: str, parent: str | None = None) -> Iterator[Path]:
    """A temp dir (made under ``parent`` when given, e.g. a tmpfs), removed afterwards."""
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child python process (``argv`` after the interpreter) whose output goes to a file."""

    def __init__(self, argv: list[str], home: Path, log: Path, env: dict[str, str] | None = None,
                 exe: str = sys.executable, **popen) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.log = log
        env = dict(os.environ, FUSTOR_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
        with open(log, "ab") as out:
            self.p = subprocess.Popen([exe, *argv], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, **popen)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def check(self) -> None:
        """SystemExit with the end of the log once the process has exited."""
        if not self.alive():
            raise SystemExit(f"{self.log.name}: exited ({self.p.returncode}):\n{self.tail(3000)}")

    def kill9(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=30)
        return self.p.returncode

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError as exc:
            return f"<{exc}>"

    def tracebacks(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("Traceback (most recent call last)")
        except OSError:
            return 0


def start_fusion(data: Path, cfg: Path, home: Path, log: Path, *options: str,
                 env: dict[str, str] | None = None, **popen) -> Proc:
    """``fustor fusion serve`` on ``data`` with ``cfg`` (and more ``options``)."""
    return Proc(["-m", "fustor.cli", "fusion", "serve", "--data", str(data), "--config",
                 str(cfg), *options], home, log, env, **popen)


def wait_up(url: str, proc: Proc, deadline_s: float = 60.0) -> None:
    """Until ``url`` answers at all; SystemExit if ``proc`` exits or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        proc.check()
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.02)
    raise SystemExit(f"{url} did not answer within {deadline_s:.0f} s")


def memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon and VmHWM (the peak RSS) of a process, in MiB."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "VmHWM"):
                vals[k] = round(int(v.split()[0]) / 1024, 1)
    return vals


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable, args: Iterable) -> list[float]:
    """The seconds each ``fn(a)`` took, for each ``a`` of ``args`` in turn."""
    out = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t)
    return out


def timed_gets(client: httpx.Client, urls: Iterable[str]) -> list[float]:
    """The seconds each GET of ``urls`` took; an error answer raises."""
    return timed(lambda u: client.get(u).raise_for_status(), urls)


def pct(samples: list[float], q: float, digits: int, *, to_ms: bool = True) -> float | None:
    """The ``q``-quantile of ``samples`` (nearest rank, rounded down), rounded to ``digits``:
    seconds turned into ms, or as they are with ``to_ms=False``. None for no samples."""
    if not samples:
        return None
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(len(s) * q))] * (1000 if to_ms else 1), digits)
