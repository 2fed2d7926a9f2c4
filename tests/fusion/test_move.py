"""Directory moves as one row (the ``move`` extension between our agent and fusion):
fusion ends where the per-file form (a delete, then a realtime update per node) ends."""

from __future__ import annotations

import os

import pytest

from fustor.store import keys

pytest_plugins = ["tests.fusion.harness"]  # fixtures: wall, view, make_view


def move(view, old: str, new: str, mtime: float, **extra):
    row = {"path": new, "moved_from": old, "modified_time": mtime, "size": 4096,
           "created_time": mtime, "is_directory": True, **extra}
    return view.event("realtime", "move", [row])


def nodes(view, top: str = "/") -> dict[str, tuple]:
    with view.store.read() as r:
        return {n.path_str: (n.is_dir, n.size, n.modified_time)
                for _d, n in r.walk(keys.normalise(top))}


def build(view, t: float) -> None:
    """/src with files two levels deep, one of them hot (suspect), one seen by an audit."""
    view.upsert("realtime", "/src", t, is_dir=True)
    for d in range(3):
        view.upsert("snapshot", f"/src/d{d}", t - d, is_dir=True)
        for f in range(5):
            view.upsert("snapshot", f"/src/d{d}/f{f}.dat", t - 100 - f, size=10 * d + f)
        view.upsert("snapshot", f"/src/d{d}/deep/x.bin", t - 50, size=7)
    view.upsert("realtime", "/src/d1/hot.part", t, size=3, is_atomic_write=False)
    view.upsert("realtime", "/elsewhere/keep", t, size=1)


def test_a_move_ends_where_the_per_file_form_ends(make_view, wall):
    t = wall.t - 10
    moved, per_file = make_view(), make_view()
    for v in (moved, per_file):
        build(v, t)
    before = nodes(moved, "/src")
    hot = {"/dst/renamed" + p[4:] for p in moved.suspects() if p.startswith("/src/")}
    assert "/dst/renamed/d1/hot.part" in hot

    res = move(moved, "/src", "/dst/renamed", t + 1)
    assert (res.applied, res.rejected, res.unresolved) == (1, [], [])

    # the per-file form: a delete of the old directory, then a row per node at the new place
    per_file.delete("realtime", "/src")
    per_file.upsert("realtime", "/dst/renamed", t + 1, size=4096, is_dir=True)
    for p, (is_dir, size, mtime) in sorted(before.items()):
        if p != "/src":
            per_file.upsert("realtime", "/dst/renamed" + p[4:], mtime, size=size, is_dir=is_dir)

    assert nodes(moved) == nodes(per_file)
    assert not moved.exists("/src") and moved.exists("/dst/renamed/d2/deep/x.bin")
    assert moved.tombstones() == per_file.tombstones() == {"/src"}
    with moved.store.read() as r, per_file.store.read() as q:
        for p in ("/", "/dst", "/dst/renamed", "/dst/renamed/d1"):
            assert r.stats(keys.normalise(p)) == q.stats(keys.normalise(p)), p
    # moved nodes are confirmed by realtime now; what was hot stays hot where it went (a
    # rename is not a close-write), with its expiry
    assert moved.node("/dst/renamed/d0/f3.dat").last_updated_at == wall.t
    assert moved.suspects() == hot
    assert moved.node("/dst/renamed/d1/hot.part").integrity_suspect
    moved.check()
    per_file.check()


def test_a_move_replaces_an_empty_directory_and_lifts_state_at_the_target(view, wall):
    t = wall.t - 10
    view.upsert("realtime", "/a", t, is_dir=True)
    view.upsert("realtime", "/a/f", t, size=5)
    view.upsert("realtime", "/b", t, is_dir=True)  # rename(2) replaces an empty directory
    view.upsert("realtime", "/b/gone", t, size=1)
    view.delete("realtime", "/b/gone")  # a tombstone under the target
    view.upsert("audit", "/b/f", t - 1000, size=9)  # a blind addition where /a/f lands
    assert view.tombstones() == {"/b/gone"} and view.blind("additions") == {"/b/f"}

    assert move(view, "/a", "/b", t + 1).applied == 1
    assert nodes(view) == {"/": (True, 0, 0.0), "/b": (True, 4096, t + 1), "/b/f": (False, 5, t)}
    assert view.tombstones() == {"/a"}  # the target's tombstones went with the realtime rows
    assert view.blind("additions") == set()
    # the moved file is realtime data: an older stat-walk row of it does not win
    assert view.upsert("snapshot", "/b/f", t - 5, size=1).ignored == 1
    view.check()


def test_a_move_of_a_directory_fusion_does_not_hold_asks_for_a_walk(view, wall):
    t = wall.t - 10
    view.upsert("realtime", "/file", t, size=1)
    res = move(view, "/never-seen", "/new", t)
    assert (res.applied, res.unresolved) == (0, ["/new"])
    assert view.tombstones() == {"/never-seen"} and not view.exists("/new")
    res = move(view, "/file", "/new2", t)  # a file where the directory was
    assert res.unresolved == ["/new2"]
    assert not view.exists("/file")  # the old place is deleted all the same
    view.check()


@pytest.mark.parametrize(("row", "reason"), [
    ({"path": "/a/b/c", "moved_from": "/a/b"}, "into itself"),
    ({"path": "/a", "moved_from": "/a"}, "into itself"),
    ({"path": "/x", "moved_from": "/"}, "root"),
    ({"path": "/", "moved_from": "/a"}, "root"),
    ({"path": "/x"}, "needs moved_from"),
    ({"path": "/x", "moved_from": 7}, "must be a string"),
    ({"path": "/x", "moved_from": "/a/../b"}, "moved_from"),
    ({"path": "/x", "moved_from": "/a", "is_directory": False}, "only a directory"),
])
def test_bad_move_rows_are_rejected_alone(view, wall, row, reason):
    view.upsert("realtime", "/a/b/f", wall.t - 5, size=1)
    ok = {"path": "/ok", "moved_from": "/a/b", "is_directory": True,
          "modified_time": wall.t - 1}
    bad = {"is_directory": True, "modified_time": wall.t - 1, **row}
    res = view.event("realtime", "move", [bad, ok])
    assert res.applied == 1 and len(res.rejected) == 1
    assert res.rejected[0]["index"] == 0 and reason in res.rejected[0]["reason"]
    assert view.exists("/ok/f") and view.exists("/a")
    view.check()


@pytest.mark.parametrize("src", ["snapshot", "audit", "on_demand_job"])
def test_only_realtime_moves(view, wall, src):
    view.upsert("realtime", "/a/f", wall.t - 5, size=1)
    res = view.event(src, "move", [{"path": "/b", "moved_from": "/a", "is_directory": True}])
    assert res.applied == 0 and "realtime only" in res.rejected[0]["reason"]
    assert view.exists("/a/f") and not view.exists("/b")


def test_a_move_is_not_a_clock_sample(view, wall):
    """A renamed directory keeps its old mtime: it says nothing about the agent's clock
    (a realtime update row with that mtime would be a sample)."""
    view.upsert("snapshot", "/old/f", wall.t - 50_000, size=1)
    assert view.st.clock.skew() is None
    assert move(view, "/old", "/new", wall.t - 50_000).applied == 1
    assert view.st.clock.skew() is None
    view.upsert("realtime", "/new/g", wall.t - 50_000, size=1)
    assert view.st.clock.skew() == 50_000


def test_long_paths_and_names_that_are_not_utf8_move_too(view, wall):
    t = wall.t - 10
    long_old = "/" + "/".join(["a" * 60] * 4)  # 244 bytes: keys under it are hashed
    long_new = "/" + "/".join(["b" * 60] * 4)
    odd = os.fsdecode(b"caf\xe9")  # a Latin-1 name, carried as a lone surrogate
    for name in ("x", odd, "y"):
        view.upsert("realtime", f"{long_old}/{name}/f", t, size=3)
    view.upsert("realtime", long_old + "-sibling/keep", t, size=1)  # shares the hashed prefix
    res = move(view, long_old, long_new, t)
    assert (res.applied, res.rejected) == (1, [])
    assert {p for p in view.paths() if p.startswith(long_new + "/")} == {
        f"{long_new}/{n}{tail}" for n in ("x", keys.display(os.fsencode(odd)), "y")
        for tail in ("", "/f")}
    assert not view.exists(long_old) and view.exists(long_old + "-sibling/keep")
    res = move(view, f"/gone/{odd}", f"/new/{odd}", t)
    assert res.unresolved == [f"/new/{odd}"]  # given back as sent (os.fsdecode form)
    view.check()
