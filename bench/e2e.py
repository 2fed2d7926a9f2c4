"""End-to-end benchmark: a real tree on disk, a real `fustor fusion serve` and a real `fustor agent`.

    python bench/e2e.py --files 1000000 [--json] [--tree DIR]

Generates a tree of about N files (depth 4-6, ~100 files per leaf directory, a few bytes
each, mtimes spread over months), starts fusion and the agent as processes on 127.0.0.1,
and measures:

* ``index_seconds`` — agent start until the view's stats report every file (the view
  answers stats only once the snapshot's end marker is in), and ``files_per_s``;
* ``realtime_p50_ms`` / ``realtime_p99_ms`` — create a file, poll the view for its path
  until it is there (sequentially, ``--samples`` files in existing leaf directories);
* ``realtime_lost`` — ``--burst`` file creations at ``--rate`` per second, then the number
  still missing from the view after ``--settle`` seconds;
* ``agent_rss_mb`` / ``fusion_rss_mb`` (VmRSS at the end; RssAnon and the peak VmHWM too).

Prints figures; asserts nothing. ``--tree DIR`` keeps the generated tree in DIR and reuses
it on the next run (same N); otherwise it lives in a temp dir removed at the end. The page
cache is warm (the tree was just written and synced), so index_seconds is the agent's and
fusion's cost, not the disk's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Proc, cpu_seconds, free_port, memory, pct, start_fusion, wait_up  # noqa: E402
from treegen import rows  # noqa: E402

INGEST_KEY = "bench-e2e-ingest"
QUERY_KEY = "bench-e2e-query"
VIEW = "bench"
MARKER = ".fustor-bench-tree"  # in the tree's parent: "N files" once generation finished
CONTENT = bytes(range(64))


# -- the tree ---------------------------------------------------------------------------

def _write_files(job: tuple[str, list[tuple[str, int, float]]]) -> int:
    directory, files = job
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    for name, size, mtime in files:
        fd = os.open(os.path.join(directory, name), flags, 0o644)
        try:
            if size:
                os.write(fd, CONTENT[:size])
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
    return len(files)


def make_tree(root: Path, files: int, workers: int) -> tuple[int, int, list[str]]:
    """Write the treegen tree under ``root``; returns (files, dirs, leaf dirs as view paths)."""
    dirs: list[tuple[str, float]] = []
    leaves: dict[str, list[tuple[str, int, float]]] = {}
    for _op, path, is_dir, size, mtime, _ctime in rows(files):
        if is_dir:
            dirs.append((path, mtime))
        else:
            parent, _, name = path.rpartition("/")
            leaves.setdefault(parent, []).append((name, size % len(CONTENT), mtime))
    for path, _ in dirs:
        os.makedirs(str(root) + path, exist_ok=True)
    jobs = [(str(root) + d, fs) for d, fs in leaves.items()]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        written = sum(pool.imap_unordered(_write_files, jobs, chunksize=16))
    for path, mtime in reversed(dirs):  # children first: a parent's mtime stays as set
        os.utime(str(root) + path, (mtime, mtime))
    return written, len(dirs), list(leaves)


def count_tree(root: Path) -> tuple[int, int, list[str]]:
    files, dirs, leaves = 0, 0, []
    for top, _dnames, fnames in os.walk(root):
        dirs += 1
        files += len(fnames)
        if fnames:
            rel = os.path.relpath(top, root)
            leaves.append("/" if rel == "." else "/" + rel)
    return files, dirs, leaves


# -- processes ----------------------------------------------------------------------------

def write_configs(work: Path, root: Path, port: int, rport: int) -> tuple[Path, Path]:
    fusion = work / "fusion.yaml"
    fusion.write_text(f"""
host: 127.0.0.1
port: {port}
logging: WARNING
receivers:
  bench: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {INGEST_KEY}, pipe_id: bench}}]}}
views:
  {VIEW}: {{driver: fs, api_keys: [{QUERY_KEY}], driver_params: {{max_tree_items: 0}}}}
pipes:
  # no audit during the measurements; the sentinel keeps its default
  bench: {{receiver: bench, views: [{VIEW}], session_timeout_seconds: 30, audit_interval_sec: 3600}}
""")
    agent = work / "agent.yaml"
    agent.write_text(f"""
agent_id: bench
logging: WARNING
sources:
  tree: {{driver: fs, uri: {root}}}
senders:
  fusion: {{driver: fusion, uri: "http://127.0.0.1:{rport}", credential: {{key: {INGEST_KEY}}}}}
pipes:
  bench: {{source: tree, sender: fusion}}
""")
    return fusion, agent


# -- measurements -------------------------------------------------------------------------

def wait_indexed(q: httpx.Client, files: int, agent: Proc, fusion: Proc, say,
                 deadline_s: float) -> tuple[float, dict]:
    t0 = time.monotonic()
    end = t0 + deadline_s
    last_say = t0
    while time.monotonic() < end:
        agent.check()
        fusion.check()
        try:
            r = q.get(f"/api/v1/views/{VIEW}/stats", timeout=30)
            if r.status_code == 200 and r.json()["file_count"] >= files:
                return time.monotonic() - t0, r.json()
        except httpx.HTTPError:
            pass
        if time.monotonic() - last_say >= 10:
            last_say = time.monotonic()
            say(f"  ... {last_say - t0:.0f} s, {agent_progress(agent)}")
        time.sleep(0.1)
    raise SystemExit(f"not indexed after {deadline_s} s: {agent_progress(agent)}")


def agent_progress(agent: Proc) -> str:
    lines = agent.log.read_text(errors="replace").strip().splitlines()
    return lines[-1][-200:] if lines else "(no agent output)"


def visible(q: httpx.Client, path: str) -> bool:
    r = q.get(f"/api/v1/views/{VIEW}/tree", params={"path": path, "max_depth": 0})
    return r.status_code == 200 and r.json().get("path") == path


def realtime_latency(q: httpx.Client, root: Path, leaves: list[str], samples: int,
                     poll_s: float, timeout_s: float) -> tuple[list[float], int]:
    rng = random.Random(11)
    out, missed = [], 0
    for i in range(samples):
        path = f"{rng.choice(leaves)}/rt-{i:05d}.dat"
        t0 = time.perf_counter()
        with open(str(root) + path, "wb") as f:
            f.write(b"realtime")
        end = t0 + timeout_s
        while True:
            if visible(q, path):
                out.append(time.perf_counter() - t0)
                break
            if time.perf_counter() > end:
                missed += 1
                break
            time.sleep(poll_s)
    return out, missed


def realtime_burst(q: httpx.Client, root: Path, n: int, rate: float, settle_s: float,
                   say) -> tuple[int, float, float]:
    """``n`` creations at ``rate``/s in a fresh directory; returns (lost, seconds taken,
    seconds until the view had them all or the settle deadline)."""
    burst = root / "rt-burst"
    burst.mkdir()
    end = time.monotonic() + 30
    while not visible(q, "/rt-burst"):
        if time.monotonic() > end:
            raise SystemExit("the burst directory never reached the view")
        time.sleep(0.01)
    t0 = time.monotonic()
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with open(burst / f"b-{i:05d}.dat", "wb") as f:
            f.write(b"burst")
    took = time.monotonic() - t0
    deadline = time.monotonic() + settle_s
    count = 0
    while True:
        r = q.get(f"/api/v1/views/{VIEW}/stats", params={"path": "/rt-burst"})
        count = r.json()["file_count"] if r.status_code == 200 else 0
        if count >= n or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    settled = time.monotonic() - t0 - took
    say(f"burst: {n} files in {took:.1f} s, view had {count} after {settled:.2f} s more")
    return n - count, took, settled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--tree", type=Path, default=None, help="keep (and reuse) the tree in this directory")
    ap.add_argument("--samples", type=int, default=200, help="realtime latency samples")
    ap.add_argument("--burst", type=int, default=2000, help="files created for realtime_lost")
    ap.add_argument("--rate", type=float, default=200.0, help="creations per second in the burst")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds the burst may take to arrive")
    ap.add_argument("--index-deadline", type=float, default=3600.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else \
        (lambda *a: print(*a, flush=True))
    work = Path(tempfile.mkdtemp(prefix="fustor-e2e-"))
    procs: list[Proc] = []
    out: dict = {}
    try:
        root = (args.tree or work / "tree").resolve()
        marker = root.parent / (root.name + MARKER)
        if args.tree and marker.exists() and marker.read_text().strip() == str(args.files):
            say(f"reusing the tree in {root}; counting ...")
            for p in root.glob("rt-*"):  # leftovers of an earlier run
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            for p in root.rglob("rt-*.dat"):
                p.unlink()
            files, dirs, leaves = count_tree(root)
        else:
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            marker.unlink(missing_ok=True)
            say(f"writing a tree of ~{args.files:,} files in {root} ...")
            t = time.monotonic()
            files, dirs, leaves = make_tree(root, args.files, max(2, os.cpu_count() or 2))
            say(f"  {files:,} files in {dirs:,} directories in {time.monotonic() - t:.1f} s")
            os.sync()  # the kernel's writeback of the new tree must not compete with indexing
            if args.tree:
                marker.write_text(str(args.files))
        out["files"] = files
        out["dirs"] = dirs

        port, rport = free_port(), free_port()
        fcfg, acfg = write_configs(work, root, port, rport)
        fusion = start_fusion(work / "data", fcfg, work / "fusion-home", work / "fusion.log")
        procs.append(fusion)
        wait_up(f"http://127.0.0.1:{port}/", fusion)
        wait_up(f"http://127.0.0.1:{rport}/", fusion)
        q = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": QUERY_KEY},
                         timeout=30)

        say("starting the agent; indexing ...")
        agent = Proc(["-m", "fustor.cli", "agent", "start", str(acfg)], work / "agent-home",
                     work / "agent.log")
        procs.append(agent)
        fusion_cpu0 = cpu_seconds(fusion.pid)
        secs, st = wait_indexed(q, files, agent, fusion, say, args.index_deadline)
        out["index_seconds"] = round(secs, 2)
        out["files_per_s"] = round(files / secs)
        out["index_agent_cpu_s"] = round(cpu_seconds(agent.pid), 1)
        out["index_fusion_cpu_s"] = round(cpu_seconds(fusion.pid) - fusion_cpu0, 1)
        mem_after_index = memory(agent.pid)
        say(f"indexed {st['file_count']:,} files, {st['dir_count']:,} dirs in {secs:.1f} s "
            f"= {files / secs:,.0f} files/s (agent RSS {mem_after_index['VmRSS']} MiB; CPU "
            f"agent {out['index_agent_cpu_s']} s, fusion {out['index_fusion_cpu_s']} s)")

        lat, missed = realtime_latency(q, root, leaves, args.samples, 0.002, 10.0)
        out["realtime_p50_ms"] = pct(lat, 0.5, 1)
        out["realtime_p99_ms"] = pct(lat, 0.99, 1)
        out["realtime_max_ms"] = round(max(lat) * 1000, 1) if lat else None
        out["realtime_timeouts"] = missed
        say(f"realtime create → visible: p50 {out['realtime_p50_ms']} ms, "
            f"p99 {out['realtime_p99_ms']} ms, max {out['realtime_max_ms']} ms "
            f"({len(lat)} samples, {missed} not seen within 10 s)")

        lost, took, settled = realtime_burst(q, root, args.burst, args.rate, args.settle, say)
        out["realtime_lost"] = lost
        out["burst_ops_per_s"] = round(args.burst / took)
        out["burst_settle_s"] = round(settled, 2)
        say(f"realtime lost: {lost} of {args.burst} ({args.burst / took:.0f} creations/s)")

        am, fm = memory(agent.pid), memory(fusion.pid)
        out["agent_rss_mb"], out["agent_rss_anon_mb"], out["agent_peak_rss_mb"] = \
            am["VmRSS"], am["RssAnon"], am["VmHWM"]
        out["fusion_rss_mb"], out["fusion_rss_anon_mb"], out["fusion_peak_rss_mb"] = \
            fm["VmRSS"], fm["RssAnon"], fm["VmHWM"]
        say(f"agent RSS {am['VmRSS']} MiB (anon {am['RssAnon']}, peak {am['VmHWM']}); "
            f"fusion RSS {fm['VmRSS']} MiB (anon {fm['RssAnon']}, peak {fm['VmHWM']})")
    finally:
        for p in reversed(procs):
            p.stop(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
