"""Suspects, sentinel feedback, tombstone purge, audit cycles and session hooks
(spec/consistency.md §7-§10)."""

from __future__ import annotations

import pytest

from fustor.fusion import arbitration as rules
from fustor.fusion.suspects import MISSING

pytest_plugins = ["tests.fusion.harness"]  # fixtures: wall, view, make_view

T = 30.0


def dir_row(path, mtime, **extra):
    return {"path": path, "modified_time": mtime, "is_directory": True, "size": 4096, **extra}


def file_row(path, mtime, size=1, **extra):
    return {"path": path, "modified_time": mtime, "size": size, **extra}


# -- atomic writes and suspects -----------------------------------------------------------
def test_partial_write_is_suspect_until_close_write(view, wall):
    t = wall.t
    view.upsert("realtime", "/big", t, size=100, is_atomic_write=False)
    n = view.node("/big")
    assert n.integrity_suspect and n.known_by_agent
    assert view.suspect("/big") == (t + T, t)
    wall.advance(2)
    view.upsert("realtime", "/big", t + 2, size=500, is_atomic_write=True)
    assert not view.node("/big").integrity_suspect
    assert view.suspects() == set()
    view.check()


def test_successive_partial_writes_keep_the_flag_and_renew(view, wall):
    t = wall.t
    for i, size in enumerate([100, 5_000, 32_000]):
        wall.t = t + 5 * i
        view.upsert("realtime", "/big", wall.t, size=size, is_atomic_write=False)
        n = view.node("/big")
        assert n.integrity_suspect and n.size == size
        assert view.suspect("/big") == (wall.t + T, wall.t)
    with view.store.read() as r:
        assert r.stats(b"/").total_size == 32_000
    view.check()


@pytest.mark.parametrize("src", ["snapshot", "audit", "on_demand_job"])
def test_compensation_rows_are_suspect_by_age(view, wall, src):
    t = wall.t  # no realtime samples: watermark = wall
    view.upsert(src, "/cold", t - 1000)
    view.upsert(src, "/hot", t - 1)
    view.upsert(src, "/edge", t - T)  # age exactly T is cold
    view.upsert(src, "/nearly", t - T + 0.5)
    assert not view.node("/cold").integrity_suspect
    assert not view.node("/edge").integrity_suspect
    assert view.node("/hot").integrity_suspect
    assert view.suspect("/hot") == (t + T - 1, t - 1)  # lives for what is left of T
    assert view.suspect("/nearly") == (t + 0.5, t - T + 0.5)
    assert view.suspects() == {"/hot", "/nearly"}
    view.check()


def test_audit_hot_file_is_suspect_and_blind_until_realtime_confirms(make_view, wall):
    view = make_view(hot_file_threshold=60.0)
    view.upsert("audit", "/f", wall.t - 50)  # age 50 < 60
    assert view.node("/f").integrity_suspect and "/f" in view.blind("additions")
    assert not view.node("/f").known_by_agent
    view.upsert("realtime", "/f", wall.t)
    n = view.node("/f")
    assert not n.integrity_suspect and n.known_by_agent
    assert view.suspects() == set() and view.blind("additions") == set()


def test_cold_compensation_change_clears_a_suspect(view, wall):
    view.upsert("audit", "/f", wall.t - 1)
    wall.advance(100)
    view.upsert("audit", "/f", wall.t - 50)  # newer, but cold by now
    assert not view.node("/f").integrity_suspect and view.suspects() == set()


def test_future_mtime_is_suspect_with_life_capped_at_threshold(view, wall):
    wall.t = 10_000.0
    view.upsert("audit", "/future", 10_060.0)
    assert view.suspect("/future") == (10_000.0 + T, 10_060.0)
    wall.t = 10_070.0
    assert view.sentinel("/future", 10_060.0) is False  # age 10: stays listed
    assert view.suspects() == {"/future"}
    wall.t = 10_100.0
    assert view.sentinel("/future", 10_060.0) is True  # age 40 >= 30: cleared
    assert view.suspects() == set() and not view.node("/future").integrity_suspect


def test_repeating_a_hot_audit_row_does_not_extend_the_expiry(view, wall):
    view.upsert("audit", "/f", wall.t - 5)
    first = view.suspect("/f")
    wall.advance(10)
    view.upsert("audit", "/f", wall.t - 15)  # identical row (ignored, tie)
    assert view.suspect("/f") == first
    view.upsert("audit", "/f", wall.t - 2)  # newer and hot: applied, entry kept
    assert view.suspect("/f") == first
    assert view.node("/f").modified_time == wall.t - 2


def test_sweep_clears_stable_and_renews_changing_entries(view, wall):
    t = wall.t
    view.upsert("audit", "/stable", t - 5)  # expires t + 25
    view.upsert("audit", "/moving", t - 5)
    wall.t = t + 10
    view.upsert("audit", "/moving", t + 8)  # mtime moved; entry not renewed
    wall.t = t + 24
    assert view.sweep() == 0  # nothing due yet
    wall.t = t + 25
    assert view.sweep() == 1
    assert view.suspects() == {"/moving"}
    assert not view.node("/stable").integrity_suspect
    assert view.suspect("/moving") == (t + 25 + T, t + 8)  # renewed with the new mtime
    wall.t = t + 25 + T
    assert view.sweep() == 1
    assert view.suspects() == set()
    view.check()


def test_a_sweep_job_stops_at_its_time_budget_and_the_next_goes_on(view, wall):
    """A sweep job holds the single writer for a bounded time, even on a host so loaded
    that its chunk of entries would take long: out of time, it stops and says "more"."""
    rows = [file_row(f"/f{i:04d}", wall.t - 5) for i in range(300)]
    view.event("audit", "update", rows)
    wall.advance(T)
    cleared, more = view.run(rules.sweep_chunk, 1000, 0.0)  # no time at all: a minimum step
    assert more and 0 < cleared < 300
    jobs = 1
    while more and jobs < 300:
        n, more = view.run(rules.sweep_chunk, 1000, 0.0)
        cleared += n
        jobs += 1
    assert cleared == 300 and not more and view.suspects() == set()
    view.check()


def test_suspect_expiry_survives_a_restart(view, wall):
    view.upsert("realtime", "/w", wall.t, is_atomic_write=False)
    view.reopen()
    assert view.suspects() == {"/w"}
    wall.advance(T)
    assert view.sweep() == 1
    assert view.suspects() == set()


# -- sentinel feedback ----------------------------------------------------------------------
def test_sentinel_stable_but_hot_waits_for_the_sweep(view, wall):
    view.upsert("audit", "/f", wall.t - 1, size=10)
    entry = view.suspect("/f")
    assert view.sentinel("/f", wall.t - 1, size=10) is False
    assert view.suspect("/f") == entry
    wall.advance(T)
    assert view.sweep() == 1
    assert not view.node("/f").integrity_suspect


def test_sentinel_reporting_a_change_adopts_it_and_renews(view, wall):
    view.upsert("audit", "/f", wall.t - 1, size=10)
    wall.advance(20)
    assert view.sentinel("/f", wall.t - 2, size=99) is True
    n = view.node("/f")
    assert (n.modified_time, n.size, n.integrity_suspect) == (wall.t - 2, 99, True)
    assert view.suspect("/f") == (wall.t + T, wall.t - 2)
    view.check()  # aggregates follow the adopted size
    wall.advance(1)
    assert view.sentinel("/f", wall.t - 1) is True  # mtime moved again, no size
    assert view.node("/f").size == 99


def test_sentinel_ignores_non_suspects_and_unknown_paths(view, wall):
    view.upsert("realtime", "/f", wall.t - 100)
    assert view.sentinel("/f", 1.0, size=5) is False
    assert view.node("/f").modified_time == wall.t - 100
    assert view.sentinel("/nope", 1.0) is False
    assert view.sentinel("/a/../b", 1.0) is False


def test_sentinel_accounts_for_clock_skew(view, wall):
    m = wall.t - 100
    view.upsert("realtime", "/f", m, is_atomic_write=False)  # skew 100, watermark = m
    assert view.sentinel("/f", m - 100) is False  # skew-stable: same file, still hot
    assert view.node("/f").modified_time == m
    wall.advance(40)
    assert view.sentinel("/f", m - 100) is True  # stable and cold now
    assert view.suspects() == set()


def test_sentinel_missing_keeps_the_node_then_deletes_on_confirmation(view, wall):
    view.upsert("audit", "/d/tmp", wall.t - 1, size=7)
    wall.advance(10)
    assert view.sentinel("/d/tmp", 0.0, status="missing") is True
    n = view.node("/d/tmp")
    assert (n.modified_time, n.size, n.integrity_suspect) == (wall.t - 11, 7, True)
    assert view.suspect("/d/tmp") == (wall.t + T, MISSING)
    wall.advance(T)
    assert view.sweep() == 0  # still awaiting the next report: kept listed
    assert view.suspects() == {"/d/tmp"}
    assert view.sentinel("/d/tmp", 0.0, status="missing") is True
    assert not view.exists("/d/tmp")
    assert view.blind("deletions") == {"/d/tmp"} and view.suspects() == set()
    view.check()


def test_sentinel_missing_then_seen_again_starts_over(view, wall):
    view.upsert("audit", "/f", wall.t - 1)
    view.sentinel("/f", 0.0, status="missing")
    assert view.sentinel("/f", wall.t - 1) is True  # exists again (stable, hot)
    assert view.suspect("/f")[1] == wall.t - 1
    assert view.sentinel("/f", 0.0, status="missing") is True  # first strike again
    assert view.exists("/f")
    view.upsert("realtime", "/f", wall.t)  # realtime sees it: entry gone
    assert view.sentinel("/f", 0.0, status="missing") is False
    assert view.exists("/f")


# -- tombstone purge ----------------------------------------------------------------------
def _tombstones_at(view, wall, ages, end):
    for name, age in ages.items():
        wall.t = end - age
        view.delete("realtime", name)


def test_audit_end_purges_tombstones_past_the_ttl(make_view, wall):
    view = make_view(tombstone_ttl_seconds=60.0)
    end = 20_000.0
    _tombstones_at(view, wall, {"/t70": 70, "/t60.5": 60.5, "/t59.5": 59.5, "/t50": 50}, end)
    wall.t = end
    view.upsert("audit", "/x", end - 1000)  # opens a cycle
    view.audit_end()
    assert view.tombstones() == {"/t59.5", "/t50"}


def test_default_ttl_is_one_hour(view, wall):
    end = 50_000.0
    _tombstones_at(view, wall, {"/old": 7200, "/young": 60}, end)
    wall.t = 60_000.0  # a stamp from the future (clock stepped back) is kept
    view.delete("realtime", "/future")
    wall.t = end
    view.audit_start()
    view.audit_end()
    assert view.tombstones() == {"/young", "/future"}


def test_audit_end_without_an_open_cycle_does_nothing(view, wall):
    view.delete("realtime", "/x")
    wall.advance(10_000)
    assert view.audit_end() == 0
    assert view.tombstones() == {"/x"}
    assert view.st.audit_cycle_count == 0


# -- audit cycle ---------------------------------------------------------------------------
def _tree(view, wall, src="snapshot"):
    old = wall.t - 1000
    view.event(src, "update", [
        dir_row("/d", old), file_row("/d/a", old), file_row("/d/b", old),
        dir_row("/d/sub", old), file_row("/d/sub/x", old),
        dir_row("/e", old), file_row("/e/y", old),
    ])
    return old


def test_first_audit_row_opens_a_cycle(view, wall):
    assert not view.st.is_auditing
    view.upsert("audit", "/f", wall.t - 100)
    assert view.st.last_audit_start == wall.t and view.st.audit_cycle == 1
    assert view.node("/f").audit_mark == 1
    wall.advance(3)
    view.upsert("audit", "/g", wall.t - 100)
    assert view.st.last_audit_start == wall.t - 3  # one cycle


def test_audit_end_deletes_unseen_children_of_scanned_dirs(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    wall.advance(60)
    assert view.audit_end() == 2
    assert view.paths() == {"/", "/d", "/d/a", "/e", "/e/y"}  # /e was not scanned
    assert view.blind("deletions") == {"/d/b", "/d/sub"}  # not /d/sub/x
    st = view.st
    assert st.last_audit_start is None and st.audit_cycle_count == 1
    assert st.last_audit_finished_at == wall.t
    with view.store.read() as r:
        assert list(r.iter_audit_dirs()) == []
    assert view.audit_end() == 0  # the second end (E7 after in-band) is a no-op
    assert view.st.audit_cycle_count == 1
    view.check()


def test_a_full_unchanged_audit_deletes_nothing(view, wall):
    old = _tree(view, wall)
    rows = [dir_row("/", 0.0), dir_row("/d", old), file_row("/d/a", old), file_row("/d/b", old),
            dir_row("/d/sub", old), file_row("/d/sub/x", old), dir_row("/e", old),
            file_row("/e/y", old)]
    res = view.event("audit", "update", rows)
    assert res.applied == 0  # all stale by the mtime guard, yet all seen
    assert view.audit_end() == 0
    assert len(view.paths()) == 8 and view.blind("deletions") == set()


def test_late_explicit_start_keeps_what_was_seen(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    wall.advance(3)
    view.audit_start()  # late: within 5 s of the auto-start that saw rows
    assert view.st.audit_cycle == 1 and view.st.last_audit_start == wall.t
    view.event("audit", "update", [file_row("/d/b", old)])
    assert view.audit_end() == 1
    assert view.paths() == {"/", "/d", "/d/a", "/d/b", "/e", "/e/y"}


def test_explicit_start_after_five_seconds_starts_over(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    wall.advance(6)
    view.audit_start()
    assert view.st.audit_cycle == 2
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/b", old)])
    assert view.audit_end() == 2
    assert view.blind("deletions") == {"/d/a", "/d/sub"}


def test_stale_evidence_protection(view, wall):
    old = _tree(view, wall)
    view.upsert("realtime", "/d/before", old)  # confirmed before the cycle
    wall.advance(1)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old),
                                   file_row("/d/b", old), dir_row("/d/sub", old),
                                   file_row("/d/sub/x", old)])
    wall.advance(1)
    view.upsert("realtime", "/d/cp-p", old - 5000)  # cp -p after the start: old mtime
    wall.advance(1)
    assert view.audit_end() == 1
    assert view.exists("/d/cp-p") and not view.exists("/d/before")


def test_tombstoned_child_is_left_alone(view, wall):
    old = _tree(view, wall)
    view.delete("realtime", "/d/sub")
    view.upsert("snapshot", "/d/sub/again", old)  # re-creates /d/sub as a parent only
    assert view.exists("/d/sub") and view.tombstone("/d/sub") is not None
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old),
                                   file_row("/d/b", old)])
    assert view.audit_end() == 0
    assert view.exists("/d/sub") and "/d/sub" not in view.blind("deletions")
    assert view.tombstone("/d/sub") is not None


def test_silent_directories_protect_their_children(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old, audit_skipped=True)])
    assert view.audit_end() == 0
    assert view.exists("/d/b") and view.exists("/d/sub/x")


def test_stale_silent_flag_survives_a_dropped_row(view, wall):
    # quirk 4: cycle 1 marks /d silent; in cycle 2 the normal /d row loses the mtime
    # guard, so the flag stays and /d's unseen children escape once more.
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old, audit_skipped=True)])
    view.audit_end()
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    assert view.audit_end() == 0
    assert view.exists("/d/b")


def test_observed_cycle_of_0_8_17(view, wall):
    old = _tree(view, wall)
    view.upsert("realtime", "/d/rt-before", old + 1)  # created before the first audit row
    view.upsert("realtime", "/d/b", old)
    wall.advance(1)
    view.delete("realtime", "/d/b")  # realtime-deleted, audit re-reports the old mtime
    wall.advance(1)
    newer = wall.t - 5
    view.event("audit", "update", [
        dir_row("/d", newer), file_row("/d/a", old), file_row("/d/b", old),
        file_row("/d/new", old + 2), dir_row("/d/sub", old), file_row("/d/sub/x", old),
    ])
    wall.advance(1)
    view.audit_end()
    assert not view.exists("/d/rt-before") and "/d/rt-before" in view.blind("deletions")
    assert not view.exists("/d/b") and "/d/b" not in view.blind("deletions")
    assert view.blind("additions") == {"/d", "/d/new"}
    assert view.node("/d").integrity_suspect  # re-reported dir with a fresh mtime
    view.check()


def test_audit_rows_remove_blind_deletions_and_add_blind_additions(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    view.audit_end()
    assert view.blind("deletions") == {"/d/b", "/d/sub"}
    view.event("audit", "update", [file_row("/d/b", old)])  # it came back
    assert view.blind("deletions") == {"/d/sub"}
    assert view.blind("additions") == {"/d/b"}
    view.audit_end()


def test_an_open_cycle_survives_a_restart(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    view.reopen()
    assert view.st.is_auditing and view.st.audit_cycle == 1
    view.event("audit", "update", [file_row("/d/b", old)])
    assert view.audit_end() == 1
    assert view.blind("deletions") == {"/d/sub"}
    view.reopen()
    assert view.st.audit_cycle_count == 1 and not view.st.is_auditing


# -- session hooks and reset ---------------------------------------------------------------------
def test_session_start_drops_blind_spots_and_the_open_cycle(view, wall):
    old = _tree(view, wall)
    view.upsert("realtime", "/hot", wall.t, is_atomic_write=False)
    view.delete("realtime", "/gone")
    view.upsert("audit", "/blind", old)
    view.delete("on_demand_job", "/e/y")
    skew = view.st.clock.dump()
    assert view.blind("additions") and view.blind("deletions") and view.st.is_auditing
    view.session_start()
    assert view.blind("additions") == set() and view.blind("deletions") == set()
    assert not view.st.is_auditing
    assert view.suspects() == {"/hot"} and view.tombstones() == {"/gone"}
    assert view.exists("/blind") and view.st.clock.dump() == skew


def test_marks_of_an_abandoned_cycle_do_not_count_later(view, wall):
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])
    view.session_start()
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/b", old),
                                   dir_row("/d/sub", old), file_row("/d/sub/x", old)])
    assert view.st.audit_cycle == 2
    assert view.audit_end() == 1
    assert not view.exists("/d/a")


def test_reset_empties_the_view(view, wall):
    old = _tree(view, wall)
    view.upsert("realtime", "/d/hot", wall.t - 3, is_atomic_write=False)
    view.upsert("audit", "/blind", old)
    view.delete("realtime", "/gone")
    view.delete("snapshot", "/d/a")
    view.upsert("snapshot", "/", 123.0, is_dir=True, size=4096)
    view.reset()
    assert view.paths() == {"/"}
    root = view.node("/")
    assert (root.size, root.modified_time, root.known_by_agent) == (0, 0.0, False)
    assert view.tombstones() == set() and view.suspects() == set()
    assert view.blind("additions") == set() and view.blind("deletions") == set()
    with view.store.read() as r:  # the name index holds nothing, not even stale names
        assert r.search("*", kind=None).nodes == [] and r.count(r.dbs.name_blobs) == 0
    st = view.st
    assert st.clock.dump() == [] and st.clock.watermark() == wall.t
    assert (st.last_audit_start, st.audit_cycle_count, st.last_event_latency_ms) == (None, 0, 0.0)
    view.check()
    view.reopen()
    assert view.paths() == {"/"} and view.st.clock.dump() == []
    assert view.st.last_event_at == 0.0
    view.upsert("realtime", "/a/b", wall.t)
    assert view.paths() == {"/", "/a", "/a/b"}
    with view.store.read() as r:
        assert [n.path for n in r.search("B").nodes] == [b"/a/b"]
    view.check()


def test_a_rolled_back_job_runs_again_with_the_state_it_had(view, wall):
    # The store runs a job again after growing its map; the first attempt's changes
    # to the in-memory state must not count. Abort a job after audit_end to mimic it.
    old = _tree(view, wall)
    view.event("audit", "update", [dir_row("/d", old), file_row("/d/a", old)])

    class Abort(Exception):
        pass

    def first_attempt(w):
        rules.audit_end(w, view.st)
        raise Abort

    with pytest.raises(Abort):
        view.store.write(first_attempt)
    assert not view.st.is_auditing  # memory ran ahead of the store
    assert view.audit_end() == 2  # the retry still finds its cycle open
    assert view.st.audit_cycle_count == 1
    assert view.blind("deletions") == {"/d/b", "/d/sub"}


def _audit_with_gaps(view, wall):
    """Three audited directories of 10 files; the audit missed f3 and f7 of each."""
    for d in ("/a", "/b", "/c"):
        view.upsert("snapshot", d, 1000.0, is_dir=True)
        view.event("snapshot", "update", [{"path": f"{d}/f{i}", "modified_time": 1000.0,
                                           "size": 1} for i in range(10)])
    wall.advance(1)
    for d in ("/a", "/b", "/c"):
        view.upsert("audit", d, 1000.0, is_dir=True)
        view.event("audit", "update", [{"path": f"{d}/f{i}", "modified_time": 1000.0, "size": 1}
                                       for i in range(10) if i not in (3, 7)])


def test_audit_end_in_small_steps_judges_exactly_what_one_job_does(make_view, wall):
    whole, steps = make_view(), make_view()
    _audit_with_gaps(whole, wall)
    _audit_with_gaps(steps, wall)
    assert whole.audit_end() == 6
    cursor, done, missing, jobs = None, False, 0, 0
    while not done:  # 3 children per job: directories are listed across jobs
        n, cursor, done = steps.run(rules.audit_end_step, cursor, 3)
        missing += n
        jobs += 1
        assert jobs < 100
    assert missing == 6 and jobs > 10
    assert steps.paths() == whole.paths() and steps.blind("deletions") == whole.blind("deletions")
    assert steps.st.last_audit_start is None and steps.st.audit_cycle_count == 1
    steps.check()


def test_a_session_start_between_audit_end_steps_stops_the_end(view, wall):
    _audit_with_gaps(view, wall)
    n, cursor, done = view.run(rules.audit_end_step, None, 3)
    assert not done
    view.session_start()  # drops the open cycle
    assert view.run(rules.audit_end_step, cursor, 3) == (0, None, True)
    assert view.st.audit_cycle_count == 0
