"""Benchmark of search by name over one store: ingest with the name index, each query kind.

    python bench/search.py --files 1000000 [--json] [--dir DIR] [--queries 200]

Builds a store from ``bench/treegen.py`` (crawl order, as ``bench/store.py``), then
times each query kind (p50/p99 of ``--queries`` runs, first page of 100) for names
that exist once, patterns that match many, and patterns that match nothing.
``--baseline`` ingests the same batches alternately into a second store with the
index writes switched off (one batch at a time in both, so both see the same machine
load): the index's share of the ingest cost is a ratio, not a guess.
Prints figures; asserts nothing.
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
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import memory, pct  # noqa: E402
from store import ingest, write_filters  # noqa: E402
from treegen import EXTS, rows  # noqa: E402

from fustor.fusion.views.locate import locate  # noqa: E402
from fustor.store import Query, Store, apply_changes, index  # noqa: E402

LIMIT = 100


def run(store: Store, patterns, path=b"/", limit=LIMIT, **kw) -> tuple[list[float], list[int], set]:
    times, counts, plans = [], [], set()
    for p in patterns:
        t = time.perf_counter()
        with store.read() as r:
            f = r.search(p, path, limit, **kw)
        times.append(time.perf_counter() - t)
        counts.append(len(f.nodes))
        plans.add(f.plan)
    return times, counts, plans


def interleaved_ingest(indexed: Store, plain: Store, files: int) -> tuple[int, float, float]:
    """The same batches into two stores, alternately, the index writes switched off for
    ``plain``: both see the same machine load, so the ratio of their times is the index's
    share of the ingest cost. Returns (rows, seconds with the index, seconds without)."""
    saved = index.add, index.remove, index.flush

    def off() -> None:
        index.add = index.remove = index.flush = lambda *a: None

    def on() -> None:
        index.add, index.remove, index.flush = saved

    n, t_idx, t_plain, batch = 0, 0.0, 0.0, []

    def push(b: list) -> None:
        nonlocal t_idx, t_plain
        off()
        try:
            t = time.perf_counter()
            plain.write(lambda w: apply_changes(w, b))
            t_plain += time.perf_counter() - t
        finally:
            on()
        t = time.perf_counter()
        indexed.write(lambda w: apply_changes(w, b))
        t_idx += time.perf_counter() - t

    for ch in rows(files):
        batch.append(ch)
        if len(batch) >= 1000:
            push(batch)
            n += len(batch)
            batch = []
    if batch:
        push(batch)
        n += len(batch)
    return n, t_idx, t_plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dir", default=None, help="where to put the store (default: a temp dir)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--baseline", action="store_true",
                    help="also ingest without the index writes (same run) for the ratio")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    work = Path(args.dir or tempfile.mkdtemp(prefix="fustor-search-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    try:
        path = work / "search.lmdb"
        store = Store(path)
        if args.baseline:
            say(f"ingesting ~{args.files:,} files into two stores, batch by batch, with and "
                "without the index (one batch at a time) ...")
            plain = Store(work / "plain.lmdb")
            n, secs, plain_secs = interleaved_ingest(store, plain, args.files)
            plain.close()
            (work / "plain.lmdb").unlink()
            out["ingest_rows_per_s_no_index"] = round(n / plain_secs)
            say(f"  without the index {n / plain_secs:,.0f} rows/s")
        else:
            say(f"ingesting ~{args.files:,} files with the name index into {path} ...")
            n, secs = ingest(store, rows(args.files),
                             lambda k, t: say(f"  {k:,} rows, {k / t:,.0f} rows/s"))
        out["filters_idle_s"] = round(write_filters(store), 2)
        say(f"then the name block filters, written as fusion writes them when idle: "
            f"{out['filters_idle_s']} s")
        with store.read() as r:
            files = r.stats(b"/").file_count
            distinct = sum(1 for _ in r.txn.cursor(db=r.dbs.names).iternext_nodup(values=False))
        out.update(files=files, rows=n, distinct_names=distinct, ingest_rows_per_s=round(n / secs))
        if args.baseline:
            out["ingest_index_cost_pct"] = round(
                100 * (1 - out["ingest_rows_per_s"] / out["ingest_rows_per_s_no_index"]), 1)
        out["disk_bytes_per_file"] = round(store.disk_bytes() / files, 1)
        say(f"{n:,} rows in {secs:.1f} s = {n / secs:,.0f} rows/s; "
            f"{out['disk_bytes_per_file']} bytes/file on disk")

        rng = random.Random(3)
        leaves = max(1, int(files / 100 * 0.9))
        q = args.queries

        def a_name() -> str:
            leaf, i = rng.randrange(leaves), rng.randrange(80)
            return f"f{i:04d}_{leaf:06d}{EXTS[(leaf + i) % len(EXTS)]}"

        with store.read() as r:
            tops = [n.path for n in r.children(b"/", limit=1000)[0] if n.is_dir]
        kinds = {
            "exact_name": ([a_name().upper() for _ in range(q)], {"match": "exact"}),
            "suffix_glob": ([f"*{rng.choice(EXTS)}" for _ in range(q)], {}),
            "prefix_glob": ([a_name()[:10] + "*" for _ in range(q)], {}),
            "rare_substring": ([a_name()[2:-4] for _ in range(q)], {}),
            "inner_glob": ([f"*{a_name()[3:11]}*" for _ in range(q)], {}),
            "general_glob": ([(lambda s: f"f{s[1:4]}?_{s[6:12]}.*")(a_name()) for _ in range(q)], {}),
            "common_substring": ([rng.choice(["_00", ".bam", "f00", "gz"]) for _ in range(q)], {}),
        }
        nomatch = {
            "exact_name": ([f"no-such-name-{i}.bam" for i in range(q)], {"match": "exact"}),
            "suffix_glob": ([f"*.nosuch{i}" for i in range(q)], {}),
            "prefix_glob": ([f"nosuch{i}_*" for i in range(q)], {}),
            "rare_substring": ([f"qz{i}xq" for i in range(q)], {}),
            "general_glob": ([f"*x{i}q*z?" for i in range(q)], {}),
        }
        for kind, (pats, kw) in kinds.items():
            t, c, plans = run(store, pats, **kw)
            out[f"{kind}_p50_ms"], out[f"{kind}_p99_ms"] = pct(t, 0.5, 3), pct(t, 0.99, 3)
            say(f"{kind:18} p50 {out[f'{kind}_p50_ms']:8} ms  p99 {out[f'{kind}_p99_ms']:8} ms  "
                f"results/query min {min(c)} max {max(c)}  plans {sorted(plans)}")
        for kind, (pats, kw) in nomatch.items():
            t, c, plans = run(store, pats, **kw)
            assert not any(c)
            out[f"no_match_{kind}_p99_ms"] = pct(t, 0.99, 3)
            say(f"no match {kind:14} p99 {out[f'no_match_{kind}_p99_ms']:8} ms  plans {sorted(plans)}")
        out["no_match_p99_ms"] = max(v for k, v in out.items() if k.startswith("no_match_"))

        # under a top-level directory (~1/len(tops) of the tree): the key-prefix check
        under = [rng.choice(tops) for _ in range(q)]
        it = iter(under)
        times, plans = [], set()
        for _ in range(q):
            t = time.perf_counter()
            with store.read() as r:
                f = r.search(f"*{rng.choice(EXTS)}", next(it), LIMIT)
            times.append(time.perf_counter() - t)
            plans.add(f.plan)
        out["suffix_glob_under_top_p99_ms"] = pct(times, 0.99, 3)
        say(f"suffix glob under a top dir p99 {out['suffix_glob_under_top_p99_ms']} ms plans {sorted(plans)}")

        # paging: the pages of '*.bam' under one top-level directory, all of them
        t = time.perf_counter()
        seen, after, pages = 0, None, 0
        while True:
            with store.read() as r:
                f = r.search("*.bam", tops[0], 1000, after=after)
            seen += len(f.nodes)
            pages += 1
            if not f.next_after:
                break
            after = f.next_after
        out["page_all_bam_under_top_ms_per_page"] = round((time.perf_counter() - t) * 1000 / pages, 3)
        say(f"paged {seen:,} '*.bam' results under {tops[0].decode()} in {pages} pages: "
            f"{out['page_all_bam_under_top_ms_per_page']} ms/page")
        # locate: the same tree as 10 forest members (read-only handles on this store),
        # a rare name: 10 searches merged, plus each member's match count
        members = {f"m{i}": SimpleNamespace(store=Store(path, readonly=True)) for i in range(10)}
        times = []
        for _ in range(min(q, 100)):
            pat = a_name()[1:-4]
            t = time.perf_counter()
            got = locate(members, Query(pat, b"/"), None, 100)
            times.append(time.perf_counter() - t)
            assert all(len(e["members"]) == 10 for e in got["results"])
        out["locate_rare_10_members_p99_ms"] = pct(times, 0.99, 3)
        say(f"locate a rare name over 10 members p99 {out['locate_rare_10_members_p99_ms']} ms")
        for m in members.values():
            m.store.close()
        out["rss_anon_mb"] = memory()["RssAnon"]
        store.close()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        say(json.dumps(out))


if __name__ == "__main__":
    main()
