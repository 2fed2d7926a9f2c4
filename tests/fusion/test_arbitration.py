"""Event arbitration (spec/consistency.md §4-§6): sources, tombstones, tree rules, fuzz."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fustor.fusion import arbitration as rules

pytest_plugins = ["tests.fusion.harness"]  # fixtures: wall, view, make_view

T = 30.0
COMPENSATION = ["snapshot", "audit", "on_demand_job"]


# -- realtime -------------------------------------------------------------------------
def test_realtime_insert_creates_a_confirmed_node(view, wall):
    res = view.upsert("realtime", "/a.txt", wall.t - 1, size=100)
    assert (res.processed, res.applied, res.ignored, res.rejected) == (True, 1, 0, [])
    n = view.node("/a.txt")
    assert (n.is_dir, n.size, n.modified_time) == (False, 100, wall.t - 1)
    assert n.known_by_agent and not n.integrity_suspect
    assert n.last_updated_at == wall.t
    view.check()


def test_message_source_defaults_to_realtime(view, wall):
    view.run(rules.process_event, {"event_type": "insert",
                                   "rows": [{"path": "/x", "modified_time": wall.t}]})
    assert view.node("/x").known_by_agent
    assert view.node("/x").last_updated_at == wall.t


def test_realtime_beats_the_tree_even_with_an_older_mtime(view, wall):
    view.upsert("snapshot", "/f", 9_000.0, size=1)
    view.upsert("realtime", "/f", 8_000.0, size=2)  # quirk 1: stream of truth
    assert (view.node("/f").modified_time, view.node("/f").size) == (8_000.0, 2)


def test_snapshot_then_realtime_then_stale_snapshot(view, wall):
    t = wall.t
    view.upsert("snapshot", "/f", t - 1000, size=100)
    assert view.node("/f").size == 100
    view.upsert("realtime", "/f", t, size=200)
    res = view.upsert("snapshot", "/f", t - 1000, size=100)
    assert res.applied == 0 and res.ignored == 1
    n = view.node("/f")
    assert (n.size, n.modified_time) == (200, t)


@pytest.mark.parametrize("src", COMPENSATION)
def test_compensation_rows_apply_only_when_strictly_newer(view, wall, src):
    view.upsert("realtime", "/f", 5_000.0, size=1)
    assert view.upsert(src, "/f", 4_000.0, size=2).ignored == 1  # older
    assert view.upsert(src, "/f", 5_000.0, size=3).ignored == 1  # tie loses
    assert view.node("/f").size == 1
    assert view.upsert(src, "/f", 6_000.0, size=4).applied == 1  # newer wins
    assert view.node("/f").size == 4
    assert view.node("/f").modified_time == 6_000.0


@pytest.mark.parametrize("src", COMPENSATION)
def test_compensation_keeps_the_realtime_confirmation_time(view, wall, src):
    view.upsert("realtime", "/f", 5_000.0)
    first = wall.t
    wall.advance(100)
    view.upsert(src, "/f", 6_000.0)
    assert view.node("/f").last_updated_at == first
    view.upsert(src, "/new", 6_000.0)
    assert view.node("/new").last_updated_at == 0.0


def test_known_by_agent_per_source(view, wall):
    old = wall.t - 1000
    view.upsert("snapshot", "/s", old)
    view.upsert("audit", "/a", old)
    view.upsert("on_demand_job", "/o", old)
    assert view.node("/s").known_by_agent
    assert not view.node("/a").known_by_agent
    assert not view.node("/o").known_by_agent
    assert view.blind("additions") == {"/a", "/o"}
    # a newer audit row un-confirms a realtime file; a newer snapshot confirms it again
    view.upsert("realtime", "/r", old)
    view.upsert("audit", "/r", old + 1)
    assert not view.node("/r").known_by_agent and "/r" in view.blind("additions")
    view.upsert("snapshot", "/r", old + 2)
    assert view.node("/r").known_by_agent and "/r" not in view.blind("additions")


# -- deletes and tombstones --------------------------------------------------------------
def test_realtime_delete_removes_and_tombstones(view, wall):
    view.upsert("realtime", "/f", wall.t - 100)  # skew 100 -> watermark = wall - 100
    wall.advance(10)
    res = view.delete("realtime", "/f")
    assert res.applied == 1
    assert not view.exists("/f")
    assert view.tombstone("/f") == (wall.t - 100, wall.t)
    # the old snapshot row re-sent afterwards stays dead
    assert view.upsert("snapshot", "/f", wall.t - 200).ignored == 1
    assert not view.exists("/f")
    view.check()


def test_realtime_delete_of_an_unknown_path_still_tombstones(view, wall):
    view.delete("realtime", "/ghost")
    assert view.tombstone("/ghost") == (wall.t, wall.t)
    assert view.upsert("audit", "/ghost", wall.t - 5).ignored == 1
    assert not view.exists("/ghost")


def test_tombstone_blocks_older_and_reincarnates_on_newer(view, wall):
    wall.t = 2_000.0  # no samples: watermark = wall
    view.upsert("snapshot", "/f", 1_000.0)
    view.delete("realtime", "/f")
    assert view.tombstone("/f")[0] == 2_000.0
    wall.t = 3_000.0
    assert view.upsert("snapshot", "/f", 1_500.0).ignored == 1
    assert view.tombstone("/f") is not None and not view.exists("/f")
    assert view.upsert("snapshot", "/f", 2_500.0).applied == 1
    assert view.tombstone("/f") is None
    assert view.node("/f").modified_time == 2_500.0


def test_tombstone_margin_and_realtime_recreate_lifts_it(view, wall):
    wall.t = 2_000.0
    view.delete("realtime", "/f")
    # within the margin a stat-walk row is still a zombie ...
    assert view.upsert("audit", "/f", 2_000.0 + 5e-6).ignored == 1
    assert not view.exists("/f")
    # ... but a realtime re-create (rm f; touch f) comes after the delete by construction:
    # it is applied even with an mtime at the deletion watermark, and lifts the tombstone
    assert view.upsert("realtime", "/f", 2_000.0).applied == 1
    assert view.exists("/f") and view.tombstone("/f") is None
    view.delete("realtime", "/f")
    assert view.upsert("snapshot", "/f", 1_000.0).ignored == 1
    assert view.upsert("realtime", "/f", 2_000.0 + 2e-5).applied == 1
    assert view.exists("/f") and view.tombstone("/f") is None


def test_realtime_delete_of_a_directory_takes_its_subtree(view, wall):
    t = wall.t - 5
    view.upsert("realtime", "/d", t, is_dir=True)
    view.upsert("realtime", "/d/hot", t, size=1, is_atomic_write=False)
    view.upsert("audit", "/d/sub/blind", t + 1)
    assert view.suspects() == {"/d/hot", "/d/sub/blind"}
    assert view.blind("additions") == {"/d/sub/blind"}
    view.delete("realtime", "/d")
    assert view.paths() == {"/"}
    assert view.suspects() == set() and view.blind("additions") == set()
    assert view.tombstones() == {"/d"}  # descendants get no tombstone
    view.check()


@pytest.mark.parametrize("src", COMPENSATION)
def test_compensation_delete_rows(view, wall, src):
    view.upsert("realtime", "/f", 5_000.0)
    assert view.delete(src, "/f", 4_000.0).ignored == 1  # the tree is newer
    assert view.exists("/f")
    assert view.delete(src, "/f", 5_000.0).applied == 1  # ties delete
    assert not view.exists("/f")
    assert view.blind("deletions") == {"/f"}
    assert view.tombstone("/f") is None  # only realtime deletes tombstone
    view.upsert("audit", "/g", 5_000.0)
    view.delete(src, "/g")  # no mtime: deletes
    assert not view.exists("/g") and "/g" not in view.blind("additions")
    # a tombstoned path is left alone
    view.delete("realtime", "/h")
    assert view.delete(src, "/h").ignored == 1
    assert "/h" not in view.blind("deletions")


def test_deleting_the_root_is_ignored(view, wall):
    view.upsert("realtime", "/f", wall.t)
    for src in ["realtime", "snapshot"]:
        assert view.delete(src, "/").ignored == 1
    assert view.paths() == {"/", "/f"}
    assert view.tombstones() == set() and view.blind("deletions") == set()


def test_snapshot_does_not_clear_blind_deletions(view, wall):
    view.upsert("audit", "/f", 5_000.0)
    view.delete("audit", "/f")
    view.upsert("snapshot", "/f", 6_000.0)
    assert "/f" in view.blind("deletions")  # quirk 5
    view.upsert("audit", "/f", 6_000.0)  # seen again by audit (even if stale)
    assert "/f" not in view.blind("deletions")
    view.delete("on_demand_job", "/f")
    view.upsert("realtime", "/f", 7_000.0)
    assert view.blind("deletions") == set()


# -- silent directories and Rule 3 ----------------------------------------------------------
def test_audit_skipped_rows_bypass_the_mtime_guard(view, wall):
    view.upsert("snapshot", "/d", 5_000.0, size=4096, is_dir=True)
    res = view.upsert("audit", "/d", 4_000.0, size=4096, is_dir=True, audit_skipped=True)
    assert res.applied == 1
    n = view.node("/d")
    assert n.modified_time == 4_000.0 and n.audit_skipped  # quirk 3
    # an unchanged silent row keeps the flags; an accepted normal row clears the flag
    view.upsert("audit", "/d", 4_000.0, is_dir=True, audit_skipped=True)
    assert view.node("/d").audit_skipped
    view.upsert("audit", "/d", 4_500.0, is_dir=True)
    assert not view.node("/d").audit_skipped
    view.check()


def test_rule3_parent_newer_than_the_scan_discards_unknown_files(view, wall):
    view.upsert("realtime", "/d", 5_000.0, is_dir=True)
    row = {"path": "/d/late", "modified_time": 4_000.0, "parent_path": "/d"}
    assert view.event("audit", "update", [{**row, "parent_mtime": 4_999.0}]).ignored == 1
    assert not view.exists("/d/late")
    assert view.event("audit", "update", [{**row, "parent_mtime": 5_000.0}]).applied == 1
    assert view.exists("/d/late")


def test_rule3_uses_parent_path_verbatim(view, wall):
    view.upsert("realtime", "/d", 5_000.0, is_dir=True)
    base = {"modified_time": 4_000.0, "parent_mtime": 1.0}
    rows = [
        {**base, "path": "/d/a", "parent_path": "/srv/nfs/d"},  # 0.8.17: agent-side path
        {**base, "path": "/d/b", "parent_path": "/d/"},  # not canonical: no match
        {**base, "path": "/d/c"},  # no parent_path
        {**base, "path": "/d/e", "parent_path": "/d"},  # HEAD: view path, parent newer
    ]
    res = view.event("audit", "update", rows)
    assert (res.applied, res.ignored) == (3, 1)
    assert view.paths() == {"/", "/d", "/d/a", "/d/b", "/d/c"}


def test_rule3_only_for_new_audit_paths(view, wall):
    view.upsert("realtime", "/d", 5_000.0, is_dir=True)
    view.upsert("snapshot", "/d/f", 3_000.0)
    row = {"path": "/d/f", "modified_time": 4_000.0, "parent_path": "/d", "parent_mtime": 1.0}
    assert view.event("audit", "update", [row]).applied == 1
    row2 = {**row, "path": "/d/g"}
    assert view.event("snapshot", "update", [row2]).applied == 1


# -- row validation ----------------------------------------------------------------------
def test_invalid_rows_are_rejected_alone(view, wall):
    t = wall.t
    rows = [
        {"path": "/ok1", "modified_time": t},
        {"path": "/a/../etc", "modified_time": t},
        {"path": "/nul\0x", "modified_time": t},
        {"path": "/" + "n" * 256, "modified_time": t},
        {"modified_time": t},
        {"path": "/nan", "modified_time": float("nan")},
        {"path": "/bad-size", "modified_time": t, "size": -1},
        {"path": "/bad-type", "modified_time": "yesterday"},
        {"path": "/", "modified_time": t, "is_directory": False},
        "not a row",
        {"path": "/ok2", "modified_time": t},
    ]
    res = view.event("realtime", "update", rows)
    assert res.applied == 2
    assert [r["index"] for r in res.rejected] == list(range(1, 10))
    assert res.rejected[0]["path"] == "/a/../etc" and ".." in res.rejected[0]["reason"]
    assert "NUL" in res.rejected[1]["reason"]
    assert "255" in res.rejected[2]["reason"]
    assert res.rejected[3]["reason"] == "row has no path"
    assert view.paths() == {"/", "/ok1", "/ok2"}
    assert view.st.clock.dump() == [0, 0]  # rejected rows do not sample


def test_empty_and_unknown_events(view, wall):
    res = view.event("realtime", "update", [])
    assert not res.processed and res.applied == 0
    res = view.event("mystery", "update", [{"path": "/x", "modified_time": wall.t}])
    assert res.processed and res.applied == 0 and "message_source" in res.rejected[0]["reason"]
    res = view.event("realtime", "rename", [{"path": "/x"}])
    assert "event_type" in res.rejected[0]["reason"]
    assert view.paths() == {"/"}


def test_wire_aliases_and_path_normalisation(view, wall):
    t = wall.t
    rows = [
        {"file_path": "/legacy", "modified_time": t},
        {"path": "", "file_path": "/legacy2", "modified_time": t},
        {"path": "//a///b/", "modified_time": t, "is_dir": True},
        {"path": "c/./d", "modified_time": t},
    ]
    assert view.event("realtime", "insert", rows).applied == 4
    assert view.paths() == {"/", "/legacy", "/legacy2", "/a", "/a/b", "/c", "/c/d"}
    assert view.node("/a/b").is_dir
    n = view.node("/legacy")
    assert (n.size, n.created_time) == (0, 0.0)  # defaults


def test_missing_mtime_stores_zero_and_does_not_sample(view, wall):
    view.event("realtime", "update", [{"path": "/f", "size": 3}])
    assert view.node("/f").modified_time == 0.0
    assert view.st.clock.dump() == []


# -- clock feeding and latency --------------------------------------------------------------
def test_only_realtime_rows_sample_the_clock(view, wall):
    for src in COMPENSATION:
        view.upsert(src, f"/{src}", wall.t - 5_000)
    assert view.st.clock.skew() is None
    assert view.st.clock.watermark() == wall.t
    view.upsert("realtime", "/r", wall.t - 3)
    assert view.st.clock.skew() == 3
    view.delete("realtime", "/r")
    assert view.st.clock.dump() == [3]


def test_latency_of_the_last_row(view, wall):
    view.upsert("snapshot", "/old", wall.t - 2.5)
    assert view.st.last_event_latency_ms == pytest.approx(2_500.0)
    assert view.st.last_event_at == wall.t
    view.upsert("snapshot", "/future", wall.t + 10)
    assert view.st.last_event_latency_ms == 0.0
    view.delete("realtime", "/old")
    assert view.st.last_event_latency_ms == 0.0


# -- tree rules ----------------------------------------------------------------------------
def test_missing_parents_are_created_unconfirmed_and_not_blind(view, wall):
    view.upsert("audit", "/a/b/c/d/file", wall.t - 100)
    for p in ["/a", "/a/b", "/a/b/c", "/a/b/c/d"]:
        n = view.node(p)
        assert n.is_dir and n.modified_time == 0.0 and n.size == 0
        assert not n.known_by_agent and n.last_updated_at == 0.0
    assert view.blind("additions") == {"/a/b/c/d/file"}
    view.upsert("realtime", "/a/b/x", wall.t)  # existing parents reused
    view.upsert("realtime", "/a/b/y", wall.t)
    assert {p for p in view.paths() if p.startswith("/a/b/")} == {
        "/a/b/c", "/a/b/c/d", "/a/b/c/d/file", "/a/b/x", "/a/b/y"}
    view.check()


def test_type_switches_replace_the_old_node(view, wall):
    t = wall.t
    view.upsert("realtime", "/x", t, size=5)
    view.upsert("realtime", "/x", t + 1, is_dir=True)
    view.upsert("realtime", "/x/inner", t + 1, size=7)
    assert view.node("/x").is_dir
    view.upsert("realtime", "/x", t + 2, size=9)  # dir -> file drops the subtree
    assert view.paths() == {"/", "/x"}
    assert not view.node("/x").is_dir and view.node("/x").size == 9
    view.upsert("audit", "/x", t + 3, is_dir=True)  # compensation switch
    assert view.node("/x").is_dir and not view.node("/x").known_by_agent
    view.check()


def test_max_nodes_caps_creation_but_not_updates(make_view, wall):
    view = make_view(max_nodes=4)
    t = wall.t
    assert view.upsert("realtime", "/a/b/c", t).applied == 1  # root + 3 = 4
    res = view.event("snapshot", "update", [
        {"path": "/a/b/d", "modified_time": t},  # would be the 5th node
        {"path": "/z/y", "modified_time": t},  # needs a parent too
        {"path": "/a/b/c", "modified_time": t + 5, "size": 11},  # update still applies
    ])
    assert (res.applied, res.ignored) == (1, 2)
    assert view.paths() == {"/", "/a", "/a/b", "/a/b/c"}
    assert view.node("/a/b/c").size == 11
    view.delete("realtime", "/a/b/c")
    assert view.upsert("realtime", "/a/b/e", t + 6).applied == 1  # room again
    assert view.upsert("realtime", "/q/r", t + 7).ignored == 1  # parent + file: 6 > 4
    assert view.paths() == {"/", "/a", "/a/b", "/a/b/e"}
    view.check()


def test_max_nodes_counts_rows_of_one_event(make_view, wall):
    view = make_view(max_nodes=10)
    rows = [{"path": f"/d{i}/f", "modified_time": wall.t} for i in range(10)]
    res = view.event("snapshot", "update", rows)
    assert res.applied == 4  # 1 root + 4 × (dir + file) = 9; the 5th pair would be 11
    with view.store.read() as r:
        s = r.stats(b"/")
        assert s.file_count + s.dir_count == 9


# -- persistence ---------------------------------------------------------------------------
def test_state_survives_a_restart(view, wall):
    t = wall.t
    view.upsert("realtime", "/keep", t - 2, size=5)
    view.upsert("realtime", "/hot", t - 2, is_atomic_write=False)
    view.delete("realtime", "/gone")
    view.upsert("audit", "/blind", t - 500)
    view.delete("snapshot", "/lost")
    before = (view.paths(), view.tombstones(), view.suspects(), view.blind("additions"),
              view.blind("deletions"), view.st.clock.dump(), view.st.last_audit_start,
              view.st.audit_cycle, view.st.last_event_latency_ms)
    view.run(lambda w, st: st.save(w, force=True))  # a clean shutdown forces the clock out
    view.reopen()
    after = (view.paths(), view.tombstones(), view.suspects(), view.blind("additions"),
             view.blind("deletions"), view.st.clock.dump(), view.st.last_audit_start,
             view.st.audit_cycle, view.st.last_event_latency_ms)
    assert after == before
    assert view.st.clock.skew() == 2 and view.st.last_audit_start == t


def test_clock_samples_are_saved_at_most_once_a_second(view, wall):
    view.upsert("realtime", "/a", wall.t - 1)  # first change after load: saved
    view.upsert("realtime", "/b", wall.t - 1)  # same second: not yet
    with view.store.read() as r:
        assert r.meta("clock_samples") == [1]
    wall.advance(1.0)
    view.upsert("realtime", "/c", wall.t - 1)
    with view.store.read() as r:
        assert r.meta("clock_samples") == [1, 1, 1]


# -- properties ---------------------------------------------------------------------------
class Model:
    """The convergence rules of spec §16, written plainly."""

    def __init__(self, wall):
        self.wall = wall
        self.nodes: dict[str, float] = {}
        self.tombs: dict[str, float] = {}
        self.samples: list[int] = []

    def watermark(self):
        if not self.samples:
            return self.wall.t
        counts = Counter(self.samples)
        best = max(counts.values())
        return self.wall.t - min(k for k, v in counts.items() if v == best)

    def upsert(self, src, path, m):
        if src == "realtime":
            self.samples.append(int(self.wall.t - m))
        ts = self.tombs.get(path)
        if ts is not None:
            if m > ts + rules.TEPS or src == "realtime":  # realtime lifts a tombstone
                del self.tombs[path]
            else:
                return
        if src != "realtime" and path in self.nodes and self.nodes[path] >= m:
            return
        self.nodes[path] = m

    def delete(self, src, path, m):
        if src == "realtime":
            self.nodes.pop(path, None)
            self.tombs[path] = self.watermark()
            return
        if path in self.tombs:
            return
        if path in self.nodes and m is not None and self.nodes[path] > m:
            return
        self.nodes.pop(path, None)


@pytest.mark.parametrize("seed", range(6))
def test_convergence_fuzz(make_view, wall, seed):
    rng = random.Random(seed)
    view = make_view()
    model = Model(wall)
    paths = [f"/f{i}" for i in range(5)]
    for step in range(100):
        wall.advance(rng.choice([0.0, 0.3, 1.0, 2.0]))
        src = rng.choice(["realtime", "realtime", "snapshot", "audit", "on_demand_job"])
        path = rng.choice(paths)
        m = float(round(wall.t - rng.uniform(-5, 40), 1))
        if rng.random() < 0.3:
            dm = None if src == "realtime" or rng.random() < 0.5 else m
            view.delete(src, path, dm)
            model.delete(src, path, dm)
        else:
            view.upsert(src, path, m, size=step)
            model.upsert(src, path, m)
        if step % 10 == 9 or step == 99:
            with view.store.read() as r:
                got = {n.path_str: n.modified_time for _d, n in r.walk(b"/") if n.path != b"/"}
                tombs = {p.decode(): a for p, a, _b in r.iter_tombstones()}
            assert got == model.nodes, step
            assert tombs == pytest.approx(model.tombs), step
    view.check()


@pytest.mark.parametrize("seed", range(4))
def test_resurrection_fuzz(make_view, wall, seed):
    rng = random.Random(seed)
    view = make_view()
    files = [f"/d{i % 3}/f{i}" for i in range(20)]
    for p in files:
        view.upsert("realtime", p, wall.t - rng.randint(1, 3), size=1)
        wall.advance(0.1)
    dead = set(rng.sample(files, 10))
    for p in sorted(dead):
        view.delete("realtime", p)
        wall.advance(rng.uniform(0, 2))
    stones = {p: view.tombstone(p) for p in dead}
    for _ in range(300):
        wall.advance(rng.uniform(0, 1))
        p = rng.choice(sorted(dead))
        ts = stones[p][0]
        m = rng.choice([ts, ts + rules.TEPS / 2, ts - rng.uniform(0, 5000), ts - 1e-9])
        src = rng.choice(COMPENSATION)
        if rng.random() < 0.2:
            view.delete(src, p, m)
        else:
            view.upsert(src, p, m, size=2, is_dir=rng.random() < 0.2,
                        audit_skipped=rng.random() < 0.3)
    for p in dead:
        assert not view.exists(p), p
        assert view.tombstone(p) == stones[p]
        assert p not in view.blind("deletions")
    alive = set(files) - dead
    assert {p for p in view.paths() if "/f" in p} == alive
    # a newer row does bring a path back
    p = min(dead)
    assert view.upsert("snapshot", p, stones[p][0] + 1).applied == 1
    view.check()


def test_numbers_that_cannot_be_stored_are_rejected(view, wall):
    rows = [
        {"path": "/huge-int", "modified_time": 10**400},
        {"path": "/huge-size", "modified_time": wall.t, "size": 2**64},
        {"path": "/bool", "modified_time": True},
        {"path": "/inf", "modified_time": wall.t, "created_time": float("inf")},
        {"path": "/ok", "modified_time": 1_700_000_000, "size": 4096.0},
    ]
    res = view.event("snapshot", "update", rows)
    assert res.applied == 1 and [r["index"] for r in res.rejected] == [0, 1, 2, 3]
    assert view.node("/ok").size == 4096 and view.node("/ok").modified_time == 1.7e9


def test_events_of_one_job_see_each_other(view, wall):
    # The view layer applies several events in one transaction; per-event shortcuts
    # (empty tables) must see what earlier events of the same job wrote.
    def job(w, st):
        t = wall.t
        rules.process_event(w, st, {"event_type": "update", "message_source": "audit",
                                    "rows": [{"path": "/a", "modified_time": t - 100}]})
        rules.process_event(w, st, {"event_type": "delete", "message_source": "realtime",
                                    "rows": [{"path": "/gone"}]})
        rules.process_event(w, st, {"event_type": "delete", "message_source": "snapshot",
                                    "rows": [{"path": "/lost"}]})
        return [
            rules.process_event(w, st, {"event_type": "update", "message_source": "realtime",
                                        "rows": [{"path": "/a", "modified_time": t},
                                                 {"path": "/lost", "modified_time": t}]}),
            rules.process_event(w, st, {"event_type": "update", "message_source": "snapshot",
                                        "rows": [{"path": "/gone", "modified_time": t - 5}]}),
        ]

    rt, snap = view.run(job)
    assert rt.applied == 2 and snap.ignored == 1
    assert view.blind("additions") == set() and view.blind("deletions") == set()
    assert view.paths() == {"/", "/a", "/lost"}
