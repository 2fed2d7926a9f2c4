"""Search from the name index equals a brute-force scan, whatever plan answers, after
renames and deletes; paging covers every match once; the index checks and rebuilds."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random

import lmdb
import pytest

from fustor.errors import BadQueryError
from fustor.store import Store, index, keys
from fustor.store import search as search_mod
from fustor.store.inspect import verify

ODD = [b"Sample_12.BAM", b"sample_12.bam", b"caf\xe9.txt", b"\xff\xfe.bin", b"a[1].txt",
       b"what?.csv", b"star*.csv", b"\xc3\x89T\xc3\x89.dat", b"\xc3\xa9t\xc3\xa9.DAT",
       b"L" * 255, b"x" * 200 + b".bam", b"new\nline.txt", b"-dash", b".hidden.bam"]
STEMS = [b"sample", b"Sample", b"run", b"READ", b"data", b"f", b"chunk_"]
EXTS = [b".bam", b".BAI", b".fastq.gz", b".txt", b"", b".csv"]
LONG_DIR = b"/" + b"p" * 120 + b"/" + b"q" * 100  # a parent longer than the key limit


def random_name(rng: random.Random) -> bytes:
    if rng.random() < 0.15:
        return rng.choice(ODD)
    return rng.choice(STEMS) + str(rng.randrange(300)).encode() + rng.choice(EXTS)


def random_tree(rng: random.Random, n: int) -> dict[bytes, tuple[bool, int, float]]:
    dirs = [b"/a", b"/a/b", b"/a/B", b"/c", b"/c/d\xff", LONG_DIR, LONG_DIR + b"/deep"]
    out: dict[bytes, tuple[bool, int, float]] = {}
    for _ in range(n):
        if rng.random() < 0.1:
            d = rng.choice(dirs) + b"/" + random_name(rng).replace(b"\n", b"_")[:60]
            dirs.append(d)
            continue
        out[rng.choice(dirs) + b"/" + random_name(rng)] = (False, rng.randrange(5000), float(rng.randrange(100)))
    for d in dirs:
        out[d] = (True, 0, 1.0)
    return out


def fill(store: Store, tree: dict) -> None:
    def job(w):
        for p, (is_dir, size, mtime) in sorted(tree.items()):
            w.upsert(p, is_dir, size, mtime, mtime)
    store.write(job)


def shuffle_tree(store: Store, rng: random.Random) -> None:
    """Renames (delete + create elsewhere, directories with their subtree), deletes and
    type changes, as the view applies them."""
    with store.read() as r:
        every = [(n.path, n.is_dir, n.size, n.modified_time) for _d, n in r.walk(b"/")][1:]

    def job(w):
        for path, is_dir, size, mtime in rng.sample(every, len(every) // 5):
            if w.get(path) is None:
                continue
            roll = rng.random()
            if roll < 0.4:
                w.delete(path)
            elif roll < 0.8:  # rename: a new name in another directory
                subtree = [(n.path, n.is_dir, n.size, n.modified_time) for _d, n in w.walk(path)]
                w.delete(path)
                target = rng.choice([b"/a", b"/c", b"/moved", LONG_DIR])
                new = target + b"/" + random_name(rng).replace(b"\n", b"_") + b"-r"
                for p, d, s, m in subtree:
                    w.upsert(new + p[len(path):], d, s, m, m)
            else:  # the other type at the same path
                w.upsert(path, not is_dir, size, mtime, mtime)
    store.write(job)


def all_nodes(store: Store) -> list:
    with store.read() as r:
        return [n for _d, n in r.walk(b"/")][1:]


def order_key(path: bytes) -> tuple[bytes, bytes]:
    """Where a node comes in every answer: its folded name, then its index entry (the
    8-byte BLAKE2b of its directory's key prefix, a collision byte, and the name when
    folding changed it)."""
    parent, _, name = keys.node_key(path).rpartition(b"\0")
    f = os.fsdecode(name).lower().encode("utf-8", "surrogateescape")
    d = hashlib.blake2b(parent + b"\0", digest_size=8).digest() + b"\0"
    return f, d + (name if name != f else b"")


def expected(nodes, pattern: str, under: bytes = b"/", match: str = "auto", kind="f",
             min_size=None, max_size=None, min_mtime=None, max_mtime=None) -> list[bytes]:
    """The matches computed the obvious way, in the documented order."""
    if match == "auto":
        match = "path" if "/" in pattern else "glob" if any(c in pattern for c in "*?[") else "substring"
    want = pattern.lower()
    out = []
    for n in nodes:
        if under != b"/" and not n.path.startswith(under + b"/"):
            continue
        if kind is not None and n.is_dir != (kind == "d"):
            continue
        if (min_size is not None and n.size < min_size) or (max_size is not None and n.size > max_size):
            continue
        if (min_mtime is not None and n.modified_time < min_mtime) or (
                max_mtime is not None and n.modified_time > max_mtime):
            continue
        name = n.name.lower()
        if match == "exact":
            ok = name == want
        elif match == "substring":
            ok = want in name
        elif match == "glob":
            ok = fnmatch.fnmatchcase(name, want)
        else:
            ok = fnmatch.fnmatchcase(n.path_str, pattern)
        if ok:
            out.append((order_key(n.path), n.path))
    return [p for _k, p in sorted(out)]


def patterns(rng: random.Random, nodes) -> list[tuple[str, dict]]:
    names = [n.name for n in nodes if not n.is_dir]
    out: list[tuple[str, dict]] = [
        ("*.bam", {}), ("*.BAM", {}), ("sample_12*", {}), ("SAMPLE", {}), ("*.fastq.gz", {}),
        ("sample1?.bam", {}), ("*[0-9].txt", {}), ("r*n2*", {}), ("*", {}), ("*a*", {}),
        ("a[1].txt", {"match": "exact"}), ("[1]", {"match": "substring"}), ("a[1].txt", {}),
        ("star*.csv", {"match": "exact"}), ("what?.csv", {}), (os.fsdecode(b"\xff\xfe"), {}),
        (os.fsdecode(b"caf\xe9*"), {}), ("ÉTÉ.DAT", {"match": "exact"}), ("été", {}),
        ("L" * 255, {"match": "exact"}), ("l" * 40 + "*", {}), ("*x.bam", {}),
        ("/a/*/*.bam", {}), ("/a/b/*", {}), ("*/d*", {}), ("no-such-name", {}), ("*.nosuch", {}),
        ("nosuch*", {}), ("new\nline.txt", {"match": "exact"}), ("*", {"kind": "d"}),
        ("*", {"kind": None, "min_size": 1000, "max_size": 3000}),
        ("*.bam", {"min_mtime": 20.0, "max_mtime": 60.0}), ("run", {"match": "exact"}),
    ]
    for nm in rng.sample(names, min(12, len(names))):
        out += [(nm.swapcase(), {"match": "exact"}), (nm[:4] + "*", {}), ("*" + nm[-5:], {}),
                (nm[1:-1], {"match": "substring"})]
    return out


def page_through(store: Store, pattern: str, under: bytes, limit: int, **kw) -> tuple[list, set]:
    got, plans, after = [], set(), None
    for _ in range(10_000):
        with store.read() as r:
            f = r.search(pattern, under, limit, after=after, **kw)
        got += [n.path for n in f.nodes]
        plans.add(f.plan)
        assert len(f.nodes) <= limit
        if not f.truncated:
            assert f.next_after is None
            return got, plans
        assert len(f.nodes) == limit and f.next_after
        after = f.next_after
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("subtree_scan,blob_cap,block", [
    (0, 5000, index.BLOCK), (0, 5000, 200), (0, 2, index.BLOCK), (10 ** 9, 5000, index.BLOCK)],
    ids=["index", "index-small-blocks", "index-common", "subtree"])
@pytest.mark.parametrize("seed", [1, 2])
def test_every_query_kind_equals_a_brute_force_scan(tmp_path, monkeypatch, seed, subtree_scan,
                                                    blob_cap, block):
    monkeypatch.setattr(search_mod, "SUBTREE_SCAN", subtree_scan)
    monkeypatch.setattr(search_mod, "BLOB_CAP", blob_cap)
    monkeypatch.setattr(index, "BLOCK", block)  # small blocks: many full, filtered ones
    rng = random.Random(seed)
    plans_seen: set = set()
    with Store(tmp_path / "s.lmdb") as store:
        fill(store, random_tree(rng, 900))
        for round_ in range(3):
            if round_:
                shuffle_tree(store, rng)
            # full blocks without filters (as ingest leaves them), some filtered, all filtered
            if round_ == 1:
                store.write(lambda w: index.write_filters(w.txn, w.dbs, limit=10))
            elif round_ == 2:
                while store.write(lambda w: index.write_filters(w.txn, w.dbs)):
                    pass
            nodes = all_nodes(store)
            dirs = [b"/"] + [n.path for n in nodes if n.is_dir]
            for pattern, kw in patterns(rng, nodes):
                under = rng.choice([b"/", b"/", rng.choice(dirs)])
                want = expected(nodes, pattern, under, **kw)
                with store.read() as r:
                    whole = r.search(pattern, under, None, **kw)
                assert [n.path for n in whole.nodes] == want, (pattern, kw, under)
                assert not whole.truncated
                got, plans = page_through(store, pattern, under, rng.choice([1, 3, 7, 50]), **kw)
                assert got == want, (pattern, kw, under)
                plans_seen |= plans
                if subtree_scan and under != b"/":  # any directory below the threshold
                    assert plans <= {"subtree", "none"}
            assert verify(store) == []
        if block < 1024:
            with store.read() as r:
                assert r.count(r.dbs.name_filters) > 20
    if not subtree_scan:  # every plan answered some query
        assert {"exact", "prefix", "names", "subtree", "none"} <= plans_seen
        assert blob_cap == 2 or "blocks" in plans_seen


def test_a_page_boundary_inside_many_nodes_of_one_name(tmp_path):
    with Store(tmp_path / "s.lmdb") as store:
        store.write(lambda w: [w.upsert(b"/d%03d/same.bam" % i, False, i, 1.0, 1.0) for i in range(40)])
        every = sorted((b"/d%03d/same.bam" % i for i in range(40)), key=order_key)
        got, _ = page_through(store, "SAME.BAM", b"/", 6, match="exact")
        assert got == every
        got, _ = page_through(store, "*.bam", b"/", 9)
        assert got == every


def test_a_deleted_name_leaves_the_blocks_stale_but_never_answers(tmp_path):
    with Store(tmp_path / "s.lmdb") as store:
        store.write(lambda w: [w.upsert(b"/d/unique-%d.txt" % i, False, 1, 1.0, 1.0) for i in range(5)])
        store.write(lambda w: w.delete(b"/d"))
        with store.read() as r:
            assert r.search("unique").nodes == []
            assert r.meta(index.STALE) == 6  # five names and the directory's
        store.write(lambda w: w.upsert(b"/e/UNIQUE-3.txt", False, 1, 1.0, 1.0))
        with store.read() as r:
            assert [n.path for n in r.search("unique").nodes] == [b"/e/UNIQUE-3.txt"]
        assert verify(store) == []


def test_bad_queries_say_what_to_give(tmp_path):
    with Store(tmp_path / "s.lmdb") as store, store.read() as r:
        for kw, words in [({"after": "%%%"}, "after"), ({"after": "YWJj"}, "after"),
                          ({"match": "regex"}, "match must be"), ({"kind": "x"}, "type must be")]:
            with pytest.raises(BadQueryError, match=words):
                r.search("x", **kw)
        for bad in ("", "\ud800.txt"):
            with pytest.raises(BadQueryError, match="pattern"):
                r.search(bad)


def _raw(path):
    return lmdb.open(str(path), subdir=False, max_dbs=16)


def test_verify_reports_missing_and_extra_index_entries(tmp_path):
    path = tmp_path / "s.lmdb"
    with Store(path) as store:
        store.write(lambda w: [w.upsert(p, False, 1, 1.0, 1.0) for p in (b"/d/One.txt", b"/d/two.txt")])
    env = _raw(path)
    with env.begin(write=True) as txn:
        names = env.open_db(b"names", txn=txn, dupsort=True)
        d = order_key(b"/d/x")[1]  # the id of /d
        assert txn.delete(b"one.txt", d + b"One.txt", db=names)
        txn.put(b"ghost", d, db=names)
    env.close()
    with Store(path, readonly=True) as store:
        got = {(p["path"], p["problem"]) for p in verify(store)}
    assert got == {("/d/One.txt", "node missing from the name index"),
                   ("/d/ghost", "name index entry without its node")}
    env = _raw(path)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"name_blobs", txn=txn), delete=False)
    env.close()
    with Store(path, readonly=True) as store:
        lost = {p["path"] for p in verify(store) if p["problem"] == "name missing from the name blocks"}
    assert lost == {"/d", "/d/two.txt"}


def test_the_migrations_builder_makes_the_index_the_writes_keep(tmp_path):
    rng = random.Random(5)
    tree = random_tree(rng, 400)
    with Store(tmp_path / "s.lmdb") as store:
        fill(store, tree)
        with store.read() as r:
            before = list(r.txn.cursor(db=r.dbs.names).iternext())

        def rebuild(w):  # as a migration from a store without the index does
            for db in (w.dbs.names, w.dbs.name_dirs, w.dbs.name_blobs, w.dbs.name_filters):
                w.txn.drop(db, delete=False)
            return index.build_index(w.txn, w.dbs)

        assert store.write(rebuild) == len(all_nodes(store))  # every node but the root
        with store.read() as r:
            assert list(r.txn.cursor(db=r.dbs.names).iternext()) == before
            nodes = all_nodes(store)
            assert [n.path for n in r.search("*.bam", limit=None).nodes] == expected(nodes, "*.bam")
        assert verify(store) == []


def test_stale_names_are_compacted_away_a_block_per_job(tmp_path, monkeypatch):
    monkeypatch.setattr(index, "BLOCK", 120)
    monkeypatch.setattr(index, "COMPACT_MIN", 50)
    with Store(tmp_path / "s.lmdb") as store:
        store.write(lambda w: [w.upsert(b"/keep/k%04d.txt" % i, False, 1, 1.0, 1.0) for i in range(40)])
        store.write(lambda w: [w.upsert(b"/tmp/t%04d.tmp" % i, False, 1, 1.0, 1.0) for i in range(300)])

        def blob_bytes():
            with store.read() as r:
                return sum(len(v) for v in r.txn.cursor(db=r.dbs.name_blobs).iternext(keys=False))

        before = blob_bytes()
        store.write(lambda w: w.delete(b"/tmp"))
        with store.read() as r:
            assert r.meta(index.STALE) >= 300
        for _ in range(200):  # each job rewrites one full block, until the pass is over
            store.write(lambda w: None)
            with store.read() as r:
                if r.meta(index.COMPACT_AT) is None:
                    break
        with store.read() as r:
            assert r.meta(index.COMPACT_AT) is None and r.meta(index.STALE) == 0
            assert [n.path for n in r.search("k003", limit=None).nodes] == [
                b"/keep/k%04d.txt" % i for i in range(30, 40)]
            assert r.search("t01", limit=None).nodes == [] and r.search("*.tmp").nodes == []
            left = index.blob_names(r.txn, r.dbs)
        # only the last, still open block (~10 names of 120 bytes) is left as it was
        assert sum(n.endswith(b".tmp") for n in left) <= 12 and blob_bytes() < before / 3
        assert verify(store) == []


def test_ingest_leaves_block_filters_to_later_and_search_is_the_same_meanwhile(tmp_path):
    names = [b"s%05d_%s.bam" % (i, hashlib.md5(b"%d" % i).hexdigest()[:8].encode())
             for i in range(3000)]
    with Store(tmp_path / "s.lmdb") as store:
        store.write(lambda w: [w.upsert(b"/d%02d/" % (i % 7) + n, False, i, 1.0, 1.0)
                               for i, n in enumerate(names)])
        with store.read() as r:
            full = r.count(r.dbs.name_blobs) - 1  # the last block is still filling up
            assert full >= 3
            assert r.count(r.dbs.name_filters) == 0
            assert index.blocks_waiting(r.txn, r.dbs) == full
            before = {q: [n.path for n in r.search(q, limit=None).nodes]
                      for q in ("s02999", names[1234][7:13].decode(), "nothing-like-it", "*.bam")}
        assert len(before["s02999"]) == 1 and len(before["*.bam"]) == 3000
        assert before["nothing-like-it"] == []
        assert not store.write(lambda w: index.write_filters(w.txn, w.dbs, limit=full))
        with store.read() as r:
            assert r.count(r.dbs.name_filters) == full
            assert index.blocks_waiting(r.txn, r.dbs) == 0
            for q, want in before.items():
                assert [n.path for n in r.search(q, limit=None).nodes] == want, q
        assert verify(store) == []  # each filter matches its block


@pytest.mark.parametrize("seed", range(4))
def test_filters_waiting_compaction_and_deletes_interleaved_keep_search_exact(tmp_path,
                                                                              monkeypatch, seed):
    # small blocks and an eager compaction: many full blocks, some with filters and some
    # waiting, compacted or emptied while others still wait
    monkeypatch.setattr(index, "BLOCK", 150)
    monkeypatch.setattr(index, "COMPACT_MIN", 20)
    rng = random.Random(seed)
    compacted = 0
    with Store(tmp_path / "s.lmdb") as store:
        for step in range(16):
            with store.read() as r:
                names_before = r.meta(index.IN_BLOCKS, 0)
            roll = rng.random()
            if roll < 0.45:  # a batch of new files, names mostly new
                d = b"/d%d" % rng.randrange(3)
                store.write(lambda w, d=d, step=step: [
                    w.upsert(d + b"/n%d_%04x.dat" % (step, rng.randrange(1 << 16)), False, 1, 1.0, 1.0)
                    for _ in range(rng.randrange(20, 80))])
            elif roll < 0.7:  # a directory goes: its names go stale
                store.write(lambda w: w.delete(b"/d%d" % rng.randrange(3)))
            else:  # the idle loop writes some waiting filters
                store.write(lambda w: index.write_filters(w.txn, w.dbs, limit=rng.randrange(1, 4)))
            for _ in range(3):  # jobs with nothing to index go on with a compaction pass
                store.write(lambda w: None)
            nodes = all_nodes(store)
            with store.read() as r:
                compacted += r.meta(index.IN_BLOCKS, 0) < names_before
                assert r.count(r.dbs.name_filters) + index.blocks_waiting(r.txn, r.dbs) \
                    == max(0, r.count(r.dbs.name_blobs) - 1), step
                for pattern in ("_0", f"n{step}_", "a.d", "*.dat", "zz-none"):
                    got = [n.path for n in r.search(pattern, b"/", None).nodes]
                    assert got == expected(nodes, pattern), (step, pattern)
            assert verify(store) == []
        while store.write(lambda w: index.write_filters(w.txn, w.dbs)):
            pass
        with store.read() as r:
            assert index.blocks_waiting(r.txn, r.dbs) == 0
    assert compacted  # the steps did run compaction passes
