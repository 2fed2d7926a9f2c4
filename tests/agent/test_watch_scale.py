"""The realtime side at scale, with the real inotify backend on real directories: watches
armed by the snapshot walk, what a watched directory costs, renames that keep the
kernel's watches, a private watch limit (a user namespace) and a tiny kernel queue,
compact and coalescing queued events, and audits scoped to where events were lost.

Every source is stopped at teardown (the ``make_source`` fixture); every wait has a deadline.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest

from fustor.agent.realtime_queue import ENTRY_OVERHEAD, RealtimeQueue
from tests.agent.conftest import collect, has_update, rows_of


def tree(root: Path, dirs: int, files_per_dir: int = 0, fanout: int = 10) -> list[Path]:
    """``dirs`` directories (``fanout`` per parent, breadth first) with files in each."""
    root.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    parents = [root]
    while len(made) < dirs:
        nxt = []
        for p in parents:
            for _ in range(fanout):
                if len(made) >= dirs:
                    break
                d = p / f"d{len(made):05d}"
                d.mkdir()
                for j in range(files_per_dir):
                    (d / f"f{j}").write_bytes(b"x")
                made.append(d)
                nxt.append(d)
        parents = nxt
    return made


def kernel_watches(src) -> int:
    """Watches the source's inotify instance holds, as the kernel counts them."""
    fd = src._watcher._ino.fileno()
    return Path(f"/proc/self/fdinfo/{fd}").read_text().count("inotify wd:")


def settle(src, root, name="zz-settle"):
    """Every event caused so far has reached the queue (events arrive in order), before
    anything is drained: the coalescing a test looks at happens in the queue, so a drain
    that ran while the reader thread was still behind (a loaded machine) would take events
    out before the ones that absorb them arrive."""
    (root / name).write_text("m")

    def marker_queued():
        return src.queued("/" + name) or src.status["events_dropped"] > 0

    deadline = time.monotonic() + 30
    while not marker_queued():
        assert time.monotonic() < deadline, "the settle marker never reached the queue"
        time.sleep(0.01)
    return collect(src, has_update("/" + name, is_atomic_write=True))


# -- arming --------------------------------------------------------------------------------


def test_first_snapshot_rows_come_before_the_tree_is_armed(root, make_source):
    tree(root, 600, files_per_dir=1)
    src = make_source(root, backend="inotify", batch_rows=10, scan_workers=2)
    src.start_watch()
    assert src.status["watched_dirs"] == 1  # the root only: nothing walked yet
    snap = src.snapshot()
    first = next(snap)
    armed_at_first_rows = src.status["watched_dirs"]
    rest = [r for b in snap for r in b]
    assert len(first) + len(rest) == 1 + 600 * 2
    assert armed_at_first_rows < 100, armed_at_first_rows  # rows flowed while arming went on
    status = src.status
    assert status["watched_dirs"] == 601 == kernel_watches(src)
    assert status["fully_armed"] is True and status["unwatched_dirs"] == 0
    deep = max((p for p in root.rglob("d*") if p.is_dir()), key=lambda p: len(p.parts))
    (deep / "new.txt").write_text("y")  # armed by the snapshot: its events arrive
    collect(src, has_update("/" + str((deep / "new.txt").relative_to(root)), is_atomic_write=True))


def test_a_watched_directory_costs_under_200_bytes(root, make_source):
    tree(root, 20_000)
    src = make_source(root, backend="inotify")
    src.start_watch()
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        src.arm()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert src.status["watched_dirs"] == 20_001
    per_dir = (after - before) / 20_000
    assert per_dir <= 200, f"{per_dir:.0f} bytes per watched directory"


def test_a_renamed_directory_keeps_its_watches_and_reports_new_paths(root, make_source):
    top = root / "top"
    top.mkdir()
    subdirs = tree(top, 300, fanout=3)
    src = make_source(root, backend="inotify")
    src.start_watch()
    src.arm()
    watches = kernel_watches(src)
    assert watches == src.status["watched_dirs"] == 302
    os.rename(top, root / "renamed")
    deepest = max(subdirs, key=lambda p: len(p.parts))
    rel = deepest.relative_to(top)
    (root / "renamed" / rel / "after.txt").write_text("z")  # reported by the tree's walk
    events = collect(src, has_update(f"/renamed/{rel}/after.txt"))
    assert ("delete", "/top") in [(e["event_type"], e["rows"][0]["path"]) for e in events]
    assert not any(e["rows"][0]["path"].startswith("/top/") for e in events)
    updated = {r["path"] for r in rows_of(events, "update")}
    assert {"/renamed", f"/renamed/{rel}"} <= updated  # the new tree, by its walk
    # re-parented, not re-armed: the kernel holds the same watches as before
    assert kernel_watches(src) == watches == src.status["watched_dirs"]


def test_a_directory_moved_out_is_forgotten(tmp_path, root, make_source):
    (root / "leaving" / "sub").mkdir(parents=True)
    src = make_source(root, backend="inotify")
    src.start_watch()
    src.arm()
    outside = tmp_path / "outside"
    os.rename(root / "leaving", outside)
    (outside / "sub" / "written-outside.txt").write_text("x")  # its watch still speaks
    events = settle(src, root)
    paths = {r["path"] for r in rows_of(events)}
    assert "/leaving" in {r["path"] for r in rows_of(events, "delete")}
    assert not any(p.startswith("/leaving/") for p in paths), paths
    # the moved-out directory's watches are given back as they speak up
    deadline = time.monotonic() + 5
    while kernel_watches(src) > 2 and time.monotonic() < deadline:
        (outside / "sub" / "again.txt").write_text("x")
        settle(src, root, "zz-again")
    assert kernel_watches(src) <= 2  # the root and, at most, the detached top


LIMIT_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from fustor.agent.source_fs import FsSource
    Path("/proc/sys/user/max_inotify_watches").write_text(sys.argv[2])
    src = FsSource(sys.argv[1], backend="inotify")
    src.start_watch()
    rows = [r for b in src.snapshot() for r in b]
    st = src.status
    listed = [r for b, _ in src.audit({}, [("/", False)]) for r in b]
    src.stop_watch()
    print(json.dumps({"rows": len(rows), "status": st, "listed": listed}))
""")


def test_watch_limit_in_a_user_namespace(root):
    """A private limit of 40 watches (a user namespace of our own: nothing else on the
    machine is affected): the snapshot is still complete, the rest is counted unwatched."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare(1) is not installed (util-linux)")
    tree(root, 100, files_per_dir=1)
    try:
        out = subprocess.run(["unshare", "-U", "-r", sys.executable, "-c", LIMIT_SCRIPT,
                              str(root), "40"], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail("the namespaced agent did not finish")
    if out.returncode != 0 and "Operation not permitted" in out.stderr:
        pytest.fail(f"user namespaces are not allowed here: {out.stderr[-300:]}")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    st = got["status"]
    assert got["rows"] == 1 + 100 * 2  # the walk reports everything it could not arm too
    assert st["watch_limit_reached"] is True
    assert st["watched_dirs"] == 40
    assert st["unwatched_dirs"] == 101 - 40
    # Listing "/" for a repair: a watched subdirectory is kept as it is ("unknown"), an
    # unwatched one (its events were never seen) is walked whole.
    listed = {r["path"]: r for r in got["listed"]}
    on_disk = {"/" + str(p.relative_to(root)) for p in root.rglob("*")}
    kinds = set()
    for top in (p for p in on_disk if p.count("/") == 1):
        under = {p for p in on_disk if p.startswith(top + "/")}
        if "modified_time" not in listed[top]:
            kinds.add("kept")
            assert not under & set(listed), top
        else:
            kinds.add("walked")
            assert under <= set(listed), top
    assert kinds == {"kept", "walked"}


def test_a_kernel_queue_overflow_asks_for_the_whole_tree(root, make_source):
    """The kernel drops events and says only that it did: where is unknown."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    if not os.access(knob, os.W_OK):
        pytest.fail("needs root (to make a small kernel queue): run the tests as root, as CI does")
    src = make_source(root, backend="inotify")
    old = knob.read_text()
    knob.write_text("4")
    try:  # the size is taken when an instance is created: restored right after ours
        src.start_watch()
    finally:
        knob.write_text(old)
    deadline = time.monotonic() + 10
    n = 0
    while not src.status["overflowed"] and time.monotonic() < deadline:
        for _ in range(500):
            (root / f"f{n}").write_bytes(b"x")
            n += 1
    assert src.status["overflowed"] is True and src.status["last_overflow_at"] is not None
    assert src.take_lost() == "all"
    assert src.status["overflowed"] is False


# -- the queue -----------------------------------------------------------------------------


def test_queued_events_are_compact_and_bounded_in_bytes():
    q = RealtimeQueue(max_events=1_000_000, max_bytes=1 << 20)
    path = "/projects/alpha/run-0001/lane-3/sample_000123.fastq.gz"  # 57 bytes
    accepted = 0
    for _ in range(1_000_000):  # until the queue refuses one
        if not q.put_update(path, 123456, 1.7e9, 1.7e9, False, True):
            break
        accepted += 1
    assert accepted == len(q) and accepted < 1_000_000
    per_event = q.bytes / len(q)
    assert per_event <= 200, per_event
    assert per_event == 1 + 24 + len(path) + ENTRY_OVERHEAD
    assert q.bytes <= 1 << 20 and q.dropped == 1  # the byte bound, long before 1M events
    assert q.take_lost() == [("/projects/alpha/run-0001/lane-3", False)]


def test_lost_events_name_the_directories_to_re_audit():
    q = RealtimeQueue(max_events=2)
    q.put_update("/a/x", 1, 1.0, 1.0, False)
    q.put_update("/b/y", 1, 1.0, 1.0, False)
    q.put_update("/c/z", 1, 1.0, 1.0, False)  # dropped: /c is listed again
    q.put_delete("/d/e/gone")  # dropped: /d/e is listed again
    q.put_tree("/new/tree")  # dropped: that whole tree, and its parent's listing
    q.put_update("/new/tree/inside", 1, 1.0, 1.0, False)  # covered by the tree
    assert q.overflowed and q.dropped == 4
    assert q.take_lost() == [("/c", False), ("/d/e", False), ("/new", False),
                             ("/new/tree", True)]
    assert not q.overflowed and q.take_lost() is None


def test_queued_answers_for_the_exact_path_until_it_is_drained():
    q = RealtimeQueue()
    q.put_update("/a/b", 1, 1.0, 1.0, False)
    q.put_delete("/c")
    q.put_tree("/d")
    assert q.queued("/a/b") and q.queued("/c") and q.queued("/d")
    assert not q.queued("/b") and not q.queued("/a") and not q.queued("/x/a/b")
    assert len(q) == 3  # asking takes nothing
    q.take(10, 0)
    assert not q.queued("/a/b") and not q.queued("/c") and not q.queued("/d")


# -- coalescing, with the real watcher -------------------------------------------------------


def test_rm_rf_of_a_backlogged_tree_is_one_delete_row(root, make_source):
    big = root / "big"
    for d in tree(big, 20):
        for j in range(100):
            (d / f"f{j}").write_bytes(b"x")
    src = make_source(root, backend="inotify")
    src.start_watch()
    src.arm()
    shutil.rmtree(big)  # nothing drains meanwhile: the pipe is slower than rm
    events = settle(src, root)
    deletes = [r["path"] for r in rows_of(events, "delete")]
    assert deletes == ["/big"], deletes[:20]
    assert src.status["events_coalesced"] >= 2000


def test_a_tree_copied_in_is_reported_once_by_its_walk(tmp_path, root, make_source):
    src = make_source(root, backend="inotify")
    src.start_watch()
    src.arm()
    staged = tmp_path / "staged"
    tree(staged, 30, files_per_dir=20, fanout=5)
    shutil.copytree(staged, root / "copy")  # mkdir, then files and subdirs inside at once
    events = settle(src, root)
    rows = [r["path"] for r in rows_of(events, "update") if r["path"] != "/zz-settle"]
    want = {"/copy"} | {"/copy/" + str(p.relative_to(staged)) for p in staged.rglob("*")}
    assert set(rows) == want
    # Events under the waiting walk are not queued too (else ~3 rows per file: created,
    # closed, walked). Some may be, when the reader lags the copy and the walk starts first.
    assert len(rows) <= 1.5 * len(want), len(rows)
    # and the copy is watched all the way down
    deepest = max((p for p in (root / "copy").rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    (deepest / "late.txt").write_text("x")
    collect(src, has_update("/" + str((deepest / "late.txt").relative_to(root)), is_atomic_write=True))


def test_mv_of_a_big_directory_costs_its_rows_once(root, make_source):
    src_dir = root / "a" / "data"
    for d in tree(src_dir, 50):
        for j in range(40):
            (d / f"f{j}").write_bytes(b"x")
    files = 50 * 40
    src = make_source(root, backend="inotify", max_pending_events=100)
    src.start_watch()
    src.arm()
    (root / "b").mkdir()
    os.rename(src_dir, root / "b" / "data")
    events = settle(src, root)
    assert src.status["events_dropped"] == 0  # two queued events, whatever the tree's size
    rows = [e["rows"][0]["path"] for e in events if e["rows"][0]["path"] != "/zz-settle"]
    deletes = [r["path"] for r in rows_of(events, "delete")]
    assert deletes == ["/a/data"]
    assert len(rows) <= 2 * files, len(rows)
    assert {r for r in rows if r.startswith("/b/data/")} == {
        "/b/" + str(p.relative_to(root / "b")) for p in (root / "b" / "data").rglob("*")}


# -- audits scoped to what was lost ------------------------------------------------------------


def run_audit(src, cache, scope=None):
    rows = []
    for batch, _ in src.audit(cache, scope):
        rows.extend(batch)
    return {r["path"]: r for r in rows}


def test_lost_events_are_repaired_by_listing_only_their_directory(root, make_source):
    (root / "a" / "watched" / "deep").mkdir(parents=True)
    (root / "a" / "watched" / "deep" / "f").write_text("x")
    (root / "a" / "file.txt").write_text("x")
    (root / "other").mkdir()
    src = make_source(root, backend="inotify", max_pending_events=3)
    src.start_watch()
    src.arm()
    (root / "other" / "g").write_text("x")  # two events: the queue holds one more
    (root / "a" / "new" / "sub").mkdir(parents=True)  # one tree event covers it all
    (root / "a" / "new" / "sub" / "h").write_text("x")
    (root / "a" / "file2.txt").write_text("x")  # lost
    (root / "a" / "file.txt").unlink()  # lost
    deadline = time.monotonic() + 10
    while src.status["events_dropped"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert src.take_lost() == [("/a", False)]
    rows = run_audit(src, {}, [("/a", False)])
    assert set(rows) == {"/a", "/a/file2.txt", "/a/watched", "/a/new"}  # not /other
    for kept in ("/a/watched", "/a/new"):  # watched: its own events were not lost
        assert rows[kept] == {"path": kept, "is_directory": True, "audit_skipped": True}
    assert "audit_skipped" not in rows["/a"]  # fully listed: fusion drops /a/file.txt
    assert rows["/a/file2.txt"]["parent_path"] == "/a"


def test_a_scope_that_is_gone_lists_its_nearest_ancestor(root, make_source):
    (root / "p" / "q").mkdir(parents=True)
    (root / "p" / "f").write_text("x")
    src = make_source(root, backend="inotify")
    src.start_watch()
    src.arm()
    rows = run_audit(src, {}, [("/p/q/r/s", True)])
    assert set(rows) == {"/p/q"}  # /p/q/r never existed: /p/q is listed instead
    shutil.rmtree(root / "p" / "q")
    assert set(run_audit(src, {}, [("/p/q", True)])) == {"/p", "/p/f"}


def test_a_repair_that_did_not_finish_is_put_back(root, make_source):
    src = make_source(root, backend="inotify")
    src.keep_lost([("/a", False), ("/b", True)])
    assert src.status["overflowed"] is True
    assert src.status["last_overflow_at"] is None  # not a new loss: the same one, kept
    assert src.take_lost() == [("/a", False), ("/b", True)]
    src.keep_lost("all")
    assert src.take_lost() == "all"
