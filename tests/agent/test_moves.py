"""A watched directory renamed or moved inside the tree travels as one move row to a
fusion that takes moves (the ``move`` extension), and as the per-file form otherwise.

Real trees, the real inotify watcher, and fusion's app in-process through
``httpx.ASGITransport`` (or the scripted :class:`FakeFusion` for a fusion without the
extension); every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from fustor.agent.realtime_queue import DELETE, MOVE, RealtimeQueue, decode
from fustor.fusion.app import create_app
from tests.agent.conftest import collect
from tests.agent.test_pipe import (
    FakeFusion,
    in_view,
    make_pipe,
    make_tree,
    tree_stats,
    until,
    view_stats,
)
from tests.procs import wait_until


def make_big(root: Path, name: str = "big", subdirs: int = 3, files: int = 200) -> int:
    for s in range(subdirs):
        d = root / name / f"s{s}"
        d.mkdir(parents=True)
        for i in range(files):
            (d / f"f{i:03d}.dat").write_bytes(b"y" * (i % 11))
    return subdirs * files


async def settled(pipe) -> int:
    """rows_pushed once the snapshot is done and nothing is queued or staged."""
    def quiet():
        st = pipe.source.status
        return (pipe.snapshot_done and st["fully_armed"] and st["queued_events"] == 0
                and st["tree_walks"] == 0 and pipe.realtime_backlog == 0)

    await until(quiet, what="the snapshot done and realtime idle")
    return pipe.rows_pushed


async def test_a_renamed_directory_is_one_row_and_the_view_follows(root, fusion, run_pipe):
    make_tree(root, dirs=2, files_per_dir=20)
    n = make_big(root)
    transport = httpx.ASGITransport(app=create_app(fusion))
    pipe = await run_pipe(make_pipe(root, transport))
    before = await settled(pipe)
    assert view_stats(fusion) == tree_stats(root)

    os.rename(root / "big", root / "d0" / "big moved")
    await until(lambda: view_stats(fusion) == tree_stats(root)
                and not in_view(fusion, "/big") and in_view(fusion, "/d0/big moved/s2/f199.dat"),
                what="the moved tree in the view, the old one gone")
    assert pipe.source.status["moves_sent"] == 1
    assert pipe.rows_pushed - before == 1, "a move of 603 entries is one row"
    assert n == 600

    # moved again, and changed at once inside: the changes land at the new place
    os.rename(root / "d0" / "big moved", root / "again")
    (root / "again" / "s0" / "new.txt").write_bytes(b"new")
    (root / "again" / "s1" / "f000.dat").unlink()
    await until(lambda: view_stats(fusion) == tree_stats(root)
                and in_view(fusion, "/again/s0/new.txt")
                and not in_view(fusion, "/again/s1/f000.dat")
                and not in_view(fusion, "/d0/big moved"),
                what="the second move and the changes after it")
    assert pipe.source.status["moves_sent"] == 2


async def test_a_move_fusion_cannot_apply_is_walked_instead(root, fusion, run_pipe):
    make_tree(root, dirs=1, files_per_dir=5)
    n = make_big(root, subdirs=2, files=50)
    transport = httpx.ASGITransport(app=create_app(fusion))
    pipe = await run_pipe(make_pipe(root, transport))
    before = await settled(pipe)
    # fusion lost the directory (say, its view was restored from an older backup)
    await fusion.views["v1"].run(lambda w, st: w.delete(b"/big"))
    assert not in_view(fusion, "/big/s0")

    os.rename(root / "big", root / "found")
    await until(lambda: view_stats(fusion) == tree_stats(root)
                and in_view(fusion, "/found/s1/f049.dat"),
                what="the walked tree in the view")
    assert pipe.source.status["moves_sent"] == 1
    # the move row, then the walk's rows: the directory, its 2 subdirectories, its files
    await until(lambda: pipe.rows_pushed - before >= 1 + 1 + 2 + n, what="the walk's rows")


async def test_no_move_row_to_a_fusion_without_the_extension(root, run_pipe):
    make_tree(root, dirs=1, files_per_dir=3)
    make_big(root, subdirs=1, files=4)
    fake = FakeFusion()
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await settled(pipe)
    os.rename(root / "big", root / "d0" / "big2")
    want = {f"/d0/big2/s0/f{i:03d}.dat" for i in range(4)}
    await until(lambda: want <= set(fake.accepted_rows("message")), what="the walk's rows")
    events = [e for c in fake.pushes("message") for e in c.body["events"]]
    assert "move" not in {e["event_type"] for e in events}
    assert {"path": "/big"} in [r for e in events if e["event_type"] == "delete" for r in e["rows"]]
    assert pipe.source.status["moves_sent"] == 0


def test_a_queued_move_becomes_the_per_file_form_when_moves_stop(root, make_source):
    n = make_big(root, subdirs=2, files=3)
    src = make_source(root)
    src.start_watch()
    for _ in src.snapshot():
        pass
    src.use_moves(True)
    os.rename(root / "big", root / "moved")
    wait_until(lambda: src.queued("/moved"), 10, interval=0.01, what="the move in the queue")
    src.use_moves(False)  # e.g. the session ended before it was pushed
    events = collect(src, lambda ev: len(ev) >= 1 + 1 + 2 + n)  # delete, the dir, subdirs, files
    kinds = [e["event_type"] for e in events]
    assert "move" not in kinds and events[0]["rows"] == [{"path": "/big"}]
    paths = {e["rows"][0]["path"] for e in events[1:]}
    assert {"/moved", "/moved/s0", "/moved/s1", "/moved/s1/f002.dat"} <= paths


# -- the queue's rule: a move only when nothing about either place is unreported -----------


def _move(q: RealtimeQueue, old: str = "/a", new: str = "/b") -> bool:
    return q.put_move(old, new, 4096, 10.0, 11.0)


def test_a_move_is_one_entry_behind_what_came_before():
    q = RealtimeQueue()
    q.put_update("/a/f", 1, 2.0, 3.0, False)  # about the old place, not yet reported: it
    assert _move(q, "/a", "/c/b")  # goes first, so the move carries it
    entries = q.take(10, 0)
    assert len(entries) == 2 and len(q) == 0
    assert decode(entries[0])[1] == "/a/f"
    kind, rel, row = decode(entries[1])
    assert (kind, rel) == (MOVE, "/c/b")
    assert row == {"path": "/c/b", "file_name": "b", "size": 4096, "modified_time": 10.0,
                   "created_time": 11.0, "is_directory": True, "moved_from": "/a"}


def test_no_move_while_a_tree_of_either_place_waits_or_is_walked():
    for tree in ("/a/sub", "/a", "/", "/b", "/b/x"):  # at or under the old place; at,
        q = RealtimeQueue()                            # above or under the new one
        q.put_tree(tree)
        q.put_update("/z", 1, 2.0, 3.0, False)
        assert not _move(q), tree
        assert len(q) == 2  # nothing queued
    q = RealtimeQueue()
    q.set_walking("/a")
    assert not _move(q)
    q.set_walking(None)
    assert _move(q)


def test_no_move_while_a_loss_waits_for_its_repair_or_when_it_does_not_fit():
    q = RealtimeQueue()
    q.mark_lost("/elsewhere", why="test")
    assert not _move(q)
    q = RealtimeQueue(max_events=1)
    q.put_update("/z", 1, 2.0, 3.0, False)
    assert not _move(q) and q.dropped == 0  # the caller's fallback records the loss


def test_a_later_delete_does_not_swallow_a_move():
    q = RealtimeQueue()
    assert _move(q, "/a", "/b")
    q.put_delete("/b")  # the old place's delete rides in the move: it must stay
    assert [decode(e)[0] for e in q.take(10, 0)] == [MOVE]  # take stops after a move
    assert [decode(e)[0] for e in q.take(10, 0)] == [DELETE]


LIMIT_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from fustor.agent.source_fs import FsSource
    root = Path(sys.argv[1])
    Path("/proc/sys/user/max_inotify_watches").write_text("8")
    src = FsSource(str(root), backend="inotify")
    src.start_watch()
    for _ in src.snapshot():  # arms /, /small, /small/s: 3 watches of 8
        pass
    src.use_moves(True)
    for i in range(20):  # made after the snapshot: a walk arms 5 more, then the limit
        (root / "crowd" / f"c{i:02d}").mkdir(parents=True)
    got = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
            r["path"] == "/crowd/c19" for e in got for r in e["rows"]):
        got += src.drain(1000, 0.05)
    os.rename(root / "crowd", root / "crowd2")
    os.rename(root / "small", root / "small2")
    got = []
    while time.monotonic() < deadline and not any(
            e["event_type"] == "move" or e["rows"][0]["path"] == "/small2/s" for e in got):
        got += src.drain(1000, 0.05)
    st = src.status
    src.stop_watch()
    print(json.dumps({"events": got, "status": st}))
""")


def test_a_tree_with_an_unwatched_directory_is_not_moved(tmp_path):
    """With a private limit of 8 watches (a user namespace of our own), a directory with
    subdirectories the agent could not watch goes as the per-file form, a fully watched
    one as a move."""
    root = tmp_path / "root"
    (root / "small" / "s").mkdir(parents=True)
    (root / "small" / "s" / "f.txt").write_text("x")
    try:
        out = subprocess.run(["unshare", "-U", "-r", sys.executable, "-c", LIMIT_SCRIPT,
                              str(root)], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        pytest.fail("the namespaced agent did not finish")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["status"]["watch_limit_reached"] is True
    events = [(e["event_type"], e["rows"][0]["path"], e["rows"][0].get("moved_from"))
              for e in got["events"]]
    assert ("delete", "/crowd", None) in events and ("update", "/crowd2", None) in events
    assert ("move", "/small2", "/small") in events
    assert got["status"]["moves_sent"] == 1


def _fs_paths(root: Path) -> dict[str, int]:
    out = {"/": -1}
    for top, dnames, fnames in os.walk(root):
        rel = "/" + os.path.relpath(top, root) if top != str(root) else ""
        for d in dnames:
            out[f"{rel}/{d}"] = -1
        for f in fnames:
            out[f"{rel}/{f}"] = os.lstat(os.path.join(top, f)).st_size
    return out


def _view_paths(fusion) -> dict[str, int]:
    from fustor.store import keys

    with fusion.views["v1"].store.read() as r:
        return {n.path_str: (-1 if n.is_dir else n.size) for _d, n in r.walk(keys.ROOT)}


async def test_a_burst_of_renames_creates_and_deletes_converges(root, fusion, run_pipe):
    """Directory renames mixed with what makes a move unsafe — a directory made and filled
    just before its rename (its walk still pending), renames of renames, changes inside
    right after, deletes — done as fast as the calls go: the view ends equal to the tree."""
    rnd = random.Random(7)
    make_tree(root, dirs=4, files_per_dir=10)
    transport = httpx.ASGITransport(app=create_app(fusion))
    pipe = await run_pipe(make_pipe(root, transport))
    await settled(pipe)
    dirs = [root / f"d{i}" for i in range(4)]
    for step in range(300):
        op = rnd.random()
        d = rnd.choice(dirs) if dirs else root
        if op < 0.3:  # a new directory with files, sometimes renamed at once
            new = d / f"n{step}"
            new.mkdir()
            for j in range(rnd.randrange(4)):
                (new / f"x{j}").write_bytes(b"n" * j)
            dirs.append(new)
            if rnd.random() < 0.5:
                moved = root / f"m{step}"
                os.rename(new, moved)
                dirs = [p for p in dirs if not p.is_relative_to(new)] + [moved]
        elif op < 0.6 and d != root:  # rename a directory somewhere else in the tree
            target = rnd.choice([p for p in dirs if not p.is_relative_to(d)] + [root])
            dest = target / f"r{step}"
            os.rename(d, dest)
            dirs = [dest / p.relative_to(d) if p.is_relative_to(d) else p for p in dirs]
        elif op < 0.8:  # a file written inside
            (d / f"f{step}").write_bytes(b"z" * (step % 13))
        elif op < 0.9 and len(dirs) > 3 and d != root:  # a whole directory removed
            shutil.rmtree(d)
            dirs = [p for p in dirs if not p.is_relative_to(d)]
        else:  # a file removed, if there is one
            files = [p for p in d.iterdir() if p.is_file()]
            if files:
                rnd.choice(files).unlink()
    want = _fs_paths(root)
    got: dict = {}

    def equal():
        got["v"] = _view_paths(fusion)
        return got["v"] == want

    try:
        await until(equal, timeout=30, what="the view to equal the tree")
    except AssertionError:
        extra = sorted(set(got["v"]) - set(want))[:10]
        missing = sorted(set(want) - set(got["v"]))[:10]
        raise AssertionError(f"view differs: extra {extra}, missing {missing}") from None
    assert pipe.rows_dropped == 0 and pipe.rows_rejected == 0
    # in a burst many renames go per-file (a walk of the place is pending); once quiet, one
    # is a move again
    sent = pipe.source.status["moves_sent"]
    await settled(pipe)
    top = sorted(p for p in root.iterdir() if p.is_dir())[0]
    os.rename(top, root / "quiet rename")
    want = _fs_paths(root)
    await until(equal, timeout=30, what="the view to equal the tree after a quiet rename")
    assert pipe.source.status["moves_sent"] == sent + 1
