"""Real-process end-to-end harness: `fustor fusion serve` + `fustor agent start` on 127.0.0.1.

Each process gets its own FUSTOR_HOME and log file; :meth:`Cluster.failing` appends the
tails of every log to an AssertionError, and :meth:`Cluster.close` stops every process
(agents first, SIGTERM then SIGKILL) and closes the HTTP clients.

Trees are compared as ``({"/file": (size, mtime)}, {"/dir": mtime})`` maps: :func:`walk_fs`
reads the disk, :func:`walk_view` a recursive ``/tree`` answer; :func:`tree_diff` says in
words what differs (empty when equal).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.procs import Proc, free_port, wait_http, wait_until

KEY = "e2e-ingest"
QKEY = "e2e-query"
VIEW = "v"
MTIME_TOL = 1e-3

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- trees ----------------------------------------------------------------------------------


def build_tree(root: Path, n_files: int, *, seed: int = 1, fanout: tuple[int, ...] = (10, 5, 4),
               prefix: str = "d") -> int:
    """``n_files`` files spread over nested dirs (``fanout`` per level, so (10, 5, 4) gives
    10 + 50 + 200 dirs), a couple of empty dirs, sizes 0..4 KiB, mtimes in the past with a
    sub-millisecond fraction; dir mtimes set last. Returns the number of dirs made."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    levels = [[root]]
    for i, n in enumerate(fanout):
        levels.append([parent / f"{prefix}{i}_{j}" for parent in levels[-1] for j in range(n)])
    dirs = [d for level in levels[1:] for d in level]
    for d in dirs:
        d.mkdir()
    for extra in ("empty", f"{prefix}0_0/empty too"):
        (root / extra).mkdir()
    holders = [root, *dirs]
    now = time.time()
    data = rng.randbytes(4096)
    for i in range(n_files):
        p = holders[i % len(holders)] / f"f{i:05d}.{rng.choice(['txt', 'bin', 'log'])}"
        size = rng.choice((0, 1, rng.randint(2, 4096)))
        with open(p, "wb") as fh:
            fh.write(data[:size])
        mtime = now - rng.uniform(3600, 90 * 86400) + rng.random() / 7
        os.utime(p, (mtime, mtime))
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: len(t[0]), reverse=True):
        mtime = now - rng.uniform(60, 30 * 86400) + rng.random() / 3
        os.utime(dirpath, (mtime, mtime))
    return len(dirs) + 2


def walk_fs(root: Path) -> tuple[dict, dict]:
    """{"/rel": (size, mtime)} for files and {"/rel": mtime} for dirs (the root is "/")."""
    files, dirs = {}, {}
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root)
        rel = "/" if rel == "/." else rel
        try:
            dirs[rel] = os.stat(dirpath).st_mtime
        except FileNotFoundError:
            continue
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            files[rel.rstrip("/") + "/" + name] = (st.st_size, st.st_mtime)
    return files, dirs


def walk_view(node: dict) -> tuple[dict, dict]:
    """The same shape from a recursive ``/tree`` answer."""
    files, dirs = {}, {}

    def visit(n: dict) -> None:
        assert "next_after" not in n, f"unexpected paging in {n['path']}"
        if n["content_type"] == "directory":
            dirs[n["path"]] = n["modified_time"]
            for c in n.get("children", []):
                visit(c)
        else:
            files[n["path"]] = (n["size"], n["modified_time"])

    visit(node)
    return files, dirs


def tree_diff(want: tuple[dict, dict], got: tuple[dict, dict], *, dir_mtimes: bool = True,
              show: int = 10) -> str:
    """What differs between two walks, in words ("" when equal). File sizes must match and
    mtimes agree within MTIME_TOL; dir mtimes too when ``dir_mtimes``."""
    (wf, wd), (gf, gd) = want, got
    out = []

    def some(xs) -> str:
        xs = sorted(xs)
        return f"{len(xs)}: {xs[:show]}" + (" ..." if len(xs) > show else "")

    if set(wf) - set(gf):
        out.append(f"files missing from the view {some(set(wf) - set(gf))}")
    if set(gf) - set(wf):
        out.append(f"files only in the view {some(set(gf) - set(wf))}")
    if set(wd) - set(gd):
        out.append(f"dirs missing from the view {some(set(wd) - set(gd))}")
    if set(gd) - set(wd):
        out.append(f"dirs only in the view {some(set(gd) - set(wd))}")
    both = set(wf) & set(gf)
    bad = {p: (gf[p], wf[p]) for p in both
           if gf[p][0] != wf[p][0] or abs(gf[p][1] - wf[p][1]) > MTIME_TOL}
    if bad:
        out.append(f"files whose (size, mtime) differ, (view, disk) {len(bad)}: "
                   f"{sorted(bad.items())[:show]}")
    if dir_mtimes:
        bad_d = {p: (gd[p], wd[p]) for p in set(wd) & set(gd) if abs(gd[p] - wd[p]) > MTIME_TOL}
        if bad_d:
            out.append(f"dirs whose mtime differs, (view, disk) {len(bad_d)}: "
                       f"{sorted(bad_d.items())[:show]}")
    return "; ".join(out)


# -- configs ----------------------------------------------------------------------------------


def fusion_yaml(port: int, rport: int, *, session_timeout: int = 30, cleanup: float = 1.0,
                audit_interval: float = 0.0, sentinel_interval: float = 0.0) -> str:
    return f"""
host: 127.0.0.1
port: {port}
session_cleanup_interval: {cleanup}
receivers:
  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {KEY}, pipe_id: {VIEW}}}]}}
views:
  {VIEW}: {{driver: fs, api_keys: [{QKEY}], driver_params: {{max_tree_items: 10000000}}}}
pipes:
  {VIEW}:
    receiver: r
    views: [{VIEW}]
    session_timeout_seconds: {session_timeout}
    audit_interval_sec: {audit_interval}
    sentinel_interval_sec: {sentinel_interval}
"""


def agent_yaml(tree: Path, receiver_url: str, *, agent_id: str, pipe: str = "main",
               batch_size: int | None = None, key: str = KEY) -> str:
    batch = f"\n    batch_size: {batch_size}" if batch_size else ""
    return f"""
agent_id: {agent_id}
logging: INFO
console: {{enabled: false}}
sources:
  tree:
    driver: fs
    uri: "{tree}"
senders:
  fusion:
    driver: fusion
    uri: "{receiver_url}"
    credential: {{key: {key}}}{batch}
pipes:
  {pipe}:
    source: tree
    sender: fusion
"""


def tail(path: Path, n: int = 4000) -> str:
    try:
        return _ANSI.sub("", path.read_text(errors="replace"))[-n:]
    except OSError as e:
        return f"<{e}>"


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """One fusion (restartable on the same ports and data) and any number of agents."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.rport = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rurl = f"http://127.0.0.1:{self.rport}"
        self.fusion_proc: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.logs: dict[str, Path] = {}
        self._procs: list[Proc] = []
        self._fusion_procs: list[Proc] = []
        self._fusion_starts = 0
        self._fusion_cfg = tmp / "fusion.yaml"
        self._q: httpx.Client | None = None

    # -- fusion --
    def start_fusion(self, **cfg) -> Proc:
        if cfg or not self._fusion_cfg.exists():
            self._fusion_cfg.write_text(fusion_yaml(self.port, self.rport, **cfg))
        self._fusion_starts += 1
        log = self.tmp / f"fusion-{self._fusion_starts}.log"
        self.logs[f"fusion (start {self._fusion_starts})"] = log
        p = Proc(["fusion", "serve", "--data", str(self.tmp / "fusion-data"),
                  "--config", str(self._fusion_cfg)], self.tmp / "fusion-home", log)
        self._procs.append(p)
        self._fusion_procs.append(p)
        self.fusion_proc = p
        wait_http(self.url + "/", p)
        wait_http(self.rurl + "/", p)
        return p

    def stop_fusion(self, sig: int = signal.SIGTERM) -> int:
        assert self.fusion_proc is not None
        return self.fusion_proc.stop(sig)

    @property
    def q(self) -> httpx.Client:
        """Query client for the view (main port, query key)."""
        if self._q is None:
            self._q = httpx.Client(base_url=f"{self.url}/api/v1/views/{VIEW}",
                                   headers={"X-API-Key": QKEY}, timeout=30)
        return self._q

    # -- agents --
    def agent_home(self, name: str) -> Path:
        return self.tmp / f"{name}-home"

    def write_agent_config(self, name: str, tree: Path, **kw) -> Path:
        cfg = self.tmp / f"{name}.yaml"
        cfg.write_text(agent_yaml(tree, self.rurl, agent_id=name, **kw))
        return cfg

    def start_agent(self, name: str, args: list[str]) -> Proc:
        """`fustor agent start ARGS` in the foreground, FUSTOR_HOME = <tmp>/<name>-home."""
        n = sum(1 for k in self.logs if k.startswith(f"agent {name} "))
        log = self.tmp / f"{name}-{n + 1}.log"
        self.logs[f"agent {name} (start {n + 1})"] = log
        p = Proc(["agent", "start", *args], self.agent_home(name), log)
        self._procs.append(p)
        self.agents[name] = p
        return p

    def agent(self, name: str, tree: Path, **kw) -> Proc:
        """Write ``<name>.yaml`` for ``tree`` and start an agent on it."""
        return self.start_agent(name, [str(self.write_agent_config(name, tree, **kw))])

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> int:
        """Stop an agent on purpose (it is no longer checked by :meth:`check_alive`)."""
        return self.agents.pop(name).stop(sig)

    def check_alive(self) -> None:
        for name, p in self.agents.items():
            assert p.alive(), f"agent {name} exited with {p.p.returncode}"
        assert self.fusion_proc is not None and self.fusion_proc.alive(), (
            f"fusion exited with {self.fusion_proc and self.fusion_proc.p.returncode}")

    # -- the view --
    def view_walk(self, path: str = "/") -> tuple[dict, dict] | None:
        """The view under ``path`` as walk maps, or None while it does not answer 200."""
        r = self.q.get("/tree", params={"path": path, "recursive": "true", "limit": 1_000_000})
        if r.status_code != 200:
            return None
        return walk_view(r.json())

    def wait_view_equals(self, tree: Path, timeout: float, *, dir_mtimes: bool = True,
                         what: str = "the view to equal the tree") -> float:
        """Poll until the view equals ``tree`` on disk; returns the seconds it took."""
        t0 = time.monotonic()
        seen: dict = {}

        def equal():
            self.check_alive()
            want = walk_fs(tree)
            got = self.view_walk()
            if got is None:
                seen["last"] = "view not answering 200 yet"
                return False
            seen["last"] = tree_diff(want, got, dir_mtimes=dir_mtimes)
            return not seen["last"]

        try:
            wait_until(equal, timeout, interval=0.25, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; last difference: {seen.get('last')}") from None
        return time.monotonic() - t0

    def sessions(self) -> list[dict]:
        r = self.q.get("/sessions")
        assert r.status_code == 200, r.text
        return r.json()["active_sessions"]

    # -- failures and teardown --
    def tails(self) -> str:
        return "".join(f"\n--- {k}: {v} (tail) ---\n{tail(v)}" for k, v in self.logs.items())

    @contextmanager
    def failing(self):
        """Re-raise an AssertionError with the tails of every process log appended."""
        try:
            yield
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.tails()}") from None

    def close(self) -> None:
        agents = [p for p in self._procs if p not in self._fusion_procs]
        for p in agents + self._fusion_procs:  # agents first: they close their sessions while fusion is up
            try:
                p.stop()
            except Exception:  # teardown must reach every process
                if p.p.poll() is None:
                    p.p.kill()
                    p.p.wait()
        if self._q is not None:
            self._q.close()


def run_cli(args: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, FUSTOR_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "fustor.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
