"""Path normalisation, non-UTF-8 names and paths longer than the key layout's parent limit."""

import os

import pytest

from fustor.errors import PathError
from fustor.store import keys, normalise
from fustor.store.inspect import verify

LMDB_MAX_KEY = 511


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("a/b", b"/a/b"),
        (b"a", b"/a"),
        ("//a///b", b"/a/b"),
        ("/a/./b/.", b"/a/b"),
        ("./a", b"/a"),
        ("/a/b/", b"/a/b"),
        ("/a/b///", b"/a/b"),
        ("/", b"/"),
        ("//", b"/"),
        ("/./", b"/"),
        ("", b"/"),
        ("/a/.hidden/..x/x..", b"/a/.hidden/..x/x.."),
        ("/caf\u00e9", "/caf\u00e9".encode()),
    ],
)
def test_normalise_gives_canonical_bytes(given, want):
    assert normalise(given) == want
    assert normalise(want) == want  # idempotent


@pytest.mark.parametrize("bad", ["/a/../b", "..", "/a/..", b"/a/../../etc", "../a"])
def test_dotdot_is_refused_with_a_clear_message(bad):
    with pytest.raises(PathError, match=r"contains '\.\.'") as info:
        normalise(bad)
    assert info.value.code == "path_invalid"
    assert info.value.status == 422


@pytest.mark.parametrize("bad", ["/a\0b", b"/a/\0", b"\0"])
def test_nul_is_refused_with_a_clear_message(bad):
    with pytest.raises(PathError, match="NUL byte"):
        normalise(bad)


def test_str_that_cannot_be_encoded_is_refused():
    with pytest.raises(PathError, match="cannot be stored"):
        normalise("/a\ud800")  # a lone surrogate that no byte maps to


def test_non_path_type_is_refused():
    with pytest.raises(PathError, match="must be a string"):
        normalise(42)


@pytest.mark.parametrize("prefix", [b"/", b"/d/", b"/deep/er/"])
def test_name_of_255_bytes_is_accepted_and_256_refused(prefix):
    ok = prefix + b"n" * 255
    assert normalise(ok) == ok
    assert normalise(ok + b"/") == ok
    with pytest.raises(PathError, match=r"256 bytes long; the limit is 255"):
        normalise(prefix + b"n" * 256)


def test_name_limit_counts_utf8_bytes_not_characters():
    assert normalise("/" + "\u00e9" * 127 + "x") == ("/" + "\u00e9" * 127 + "x").encode()
    with pytest.raises(PathError, match="256 bytes long"):
        normalise("/" + "\u00e9" * 128)  # 128 characters, 256 bytes


def test_path_over_4096_bytes_is_refused():
    name = b"p" * 99
    exact = b"".join([b"/" + name] * 40) + b"/" + b"q" * 95  # 4000 + 96 bytes
    assert len(exact) == 4096
    assert normalise(exact) == exact
    with pytest.raises(PathError, match=r"4097 bytes long; the limit is 4096"):
        normalise(exact + b"q")


def test_str_with_surrogate_escapes_maps_to_the_raw_bytes():
    assert normalise(os.fsdecode(b"/d\xff/x")) == b"/d\xff/x"


def test_non_utf8_names_round_trip_through_the_store(store):
    raw = b"/d\xff/x"
    store.write(lambda w: w.upsert(raw, False, 7, 3.0, 1.0))
    store.write(lambda w: w.upsert(b"/d\xff/\xfe\xfd.bin", False, 1, 2.0, 1.0))
    with store.read() as r:
        node = r.get(raw)
        assert node is not None and node.path == raw and node.size == 7
        assert node.path_str == os.fsdecode(raw)
        assert node.name == "x"
        parent = r.get(b"/d\xff")
        assert parent.is_dir and parent.name == os.fsdecode(b"d\xff")
        kids, nxt = r.children(b"/d\xff")
        assert nxt is None
        assert [k.path for k in kids] == [b"/d\xff/x", b"/d\xff/\xfe\xfd.bin"]
        assert kids[1].path_str == os.fsdecode(b"/d\xff/\xfe\xfd.bin")
        walked = [n.path for _d, n in r.walk(b"/")]
        assert walked == [b"/", b"/d\xff", raw, b"/d\xff/\xfe\xfd.bin"]
        found = r.search(os.fsdecode(b"\xfe\xfd") + "*").nodes
        assert [n.path for n in found] == [b"/d\xff/\xfe\xfd.bin"]
        assert r.stats(b"/d\xff").file_count == 2
    assert verify(store) == []


# -- paths longer than keys.PARENT_LIMIT --------------------------------------------------


def chain(depth, tag=b"x"):
    """``depth`` nested 60-byte names: a path of 61 * depth bytes."""
    return b"".join(b"/" + b"%02d" % i + tag * 58 for i in range(depth))


def all_keys(store):
    with store.read() as r:
        for db in r.dbs:
            for k in r.txn.cursor(db=db).iternext(values=False):
                yield bytes(k)


def fill(w, directory, n, size=10):
    for i in range(n):
        w.upsert(directory + b"/f%03d.dat" % i, False, size, float(i), 0.0)


@pytest.fixture
def long_tree(store):
    """Two ~600-byte dirs and one ~1500-byte dir; all share their first 190+ bytes."""
    base = chain(8)  # 488 bytes
    a = base + b"/" + b"a" * 110  # 599 bytes
    b = base + b"/" + b"b" * 110
    deep = chain(25)  # 1525 bytes, shares base as a prefix
    assert len(a) > 3 * keys.PARENT_LIMIT and len(deep) > 1500 and deep.startswith(base)

    def job(w):
        fill(w, a, 30, 10)
        fill(w, b, 5, 100)
        fill(w, deep, 12, 1000)
        w.upsert(deep + b"/" + b"L" * 255, False, 5, 99.0, 0.0)

    store.write(job)
    return store, base, a, b, deep


def test_long_paths_get_children_and_stats(long_tree):
    store, base, a, b, deep = long_tree
    with store.read() as r:
        node = r.get(a + b"/f007.dat")
        assert node.path == a + b"/f007.dat" and node.size == 10 and node.modified_time == 7.0
        longest = r.get(deep + b"/" + b"L" * 255)
        assert longest.path == deep + b"/" + b"L" * 255 and longest.name == "L" * 255
        assert r.get(deep).is_dir and r.get(deep).path == deep

        names, after = [], None
        while True:
            page, after = r.children(a, after=after, limit=7)
            names += [n.name for n in page]
            if after is None:
                break
        assert names == [f"f{i:03d}.dat" for i in range(30)]

        want = {a: (30, 1, 300, 29.0), b: (5, 1, 500, 4.0), deep: (13, 1, 12005, 99.0)}
        for d, (f, nd, s, m) in want.items():
            st = r.stats(d)
            assert (st.file_count, st.dir_count, st.total_size, st.latest_mtime) == (f, nd, s, m)
            assert r.stats_by_scan(d) == st
        top = r.stats(b"/")
        assert top.file_count == 48 and top.total_size == 300 + 500 + 12005
        assert r.stats_by_scan(b"/") == top
        assert r.stats(base).file_count == 48  # base is an ancestor of all three
        assert r.stats(base + b"/" + b"08" + b"x" * 58).file_count == 13  # only deep's chain


def test_long_paths_search_and_walk(long_tree):
    store, base, a, b, deep = long_tree
    with store.read() as r:
        assert len(r.search("*.dat", limit=None).nodes) == 47
        in_a = r.search("*.dat", path=a, limit=None).nodes
        assert sorted(n.path for n in in_a) == [a + b"/f%03d.dat" % i for i in range(30)]
        assert [n.path for n in r.search("LLLL", path=base).nodes] == [deep + b"/" + b"L" * 255]
        assert [n.path for n in r.search("f004.dat", path=b).nodes] == [b + b"/f004.dat"]
        walked = [(d, n.path) for d, n in r.walk(a)]
        assert walked[0] == (0, a)
        assert [p for _d, p in walked[1:]] == [a + b"/f%03d.dat" % i for i in range(30)]


def test_delete_long_dir_keeps_its_long_siblings(long_tree):
    store, base, a, b, deep = long_tree
    assert store.write(lambda w: w.delete(a)) == 31
    with store.read() as r:
        assert r.get(a) is None and r.get(a + b"/f000.dat") is None
        assert r.children(a) == ([], None)
        assert r.stats(a) is None
        assert len(r.children(b)[0]) == 5
        assert r.stats(b).file_count == 5 and r.stats(deep).file_count == 13
        assert r.stats(b"/").file_count == 18
        assert r.search("f0*", path=base, limit=None).nodes and not r.search("*", path=a).nodes
    assert verify(store) == []


def test_delete_ancestor_of_long_dirs_removes_everything_below(long_tree):
    store, base, _a, b, deep = long_tree
    top = base[: base.index(b"/", 1)]  # the first 60-byte component
    removed = store.write(lambda w: w.delete(top))
    assert removed == 25 + 2 + 47 + 1  # 25 chain dirs, a, b, 47 files, and the long file
    with store.read() as r:
        assert r.children(b"/") == ([], None)
        assert r.get(deep + b"/f000.dat") is None and r.get(b + b"/f000.dat") is None
        st = r.stats(b"/")
        assert (st.file_count, st.dir_count, st.total_size) == (0, 1, 0)
        assert r.count(r.dbs.nodes) == 1 and r.count(r.dbs.aggregates) == 1
    assert verify(store) == []


def test_every_key_fits_lmdb_limit(long_tree):
    store, _base, _a, _b, deep = long_tree
    longest = deep + b"/" + b"L" * 255

    def state(w):
        w.put_tombstone(longest + b"/gone", 1.0, 2.0)
        w.put_suspect(longest, 1e12, 99.0)
        w.add_blind("additions", longest)
        w.add_blind("deletions", longest + b"/x" * 100)
        w.add_audit_dir(deep)

    store.write(state)
    ks = list(all_keys(store))
    assert max(len(k) for k in ks) <= LMDB_MAX_KEY
    with store.read() as r:
        assert max(len(bytes(k)) for k in r.txn.cursor(db=r.dbs.nodes).iternext(values=False)) == (
            keys.PARENT_LIMIT + 1 + 32 + 1 + 255
        )
        assert [p for p, *_ in r.iter_tombstones()] == [longest + b"/gone"]
        assert [p for p, *_ in r.iter_suspects()] == [longest]
        assert r.due_suspects(2e12) == [longest]
        assert list(r.iter_blind("additions")) == [longest]
        assert list(r.iter_blind("deletions")) == [longest + b"/x" * 100]
        assert list(r.iter_audit_dirs()) == [deep]
    assert verify(store) == []


@pytest.mark.parametrize("length", range(keys.PARENT_LIMIT - 3, keys.PARENT_LIMIT + 4))
def test_dirs_around_the_parent_limit(store, length):
    head = b"/" + b"h" * 100
    d = head + b"/" + b"d" * (length - len(head) - 1)
    twin = d[:-1] + b"e"  # same length, same first length-1 bytes
    assert len(d) == length

    def job(w):
        fill(w, d, 4, 3)
        fill(w, d + b"/sub", 2, 5)
        fill(w, twin, 3, 7)

    store.write(job)
    with store.read() as r:
        assert [n.name for n in r.children(d)[0]] == ["f000.dat", "f001.dat", "f002.dat", "f003.dat", "sub"]
        assert r.get(d + b"/sub/f001.dat").path == d + b"/sub/f001.dat"
        assert (r.stats(d).file_count, r.stats(d).total_size) == (6, 22)
        assert r.stats_by_scan(d) == r.stats(d)
        assert len(r.search("*", path=d, limit=None).nodes) == 6
    assert store.write(lambda w: w.delete(d)) == 8
    with store.read() as r:
        assert r.stats(head).file_count == 3 and r.stats(twin).file_count == 3
        assert r.get(d + b"/sub") is None
    assert verify(store) == []
    assert max(len(k) for k in all_keys(store)) <= LMDB_MAX_KEY



@pytest.mark.parametrize(("raw", "short"), [
    (b"/a/.git", True), (b"/a/..x/...", True), (b"/.a", True), (b"/" + b"n" * 255, True),
    (b"/a/.", False), (b"/a/..", False), (b"/a/./b", False), (b"/a/../b", False),
    (b"/a//b", False), (b"/a/", False), (b"a/b", False), (b"/", False),
    (b"/" + b"n" * 256, False),  # a name too long: normalise refuses it
    (b"/x/" + b"n" * 254, False),  # valid, but past 256 bytes the names are checked one by one
])
def test_the_short_check_accepts_only_paths_normalise_leaves_as_they_are(raw, short):
    assert keys.canonical(raw) is short
    if short:
        assert normalise(raw) == raw
