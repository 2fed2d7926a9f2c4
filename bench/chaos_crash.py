"""Crash scenarios of bench/chaos.py: kill -9 of fusion during ingest, a reload, an audit and
a map growth, and kill -9 of the agent mid-snapshot and mid-realtime.

Each returns its figures; a guarantee that does not hold is a :class:`Broken` raised by
the caller's checks (see chaos.py), never a crash of the benchmark.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from chaos_procs import (
    Broken,
    Churn,
    Pushers,
    Site,
    build_tree,
    check_batches,
    complete_snapshot,
    converge,
    summary_ms,
    verify_stores,
    wait_for,
)

AUDIT_S = 1.0  # the tree pipe's audit interval: audits come often enough to be killed in

# fusion whose stores open with a map only 1-2 MiB larger than their file (so every restart
# grows within a few MiB of pushes) and that kills itself with SIGKILL inside Store._grow:
# before the resize, after it, or a few ms into the re-run of the aborted group. Nothing of
# the group is committed at any of these moments.
GROWTH_LAUNCHER = """
import os, random, signal, sys, threading
import fustor.store.env as env
from fustor.cli import main
if not (hasattr(env.Store, "_grow") and hasattr(env, "open_env")):
    sys.exit("chaos: fustor.store.env changed (Store._grow, open_env); update bench/chaos_crash.py")
open_env, grow = env.open_env, env.Store._grow
def small_map(path, *, readonly, map_size):
    size = path.stat().st_size if path.exists() else 0
    return open_env(path, readonly=readonly, map_size=((size >> 20) + 2) << 20)
def grow_and_die(self):
    when = random.choice(("before the resize", "after the resize", "during the re-run"))
    print(f"chaos: map growth of {self.path.name}: kill -9 {when}", flush=True)
    if when.startswith("before"):
        os.kill(os.getpid(), signal.SIGKILL)
    if when.startswith("during"):
        threading.Timer(random.uniform(0, 0.02), os.kill, (os.getpid(), signal.SIGKILL)).start()
    grow(self)
    if when.startswith("after"):
        os.kill(os.getpid(), signal.SIGKILL)
env.open_env, env.Store._grow = small_map, grow_and_die
sys.argv[0] = "fustor"
main()
"""


def _alive(site: Site, agent: str | None = None):
    def check() -> None:
        if site.fusion is not None and not site.fusion.alive():
            raise Broken(f"fusion exited ({site.fusion.p.returncode}): {site.fusion.tail()}")
        if agent and not site.agents[agent].alive():
            raise Broken(f"agent exited: {site.agents[agent].tail()}")
    return check


def crash_fusion(kind: str, work: Path, kills: int, seed: int, files: int = 6000,
                 converge_s: float = 60.0) -> dict:
    """K kill -9 of fusion while numbered batches are pushed from several threads (and, for
    reload/audit/growth, while a real agent keeps a churning tree in another view)."""
    rng = random.Random(seed)
    with_tree = kind != "ingest"
    views = {"batches": {}}
    if with_tree:
        views["tree"] = {"audit": AUDIT_S}
    site = Site(work, views, session_timeout=10)
    tree = work / "tree"
    out: dict = {"kills": 0}
    restarts: list[float] = []
    verify_failures: list[str] = []
    pushers = churn = None
    launcher = GROWTH_LAUNCHER if kind == "growth" else None
    try:
        if with_tree:
            build_tree(tree, files, seed)
        site.start(launcher=launcher)
        complete_snapshot(site.rurl, "batches")
        pushers = Pushers(site.rurl, "batches", threads=3, rows=200)
        if with_tree:
            site.start_agent("a", tree, "tree", batch_size=500)
            churn = Churn(tree, rate=40, seed=seed)
        reloads_done = 0
        for k in range(kills):
            if kind == "ingest":
                pushers.wait_acked(rng.randint(2, 25), 60, _alive(site))
                time.sleep(rng.uniform(0, 0.2))
                site.kill9()
            elif kind == "reload":
                pushers.wait_acked(rng.randint(2, 10), 60, _alive(site))
                extra = {f"extra{k}": {}} if k % 2 == 0 else {}
                site.write_config({**views, **extra})
                result = site.work / "fusion-home" / "fusion-reload.json"
                before = result.stat().st_mtime_ns if result.exists() else 0
                site.fusion.p.send_signal(signal.SIGHUP)
                time.sleep(rng.uniform(0, 0.2))  # before, during or after the reload
                site.kill9()
                reloads_done += result.exists() and result.stat().st_mtime_ns != before
            elif kind == "audit":
                q = site.query("tree")
                alive = _alive(site, "a")

                def auditing(q=q, alive=alive) -> bool:
                    alive()
                    r = q.get("/stats")
                    return r.status_code == 200 and r.json()["is_auditing"]

                wait_for(auditing, 6 * AUDIT_S + 60, "an audit of the tree view", interval=0.005)
                site.kill9()
            elif kind == "growth":
                wait_for(lambda: not site.fusion.alive(), 120, "a map growth (fusion kills itself in it)")
                if site.fusion.p.returncode != -9:
                    raise Broken(f"fusion ended with {site.fusion.p.returncode}, not in a map "
                                 f"growth: {site.fusion.tail()}")
            out["kills"] += 1
            verify_failures += verify_stores(site.stores())
            last = k == kills - 1
            if kind == "growth":
                restarts.append(_start_growing(site, None if last else launcher))
            else:
                restarts.append(site.start(probe_view="batches"))
        pushers.wait_acked(5, 60, _alive(site))  # pushes are taken again after the last restart
        pushers.stop()
        if churn is not None:
            churn.stop()
            out["churn_ops"] = churn.ops
        out.update(check_batches(site.query("batches"), pushers))
        out["retried_503"] = pushers.status_503
        out["retry_after_missing"] = pushers.retry_after_missing
        out["unexpected_answers"] = len(pushers.unexpected)
        out["first_unexpected"] = pushers.unexpected[:3]
        if kind == "reload":
            out["reloads_finished_before_kill"] = reloads_done
        if with_tree:
            conv = converge(site.query("tree"), tree, converge_s, _alive(site, "a"))
            out["diverged_paths"] = conv["diverged_paths"]
            out["converge_s"] = conv.get("converge_s")
            if conv["diverged_paths"]:
                out["difference"] = conv["difference"]
        out["restart_to_first_200_ms"] = summary_ms([r for r in restarts if r is not None])
        if kind == "growth":  # where in the growth each kill landed, as the launcher said
            out["growth_kill_points"] = [line.split(": kill -9 ")[1] for p in sorted(
                work.glob("fusion-*.log")) for line in p.read_text(errors="replace").splitlines()
                if line.startswith("chaos: map growth")]
        out["fusion_tracebacks"] = site.tracebacks()
    finally:
        if pushers is not None:
            pushers.stop()
        if churn is not None:
            churn.stop()
        site.close()
    verify_failures += verify_stores(site.stores())
    out["verify_failures"] = len(verify_failures)
    if verify_failures:
        out["verify_problems"] = verify_failures[:5]
    return out


def _start_growing(site: Site, launcher: str | None) -> float | None:
    """Restart; with the growth launcher fusion may die in a growth before it answers."""
    try:
        return site.start(probe_view="batches" if launcher is None else None, launcher=launcher)
    except Broken:
        if site.fusion.p.returncode == -9:
            return None
        raise


def agent_kill(work: Path, files: int, seed: int, converge_s: float = 60.0) -> dict:
    """kill -9 of the agent mid-snapshot, restart, converge; then mid-realtime (changes go on
    while it is down), restart, converge."""
    site = Site(work, {"tree": {"audit": AUDIT_S}}, session_timeout=10)
    tree = work / "tree"
    out: dict = {}
    churn = None
    try:
        build_tree(tree, files, seed)
        site.start()
        q = site.query("tree")
        # small batches: the snapshot takes many pushes, so the kill lands inside it
        agent = site.start_agent("a", tree, "tree", batch_size=100)

        def pushing() -> bool:
            _alive(site, "a")()
            s = q.get("/sessions").json()["active_sessions"]
            return any(x["events_pushed"] > 0 for x in s)

        wait_for(pushing, 60, "the first snapshot batches", interval=0.01)
        agent.kill9()
        out["killed_mid_snapshot"] = "snapshot complete" not in agent.tail(1_000_000)
        site.start_agent("a", tree, "tree", batch_size=100)
        first = converge(q, tree, converge_s, _alive(site, "a"))

        churn = Churn(tree, rate=100, seed=seed)
        wait_for(lambda: churn.ops >= 100, 30, "100 realtime changes")
        before = sum(x["events_pushed"] for x in q.get("/sessions").json()["active_sessions"])
        site.agents["a"].kill9()
        ops_at_kill = churn.ops
        wait_for(lambda: churn.ops >= ops_at_kill + 50, 30, "50 changes while the agent is down")
        site.start_agent("a", tree, "tree", batch_size=100)
        wait_for(lambda: churn.ops >= ops_at_kill + 150, 30, "100 changes after the restart")
        churn.stop()
        out["realtime_pushed_before_kill"] = before
        second = converge(q, tree, converge_s, _alive(site, "a"))
        out["churn_ops"] = churn.ops
        out["diverged_paths"] = max(0, first["diverged_paths"]) + max(0, second["diverged_paths"])
        if first["diverged_paths"] < 0 or second["diverged_paths"] < 0:
            out["diverged_paths"] = -1  # the view never answered
        out["converge_s"] = {"after_snapshot_kill": first.get("converge_s"),
                             "after_realtime_kill": second.get("converge_s")}
        for name, c in (("after_snapshot_kill", first), ("after_realtime_kill", second)):
            if c["diverged_paths"]:
                out[f"difference_{name}"] = c["difference"]
        out["fusion_tracebacks"] = site.tracebacks()
    finally:
        if churn is not None:
            churn.stop()
        site.close()
    problems = verify_stores(site.stores())
    out["verify_failures"] = len(problems)
    if problems:
        out["verify_problems"] = problems[:5]
    return out
