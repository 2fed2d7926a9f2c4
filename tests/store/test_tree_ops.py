"""Tree write/read primitives, failing jobs, and the consistency-state tables."""

import threading

import pytest

from fustor.errors import PathError
from fustor.store.inspect import verify


def put_files(store, paths, size=1, mtime=1.0):
    def job(w):
        for p in paths:
            w.upsert(p, False, size, mtime, 0.0)

    store.write(job)


def stat_tuple(st):
    return (st.file_count, st.dir_count, st.total_size, st.latest_mtime)


def test_missing_parents_are_created_as_empty_dirs(store):
    store.write(lambda w: w.upsert(b"/a/b/c/f.txt", False, 10, 50.0, 40.0, known_by_agent=True))
    with store.read() as r:
        for d in (b"/a", b"/a/b", b"/a/b/c"):
            n = r.get(d)
            assert n.is_dir and n.modified_time == 0.0 and n.size == 0
            assert n.known_by_agent is False
        f = r.get(b"/a/b/c/f.txt")
        assert (f.size, f.modified_time, f.created_time, f.known_by_agent) == (10, 50.0, 40.0, True)
        assert stat_tuple(r.stats(b"/a")) == (1, 3, 10, 50.0)
    assert verify(store) == []


def test_upsert_keeps_flags_that_are_not_given(store):
    store.write(lambda w: w.upsert(b"/f", False, 1, 1.0, integrity_suspect=True, audit_mark=7))
    store.write(lambda w: w.upsert(b"/f", False, 2, 2.0))
    with store.read() as r:
        n = r.get(b"/f")
        assert (n.size, n.integrity_suspect, n.audit_mark) == (2, True, 7)


def test_root_cannot_become_a_file(store):
    with pytest.raises(PathError, match="root"):
        store.write(lambda w: w.upsert(b"/", False, 1, 1.0))
    with store.read() as r:
        assert r.get(b"/").is_dir


def test_file_to_dir_and_back_replaces_the_old_node(store):
    put_files(store, [b"/x"], size=100, mtime=9.0)
    store.write(lambda w: w.upsert(b"/x/inner/f", False, 5, 3.0, 0.0))  # file /x is in the way
    with store.read() as r:
        assert r.get(b"/x").is_dir
        assert stat_tuple(r.stats(b"/")) == (1, 3, 5, 3.0)
    store.write(lambda w: w.upsert(b"/x", False, 7, 4.0, 0.0))  # dir -> file drops the subtree
    with store.read() as r:
        assert not r.get(b"/x").is_dir and r.get(b"/x").size == 7
        assert r.get(b"/x/inner") is None and r.get(b"/x/inner/f") is None
        assert r.children(b"/x") == ([], None)
        assert stat_tuple(r.stats(b"/")) == (1, 1, 7, 4.0)
    store.write(lambda w: w.upsert(b"/x", True, 0, 2.0, 0.0))  # and back to a dir
    with store.read() as r:
        assert r.get(b"/x").is_dir and r.children(b"/x") == ([], None)
        assert stat_tuple(r.stats(b"/x")) == (0, 1, 0, 2.0)
        assert stat_tuple(r.stats(b"/")) == (0, 2, 0, 2.0)
    assert verify(store) == []


def test_double_switch_inside_one_job(store):
    def job(w):
        w.upsert(b"/s/a/f", False, 3, 1.0, 0.0)
        w.upsert(b"/s", False, 4, 2.0, 0.0)
        w.upsert(b"/s", True, 0, 0.5, 0.0)
        w.upsert(b"/s/b", False, 6, 0.25, 0.0)

    store.write(job)
    with store.read() as r:
        assert [n.name for n in r.children(b"/s")[0]] == ["b"]
        assert stat_tuple(r.stats(b"/")) == (1, 2, 6, 0.5)
    assert verify(store) == []


def test_recursive_delete_removes_every_descendant(store):
    put_files(store, [b"/k/f1", b"/k/sub/f2", b"/k/sub/deeper/f3", b"/keep/f4", b"/k2/f5"], 10, 5.0)
    assert store.write(lambda w: w.delete(b"/k")) == 6
    with store.read() as r:
        for p in (b"/k", b"/k/f1", b"/k/sub", b"/k/sub/deeper/f3"):
            assert r.get(p) is None and r.stats(p) is None
        assert r.search("f*", limit=None).nodes and {n.name for n in r.search("f*").nodes} == {"f4", "f5"}
        assert stat_tuple(r.stats(b"/")) == (2, 3, 20, 5.0)
        assert r.count(r.dbs.aggregates) == 3  # /, /keep, /k2
    assert verify(store) == []


def test_delete_root_is_refused_quietly_and_missing_path_is_a_no_op(store):
    put_files(store, [b"/a/f"])
    assert store.write(lambda w: w.delete(b"/")) == 0
    assert store.write(lambda w: w.delete(b"/nope")) == 0
    assert store.write(lambda w: w.delete(b"/a/f/under-a-file")) == 0
    with store.read() as r:
        assert r.get(b"/a/f") is not None
        assert stat_tuple(r.stats(b"/")) == (1, 2, 1, 1.0)


def test_latest_mtime_drops_when_the_newest_file_goes(store):
    put_files(store, [b"/d/old"], mtime=1.0)
    put_files(store, [b"/d/new"], mtime=9.0)
    store.write(lambda w: w.delete(b"/d/new"))
    with store.read() as r:
        assert r.stats(b"/d").latest_mtime == 1.0 and r.stats(b"/").latest_mtime == 1.0


def test_children_pagination_over_250_entries(store):
    names = [b"n%03d" % i for i in range(250)]
    put_files(store, [b"/big/" + n for n in reversed(names)])
    store.write(lambda w: w.upsert(b"/big/n100/deep", False, 1, 1.0, 0.0))  # a grandchild
    store.write(lambda w: w.upsert(b"/big0/x", False, 1, 1.0, 0.0))  # a sibling sorting right after
    for limit in (1, 7, 100, 250, 1000):
        seen, after, pages = [], None, 0
        with store.read() as r:
            while True:
                page, after = r.children(b"/big", after=after, limit=limit)
                assert len(page) <= limit
                seen += [n.path.rsplit(b"/", 1)[1] for n in page]
                pages += 1
                if after is None:
                    break
        assert seen == names
        assert pages == -(-250 // limit)
    with store.read() as r:
        page, nxt = r.children(b"/big", after=b"n247")
        assert [n.name for n in page] == ["n248", "n249"] and nxt is None
        assert r.children(b"/big", after=b"n249") == ([], None)


def test_limit_zero_gives_an_empty_page(store):
    put_files(store, [b"/z/a", b"/z/b"])
    with store.read() as r:
        page, _next = r.children(b"/z", limit=0)
        assert page == []
        assert r.search("*", limit=0).nodes == []


def test_walk_depths(store):
    put_files(store, [b"/a/b/c/f", b"/a/g", b"/h"])
    with store.read() as r:
        def walk(**kw):
            return [(d, n.path) for d, n in r.walk(b"/", **kw)]

        assert walk(max_depth=0) == [(0, b"/")]
        assert walk(max_depth=1) == [(0, b"/"), (1, b"/a"), (1, b"/h")]
        assert walk(max_depth=2) == [(0, b"/"), (1, b"/a"), (2, b"/a/b"), (2, b"/a/g"), (1, b"/h")]
        assert walk()[-3:] == [(4, b"/a/b/c/f"), (2, b"/a/g"), (1, b"/h")]
        assert [(d, n.path) for d, n in r.walk(b"/a/g")] == [(0, b"/a/g")]
        assert list(r.walk(b"/missing")) == []


def test_stats_of_a_file_and_of_a_missing_path(store):
    store.write(lambda w: w.upsert(b"/d/f", False, 123, 4.5, 0.0))
    with store.read() as r:
        assert stat_tuple(r.stats(b"/d/f")) == (1, 0, 123, 4.5)
        assert r.stats_by_scan(b"/d/f") == r.stats(b"/d/f")
        assert r.stats(b"/nope") is None and r.stats_by_scan(b"/nope") is None


def test_search(store):
    put_files(store, [b"/p/report.CSV", b"/p/data.csv", b"/p/q/more.csv", b"/p/Notes.txt",
                      b"/r/data.csv"])
    store.write(lambda w: w.upsert(b"/p/dir.csv", True, 0, 0.0, 0.0))  # a dir: never returned
    with store.read() as r:
        def found(pattern, **kw):
            return sorted(n.path for n in r.search(pattern, **kw).nodes)

        # names are matched case-insensitively
        assert found("*.csv") == [b"/p/data.csv", b"/p/q/more.csv", b"/p/report.CSV", b"/r/data.csv"]
        assert found("notes") == [b"/p/Notes.txt"]  # case-insensitive substring
        assert found("REPORT") == [b"/p/report.CSV"]
        assert found("/p/q/*") == [b"/p/q/more.csv"]  # glob on the full path
        assert found("*.csv", path=b"/p") == [b"/p/data.csv", b"/p/q/more.csv", b"/p/report.CSV"]
        assert found("nothing-like-this") == []
        assert len(r.search("*", limit=2).nodes) == 2
        assert len(r.search("*", limit=None).nodes) == 5


def test_failing_job_leaves_nothing_and_others_commit(store):
    gate = threading.Event()
    entered = threading.Event()

    def blocker(w):
        entered.set()
        assert gate.wait(10), "test gate never opened"
        w.upsert(b"/first", False, 1, 1.0, 0.0)

    def bad(w):
        w.upsert(b"/bad/a", False, 1, 1.0, 0.0)
        w.delete(b"/first")
        raise ValueError("job exploded")

    first = store.submit(blocker)
    assert entered.wait(10)
    # queued while the writer is busy, so they run together in one transaction
    futs = [store.submit(lambda w: w.upsert(b"/ok1", False, 1, 1.0, 0.0)), store.submit(bad),
            store.submit(lambda w: w.upsert(b"/ok2", False, 1, 1.0, 0.0))]
    gate.set()
    first.result(timeout=10)
    futs[0].result(timeout=10)
    with pytest.raises(ValueError, match="job exploded"):
        futs[1].result(timeout=10)
    futs[2].result(timeout=10)

    def bad_alone(w):
        w.upsert(b"/bad2", False, 1, 1.0, 0.0)
        raise RuntimeError("again")

    with pytest.raises(RuntimeError, match="again"):
        store.write(bad_alone)
    assert store.write(lambda w: w.upsert(b"/after", False, 1, 1.0, 0.0)).path == b"/after"
    with store.read() as r:
        assert r.get(b"/bad") is None and r.get(b"/bad/a") is None and r.get(b"/bad2") is None
        assert {n.name for n in r.children(b"/")[0]} == {"first", "ok1", "ok2", "after"}
        assert stat_tuple(r.stats(b"/")) == (4, 1, 4, 1.0)
    assert verify(store) == []


def test_write_returns_the_job_result(store):
    assert store.write(lambda w: w.upsert(b"/r/f", False, 1, 1.0, 0.0).path) == b"/r/f"


# -- consistency state (fustor/store/state.py) -----------------------------------------------


def test_tombstones_put_get_delete_and_purge(store):
    def job(w):
        w.put_tombstone(b"/a", 1.0, 100.0)
        w.put_tombstone(b"/b/c", 2.0, 200.0)
        w.put_tombstone(b"/d", 3.0, 300.0)

    store.write(job)
    with store.read() as r:
        assert r.tombstone(b"/b/c") == (2.0, 200.0)
        assert r.tombstone(b"/zzz") is None
        assert sorted(p for p, *_ in r.iter_tombstones()) == [b"/a", b"/b/c", b"/d"]
    assert store.write(lambda w: w.delete_tombstone(b"/a")) is True
    assert store.write(lambda w: w.delete_tombstone(b"/a")) is False
    store.write(lambda w: w.put_tombstone(b"/e", 4.0, 400.0))
    assert store.write(lambda w: w.purge_tombstones(300.0)) == 1  # strictly older only
    with store.read() as r:
        assert sorted(p for p, *_ in r.iter_tombstones()) == [b"/d", b"/e"]
    assert store.write(lambda w: w.purge_tombstones(1e9)) == 2
    assert store.write(lambda w: w.purge_tombstones(1e9)) == 0
    with store.read() as r:
        assert list(r.iter_tombstones()) == []


def test_suspects_put_get_delete_and_due_order(store):
    def job(w):
        w.put_suspect(b"/late", 300.0, 1.0)
        w.put_suspect(b"/early", 100.0, 2.0)
        w.put_suspect(b"/mid", 200.0, 3.0)
        w.put_suspect(b"/never", 1e10, 4.0)

    store.write(job)
    with store.read() as r:
        assert r.suspect(b"/mid") == (200.0, 3.0)
        assert r.due_suspects(250.0) == [b"/early", b"/mid"]
        assert r.due_suspects(1000.0) == [b"/early", b"/mid", b"/late"]
        assert r.due_suspects(1000.0, limit=1) == [b"/early"]
        assert r.due_suspects(50.0) == []
    store.write(lambda w: w.put_suspect(b"/early", 500.0, 2.0))  # re-arm: moves in the order
    with store.read() as r:
        assert r.due_suspects(1000.0) == [b"/mid", b"/late", b"/early"]
        assert r.due_suspects(150.0) == []
    assert store.write(lambda w: w.delete_suspect(b"/mid")) is True
    assert store.write(lambda w: w.delete_suspect(b"/mid")) is False
    with store.read() as r:
        assert r.suspect(b"/mid") is None
        assert r.due_suspects(1000.0) == [b"/late", b"/early"]
        assert r.count(r.dbs.suspect_expiry) == 3


def test_rearming_a_suspect_that_had_a_negative_expiry(store):
    store.write(lambda w: w.put_suspect(b"/s", -5.0, 1.0))
    with store.read() as r:
        assert r.due_suspects(0.0) == [b"/s"]
    store.write(lambda w: w.put_suspect(b"/s", 500.0, 1.0))
    with store.read() as r:
        assert r.suspect(b"/s") == (500.0, 1.0)
        assert r.due_suspects(100.0) == []
        assert r.due_suspects(1000.0) == [b"/s"]
        assert r.count(r.dbs.suspect_expiry) == 1


def test_blind_spot_sets(store):
    def job(w):
        w.add_blind("additions", b"/x")
        w.add_blind("deletions", b"/y/z")

    store.write(job)
    with store.read() as r:
        assert r.in_blind("additions", b"/x") and not r.in_blind("deletions", b"/x")
        assert list(r.iter_blind("deletions")) == [b"/y/z"]
    assert store.write(lambda w: w.discard_blind("additions", b"/x")) is True
    assert store.write(lambda w: w.discard_blind("additions", b"/x")) is False
    with store.read() as r:
        assert list(r.iter_blind("additions")) == []


def test_deleting_a_dir_drops_suspects_and_blind_additions_but_keeps_tombstones(store):
    put_files(store, [b"/d/f", b"/d/sub/g", b"/dd/h", b"/other/i"])

    def job(w):
        for p in (b"/d", b"/d/f", b"/d/sub/g", b"/dd/h", b"/other/i"):
            w.put_suspect(p, 10.0, 1.0)
            w.add_blind("additions", p)
            w.add_blind("deletions", p)
            w.put_tombstone(p, 1.0, 1.0)

    store.write(job)
    store.write(lambda w: w.delete(b"/d"))
    with store.read() as r:
        kept = [b"/dd/h", b"/other/i"]
        assert sorted(p for p, *_ in r.iter_suspects()) == kept
        assert r.due_suspects(100.0) == kept
        assert sorted(r.iter_blind("additions")) == kept
        assert len(list(r.iter_blind("deletions"))) == 5
        assert len(list(r.iter_tombstones())) == 5
    store.write(lambda w: w.delete(b"/other/i"))  # a file: its own entries go too
    with store.read() as r:
        assert [p for p, *_ in r.iter_suspects()] == [b"/dd/h"]
        assert list(r.iter_blind("additions")) == [b"/dd/h"]
        assert r.count(r.dbs.suspect_expiry) == 1
