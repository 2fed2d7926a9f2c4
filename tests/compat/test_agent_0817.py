"""Wire compatibility: an unmodified fustor-agent 0.8.17 from PyPI feeds our fusion.

The agent runs from its own venv (installed once per session), watches a generated tree and
pushes to a real `fustor fusion serve` on 127.0.0.1; the view must then equal the tree, and a
create and a delete made afterwards must arrive through the agent's inotify.
"""

from __future__ import annotations

import os
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.compat.venvs import VenvProc, make_venv
from tests.e2e import walk_fs, walk_view
from tests.procs import Proc, free_port, wait_http, wait_until

pytestmark = pytest.mark.network

AGENT_REQS = ["fustor-agent==0.8.17", "watchdog==6.0.0"]
SYNC_DEADLINE = 90.0
REALTIME_DEADLINE = 30.0
INGEST_KEY = "compat-ingest"
QUERY_KEY = "compat-query"
VIEW = "research"
N_FILES = 300

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# -- the 0.8.17 agent's venv (once per session) ----------------------------------------


@pytest.fixture(scope="session")
def agent_venv(tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory, "agent-0817", AGENT_REQS, "fustor-agent")


def AgentProc(venv: Path, home: Path, log: Path, cwd: Path) -> VenvProc:
    return VenvProc(venv, "fustor-agent", home, log, cwd)


# -- the watched tree -----------------------------------------------------------------------


def build_tree(root: Path, n_files: int = N_FILES, seed: int = 817) -> None:
    """Nested dirs, a few empty ones (one inside another), varied sizes and mtimes, odd names."""
    rng = random.Random(seed)
    root.mkdir()
    dirs = [""]
    for i in range(40):
        parent = rng.choice([d for d in dirs if d.count("/") < 3])
        d = f"{parent}/dir{i:02d}" if parent else f"dir{i:02d}"
        (root / d).mkdir()
        dirs.append(d)
    for d in ("empty0", "dir03/empty1", "empty2", "empty2/empty3", "with space/ünï cödé"):
        (root / d).mkdir(parents=True)
    dirs.append("with space")
    now = time.time()
    names = ["plain name.txt", "ünïcödé.dat", "dots.in.name.tar.gz", "-dash", "#hash%pct"]
    for i in range(n_files):
        d = rng.choice(dirs)
        name = names[i] if i < len(names) else f"f{i:03d}.{rng.choice(['txt', 'bin', 'log', 'csv'])}"
        size = rng.choice([0, rng.randint(1, 100), rng.randint(100, 8192), rng.randint(8192, 200_000)])
        p = root / d / name
        p.write_bytes(rng.randbytes(size))
        # mostly old files (days to months), a few written "just now"
        age = rng.uniform(0, 20) if i % 25 == 0 else rng.uniform(3600, 90 * 86400)
        mtime = now - age + rng.random() / 7
        os.utime(p, (mtime, mtime))
    all_dirs = [p for p, _, _ in os.walk(root)]
    for p in sorted(all_dirs, key=len, reverse=True):
        mtime = now - rng.uniform(60, 30 * 86400) + rng.random() / 3
        os.utime(p, (mtime, mtime))


def fusion_config(port: int, rport: int) -> str:
    return f"""
host: 127.0.0.1
port: {port}
receivers:
  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {INGEST_KEY}, pipe_id: {VIEW}}}]}}
views:
  {VIEW}: {{driver: fs, api_keys: [{QUERY_KEY}]}}
pipes:
  {VIEW}: {{receiver: r, views: [{VIEW}]}}
"""


def agent_config(tree: Path, rport: int) -> str:
    # schema of fustor-agent 0.8.17 (agent spec §3): sources / senders (driver "fusion") / pipes
    return f"""
sources:
  tree-fs:
    driver: fs
    uri: "{tree}"
senders:
  our-fusion:
    driver: fusion
    uri: "http://127.0.0.1:{rport}"
    credential: {{key: {INGEST_KEY}}}
pipes:
  {VIEW}:
    source: tree-fs
    sender: our-fusion
"""


def _tail(path: Path, n: int = 6000) -> str:
    try:
        return _ANSI.sub("", path.read_text(errors="replace"))[-n:]
    except OSError as e:
        return f"<{e}>"


@pytest.fixture
def setup(tmp_path, agent_venv):
    tree = tmp_path / "tree"
    build_tree(tree)
    port, rport = free_port(), free_port()
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(fusion_config(port, rport))
    agent_home = tmp_path / "agent-home"
    (agent_home / "agent-config").mkdir(parents=True)
    (agent_home / "agent-config" / "default.yaml").write_text(agent_config(tree, rport))
    procs: list[Proc] = []
    logs = {"agent 0.8.17 output": tmp_path / "agent.out", "fusion output": tmp_path / "fusion.log"}

    @contextmanager
    def logs_on_failure():
        try:
            yield
        except AssertionError as e:
            tails = "".join(f"\n--- {k} (tail) ---\n{_tail(v)}" for k, v in logs.items())
            raise AssertionError(f"{e}{tails}") from None

    try:
        with logs_on_failure():
            fusion = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg)],
                          tmp_path / "fusion-home", logs["fusion output"])
            procs.append(fusion)
            wait_http(f"http://127.0.0.1:{port}/", fusion)
            wait_http(f"http://127.0.0.1:{rport}/", fusion)
            agent = AgentProc(agent_venv, agent_home, logs["agent 0.8.17 output"], cwd=tmp_path)
            procs.insert(0, agent)  # stopped first: it closes its session while fusion is up
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/views/{VIEW}",
                          headers={"X-API-Key": QUERY_KEY}, timeout=10) as q:
            yield logs_on_failure, {"tree": tree, "q": q, "agent": agent, "fusion": fusion,
                                    "agent_home": agent_home}
    finally:
        for p in procs:
            p.stop()


def test_agent_0817_snapshot_then_realtime(setup):
    logs_on_failure, env = setup
    with logs_on_failure():
        _snapshot_then_realtime(**env)


def wait_observing(cond, timeout: float, interval: float, what: str):
    """wait_until, with the last thing cond() saw (seen["last"]) in the timeout message."""
    seen: dict = {}
    try:
        return wait_until(lambda: cond(seen), timeout, interval=interval, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; last observed: {seen.get('last')!r}") from None


def _snapshot_then_realtime(tree, q, agent, fusion, agent_home):
    want_files, want_dirs = walk_fs(tree)
    assert len(want_files) == N_FILES

    def synced(seen):
        for p in (agent, fusion):
            assert p.alive(), f"{p.log_path.name}: process exited with {p.p.returncode}"
        r = q.get("/stats")
        seen["last"] = (r.status_code, r.text[:500])
        return r.status_code == 200 and r.json().get("file_count") == len(want_files) and r.json()

    stats = wait_observing(synced, SYNC_DEADLINE, interval=0.25,
                           what=f"/stats to answer 200 with file_count={len(want_files)}")
    assert stats["dir_count"] == len(want_dirs), stats
    assert stats["total_size"] == sum(s for s, _ in want_files.values()), stats

    r = q.get("/tree", params={"path": "/", "recursive": "true"})
    assert r.status_code == 200, r.text[:2000]
    got_files, got_dirs = walk_view(r.json())
    assert set(got_dirs) == set(want_dirs), (
        f"dirs only in view: {sorted(set(got_dirs) - set(want_dirs))[:20]}; "
        f"only on disk: {sorted(set(want_dirs) - set(got_dirs))[:20]}")
    assert set(got_files) == set(want_files), (
        f"files only in view: {sorted(set(got_files) - set(want_files))[:20]}; "
        f"only on disk: {sorted(set(want_files) - set(got_files))[:20]}")
    bad_size = {p: (got_files[p][0], s) for p, (s, _) in want_files.items() if got_files[p][0] != s}
    assert not bad_size, f"file sizes differ (view, disk): {bad_size}"
    bad_file_mtime = {p: (got_files[p][1], m) for p, (_, m) in want_files.items()
                      if abs(got_files[p][1] - m) > 1e-3}
    assert not bad_file_mtime, f"file mtimes differ (view, disk): {bad_file_mtime}"
    bad_dir_mtime = {p: (got_dirs[p], m) for p, m in want_dirs.items() if abs(got_dirs[p] - m) > 1e-3}
    assert not bad_dir_mtime, f"dir mtimes differ (view, disk): {bad_dir_mtime}"

    # the agent's session is visible with its persisted id (0.8.17: $FUSTOR_HOME/agent.id)
    agent_id = (agent_home / "agent.id").read_text().strip()
    sessions = q.get("/sessions").json()["active_sessions"]
    assert [(s["task_id"], s["agent_id"], s["role"]) for s in sessions] == [
        (f"{agent_id}:{VIEW}", agent_id, "leader")], sessions

    # realtime through the agent's inotify: a new file in a nested dir, then a deletion elsewhere.
    # One change at a time, each awaited: the 0.8.17 agent indexes realtime events by wall-clock
    # ms and its bus drops events sharing the ms of the last pushed one (agent spec §16.3), so a
    # create and a delete handled in the same ms could lose one of them on the agent side.
    deep = max((p for p in want_dirs if p != "/"), key=lambda p: p.count("/"))
    new_rel = f"{deep}/created after snapshot.txt"
    gone_rel = sorted(p for p in want_files if not p.startswith(deep + "/"))[len(want_files) // 2]
    new_abs = tree / new_rel.lstrip("/")
    new_abs.write_bytes(b"x" * 1234)
    new_st = new_abs.stat()

    def look(seen, n_files):
        assert agent.alive(), f"agent exited with {agent.p.returncode}"
        new = q.get("/tree", params={"path": new_rel})
        gone = q.get("/tree", params={"path": gone_rel})
        count = q.get("/stats").json().get("file_count")
        seen["last"] = {"new": (new.status_code, new.text[:400]),
                        "gone": (gone.status_code, gone.text[:200]), "file_count": count}
        new_ok = (new.status_code == 200 and new.json()["content_type"] == "file"
                  and new.json()["size"] == new_st.st_size
                  and abs(new.json()["modified_time"] - new_st.st_mtime) <= 1e-3)
        return new_ok, gone.status_code, count == n_files

    wait_observing(lambda seen: look(seen, len(want_files) + 1) == (True, 200, True),
                   REALTIME_DEADLINE, interval=0.1,
                   what=f"the view to show the new file {new_rel!r} (size {new_st.st_size})")
    (tree / gone_rel.lstrip("/")).unlink()
    wait_observing(lambda seen: look(seen, len(want_files)) == (True, 404, True),
                   REALTIME_DEADLINE, interval=0.1, what=f"the view to drop the deleted {gone_rel!r}")
