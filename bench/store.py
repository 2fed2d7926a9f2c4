"""Benchmark of the LMDB store: ingest, queries, reopen, memory, disk.

    python bench/store.py --files 1000000 [--json] [--dir DIR]

Prints figures; it asserts nothing. All figures come from one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from treegen import dict_tree_ingest, rows  # noqa: E402

from fustor.store import Store, apply_changes, normalise  # noqa: E402
from fustor.store.inspect import verify  # noqa: E402

BATCH = 1000


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def p99_ms(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.99))] * 1000


def ingest(store: Store, changes, progress=None) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    batch = []
    pending = []
    for ch in changes:
        batch.append(ch)
        if len(batch) >= BATCH:
            pending.append(store.submit(lambda w, b=batch: apply_changes(w, b)))
            n += len(batch)
            batch = []
            if len(pending) >= 8:  # keep a few batches in flight, like concurrent HTTP pushes
                pending.pop(0).result()
            if progress and n % 200_000 == 0:
                progress(n, time.perf_counter() - t0)
    if batch:
        pending.append(store.submit(lambda w, b=batch: apply_changes(w, b)))
        n += len(batch)
    for f in pending:
        f.result()
    return n, time.perf_counter() - t0


def timed(fn, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dir", default=None, help="where to put the store files (default: a temp dir)")
    ap.add_argument("--queries", type=int, default=2000)
    args = ap.parse_args()

    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    work = Path(args.dir or tempfile.mkdtemp(prefix="fustor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    try:
        path = work / "crawl.lmdb"
        store = Store(path)
        say(f"ingesting ~{args.files:,} files in crawl order into {path} ...")
        n, secs = ingest(store, rows(args.files),
                         lambda k, t: say(f"  {k:,} rows, {k / t:,.0f} rows/s"))
        with store.read() as r:
            root = r.stats(b"/")
        files = root.file_count
        out["files"] = files
        out["rows"] = n
        out["ingest_rows_per_s"] = round(n / secs)
        say(f"crawl order: {n:,} rows in {secs:.1f} s = {n / secs:,.0f} rows/s")

        # pick query targets
        dirs, leaves = [], []
        with store.read() as r:
            for depth, node in r.walk(b"/", max_depth=6):
                if node.is_dir and depth >= 1:
                    dirs.append(node.path)
        rng = random.Random(1)
        with store.read() as r:
            for d in rng.sample(dirs, min(len(dirs), 400)):
                kids, _ = r.children(d, limit=200)
                if 80 <= len(kids) <= 120 and not kids[0].is_dir:
                    leaves.append(d)
        q = args.queries

        def stats_root():
            with store.read() as r:
                r.stats(b"/")

        sub = [rng.choice(dirs) for _ in range(q)]
        it = iter(sub)

        def stats_sub():
            with store.read() as r:
                r.stats(next(it))

        leaf_it = iter([rng.choice(leaves) for _ in range(q)])

        def list_children():
            with store.read() as r:
                r.children(next(leaf_it), limit=1000)

        tops = [d for d in dirs if d.count(b"/") == 1]
        top_it = iter([rng.choice(tops) for _ in range(200)])

        def search():
            with store.read() as r:
                r.search("*.bam", next(top_it), limit=1000)

        out["stats_root_p99_ms"] = round(p99_ms(timed(stats_root, q)), 3)
        out["stats_subtree_p99_ms"] = round(p99_ms(timed(stats_sub, q)), 3)
        out["list_children_p99_ms"] = round(p99_ms(timed(list_children, q)), 3)
        out["search_p99_ms"] = round(p99_ms(timed(search, 200)), 3)
        t = time.perf_counter()
        with store.read() as r:
            everywhere = len(r.search("f0042_", b"/", limit=None).nodes)
        out["search_full_scan_ms"] = round((time.perf_counter() - t) * 1000, 1)
        say(f"stats / p99 {out['stats_root_p99_ms']} ms, subtree p99 {out['stats_subtree_p99_ms']} ms, "
            f"list 100 children p99 {out['list_children_p99_ms']} ms, "
            f"search '*.bam' under a project (limit 1000) p99 {out['search_p99_ms']} ms, "
            f"unlimited substring search of the whole tree {out['search_full_scan_ms']} ms ({everywhere} hits; "
            "bench/search.py measures each query kind)")

        store.close()
        t = time.perf_counter()
        store = Store(path)
        with store.read() as r:
            again = r.stats(b"/").file_count
        out["reopen_ms"] = round((time.perf_counter() - t) * 1000, 2)
        assert again == files
        out["disk_bytes_per_file"] = round(path.stat().st_size / max(files, 1), 1)
        gc.collect()
        out["rss_anon_mb"] = round(rss_anon_mb(), 1)
        say(f"reopen + first stats {out['reopen_ms']} ms; disk {out['disk_bytes_per_file']} bytes/file; "
            f"RssAnon {out['rss_anon_mb']} MiB")
        t = time.perf_counter()
        problems = verify(store)
        out["verify_ok"] = not problems
        out["verify_s"] = round(time.perf_counter() - t, 1)
        say(f"verify: {'ok' if not problems else problems[:3]} in {out['verify_s']} s")
        store.close()

        # the same rows, shuffled
        changes = list(rows(args.files))
        random.Random(2).shuffle(changes)
        spath = work / "shuffled.lmdb"
        store = Store(spath)
        say("ingesting the same rows in random order ...")
        n, secs = ingest(store, changes)
        out["ingest_shuffled_rows_per_s"] = round(n / secs)
        store.close()
        say(f"random order: {n / secs:,.0f} rows/s")

        # baseline: the in-memory dict tree
        t = time.perf_counter()
        changes.sort(key=lambda c: c[1])
        t = time.perf_counter()
        index = dict_tree_ingest(changes)
        secs = time.perf_counter() - t
        out["dict_baseline_rows_per_s"] = round(len(changes) / secs)
        say(f"dict tree baseline: {len(changes) / secs:,.0f} rows/s ({len(index):,} nodes, all in RAM)")
        del index, changes
        assert normalise("/") == b"/"
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
