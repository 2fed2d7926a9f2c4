"""Benchmark of forest views: M member trees behind one view, queried over HTTP.

    python bench/forest.py --members 10 --files 200000 [--json]

Member stores are built with the store API (as fusion would have written them),
then a real `fustor fusion serve` answers: stats of one path across all members,
the best member's depth-1 tree, compare of two members that differ in 1 % of
one subtree (and of all members against the reference), compare of two identical
members at the root (answered from the subtree digests), and locate of a rare name
across every member. Prints figures; asserts nothing. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, memory, pct, start_fusion, timed_gets, wait_up  # noqa: E402
from treegen import rows  # noqa: E402

from fustor.store import Store, apply_changes  # noqa: E402

QKEY = "forest-query"


def build_member(path: Path, changes: list, done_at: float) -> None:
    with Store(path) as st:
        for i in range(0, len(changes), 5000):
            st.write(lambda w, b=changes[i:i + 5000]: apply_changes(w, b))
        st.write(lambda w: w.put_meta("snapshot_completed_at", done_at))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--files", type=int, default=200_000, help="files per member")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    work = Path(tempfile.mkdtemp(prefix="fustor-forest-"))
    out: dict = {"members": args.members, "files_per_member": args.files}
    proc = None
    try:
        base = list(rows(args.files))
        files = [c for c in base if not c[2]]
        # the subtree that differs: the first project's files; member 1 lacks or resized 1 %
        sub = files[0][1].split("/")[1]
        in_sub = [c for c in files if c[1].startswith(f"/{sub}/")]
        rng = random.Random(5)
        changed = set(rng.sample(range(len(in_sub)), max(1, len(in_sub) // 100)))
        variant = []
        for i, c in enumerate(in_sub):
            if i in changed:
                if i % 2:
                    variant.append(("delete", c[1]))
                else:
                    variant.append(("upsert", c[1], False, c[3] + 1, c[4], c[5]))
        fdir = work / "data" / "views" / "forest"
        fdir.mkdir(parents=True)
        t = time.perf_counter()
        for m in range(args.members):
            build_member(fdir / f"p{m}.lmdb", base + (variant if m == 1 else []), time.time())
        say(f"built {args.members} members x {args.files:,} files in {time.perf_counter() - t:.1f} s "
            f"(p1 differs in {len(variant)} of {len(in_sub):,} files under /{sub})")
        port, rport = free_port(), free_port()
        keys = ", ".join(f"{{key: k{m}, pipe_id: p{m}}}" for m in range(args.members))
        pipes = "\n".join(f"  p{m}: {{receiver: r, views: [forest]}}" for m in range(args.members))
        cfg = work / "fusion.yaml"
        cfg.write_text(f"""host: 127.0.0.1
port: {port}
receivers:
  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{keys}]}}
views:
  forest: {{driver: forest-fs, api_keys: [{QKEY}]}}
pipes:
{pipes}
""")
        proc = start_fusion(work / "data", cfg, work / "home", work / "fusion.log")
        url = f"http://127.0.0.1:{port}"
        wait_up(url + "/", proc)
        dirs = sorted({c[1] for c in base if c[2] and c[1].count("/") == 2})
        rng = random.Random(9)
        n = args.queries
        with httpx.Client(base_url=url, headers={"X-API-Key": QKEY}, timeout=60) as q:
            first = q.get("/api/v1/views/forest/stats", params={"path": "/", "best": "file_count"}).json()
            assert len(first["members"]) == args.members, first
            out["stats_all_p99_ms"] = pct(timed_gets(q, [
                f"/api/v1/views/forest/stats?best=file_count&path={rng.choice(dirs)}"
                for _ in range(n)]), 0.99, 3)
            out["tree_best_depth1_p99_ms"] = pct(timed_gets(q, [
                f"/api/v1/views/forest/tree?best=file_count&max_depth=1&path={rng.choice(dirs)}"
                for _ in range(n)]), 0.99, 3)
            cmp_url = f"/api/v1/views/forest/compare?members=p0,p1&path=/{sub}"
            found = q.get(cmp_url).json()
            out["compare_differences"] = len(found["differences"])
            out["compare_p99_ms"] = pct(timed_gets(q, [cmp_url] * min(n, 200)), 0.99, 3)
            all_url = f"/api/v1/views/forest/compare?path=/{sub}&limit=100"
            summary = q.get(all_url).json()["summary"]
            out["compare_all_missing_files"] = sum(v["missing_files"] for v in summary.values())
            out["compare_all_members_p99_ms"] = pct(timed_gets(q, [all_url] * min(n, 50)), 0.99, 3)
            same_url = "/api/v1/views/forest/compare?members=p0,p2&path=/"
            assert q.get(same_url).json()["differences"] == []
            same = sorted(timed_gets(q, [same_url] * min(n, 200)))
            out["compare_identical_ms"] = round(same[len(same) // 2] * 1000, 3)
            out["compare_identical_p99_ms"] = pct(same, 0.99, 3)
            names = [c[1].rsplit("/", 1)[1] for c in rng.sample(files, min(n, 200))]
            hit = q.get("/api/v1/views/forest/locate", params={"pattern": names[0]}).json()
            out["locate_members_holding"] = len(hit["results"][0]["members"]) if hit["results"] else 0
            out["locate_p99_ms"] = pct(timed_gets(q, [
                f"/api/v1/views/forest/locate?pattern={x}&limit=100" for x in names]), 0.99, 3)
            mem = memory(proc.pid)
            out["rss_mb"], out["rss_anon_mb"] = mem["VmRSS"], mem["RssAnon"]
        say(f"stats of one path across {args.members} members p99 {out['stats_all_p99_ms']} ms; "
            f"best member's depth-1 tree p99 {out['tree_best_depth1_p99_ms']} ms; compare p0/p1 under "
            f"/{sub} p99 {out['compare_p99_ms']} ms ({out['compare_differences']} differences); all "
            f"members against the reference p99 {out['compare_all_members_p99_ms']} ms; identical "
            f"members at / median {out['compare_identical_ms']} ms (p99 "
            f"{out['compare_identical_p99_ms']}); locate of a rare name in {args.members} members "
            f"p99 {out['locate_p99_ms']} ms; "
            f"RSS {out['rss_mb']} MiB (anon {out['rss_anon_mb']})")
    finally:
        if proc is not None:
            proc.stop(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
