"""Benchmark of the LMDB store: ingest, queries, reopen, memory, disk.

    python bench/store.py --files 1000000 [--json] [--dir DIR] [--big 1000000] [--scale-only]

Prints figures; it asserts nothing. All figures come from one run.

The "scale" figures (``--big`` entries each, issue 13) time what one change costs in a
big store: deleting the newest file of a directory of ``--big`` entries, an rsync-style
upload into it (temp file, then rename), one job deleting 20,000 directories, deleting a
small directory whose long path (>= 190 bytes) it shares with ``--big`` files, and an
audit end's tombstone purge with ``--big`` tombstones.
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

from common import memory, pct, timed  # noqa: E402
from treegen import dict_tree_ingest, rows  # noqa: E402

from fustor.store import Store, apply_changes, index, normalise  # noqa: E402
from fustor.store.inspect import verify  # noqa: E402

BATCH = 1000


def write_filters(store: Store) -> float:
    """The name blocks' trigram filters that ingest jobs leave to later, all written as
    fusion writes them while the view's writer is idle; returns the seconds it took."""
    t0 = time.perf_counter()
    while store.write(lambda w: index.write_filters(w.txn, w.dbs, limit=64)):
        pass
    return time.perf_counter() - t0


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


def fill(store: Store, gen, per_job: int = 20_000) -> None:
    """Write ``fn(w)``-style items from ``gen`` (callables taking the writer) in big jobs."""
    batch: list = []
    pending = []
    for item in gen:
        batch.append(item)
        if len(batch) >= per_job:
            pending.append(store.submit(lambda w, b=batch: [f(w) for f in b]))
            batch = []
            if len(pending) >= 4:
                pending.pop(0).result()
    if batch:
        pending.append(store.submit(lambda w, b=batch: [f(w) for f in b]))
    for f in pending:
        f.result()


def held(store: Store, fn) -> tuple[float, float]:
    """Run ``fn(w)`` as one write job; returns (seconds the job held the writer, its
    aggregates flushed; seconds until the commit was acknowledged)."""
    inside: list[float] = []

    def job(w):
        t = time.perf_counter()
        fn(w)
        w.flush()
        inside.append(time.perf_counter() - t)

    t = time.perf_counter()
    store.write(job)
    return inside[-1], time.perf_counter() - t


def raw_commit_ms(work: Path, n: int = 300) -> float:
    """Median time of a bare LMDB commit of one put (no fustor code) in ``work``: the floor
    of any one-row-per-transaction figure on this disk."""
    import lmdb

    env = lmdb.open(str(work / "raw-commit.lmdb"), subdir=False, map_size=1 << 26)
    try:
        samples = []
        for i in range(n):
            t = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(b"k%d" % (i % 10), b"x" * 60)
            samples.append(time.perf_counter() - t)
    finally:
        env.close()
    return sorted(samples)[n // 2] * 1000


def scale(work: Path, big: int, say) -> dict:
    """Issue 13's figures: what one change costs next to ``big`` entries. Each ``*_ms``
    figure is the time the job held the single writer (what stalls every other push);
    ``*_commit_ms`` adds the commit (fsync) and the hand-off to the writer thread, whose
    floor is ``commit_1row_p99_ms`` (a one-row job) on the same machine."""
    out: dict = {}
    base = 1_700_000_000.0

    # a directory of `big` files; delete the newest, one per transaction
    st = Store(work / "bigdir.lmdb")
    say(f"scale: a directory of {big:,} files ...")
    fill(st, (lambda w, i=i: w.upsert(b"/big/f%08d" % i, False, 100, base + i) for i in range(big)))
    one = [held(st, lambda w, i=i: w.upsert(b"/big/f%08d" % i, False, 100, base + i))[1]
           for i in range(200)]  # rewrites of old entries: the floor of a one-row job
    out["commit_1row_p99_ms"] = pct(one, 0.99, 3)
    out["commit_raw_lmdb_median_ms"] = round(raw_commit_ms(work), 3)
    samples = [held(st, lambda w, i=i: w.delete(b"/big/f%08d" % i)) for i in range(big - 1, big - 301, -1)]
    out["bigdir_delete_newest_p99_ms"] = pct([a for a, _ in samples], 0.99, 3)
    out["bigdir_delete_newest_commit_p99_ms"] = pct([b for _, b in samples], 0.99, 3)
    # rsync-style: a hidden temp file (the newest entry), then its rename to the final name
    # (one file per transaction: the temp file's creation and its rename in one job)
    n = 1000
    jobs = []
    t = time.perf_counter()
    for i in range(n):
        tmp, final = b"/big/.up%06d.XyZ" % i, b"/big/up%06d" % i
        now = base + big + i
        jobs.append(held(st, lambda w, tmp=tmp, final=final, now=now: (
            w.upsert(tmp, False, 10, now), w.flush(), w.delete(tmp), w.upsert(final, False, 10, now)))[0])
    out["bigdir_tmp_rename_files_per_s"] = round(n / (time.perf_counter() - t))
    out["bigdir_tmp_rename_job_p99_ms"] = pct(jobs, 0.99, 3)
    with st.read() as r:
        assert r.stats(b"/big").latest_mtime == base + big + n - 1
    st.close()
    say(f"  delete newest p99 {out['bigdir_delete_newest_p99_ms']} ms; "
        f"tmp+rename {out['bigdir_tmp_rename_files_per_s']:,} files/s (job p99 "
        f"{out['bigdir_tmp_rename_job_p99_ms']} ms; a one-row commit p99 {out['commit_1row_p99_ms']} ms; "
        f"a bare LMDB commit here: median {out['commit_raw_lmdb_median_ms']} ms)")

    # one job deleting 20,000 directories (rm -rf */build seen by an audit)
    st = Store(work / "dirs.lmdb")
    fill(st, (lambda w, i=i: (w.upsert(b"/p%03d/x%05d/build/o.o" % (i % 500, i), False, 1, base),
                              w.upsert(b"/p%03d/x%05d/src.c" % (i % 500, i), False, 1, base))
              for i in range(20_000)))
    job_s, _ = held(st, lambda w: [w.delete(b"/p%03d/x%05d/build" % (i % 500, i)) for i in range(20_000)])
    out["delete_20k_dirs_ms"] = round(job_s * 1000, 1)
    st.close()
    say(f"  one job deleting 20,000 directories: {out['delete_20k_dirs_ms']} ms")

    # a long parent: `big` files share its first 190 bytes; delete small dirs beside them
    long = b"/" + b"L" * 200
    st = Store(work / "long.lmdb")
    fill(st, (lambda w, i=i: w.upsert(long + b"/many/f%08d" % i, False, 1, base) for i in range(big)))
    fill(st, (lambda w, i=i: (w.upsert(long + b"/small%03d/a" % i, False, 1, base),
                              w.upsert(long + b"/small%03d/b" % i, False, 1, base)) for i in range(50)))
    samples = [held(st, lambda w, i=i: w.delete(long + b"/small%03d" % i))[0] for i in range(50)]
    out["longparent_delete_ms"] = round(sorted(samples)[len(samples) // 2] * 1000, 3)
    out["longparent_delete_p99_ms"] = pct(samples, 0.99, 3)
    st.close()
    say(f"  delete a 3-node directory under a long parent shared by {big:,} files: "
        f"median {out['longparent_delete_ms']} ms, p99 {out['longparent_delete_p99_ms']} ms")

    # audit end with `big` tombstones, none expired (then 1,000 expired)
    st = Store(work / "tombs.lmdb")
    wall = time.time()
    fill(st, (lambda w, i=i: w.put_tombstone(b"/t/d%04d/f%08d" % (i % 1000, i), base,
                                             wall - (4000 if i < 1000 else 0))
              for i in range(big)))
    first, _ = held(st, lambda w: w.purge_tombstones(wall - 3600))  # purges the 1,000 expired
    samples = [held(st, lambda w: w.purge_tombstones(wall - 3600))[0] for _ in range(50)]
    out["audit_end_1m_tombstones_ms"] = pct(samples, 0.99, 3)
    out["audit_end_1k_expired_of_1m_tombstones_ms"] = round(first * 1000, 3)
    with st.read() as r:
        assert r.count(r.dbs.tombstones) == big - 1000
    st.close()
    say(f"  tombstone purge of an audit end with {big:,} tombstones: p99 "
        f"{out['audit_end_1m_tombstones_ms']} ms (1,000 of them expired: "
        f"{out['audit_end_1k_expired_of_1m_tombstones_ms']} ms)")
    out["scale_entries"] = big
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dir", default=None, help="where to put the store files (default: a temp dir)")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--big", type=int, default=1_000_000, help="entries of the scale figures")
    ap.add_argument("--scale-only", action="store_true", help="only the scale figures")
    ap.add_argument("--no-scale", action="store_true", help="skip the scale figures")
    args = ap.parse_args()

    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    work = Path(args.dir or tempfile.mkdtemp(prefix="fustor-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    try:
        if args.scale_only:
            out.update(scale(work, args.big, say))
            return
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
        out["filters_idle_s"] = round(write_filters(store), 2)
        say(f"then the name block filters, written as when idle: {out['filters_idle_s']} s")

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

        def stats(path):
            with store.read() as r:
                r.stats(path)

        sub = [rng.choice(dirs) for _ in range(q)]
        leaf_paths = [rng.choice(leaves) for _ in range(q)]

        def list_children(path):
            with store.read() as r:
                r.children(path, limit=1000)

        tops = [d for d in dirs if d.count(b"/") == 1]
        top_paths = [rng.choice(tops) for _ in range(200)]

        def search(path):
            with store.read() as r:
                r.search("*.bam", path, limit=1000)

        out["stats_root_p99_ms"] = pct(timed(stats, [b"/"] * q), 0.99, 3)
        out["stats_subtree_p99_ms"] = pct(timed(stats, sub), 0.99, 3)
        out["list_children_p99_ms"] = pct(timed(list_children, leaf_paths), 0.99, 3)
        out["search_p99_ms"] = pct(timed(search, top_paths), 0.99, 3)
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
        out["rss_anon_mb"] = memory()["RssAnon"]
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
        if not args.no_scale:
            out.update(scale(work, args.big, say))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            print(json.dumps(out))
        else:
            print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
