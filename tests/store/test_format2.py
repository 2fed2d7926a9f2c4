"""Store format 2: subtree digests, last_change_at, child_count, big directories, tombstone
expiry, long parents, many directory deletes in one job."""

import random

from fustor.store import Store, keys
from fustor.store.inspect import verify
from fustor.store.state import PURGE_CHUNK
from fustor.store.tree import BIG_DIR, SMALL_DIR

N = keys.normalise


def fill(store, files, dirs=()):
    def job(w):
        for d in dirs:
            w.upsert(N(d), True, 4096, 5.0)
        for p, size, mtime in files:
            w.upsert(N(p), False, size, mtime)

    store.write(job)


def agg(store, path):
    with store.read() as r:
        return r.aggregate(N(path))


def test_same_content_in_any_order_gives_the_same_digests(tmp_path):
    rng = random.Random(7)
    files = [(f"/d{i % 7}/s{i % 3}/f{i}", i * 11, 1000.0 + i) for i in range(300)]
    with Store(tmp_path / "a.lmdb") as a, Store(tmp_path / "b.lmdb") as b:
        fill(a, files)
        shuffled = files[:]
        rng.shuffle(shuffled)
        # b gets there another way: wrong sizes first, an extra file, then the truth
        fill(b, [(p, 1, 1.0) for p, _s, _m in shuffled[:100]] + [("/d1/extra", 5, 5.0)])
        b.write(lambda w: w.delete(N("/d1/extra")))
        fill(b, shuffled)
        for d in ("/", "/d3", "/d3/s1"):
            x, y = agg(a, d), agg(b, d)
            assert x._replace(last_change_at=0) == y._replace(last_change_at=0)
        assert verify(a) == [] and verify(b) == []


def test_equal_counts_with_different_content_give_different_digests(tmp_path):
    with Store(tmp_path / "a.lmdb") as a, Store(tmp_path / "b.lmdb") as b, \
            Store(tmp_path / "c.lmdb") as c:
        fill(a, [("/d/x", 10, 100.0), ("/d/y", 20, 100.0)])
        fill(b, [("/d/x", 20, 100.0), ("/d/y", 10, 100.0)])  # sizes swapped
        fill(c, [("/d/x", 10, 100.0), ("/d/y", 20, 101.0)])  # one mtime differs
        ga, gb, gc = agg(a, "/d"), agg(b, "/d"), agg(c, "/d")
        assert ga[:4] == gb[:4]  # the aggregates alone cannot tell a from b
        assert ga.digest != gb.digest and ga.digest_nomtime != gb.digest_nomtime
        assert ga.digest != gc.digest and ga.digest_nomtime == gc.digest_nomtime


def test_child_count_and_last_change_at(tmp_path):
    with Store(tmp_path / "s.lmdb") as s:
        fill(s, [("/a/b/f1", 1, 1.0), ("/a/b/f2", 1, 1.0), ("/a/g", 1, 1.0)])
        assert agg(s, "/a").child_count == 2 and agg(s, "/a/b").child_count == 2
        assert agg(s, "/").child_count == 1
        before = agg(s, "/a").last_change_at
        other = agg(s, "/").last_change_at

        def touch_flags(w):
            n = w.get(N("/a/b/f1"))
            n.known_by_agent = True
            w.put_flags(n)

        s.write(touch_flags)  # flags only: not a change of the content
        assert agg(s, "/a").last_change_at == before
        s.write(lambda w: setattr(w, "now", before + 100) or w.delete(N("/a/b/f2")))
        assert agg(s, "/a/b").last_change_at == before + 100
        assert agg(s, "/a").last_change_at == before + 100
        assert agg(s, "/").last_change_at == before + 100 > other
        assert agg(s, "/a/b").child_count == 1
        assert verify(s) == []


def test_big_directory_keeps_latest_mtime_exact_through_its_index(tmp_path):
    n = BIG_DIR + 100
    with Store(tmp_path / "s.lmdb") as s:
        fill(s, [(f"/big/f{i:05d}", 1, 1000.0 + i) for i in range(n)], dirs=["/big/sub"])
        fill(s, [("/big/sub/deep", 1, 500.0)])
        with s.read() as r:
            assert r.count(r.dbs.child_mtimes) == n + 1
        for i in range(n - 1, n - 40, -1):  # delete the newest, one per transaction
            s.write(lambda w, i=i: w.delete(N(f"/big/f{i:05d}")))
            assert agg(s, "/big").latest_mtime == 1000.0 + i - 1
        fill(s, [("/big/sub/deep", 1, 9999.0)])  # a subdirectory becomes the newest child
        assert agg(s, "/big").latest_mtime == 9999.0 and agg(s, "/").latest_mtime == 9999.0
        s.write(lambda w: w.delete(N("/big/sub")))
        assert agg(s, "/big").latest_mtime == 1000.0 + n - 40
        fill(s, [(f"/big/f{n - 40:05d}", 1, 1.0)])  # the newest file gets older
        assert agg(s, "/big").latest_mtime == 1000.0 + n - 41
        assert verify(s) == []

        def shrink(w):
            for i in range(n - SMALL_DIR):
                w.delete(N(f"/big/f{i:05d}"))

        s.write(shrink)
        with s.read() as r:
            assert r.count(r.dbs.child_mtimes) == 0  # small again: scanned, not indexed
        assert verify(s) == []


def test_tombstones_are_purged_oldest_first_in_bounded_chunks(tmp_path):
    with Store(tmp_path / "s.lmdb") as s:
        def job(w):
            for i in range(PURGE_CHUNK + 50):
                w.put_tombstone(N(f"/t/{i}"), 1.0, 100.0 + i)
            w.put_tombstone(N("/t/0"), 1.0, 1e9)  # re-stamped: now young
            w.put_tombstone(N("/young"), 1.0, 1e9)

        s.write(job)
        cutoff = 100.0 + PURGE_CHUNK + 50
        first = s.write(lambda w: w.purge_tombstones(cutoff))
        assert first == PURGE_CHUNK
        with s.read() as r:
            assert r.tombstones_due(cutoff)
        assert s.write(lambda w: w.purge_tombstones(cutoff)) == 49
        with s.read() as r:
            assert not r.tombstones_due(cutoff)
            assert sorted(p for p, _a, _b in r.iter_tombstones()) == [b"/t/0", b"/young"]
        s.write(lambda w: w.delete_tombstone(N("/young")))
        assert verify(s) == []


def test_deleting_a_long_directory_leaves_its_long_neighbours(tmp_path):
    base = "/" + "p" * 200
    with Store(tmp_path / "s.lmdb") as s:
        fill(s, [(f"{base}/keep{i}/f{j}", 1, 1.0) for i in range(20) for j in range(20)]
             + [(f"{base}/gone/a/f{j}", 2, 2.0) for j in range(5)] + [(f"{base}/gone/f", 3, 3.0)])
        s.write(lambda w: (w.put_suspect(N(f"{base}/gone/a/f1"), 1e10, 2.0),
                           w.add_blind("additions", N(f"{base}/gone/f"))))
        removed = s.write(lambda w: w.delete(N(f"{base}/gone")))
        assert removed == 8
        with s.read() as r:
            assert r.stats(N(base)).file_count == 400
            assert r.get(N(f"{base}/gone/a/f1")) is None
            assert r.count(r.dbs.suspects) == 0 and r.count(r.dbs.blind_additions) == 0
            assert r.suspect_file_count() == 0
        assert verify(s) == []


def test_twenty_thousand_directory_deletes_in_one_job(tmp_path):
    with Store(tmp_path / "s.lmdb") as s:
        def make(w):
            for i in range(20_000):
                w.upsert(N(f"/p{i % 200}/x{i}/build/o.o"), False, 1, 1.0)
                w.upsert(N(f"/p{i % 200}/x{i}/src.c"), False, 1, 2.0)

        s.write(make)

        def drop(w):
            # some touched in this job before their delete, most not
            for i in range(0, 20_000, 1000):
                w.upsert(N(f"/p{i % 200}/x{i}/build/new.o"), False, 1, 3.0)
            return sum(w.delete(N(f"/p{i % 200}/x{i}/build")) for i in range(20_000))

        assert s.write(drop) == 20_000 * 2 + 20
        with s.read() as r:
            st = r.stats(b"/")
            assert (st.file_count, st.dir_count) == (20_000, 1 + 200 + 20_000)
        assert verify(s) == []


def _dir_ids(store):
    with store.read() as r:
        return {bytes(v) for _k, v in r.txn.cursor(db=r.dbs.name_dirs)}


def test_directory_deletes_leave_no_entry_behind_whatever_the_job_did_first(tmp_path):
    """A directory delete reads its stored aggregate to skip empty key ranges; that may
    only happen when the job changed nothing under it. Every mix leaves nothing behind."""
    with Store(tmp_path / "s.lmdb") as s:
        fill(s, [("/k/f/x", 1, 1.0), ("/k/g/h/y", 2, 2.0), ("/m/old", 3, 3.0),
                 ("/s/d/f", 4, 4.0), ("/s/d/e/g", 5, 5.0), ("/keep/z", 6, 6.0)],
             dirs=["/k/e", "/k/e2"])

        def drop(w):
            w.upsert(N("/k/e2/new"), False, 1, 7.0)  # an empty directory that gets a child
            w.upsert(N("/m/a/b/file"), False, 1, 7.0)  # made and dropped in this job
            w.upsert(N("/m/new/deeper/c"), False, 1, 7.0)
            # the suspect and blind tables were empty when the job began
            w.put_suspect(N("/s/d/e/g"), 99.0, 5.0)
            w.add_blind("additions", N("/s/d/f"))
            return [w.delete(N(p)) for p in ("/k/e", "/k/e2", "/k/f", "/k/g", "/m/a", "/m", "/s/d")]

        assert s.write(drop) == [1, 2, 2, 3, 3, 5, 4]
        assert verify(s) == []
        with s.read() as r:
            assert [n.path for _d, n in r.walk(b"/")] == [b"/", b"/k", b"/keep", b"/keep/z", b"/s"]
            assert r.suspect(N("/s/d/e/g")) is None and not r.in_blind("additions", N("/s/d/f"))
            assert [n.path for n in r.search("*", b"/").nodes] == [b"/keep/z"]  # files
        # no directory id is left for a directory that went
        assert sorted(_dir_ids(s)) == [b"/\0", b"/k\0", b"/keep\0", b"/s\0"]


def test_a_flush_mid_job_leaves_the_name_index_to_the_job_end(tmp_path):
    """Aggregates may be flushed mid-job (to read them); the name index is written once, at
    the job's end. A node made and deleted in one job never reaches it, and a directory
    deleted after a mid-job flush takes the children the job gave it."""
    with Store(tmp_path / "s.lmdb") as s:
        fill(s, [("/d/old", 1, 1.0), ("/big/f", 1, 1.0)])

        def job(w):
            w.upsert(N("/big/.tmp.XyZ"), False, 10, 9.0)
            w.upsert(N("/d/new"), False, 1, 8.0)  # a child the job gives /d
            w.flush()
            assert w.stats(N("/big")).latest_mtime == 9.0
            w.delete(N("/big/.tmp.XyZ"))
            w.upsert(N("/big/final"), False, 10, 9.0)
            w.flush()
            w.delete(N("/d"))  # its stored aggregate is exact again: it holds /d/new too

        s.write(job)
        assert verify(s) == []
        with s.read() as r:
            assert sorted(n.path for n in r.search("*", b"/").nodes) == [b"/big/f", b"/big/final"]
            assert r.search("*tmp*", b"/").nodes == []
            assert r.stats(N("/big")).latest_mtime == 9.0
            # the temporary name was never written, not even to the blocks of names
            blocks = b"".join(bytes(v) for _k, v in r.txn.cursor(db=r.dbs.name_blobs))
            assert b"\0final\0" in blocks and b"tmp" not in blocks
