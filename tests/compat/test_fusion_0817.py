"""Wire compatibility the other way round: our agent feeds an unmodified fustor-fusion 0.8.17.

The original fusion runs from its own venv (installed once per session) with a config per
spec/fusion-protocol.md §8 (the pipe named like its view, a receiver port beside the main
port, a query key for the view API); our agent (`python -m fustor.cli agent start`) watches a
small generated tree and pushes to it. The view's stats and tree must then equal the tree,
and a create and a delete made afterwards must arrive through our agent's realtime.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.compat.venvs import VenvProc, make_venv
from tests.e2e import agent_yaml, build_tree, tail, tree_diff, walk_fs, walk_view
from tests.procs import Proc, free_port, wait_http, wait_until

pytestmark = pytest.mark.network

FUSION_REQS = ["fustor-fusion==0.8.17"]
SYNC_DEADLINE = 60.0
REALTIME_DEADLINE = 15.0
INGEST_KEY = "compat-ingest"
QUERY_KEY = "compat-query"
VIEW = "research"
N_FILES = 400


@pytest.fixture(scope="session")
def fusion_venv(tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory, "fusion-0817", FUSION_REQS, "fustor-fusion")


def FusionProc(venv: Path, home: Path, log: Path, cwd: Path) -> VenvProc:
    return VenvProc(venv, "fustor-fusion", home, log, cwd)


def fusion_config(port: int, rport: int) -> str:
    # spec/fusion-protocol.md §8.3; the pipe is named like its view (§3.7/§7.1 scope quirks)
    return f"""
host: 127.0.0.1
port: {port}
receivers:
  http-main: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {INGEST_KEY}, pipe_id: {VIEW}}}]}}
views:
  {VIEW}: {{driver: fs, api_keys: [{QUERY_KEY}]}}
pipes:
  {VIEW}: {{receiver: http-main, views: [{VIEW}], session_timeout_seconds: 30}}
"""


def test_our_agent_feeds_fusion_0817(tmp_path, fusion_venv):
    tree = tmp_path / "tree"
    build_tree(tree, N_FILES, fanout=(4, 3))
    port, rport = free_port(), free_port()
    fusion_home = tmp_path / "fusion-home"
    (fusion_home / "fusion-config").mkdir(parents=True)
    (fusion_home / "fusion-config" / "default.yaml").write_text(fusion_config(port, rport))
    agent_cfg = tmp_path / "agent.yaml"
    agent_cfg.write_text(agent_yaml(tree, f"http://127.0.0.1:{rport}", agent_id="ours",
                                    pipe=VIEW, key=INGEST_KEY))
    logs = {"fusion 0.8.17": tmp_path / "fusion.log", "our agent": tmp_path / "agent.log"}
    procs: list[Proc] = []
    try:
        fusion = FusionProc(fusion_venv, fusion_home, logs["fusion 0.8.17"], cwd=tmp_path)
        procs.append(fusion)
        wait_http(f"http://127.0.0.1:{port}/", fusion)
        wait_http(f"http://127.0.0.1:{rport}/", fusion)
        agent = Proc(["agent", "start", str(agent_cfg)], tmp_path / "agent-home", logs["our agent"])
        procs.insert(0, agent)  # stopped first: it closes its session while fusion is up
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/views/{VIEW}",
                          headers={"X-API-Key": QUERY_KEY}, timeout=10) as q:
            _check(tree, q, agent, fusion)
    except AssertionError as e:
        tails = "".join(f"\n--- {k} (tail) ---\n{tail(v)}" for k, v in logs.items())
        raise AssertionError(f"{e}{tails}") from None
    finally:
        for p in procs:
            p.stop()


def _check(tree: Path, q: httpx.Client, agent: Proc, fusion: Proc) -> None:
    files, dirs = walk_fs(tree)
    assert len(files) == N_FILES
    seen: dict = {}

    def stats_match(n_files: int):
        for name, p in (("our agent", agent), ("fusion 0.8.17", fusion)):
            assert p.alive(), f"{name} exited with {p.p.returncode}"
        r = q.get("/stats")
        seen["last"] = (r.status_code, r.text[:500])
        return r.status_code == 200 and r.json().get("total_files") == n_files and r.json()

    try:
        stats = wait_until(lambda: stats_match(len(files)), SYNC_DEADLINE, interval=0.25,
                           what=f"/stats to report total_files={len(files)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last /stats: {seen.get('last')}") from None
    # 0.8.17 counts the root among the directories
    assert stats["total_directories"] == len(dirs), stats
    assert stats["total_size"] == sum(s for s, _ in files.values()), stats
    r = q.get("/tree", params={"path": "/", "recursive": "true"})
    assert r.status_code == 200, r.text[:1000]
    diff = tree_diff((files, dirs), walk_view(r.json()))
    assert not diff, f"fusion 0.8.17's view differs from the tree: {diff}"
    sessions = q.get("/sessions").json()["active_sessions"]
    assert [(s["task_id"], s["role"]) for s in sessions] == [(f"ours:{VIEW}", "leader")], sessions

    # realtime: a new file, then a deletion, each seen through the stats
    new = tree / "d0_1" / "created later.txt"
    new.write_bytes(b"n" * 321)
    wait_until(lambda: stats_match(len(files) + 1), REALTIME_DEADLINE, interval=0.1,
               what="the created file in /stats")
    r = q.get("/tree", params={"path": "/d0_1/created later.txt"})
    assert r.status_code == 200 and r.json()["size"] == 321, r.text[:500]
    new.unlink()
    wait_until(lambda: stats_match(len(files)), REALTIME_DEADLINE, interval=0.1,
               what="the deleted file gone from /stats")

    # a directory renamed: 0.8.17 names no extension in its session reply, so our agent
    # sends the per-file form (a delete and the walk's rows), never a move row
    os.rename(tree / "d0_1", tree / "d0_1 renamed")

    def renamed():
        r = q.get("/tree", params={"path": "/", "recursive": "true"})
        return r.status_code == 200 and not tree_diff(walk_fs(tree), walk_view(r.json()),
                                                      dir_mtimes=False)

    wait_until(renamed, REALTIME_DEADLINE * 2, interval=0.2,
               what="fusion 0.8.17's view to show the renamed directory")
