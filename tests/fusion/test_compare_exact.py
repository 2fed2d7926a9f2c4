"""compare is exact: subtree digests find what equal aggregates hide; summary counts are exact."""

import random
from contextlib import ExitStack

import httpx
import pytest

from fustor.errors import BadQueryError
from fustor.fusion.app import create_app
from fustor.fusion.views.forest import ForestView
from fustor.fusion.views.fs import node_json, record_json
from fustor.store import keys
from fustor.store.compare import tally
from fustor.store.records import Node, pack_node
from tests.fusion.conftest import make_fusion
from tests.fusion.test_forest import FOREST, Q, load

N = keys.normalise


@pytest.fixture
def forest(tmp_path):
    f = ForestView("up", tmp_path / "up", ["a", "b", "c"])
    yield f
    f.close()


def put(forest, member, files, dirs=()):
    def job(w):
        for d, mtime in dirs:
            w.upsert(N(d), True, 4096, mtime)
        for p, size, mtime in files:
            w.upsert(N(p), False, size, mtime)

    forest.member(member).store.write(job)


def diffs(cmp):
    return {(d["path"], d["difference"], tuple(d["missing_in"])) for d in cmp["differences"]}


def test_equal_aggregates_with_different_names_are_found_from_the_root(forest):
    put(forest, "a", [("/d/x", 10, 100.0)])
    put(forest, "b", [("/d/y", 10, 100.0)])
    cmp = forest.compare("/", members=["a", "b"])
    assert diffs(cmp) == {("/d", "subtree", ()), ("/d/x", "missing", ("b",)),
                          ("/d/y", "missing", ("a",))}
    assert cmp["summary"]["b"] == {"missing_files": 1, "missing_dirs": 0, "extra_files": 1,
                                   "extra_dirs": 0, "different_files": 0, "different_dirs": 0,
                                   "equal": False}


def test_swapped_sizes_and_a_rename(forest):
    put(forest, "a", [("/s/x", 10, 100.0), ("/s/y", 20, 100.0), ("/r/old", 5, 7.0)])
    put(forest, "b", [("/s/x", 20, 100.0), ("/s/y", 10, 100.0), ("/r/new", 5, 7.0)])
    cmp = forest.compare("/", members=["a", "b"])
    assert diffs(cmp) == {("/r", "subtree", ()), ("/r/new", "missing", ("a",)),
                          ("/r/old", "missing", ("b",)), ("/s", "subtree", ()),
                          ("/s/x", "size", ()), ("/s/y", "size", ())}
    s = cmp["summary"]["b"]
    assert (s["missing_files"], s["extra_files"], s["different_files"]) == (1, 1, 2)


def test_equal_names_with_different_mtimes_depend_on_the_mtime_switch(forest):
    put(forest, "a", [("/m/f", 10, 100.0)], dirs=[("/m", 1.0)])
    put(forest, "b", [("/m/f", 10, 200.0)], dirs=[("/m", 1.0)])
    assert diffs(forest.compare("/", members=["a", "b"])) == {("/m", "subtree", ()),
                                                              ("/m/f", "mtime", ())}
    same = forest.compare("/", members=["a", "b"], mtime=False)
    assert same["differences"] == [] and same["summary"]["b"]["equal"] is True


def test_identical_members_compare_equal_and_reference_defaults_to_the_most_files(forest):
    files = [(f"/up/r{i % 4}/f{i}", i, 1000.0 + i) for i in range(200)]
    put(forest, "a", files[:150])
    put(forest, "b", files)
    put(forest, "c", list(reversed(files)))  # same content, other order
    cmp = forest.compare("/up")
    assert cmp["reference"] == "b"
    assert cmp["summary"]["c"]["equal"] is True
    assert cmp["summary"]["a"]["missing_files"] == 50 and cmp["summary"]["a"]["extra_files"] == 0
    both = forest.compare("/up", members=["b", "c"])
    assert both["differences"] == [] and both["summary"] == {"c": {**both["summary"]["c"], "equal": True}}
    ref_a = forest.compare("/up", reference="a")
    assert ref_a["summary"]["b"]["extra_files"] == 50
    with pytest.raises(BadQueryError):
        forest.compare("/up", members=["a", "b"], reference="c")


# -- random trees vs brute force ------------------------------------------------------


def random_tree(rng):
    entries = {}
    for _ in range(rng.randint(5, 60)):
        depth = rng.randint(1, 4)
        parts = [f"d{rng.randint(0, 3)}" for _ in range(depth - 1)] + [f"f{rng.randint(0, 9)}"]
        path = "/t/" + "/".join(parts)
        if any(path.startswith(p + "/") for p, e in entries.items() if e[0] == "f") or \
                any(p.startswith(path + "/") for p in entries):
            continue
        entries[path] = ("f", rng.choice([1, 2, 3]), float(rng.choice([10, 20])))
    return entries


def edit(rng, entries):
    out = dict(entries)
    for _ in range(rng.randint(0, 6)):
        files = sorted(p for p, e in out.items() if e[0] == "f")
        op = rng.choice(["size", "mtime", "delete", "add", "rename", "swap"])
        if not files:
            op = "add"
        p = rng.choice(files) if files else None
        if op == "size":
            out[p] = ("f", out[p][1] + 1, out[p][2])
        elif op == "mtime":
            out[p] = ("f", out[p][1], out[p][2] + 5)
        elif op == "delete":
            del out[p]
        elif op == "rename":
            q = p + "_r"
            out[q] = out.pop(p)
        elif op == "swap" and len(files) > 1:
            q = rng.choice(files)
            out[p], out[q] = ("f", out[q][1], out[p][2]), ("f", out[p][1], out[q][2])
        else:
            q = f"/t/d{rng.randint(0, 3)}/new{rng.randint(0, 99)}"
            if q not in out and not any(e[0] == "f" and q.startswith(x + "/") for x, e in out.items()):
                out[q] = ("f", 1, 10.0)
    return out


def closure(files):
    """Every entry: files and their ancestor directories (mtime 0, as auto-created)."""
    out = {"/t": ("d", 0, 0.0)}
    for p, e in files.items():
        out[p] = e
        parts = p.split("/")
        for i in range(2, len(parts)):
            out["/".join(parts[:i])] = ("d", 0, 0.0)
    return out


def brute(a, b, mtime):
    """(differences at the top-most differing paths, summary counts of b against a)."""
    A, B = closure(a), closure(b)

    def sig(e):
        return (e[0], e[1] if e[0] == "f" else 0, e[2] if mtime else 0)

    def subtree(entries, d):
        return {p: sig(e) for p, e in entries.items() if p == d or p.startswith(d + "/")}

    found = set()
    for p in sorted(set(A) | set(B)):
        if p == "/t":
            continue
        parent = p.rsplit("/", 1)[0]
        if not (parent in A and parent in B and A[parent][0] == "d" == B[parent][0]):
            continue
        if subtree(A, parent) == subtree(B, parent) and parent != "/t":
            continue
        if p not in A or p not in B:
            found.add((p, "missing", ("a",) if p not in A else ("b",)))
        elif A[p][0] == "f":
            if A[p][1] != B[p][1]:
                found.add((p, "size", ()))
            elif mtime and A[p][2] != B[p][2]:
                found.add((p, "mtime", ()))
        elif subtree(A, p) != subtree(B, p):
            found.add((p, "subtree", ()))
    files_a = {p for p, e in A.items() if e[0] == "f"}
    files_b = {p for p, e in B.items() if e[0] == "f"}
    dirs_a = {p for p, e in A.items() if e[0] == "d"}
    dirs_b = {p for p, e in B.items() if e[0] == "d"}
    counts = {
        "missing_files": len(files_a - files_b), "missing_dirs": len(dirs_a - dirs_b),
        "extra_files": len(files_b - files_a), "extra_dirs": len(dirs_b - dirs_a),
        "different_files": sum(1 for p in files_a & files_b if sig(A[p]) != sig(B[p])),
        "different_dirs": 0,
    }
    counts["equal"] = not any(counts.values())
    return found, counts


@pytest.mark.parametrize("seed", range(60))
def test_random_edits_match_brute_force(tmp_path, seed):
    rng = random.Random(seed)
    base = random_tree(rng)
    other = edit(rng, base)
    f = ForestView("up", tmp_path / "up", ["a", "b"])
    try:
        put(f, "a", [(p, e[1], e[2]) for p, e in base.items()])
        put(f, "b", [(p, e[1], e[2]) for p, e in other.items()])
        for mtime in (True, False):
            want, counts = brute(base, other, mtime)
            cmp = f.compare("/t", members=["a", "b"], mtime=mtime, reference="a")
            assert diffs(cmp) == want, (seed, mtime)
            assert cmp["summary"]["b"] == counts, (seed, mtime)
            paged, after = [], None
            while True:  # pages of 3 add up to the whole answer, in path order
                page = f.compare("/t", members=["a", "b"], mtime=mtime, limit=3, after=after,
                                  reference="a")
                paged += [d["path"] for d in page["differences"]]
                assert page["summary"] == cmp["summary"]  # counted whatever the page
                after = page["next_after"]
                if after is None:
                    break
            assert paged == [d["path"] for d in cmp["differences"]]
    finally:
        f.close()


def flip_types(rng, entries):
    """Turn a file into a directory holding one file, or a directory into a file."""
    out = dict(entries)
    for _ in range(rng.randint(0, 2)):
        files = sorted(out)
        if not files:
            break
        p = rng.choice(files)
        if rng.random() < 0.5:
            del out[p]
            out[p + "/f0"] = ("f", 1, 10.0)
        else:
            d = p.rsplit("/", 1)[0]
            if d == "/t":
                continue
            for q in [q for q in out if q.startswith(d + "/")]:
                del out[q]
            out[d] = ("f", 2, 20.0)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_summary_of_several_members_is_each_pairs_tally(tmp_path, seed):
    """With three members the listing's walk stops at entries a third member lacks; the
    summary it counts must still be tally's, for every reference and both mtime modes."""
    rng = random.Random(1000 + seed)
    base = random_tree(rng)
    f = ForestView("up", tmp_path / "up", ["a", "b", "c"])
    try:
        for m in "abc":
            files = base if m == "a" else flip_types(rng, edit(rng, base))
            dirs = sorted({p.rsplit("/", 1)[0] for p in files} - {"/t"})
            if m == "c" and seed % 8 == 0:
                put(f, m, [("/u/f", 1, 1.0)])  # no /t at all
                continue
            put(f, m, [(p, e[1], e[2]) for p, e in files.items()],
                dirs=[(d, float(rng.choice([0, 0, 3]))) for d in dirs])
        top = N("/t")
        for mtime in (True, False):
            for ref in "abc":
                cmp = f.compare("/t", mtime=mtime, reference=ref)
                with ExitStack() as stack:
                    readers = {n: stack.enter_context(f.members[n].store.read()) for n in "abc"}
                    want = {n: tally(readers[ref], readers[n], top, mtime) for n in "abc" if n != ref}
                assert cmp["summary"] == want, (seed, mtime, ref)
                cut = f.compare("/t", mtime=mtime, reference=ref, limit=1)
                assert cut["summary"] == want, (seed, mtime, ref)
    finally:
        f.close()


async def test_compare_over_http_takes_a_reference(tmp_path):
    f = make_fusion(tmp_path, FOREST)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)),
                                 base_url="http://f") as c:
        await load(c, "nfs1", [("/up/x", 1), ("/up/y", 2), ("/up/z", 3)])
        await load(c, "nfs2", [("/up/x", 1), ("/up/y", 5)])
        await load(c, "nfs3", [("/up/x", 1), ("/up/y", 2), ("/up/z", 3), ("/up/extra", 4)])
        cmp = (await c.get("/api/v1/views/uploads/compare", params={"path": "/up"}, headers=Q)).json()
        assert cmp["reference"] == "nfs3"
        s2, s1 = cmp["summary"]["nfs2"], cmp["summary"]["nfs1"]
        assert (s2["missing_files"], s2["different_files"], s2["extra_files"]) == (2, 1, 0)
        assert (s1["missing_files"], s1["equal"]) == (1, False)
        ref1 = (await c.get("/api/v1/views/uploads/compare", params={"path": "/up", "reference": "nfs1"},
                            headers=Q)).json()
        assert ref1["summary"]["nfs3"]["extra_files"] == 1
        bad = await c.get("/api/v1/views/uploads/compare", params={"reference": "nope"}, headers=Q)
        assert bad.status_code == 400
    await f.stop()


@pytest.mark.parametrize("node", [
    Node(N("/a/f.txt"), False, 12, 3.5, 2.5, 9.0, True, False),
    Node(N("/a/d"), True, 4096, 1.0, 0.5, 9.0, False, True, True),
    Node(N("/" + "x" * 250 + "/" + "y" * 200 + "/\udcff"), False, 0, -1.0, 0.0),
])
def test_compare_entries_show_a_node_as_tree_does(node):
    """compare builds its entries from raw records: the same fields as node_json."""
    name = keys.display(node.path.rsplit(b"/", 1)[-1])
    assert record_json(node.path_str, name, pack_node(node)) == node_json(node)
