"""Realtime events of the fs source on real directories, with each backend: our inotify
watch table (Linux) and watchdog's observer (other platforms; selectable here so it stays
tested). Watches are armed by walks: :func:`watch` starts the watcher and arms the tree.

Absence is checked with a marker: events arrive in order, so once the marker's
row is in, everything caused before it has been delivered.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time

import pytest

from tests.agent.conftest import collect, has_update, rows_of

# watchdog 7.1 warns from its own inotify thread when a directory created by
# `mkdir -p` is watched twice by its recursive walk (harmless: the callback is
# replaced by itself). With warnings as errors that warning would kill the thread.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id .* already exists:RuntimeWarning")


@pytest.fixture(params=["inotify", "watchdog"])
def backend(request):
    return request.param


@pytest.fixture
def watched(make_source, backend):
    """``watched(root, **kw)``: a source of that backend, watching, every directory armed."""
    def make(root, **kw):
        src = make_source(root, backend=backend, **kw)
        watch(src)
        return src
    return make


def watch(src):
    src.start_watch()
    src.arm()
    return src


def marker(root, src, name="zz-marker"):
    """Create a marker file and return every event up to and including its close row."""
    (root / name).write_text("m")
    return collect(src, has_update("/" + name, is_atomic_write=True))


def assert_seq_strictly_increasing(events):
    seqs = [e["seq"] for e in events]
    assert all(b > a for a, b in itertools.pairwise(seqs)), seqs


def test_status_before_during_and_after_watching(root, make_source, backend):
    (root / "sub").mkdir()
    src = make_source(root, backend=backend)
    assert src.status == {"backend": backend, "watching": False, "watched_dirs": 0,
                          "unwatched_dirs": 0, "fully_armed": False,
                          "watch_limit_reached": False, "overflowed": False,
                          "last_overflow_at": None, "unreadable": [], "scan_errors": 0,
                          "events_dropped": 0, "events_coalesced": 0, "queued_events": 0,
                          "queued_bytes": 0, "moves_sent": 0, "tree_walks": 0}
    src.start_watch()
    src.start_watch()  # idempotent
    src.arm()
    status = src.status
    assert status["watching"] is True and status["fully_armed"] is True
    assert status["watched_dirs"] == 2 and status["unwatched_dirs"] == 0
    assert status["watch_limit_reached"] is False
    src.stop_watch()
    assert src.status["watching"] is False
    src.stop_watch()


def test_create_then_close(root, watched):
    src = watched(root)
    (root / "new.txt").write_text("hello world")
    events = collect(src, has_update("/new.txt", is_atomic_write=True))
    rows = [r for r in rows_of(events, "update") if r["path"] == "/new.txt"]
    assert rows[0]["is_atomic_write"] is False  # reported at creation: a writer may hold it
    assert rows[-1]["is_atomic_write"] is True and rows[-1]["size"] == 11
    assert set(rows[-1]) == {"path", "file_name", "size", "modified_time", "created_time",
                             "is_directory", "is_atomic_write"}
    assert rows[-1]["file_name"] == "new.txt" and rows[-1]["is_directory"] is False
    assert_seq_strictly_increasing(events)


def test_partial_write_is_throttled_and_close_always_reports(root, watched):
    target = root / "growing.bin"
    target.write_bytes(b"")
    src = watched(root, throttle_interval_sec=60)
    with open(target, "ab") as f:
        f.write(b"a" * 100)
        f.flush()
        events = collect(src, has_update("/growing.bin", is_atomic_write=False))
        partial = [r for r in rows_of(events) if r["path"] == "/growing.bin"]
        assert partial[-1]["size"] == 100
        for _ in range(5):  # more writes inside the throttle window: no more partial rows
            f.write(b"b" * 10)
            f.flush()
    events += collect(src, has_update("/growing.bin", is_atomic_write=True))
    rows = [r for r in rows_of(events) if r["path"] == "/growing.bin"]
    assert [r["is_atomic_write"] for r in rows] == [False, True]
    assert rows[-1]["size"] == 150
    # The close reset the throttle: the next partial write is reported at once.
    with open(target, "ab") as f:
        f.write(b"c")
        f.flush()
        collect(src, has_update("/growing.bin", is_atomic_write=False, size=151))


def test_delete_file_and_directory(root, watched):
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_text("x")
    (root / "gone.txt").write_text("x")
    src = watched(root)
    (root / "gone.txt").unlink()
    shutil.rmtree(root / "d")
    events = collect(src, lambda ev: {"/gone.txt", "/d"} <= {
        r["path"] for r in rows_of(ev, "delete")})
    deletes = [r for r in rows_of(events, "delete")]
    assert all(set(r) == {"path"} for r in deletes)
    order = [r["path"] for r in deletes]
    # the file's own delete may be folded into the directory's (one row deletes the subtree)
    assert "/d/f.txt" not in order or order.index("/d/f.txt") < order.index("/d")


def test_rename_file(root, watched):
    (root / "old.txt").write_text("content")
    src = watched(root)
    os.rename(root / "old.txt", root / "new.txt")
    events = collect(src, has_update("/new.txt"))
    assert [(e["event_type"], e["rows"][0]["path"]) for e in events][:2] == [
        ("delete", "/old.txt"), ("update", "/new.txt")]
    assert events[1]["rows"][0]["size"] == 7
    assert "is_atomic_write" not in events[1]["rows"][0]


def test_rename_directory_with_content(root, watched):
    (root / "a" / "sub").mkdir(parents=True)
    (root / "a" / "f.txt").write_text("1")
    (root / "a" / "sub" / "g.txt").write_text("2")
    src = watched(root)
    os.rename(root / "a", root / "b")
    wanted = {"/b", "/b/f.txt", "/b/sub", "/b/sub/g.txt"}
    events = collect(src, lambda ev: wanted <= {r["path"] for r in rows_of(ev, "update")})
    assert events[0]["event_type"] == "delete" and events[0]["rows"][0]["path"] == "/a"
    updates = [r["path"] for r in rows_of(events, "update")]
    assert updates.index("/b") < updates.index("/b/sub") < updates.index("/b/sub/g.txt")
    # The renamed tree stays watched.
    (root / "b" / "sub" / "h.txt").write_text("3")
    collect(src, has_update("/b/sub/h.txt", is_atomic_write=True))


def test_mkdir_p_with_files_created_immediately(root, watched):
    src = watched(root)
    os.makedirs(root / "x" / "y" / "z")
    (root / "x" / "y" / "z" / "deep.txt").write_text("deep")
    (root / "x" / "top.txt").write_text("top")
    (root / "x" / "y" / "w").mkdir()
    (root / "x" / "y" / "w" / "late.txt").write_text("late")
    wanted = {"/x", "/x/y", "/x/y/z", "/x/y/z/deep.txt", "/x/top.txt", "/x/y/w",
              "/x/y/w/late.txt"}
    events = collect(src, lambda ev: wanted <= {r["path"] for r in rows_of(ev, "update")})
    events += marker(root, src)
    final = {}
    for r in rows_of(events, "update"):
        final[r["path"]] = r
    assert final["/x/y/z/deep.txt"]["size"] == 4 and final["/x/y/w/late.txt"]["size"] == 4
    assert final["/x/y/z"]["is_directory"] is True
    assert_seq_strictly_increasing(events)


def test_tree_moved_in_from_outside(tmp_path, root, watched):
    outside = tmp_path / "outside" / "tree"
    (outside / "sub" / "subsub").mkdir(parents=True)
    (outside / "a.txt").write_text("a")
    (outside / "sub" / "b.txt").write_text("bb")
    (outside / "sub" / "subsub" / "c.txt").write_text("ccc")
    src = watched(root)
    os.rename(outside, root / "tree")
    wanted = {"/tree", "/tree/a.txt", "/tree/sub", "/tree/sub/b.txt", "/tree/sub/subsub",
              "/tree/sub/subsub/c.txt"}
    events = collect(src, lambda ev: wanted <= {r["path"] for r in rows_of(ev, "update")})
    assert not rows_of(events, "delete")
    # The moved-in subtree is watched too.
    (root / "tree" / "sub" / "subsub" / "d.txt").write_text("d")
    collect(src, has_update("/tree/sub/subsub/d.txt", is_atomic_write=True))


def test_moving_out_of_the_root_is_a_delete(tmp_path, root, watched):
    (root / "leaving.txt").write_text("x")
    src = watched(root)
    os.rename(root / "leaving.txt", tmp_path / "left.txt")
    events = collect(src, lambda ev: "/leaving.txt" in {r["path"] for r in rows_of(ev, "delete")})
    assert not rows_of(events, "update")


def test_burst_of_2000_files_all_delivered_in_order(root, watched):
    burst = root / "burst"
    burst.mkdir()
    src = watched(root)
    names = [f"/burst/f{i:04d}" for i in range(2000)]
    for i in range(2000):
        with open(burst / f"f{i:04d}", "w") as f:
            f.write("x" * (i % 7))

    def all_closed(ev):
        return len({r["path"] for r in rows_of(ev, "update") if r.get("is_atomic_write")}) >= 2000

    events = collect(src, all_closed, timeout=20)
    assert_seq_strictly_increasing(events)
    assert len({e["seq"] for e in events}) == len(events)
    closed = [r["path"] for r in rows_of(events, "update") if r.get("is_atomic_write")]
    assert closed == names  # each file closed once, in creation order, none lost
    # Exactly two events per file: at creation (partial) and at close; no throttled extras.
    assert len(events) == 4000
    first_seen = list(dict.fromkeys(r["path"] for r in rows_of(events) if r["path"] in set(names)))
    assert first_seen == names
    assert src.status["overflowed"] is False and src.status["events_dropped"] == 0


def test_overflow_sets_the_flag_instead_of_blocking(root, watched):
    src = watched(root, max_pending_events=5)
    for i in range(10):  # two events each (created, closed): 20 events for 5 places
        (root / f"f{i}.txt").write_text("x")
    # Nothing is drained meanwhile: wait until the watcher has handled all 20.
    end = time.monotonic() + 10
    while src.status["events_dropped"] < 15 and time.monotonic() < end:
        time.sleep(0.01)
    status = src.status
    assert status["overflowed"] is True and status["events_dropped"] == 15
    kept = src.drain(max_events=100, timeout=0)
    assert [e["seq"] for e in kept] == [1, 2, 3, 4, 5]
    src.clear_overflow()
    assert src.status["overflowed"] is False
    # After the repair the source keeps delivering.
    (root / "after.txt").write_text("y")
    collect(src, has_update("/after.txt", is_atomic_write=True))


def test_file_pattern_applies_to_realtime(root, watched):
    src = watched(root, file_pattern="*.txt")
    (root / "skip.log").write_text("x")
    (root / "dir.log").mkdir()
    (root / "dir.log" / "in.txt").write_text("x")
    (root / "skip.log").unlink()
    events = marker(root, src, "zz-marker.txt")
    paths = {r["path"] for r in rows_of(events)}
    assert "/skip.log" not in paths
    assert {"/dir.log", "/dir.log/in.txt"} <= paths


def test_watch_failure_is_reported_not_raised(tmp_path, make_source, backend):
    root = tmp_path / "vanishing"
    root.mkdir()
    src = make_source(root, backend=backend)
    root.rmdir()
    src.start_watch()
    status = src.status
    assert status["watching"] is False
    assert status["watch_limit_reached"] is True
    src.stop_watch()


def test_kernel_queue_overflow_reported_by_watchdog_sets_overflowed(root, make_source):
    """Watchdog only logs an inotify queue overflow; the source must turn it into the flag."""
    src = watch(make_source(root, backend="watchdog"))
    assert src.status["overflowed"] is False
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost")
    assert src.status["overflowed"] is True
    assert src.take_lost() == "all"  # where is unknown: the repair audits the whole tree


def test_root_deleted_stops_watching_without_raising(tmp_path, watched):
    root = tmp_path / "r"
    root.mkdir()
    src = watched(root)
    root.rmdir()
    collect(src, lambda _: not src.status["watching"])
