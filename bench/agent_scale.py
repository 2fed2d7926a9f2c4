"""The agent at the users' scale: arming, snapshot, rename storms, rm -rf and mv of big trees.

    python bench/agent_scale.py --dirs 200000 --files 2000000 [--json] [--settle 60]

Writes a tree of about ``--dirs`` directories and ``--files`` files under a temp dir (and
removes it at the end): two subtrees of R = min(200k, files/10) files each (``/big_rm``
and ``/big_mv``, 100 files per directory) and, for the rest, top directories ``/tNNN``
of leaf directories ``dNNNN`` holding the remaining files. Then runs ``fustor fusion
serve`` (audits and the sentinel off) and ``fustor agent start`` as processes on
127.0.0.1 and prints:

* ``process_up_s`` — agent process start until its status console answers (Python start);
* ``first_row_s`` — agent process start until fusion acknowledged the first rows;
* ``arming_s`` — agent process start until every directory is watched (the snapshot arms
  them as it walks, so this is about the snapshot's time, not a walk before it);
* ``snapshot_s``, ``snapshot_files_per_s`` — until the view's stats count every file;
* ``agent_rss_mb`` — the agent's peak RSS (VmHWM) over the whole run; ``agent_rss_anon_mb``
  its anonymous memory after the snapshot;
* ``rename_storm_*`` — 1,000 leaf directories (all in ``/renames``) renamed as fast as
  ``os.rename`` goes: per-rename time until the view lists the new name and not the old
  one (p50, p99) and until the last one is visible; ``rename_paced_*`` — 1,000 more at
  200/s (the view's per-rename latency when the agent is not flooded);
* ``mv_visible_s``, ``mv_rows_pushed``, ``mv_files`` — ``mv`` of ``/big_mv`` to another
  parent: until the view counts its files at the new path and none at the old, and the
  rows the agent pushed for it (target ≤ 2 × files moved): one move row when the whole
  subtree is watched (fusion and agent both take the ``move`` extension), else a delete
  and the rows of a walk of the new place;
* ``rmrf_gone_s``, ``ghosts_after_s`` — ``rm -rf /big_rm``: until the view no longer has
  it, and the files the view still holds that the disk does not, ``--settle`` seconds
  (default 60) after the rm began;
* ``events_dropped``, ``kernel_or_queue_overflow``, ``audits_run`` — whether events were
  lost and repaired (audits are off, so any audit is a repair).

Asserts nothing; a missing figure is printed as null. Polls fusion every 10-20 ms (the
rename rounds list ``/renames`` every ~20 ms, so their latencies are ±20 ms; each listing
holds only the names of renames made and not yet seen, so watching costs fusion little).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Proc, free_port, memory, pct, start_fusion, wait_up  # noqa: E402

INGEST_KEY = "bench-scale-ingest"
QUERY_KEY = "bench-scale-query"
VIEW = "scale"
RENAMES = 1000
FILES_PER_BIG_DIR = 100


# -- the tree ---------------------------------------------------------------------------------


def _fill(job: tuple[list[str], int]) -> int:
    dirs, n = job
    made = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    for d in dirs:
        os.mkdir(d)
        for i in range(n):
            os.close(os.open(f"{d}/f{i:04d}.dat", flags, 0o644))
        made += n
    return made


def make_tree(root: Path, dirs: int, files: int) -> dict:
    """The layout of the module docstring; returns what was made."""
    big = min(200_000, max(FILES_PER_BIG_DIR, files // 10))
    big_dirs = max(1, big // FILES_PER_BIG_DIR)
    big = big_dirs * FILES_PER_BIG_DIR
    rest_files = max(0, files - 2 * big)
    rest_dirs = max(2, dirs - 2 * (big_dirs + 1))
    tops = max(2, int(rest_dirs ** 0.5 / 2))
    leaves_per_top = max(1, (rest_dirs - tops - 1 - RENAMES) // tops)
    leaves = tops * leaves_per_top + RENAMES
    per_leaf = rest_files // leaves
    extra = rest_files - per_leaf * leaves
    jobs: list[tuple[list[str], int]] = []
    for name in ("big_rm", "big_mv"):
        os.mkdir(root / name)
        ds = [f"{root}/{name}/d{i:05d}" for i in range(big_dirs)]
        jobs += [(ds[i:i + 50], FILES_PER_BIG_DIR) for i in range(0, len(ds), 50)]
    top_names = [f"t{t:04d}" for t in range(tops)]
    for t in top_names:
        os.mkdir(root / t)
    # the directories the rename rounds rename: one parent, so one listing shows them all
    os.mkdir(root / "renames")
    leaf_paths = [f"{root}/renames/d{i:05d}" for i in range(RENAMES)]
    leaf_paths += [f"{root}/{t}/d{i:05d}" for t in top_names for i in range(leaves_per_top)]
    batch = max(1, 20_000 // max(1, per_leaf))
    jobs += [(leaf_paths[i:i + batch], per_leaf) for i in range(0, len(leaf_paths), batch)]
    with multiprocessing.get_context("fork").Pool(max(2, os.cpu_count() or 2)) as pool:
        made = sum(pool.imap_unordered(_fill, jobs, chunksize=1))
    for i in range(extra):  # the remainder, one each in the first leaves
        os.close(os.open(f"{leaf_paths[i % len(leaf_paths)]}/x{i:04d}.dat", os.O_CREAT | os.O_WRONLY))
    made += extra
    os.mkdir(root / "moved_here")
    return {"files": made, "dirs": 2 + 2 * big_dirs + tops + 1 + leaves + 1, "big_files": big,
            "files_per_leaf": per_leaf}


# -- processes --------------------------------------------------------------------------------


def write_configs(work: Path, root: Path, port: int, rport: int, console: int) -> tuple[Path, Path]:
    fusion = work / "fusion.yaml"
    fusion.write_text(f"""
host: 127.0.0.1
port: {port}
logging: WARNING
receivers:
  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {INGEST_KEY}, pipe_id: p}}]}}
views:
  {VIEW}: {{driver: fs, api_keys: [{QUERY_KEY}], driver_params: {{max_tree_items: 0}}}}
pipes:
  p: {{receiver: r, views: [{VIEW}], session_timeout_seconds: 30, audit_interval_sec: 0,
       sentinel_interval_sec: 0}}
""")
    agent = work / "agent.yaml"
    agent.write_text(f"""
agent_id: scale
logging: WARNING
console: {{enabled: true, host: 127.0.0.1, port: {console}}}
status_interval_sec: 3600
sources:
  tree: {{driver: fs, uri: "{root}"}}
senders:
  fusion: {{driver: fusion, uri: "http://127.0.0.1:{rport}", credential: {{key: {INGEST_KEY}}}}}
pipes:
  p: {{source: tree, sender: fusion}}
""")
    return fusion, agent


class Watch:
    """Polls the agent's console and fusion, and keeps the agent's peak memory."""

    def __init__(self, agent: Proc, fusion: Proc, console: int, port: int) -> None:
        self.agent, self.fusion = agent, fusion
        self.c = httpx.Client(base_url=f"http://127.0.0.1:{console}", timeout=10)
        self.q = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/views/{VIEW}",
                              headers={"X-API-Key": QUERY_KEY}, timeout=60)

    def pipe(self) -> dict | None:
        try:
            r = self.c.get("/status")
        except httpx.HTTPError:
            return None
        return (r.json().get("pipes") or {}).get("p") if r.status_code == 200 else None

    def stats(self, path: str = "/") -> dict | None:
        r = self.q.get("/stats", params={"path": path})
        return r.json() if r.status_code == 200 else None

    def children(self, path: str, after: str | None = None, limit: int = 100_000) -> set[str]:
        params = {"path": path, "max_depth": 1, "only_path": "true", "limit": limit}
        if after is not None:
            params["after"] = after
        r = self.q.get("/tree", params=params)
        if r.status_code != 200:
            return set()
        return {c["name"] for c in r.json().get("children", [])}

    def until(self, cond, deadline_s: float, what: str, interval: float = 0.01):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            self.agent.check()
            self.fusion.check()
            got = cond()
            if got:
                return got
            time.sleep(interval)
        raise SystemExit(f"timed out after {deadline_s} s waiting for {what}")

    def rows_settled(self, quiet_s: float = 2.0, deadline_s: float = 300) -> int:
        """The agent's rows_pushed once it has not moved for ``quiet_s``."""
        last, since = -1, time.monotonic()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            n = (self.pipe() or {}).get("rows_pushed") or 0
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return n
            time.sleep(0.1)
        return last


def rename_round(w: Watch, root: Path, pairs: list[tuple[str, str, str]], rate: float | None,
                 deadline_s: float) -> dict:
    """Rename each (top, old, new) in a thread (as fast as it goes, or at ``rate``/s) while
    this one polls the view: per rename, the time until the view lists new and not old."""
    t_of: dict[tuple[str, str], float] = {}
    t0 = time.monotonic()

    def renamer() -> None:
        for i, (top, old, new) in enumerate(pairs):
            if rate:
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            os.rename(root / top / old, root / top / new)
            t_of[(top, new)] = time.monotonic()

    th = threading.Thread(target=renamer)
    th.start()
    waiting = set(pairs)
    lat: list[float] = []
    last_seen = t0
    end = time.monotonic() + deadline_s
    tops = sorted({p[0] for p in pairs})
    index = {(top, old): i for i, (top, old, _new) in enumerate(pairs)}

    def window(top: str, made: dict) -> tuple[str | None, int]:
        """Only the names of renames made and not yet seen are listed (``after`` the name
        before the first of them, as many as the range holds), so that observing a few
        renames does not cost fusion a listing of the whole directory every sweep. A
        pair's old and new names sort side by side (``dNNNNN``, ``dNNNNN.r``, ``dNNNNN.r2``)."""
        mine = sorted(index[(t, old)] for t, old, new in waiting if t == top and (t, new) in made)
        if not mine:
            return None, 1
        lo, hi = mine[0], mine[-1]
        after = pairs[lo - 1][2] if lo > 0 and pairs[lo - 1][0] == top else None
        return after, 2 * (hi - lo + 1) + 2

    try:
        while waiting and time.monotonic() < end:
            done_before = dict(t_of)  # renames made before this sweep began
            listing = {t: w.children("/" + t, *window(t, done_before)) for t in tops}
            now = time.monotonic()
            for top, old, new in list(waiting):
                if (top, new) not in done_before:
                    continue
                names = listing[top]
                if new in names and old not in names:
                    lat.append(now - done_before[(top, new)])
                    last_seen = now
                    waiting.discard((top, old, new))
            time.sleep(0.02)  # a listing costs fusion ~10 ms: polling must not be its load
    finally:
        th.join()
    return {"p50_s": pct(lat, 0.5, 3, to_ms=False), "p99_s": pct(lat, 0.99, 3, to_ms=False),
            # from the first rename until the view showed the last one
            "last_visible_s": round(last_seen - t0, 3) if lat and not waiting else None,
            "not_visible": len(waiting), "renames_took_s": round(max(t_of.values()) - t0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dirs", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--settle", type=float, default=60.0, help="seconds after rm -rf began to count ghosts")
    ap.add_argument("--deadline", type=float, default=1800.0, help="for the snapshot")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a: print(*a, flush=True))
    work = Path(tempfile.mkdtemp(prefix="fustor-scale-"))
    procs: list[Proc] = []
    out: dict = {"dirs_asked": args.dirs, "files_asked": args.files}
    try:
        root = work / "tree"
        root.mkdir()
        say(f"writing ~{args.dirs:,} dirs / ~{args.files:,} files under {root} ...")
        t = time.monotonic()
        shape = make_tree(root, args.dirs, args.files)
        os.sync()
        out.update(files=shape["files"], dirs=shape["dirs"], big_files=shape["big_files"])
        say(f"  {shape['files']:,} files in {shape['dirs']:,} dirs in {time.monotonic() - t:.0f} s")

        port, rport, console = free_port(), free_port(), free_port()
        fcfg, acfg = write_configs(work, root, port, rport, console)
        fusion = start_fusion(work / "data", fcfg, work / "fusion-home", work / "fusion.log")
        procs.append(fusion)
        wait_up(f"http://127.0.0.1:{rport}/", fusion)
        wait_up(f"http://127.0.0.1:{port}/", fusion)

        say("starting the agent ...")
        t_start = time.monotonic()
        agent = Proc(["-m", "fustor.cli", "agent", "start", str(acfg)], work / "agent-home",
                     work / "agent.log")
        procs.append(agent)
        w = Watch(agent, fusion, console, port)
        w.until(lambda: w.pipe() is not None, 60, "the agent's console", 0.005)
        out["process_up_s"] = round(time.monotonic() - t_start, 3)
        w.until(lambda: ((w.pipe() or {}).get("rows_pushed") or 0) > 0, 120, "the first rows", 0.005)
        out["first_row_s"] = round(time.monotonic() - t_start, 3)
        say(f"  console up after {out['process_up_s']} s, first rows acknowledged after "
            f"{out['first_row_s']} s")

        def armed():
            watch = (w.pipe() or {}).get("watch") or {}
            return watch.get("fully_armed") and watch

        armed_status = w.until(armed, args.deadline, "every directory armed", 0.05)
        out["arming_s"] = round(time.monotonic() - t_start, 2)
        out["watched_dirs"] = armed_status.get("watched_dirs")
        out["unwatched_dirs"] = armed_status.get("unwatched_dirs")

        def indexed():
            st = w.stats()
            return st if st and st["file_count"] >= shape["files"] else None

        w.until(indexed, args.deadline, "the snapshot in the view", 0.05)
        snap = time.monotonic() - t_start
        out["snapshot_s"] = round(snap, 2)
        out["snapshot_files_per_s"] = round(shape["files"] / snap)
        out["agent_rss_anon_mb"] = memory(agent.pid)["RssAnon"]
        say(f"  armed {out['watched_dirs']:,} dirs after {out['arming_s']} s; snapshot in view "
            f"after {out['snapshot_s']} s ({out['snapshot_files_per_s']:,} files/s); agent "
            f"RssAnon {out['agent_rss_anon_mb']} MiB")

        # -- renames: a storm, then paced ------------------------------------------------
        storm = [("renames", f"d{i:05d}", f"d{i:05d}.r") for i in range(RENAMES)]
        w.rows_settled(1.0)
        r = rename_round(w, root, storm, None, 120)
        out.update(rename_storm_p50_s=r["p50_s"], rename_storm_p99_s=r["p99_s"],
                   rename_storm_last_visible_s=r["last_visible_s"],
                   rename_storm_not_visible=r["not_visible"])
        say(f"rename storm: {len(storm)} renames in {r['renames_took_s']} s; visible p50 "
            f"{r['p50_s']} s, p99 {r['p99_s']} s, last {r['last_visible_s']} s")
        w.rows_settled(1.0)
        paced = [(t, new, new + "2") for t, _old, new in storm]
        r = rename_round(w, root, paced, 200.0, 120)
        out.update(rename_paced_p50_ms=r["p50_s"] and round(r["p50_s"] * 1000, 1),
                   rename_paced_p99_ms=r["p99_s"] and round(r["p99_s"] * 1000, 1),
                   rename_paced_not_visible=r["not_visible"])
        say(f"renames at 200/s: visible p50 {out['rename_paced_p50_ms']} ms, p99 "
            f"{out['rename_paced_p99_ms']} ms")

        # -- mv of a big directory -----------------------------------------------------------
        before = w.rows_settled(1.0)
        t0 = time.monotonic()
        os.rename(root / "big_mv", root / "moved_here" / "big_mv")

        def moved():
            st = w.stats("/moved_here/big_mv")
            return st and st["file_count"] >= shape["big_files"] and w.stats("/big_mv") is None

        w.until(moved, 300, "the moved tree in the view", 0.02)
        out["mv_visible_s"] = round(time.monotonic() - t0, 2)
        out["mv_files"] = shape["big_files"]
        out["mv_rows_pushed"] = w.rows_settled(2.0) - before
        say(f"mv of {shape['big_files']:,} files: visible after {out['mv_visible_s']} s, "
            f"{out['mv_rows_pushed']:,} rows pushed")

        # -- rm -rf of a big directory --------------------------------------------------------
        t0 = time.monotonic()
        subprocess.run(["rm", "-rf", str(root / "big_rm")], check=True)
        out["rm_took_s"] = round(time.monotonic() - t0, 2)
        w.until(lambda: w.stats("/big_rm") is None, 300, "the removed tree gone from the view", 0.02)
        out["rmrf_gone_s"] = round(time.monotonic() - t0, 2)
        left = t0 + args.settle - time.monotonic()
        if left > 0:
            time.sleep(left)
        disk_files = shape["files"] - shape["big_files"]
        st = w.stats() or {}
        out["ghosts_after_s"] = args.settle
        out["ghosts_after_60s" if args.settle == 60 else f"ghosts_after_{args.settle:g}s"] = \
            max(0, st.get("file_count", 0) - disk_files)
        say(f"rm -rf of {shape['big_files']:,} files ({out['rm_took_s']} s): gone from the view "
            f"after {out['rmrf_gone_s']} s; view {st.get('file_count'):,} files, disk {disk_files:,}")

        status = w.pipe() or {}
        watch = status.get("watch") or {}
        out["events_dropped"] = watch.get("events_dropped")
        out["events_coalesced"] = watch.get("events_coalesced")
        out["kernel_or_queue_overflow"] = watch.get("last_overflow_at") is not None
        out["audits_run"] = st.get("audit_cycle_count")
        mem = memory(agent.pid)
        out["agent_rss_mb"] = mem["VmHWM"]
        out["agent_rss_end_mb"] = mem["VmRSS"]
        say(f"agent peak RSS {mem['VmHWM']} MiB (now {mem['VmRSS']}); dropped "
            f"{out['events_dropped']}, coalesced {out['events_coalesced']}, audits {out['audits_run']}")
    finally:
        for p in reversed(procs):
            p.stop(timeout=60)
        print(json.dumps(out) if args.json else json.dumps(out, indent=2), flush=True)
        say(f"removing {work} ...")
        if subprocess.run(["rm", "-rf", str(work)]).returncode != 0:  # faster than rmtree
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
