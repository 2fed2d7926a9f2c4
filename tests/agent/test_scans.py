"""Stat walks of the fs source: snapshot, audit, scan_path, stat_paths (real temp trees)."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import tracemalloc

from fustor.agent.source_fs import FIRST_SNAPSHOT_ROWS, FsSource

UPDATE_KEYS = {"path", "file_name", "size", "modified_time", "created_time", "is_directory"}


def write(path, data="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def all_rows(batches):
    return [r for b in batches for r in b]


def by_path(rows):
    out = {}
    for r in rows:
        assert r["path"] not in out, f"duplicate row {r['path']!r}"
        out[r["path"]] = r
    return out


def build_tree(root):
    write(root / "a" / "f1.txt", "hello")
    write(root / "a" / "b" / "c" / "deep.log", "x" * 10)
    (root / "empty").mkdir()
    write(root / "top.txt", "t")
    os.symlink(root / "a", root / "link_to_dir")
    os.symlink("missing-target", root / "dangling")
    fd = os.open(os.fsencode(root) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)


def test_snapshot_rows_paths_and_types(root):
    build_tree(root)
    src = FsSource(root)
    rows = by_path(all_rows(src.snapshot()))
    latin1 = "/caf" + os.fsdecode(b"\xe9") + ".txt"
    assert set(rows) == {
        "/", "/a", "/a/f1.txt", "/a/b", "/a/b/c", "/a/b/c/deep.log", "/empty", "/top.txt",
        "/link_to_dir", "/dangling", latin1,
    }
    for r in rows.values():
        assert set(r) == UPDATE_KEYS
    assert rows["/"]["file_name"] == "" and rows["/"]["is_directory"] is True
    assert rows["/a/f1.txt"] == {**rows["/a/f1.txt"], "file_name": "f1.txt", "size": 5,
                                 "is_directory": False}
    st = os.stat(root / "a" / "f1.txt")
    assert rows["/a/f1.txt"]["modified_time"] == st.st_mtime
    assert rows["/a/f1.txt"]["created_time"] == st.st_ctime
    assert rows["/empty"]["is_directory"] is True
    # Symlinks are reported by lstat and never followed.
    assert rows["/link_to_dir"]["is_directory"] is False
    assert rows["/link_to_dir"]["size"] == len(str(root / "a"))
    assert rows["/dangling"]["is_directory"] is False
    # Non-UTF-8 names survive as surrogate-escaped str.
    assert os.fsencode(latin1) == b"/caf\xe9.txt"
    assert src.status["scan_errors"] == 0 and src.status["unreadable"] == []


def test_mode_000_directory_never_breaks_the_walk(root):
    write(root / "locked" / "inside.txt")
    write(root / "open" / "ok.txt")
    os.chmod(root / "locked", 0)
    try:
        src = FsSource(root)
        rows = by_path(all_rows(src.snapshot()))
    finally:
        os.chmod(root / "locked", 0o755)
    assert {"/", "/locked", "/open", "/open/ok.txt"} <= set(rows)
    if os.access(root / "locked", os.R_OK, effective_ids=True) and os.geteuid() == 0:
        # root reads through mode 000: the content is there and nothing failed.
        assert "/locked/inside.txt" in rows
        assert src.status["scan_errors"] == 0
    else:
        assert "/locked/inside.txt" not in rows
        assert src.status["unreadable"] == ["/locked"]
        assert src.status["scan_errors"] == 1


def test_directory_that_cannot_be_read_is_reported_and_counted(root):
    """A path longer than PATH_MAX fails for every user, root included."""
    write(root / "fine" / "f.txt")
    (root / "deep").mkdir()
    fd = os.open(root / "deep", os.O_RDONLY)
    name = "d" * 200
    depth = 0
    try:
        while len(str(root / "deep")) + depth * 201 < 4200:
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        os.close(os.open("leaf.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    try:
        src = FsSource(root, scan_workers=2)
        rows = by_path(all_rows(src.snapshot()))
        status = src.status
    finally:
        shutil.rmtree(root / "deep")  # fd-based: copes with the long path
    assert {"/", "/fine", "/fine/f.txt", "/deep", "/deep/" + name} <= set(rows)
    assert status["scan_errors"] >= 1
    assert status["unreadable"] and all(p.startswith("/deep/" + name) for p in status["unreadable"])
    assert not any(p.endswith("leaf.txt") for p in rows)


def test_missing_root_yields_nothing_and_is_reported(tmp_path):
    src = FsSource(tmp_path / "nope")
    assert list(src.snapshot()) == []
    assert src.status["unreadable"] == ["/"]
    assert list(src.audit({})) == []


def test_file_pattern_filters_files_but_never_dirs(root):
    write(root / "a" / "keep.txt")
    write(root / "a" / "drop.log")
    write(root / "b.log" / "inner.txt")  # a directory whose name does not match
    src = FsSource(root, file_pattern="*.txt")
    assert set(by_path(all_rows(src.snapshot()))) == {
        "/", "/a", "/a/keep.txt", "/b.log", "/b.log/inner.txt"}


def test_directory_row_precedes_its_entries_and_batches_are_full_after_a_small_first(root):
    for i in range(30):
        for j in range(4):
            write(root / f"d{i}" / f"s{j}" / f"f{i}_{j}.txt")
        write(root / f"d{i}" / "g.txt")
    expected = 1 + 30 * (1 + 4 * 2 + 1)
    for workers in (1, 4):
        for batch_rows in (1, 7, 1000):
            src = FsSource(root, scan_workers=workers, batch_rows=batch_rows)
            batches = list(src.snapshot())
            # the first push is small (fusion shows rows at once), the others full
            assert len(batches[0]) == min(FIRST_SNAPSHOT_ROWS, batch_rows)
            assert all(len(b) == batch_rows for b in batches[1:-1])
            assert 1 <= len(batches[-1]) <= batch_rows
            rows = all_rows(batches)
            assert len(rows) == expected
            position = {r["path"]: i for i, r in enumerate(rows)}
            assert len(position) == expected
            assert rows[0]["path"] == "/"
            for path, i in position.items():
                if path != "/":
                    parent = path.rsplit("/", 1)[0] or "/"
                    assert position[parent] < i, (path, workers, batch_rows)


def test_closing_a_snapshot_early_stops_its_workers(root):
    for i in range(50):
        write(root / f"d{i}" / "f.txt")
    gen = FsSource(root, scan_workers=4, batch_rows=2).snapshot()
    assert len(next(gen)) == 2
    assert any(t.name.startswith("fustor-scan-") for t in threading.enumerate())
    gen.close()
    assert not any(t.name.startswith("fustor-scan-") for t in threading.enumerate())


def test_snapshot_memory_is_bounded(root):
    for d in range(10):
        sub = root / f"dir{d}"
        sub.mkdir()
        for f in range(1000):
            os.close(os.open(sub / f"file-with-a-longish-name-{f}.dat", os.O_CREAT | os.O_WRONLY))
    src = FsSource(root, scan_workers=2, batch_rows=100)
    gc.collect()
    tracemalloc.start()
    try:
        count = 0
        for batch in src.snapshot():
            count += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 1 + 10 + 10_000
    # Holding all 10k rows at once takes ~5 MB; the stream holds a few batches (~0.4 MB).
    assert peak < 1.5 * 1024 * 1024, peak


# -- audit --------------------------------------------------------------------


def run_audit(src, cache):
    rows, updates = [], {}
    for batch, update in src.audit(cache):
        rows.extend(batch)
        updates.update(update)
    return rows, updates


def test_audit_full_then_silent_then_changed(root):
    write(root / "a" / "f1.txt")
    write(root / "a" / "b" / "f2.txt")
    write(root / "c" / "f3.txt")
    src = FsSource(root, batch_rows=2)

    rows, updates = run_audit(src, {})
    files = {r["path"]: r for r in rows if not r["is_directory"]}
    assert set(files) == {"/a/f1.txt", "/a/b/f2.txt", "/c/f3.txt"}
    assert files["/a/b/f2.txt"]["parent_path"] == "/a/b"
    assert files["/a/b/f2.txt"]["parent_mtime"] == os.stat(root / "a" / "b").st_mtime
    assert not any(r.get("audit_skipped") for r in rows)
    assert all("parent_path" not in r for r in rows if r["is_directory"])
    assert updates == {p: os.stat(str(root) + p).st_mtime for p in ("/", "/a", "/a/b", "/c")}
    cache = dict(updates)

    rows, updates = run_audit(src, cache)
    assert {r["path"] for r in rows} == {"/", "/a", "/a/b", "/c"}
    assert all(r["audit_skipped"] is True for r in rows)
    assert updates == {}

    # A change deep under silent directories is still found: silence never prunes recursion.
    write(root / "a" / "b" / "new.txt")
    os.utime(root / "a" / "b", (1, 1_000_000))
    rows, updates = run_audit(src, cache)
    by = {r["path"]: r for r in rows}
    assert by["/a"]["audit_skipped"] is True and by["/"]["audit_skipped"] is True
    assert "audit_skipped" not in by["/a/b"]
    assert {"/a/b/f2.txt", "/a/b/new.txt"} <= set(by)
    assert "/a/f1.txt" not in by and "/c/f3.txt" not in by
    assert updates == {"/a/b": 1_000_000}


def test_audit_cache_update_travels_with_the_directory_last_row(root):
    for i in range(25):
        write(root / "many" / f"f{i}.txt")
    src = FsSource(root, batch_rows=4)
    reported: set[str] = set()
    for batch, updates in src.audit({}):
        reported.update(r["path"] for r in batch)
        for d in updates:
            children = {p for p in reported if p.startswith(d.rstrip("/") + "/")}
            if d == "/many":
                assert len(children) == 25


# -- scan_path ----------------------------------------------------------------


def test_scan_path_file_dir_recursive_and_not(root):
    write(root / "d" / "f.txt")
    write(root / "d" / "sub" / "g.txt")
    src = FsSource(root)
    assert [r["path"] for r in all_rows(src.scan_path("/d/f.txt"))] == ["/d/f.txt"]
    assert [r["path"] for r in all_rows(src.scan_path(str(root / "d" / "f.txt")))] == ["/d/f.txt"]
    assert {r["path"] for r in all_rows(src.scan_path("/d"))} == {
        "/d", "/d/f.txt", "/d/sub", "/d/sub/g.txt"}
    assert {r["path"] for r in all_rows(src.scan_path("d/", recursive=False))} == {
        "/d", "/d/f.txt", "/d/sub"}
    assert {r["path"] for r in all_rows(src.scan_path("/"))} >= {"/", "/d", "/d/sub/g.txt"}
    assert list(src.scan_path("/d/missing")) == []


def test_scan_path_refuses_to_leave_the_root(tmp_path):
    root = tmp_path / "data"
    write(root / "in.txt")
    sibling = tmp_path / "data2"
    write(sibling / "secret.txt")
    os.symlink(sibling, root / "out")
    src = FsSource(root)
    for path in ("/../etc", "../data2/secret.txt", "/d/../../data2", str(sibling),
                 str(sibling / "secret.txt"), "/out/secret.txt", str(root / ".." / "data2")):
        assert list(src.scan_path(path)) == [], path
    # The symlink itself is inside the root and reported as a link.
    [[row]] = list(src.scan_path("/out"))
    assert row["path"] == "/out" and row["is_directory"] is False
    assert [r["path"] for r in all_rows(src.scan_path("/x/../in.txt"))] == ["/in.txt"]


def test_scan_path_applies_the_file_pattern(root):
    write(root / "a.txt")
    write(root / "a.log")
    src = FsSource(root, file_pattern="*.txt")
    assert len(list(src.scan_path("/a.txt"))) == 1
    assert list(src.scan_path("/a.log")) == []


# -- stat_paths ---------------------------------------------------------------


def test_stat_paths_exists_missing_and_outside(root):
    write(root / "d" / "f.txt", "12345")
    src = FsSource(root)
    st = os.stat(root / "d" / "f.txt")
    assert src.stat_paths(["/d/f.txt", "/d/gone.txt", "/../etc/passwd", "/d/f.txt/x"]) == [
        {"path": "/d/f.txt", "mtime": st.st_mtime, "size": 5, "status": "exists"},
        {"path": "/d/gone.txt", "mtime": 0.0, "status": "missing"},
        {"path": "/d/f.txt/x", "mtime": 0.0, "status": "missing"},
    ]


# -- big flat directories ---------------------------------------------------------------


def test_a_big_flat_directory_is_shared_by_the_workers(root):
    from fustor.agent.scanner import NameFilter, ScanStats, TreePaths, Walk, rechunk

    flat = root / "flat"
    flat.mkdir()
    for i in range(3000):
        os.close(os.open(flat / f"f{i:05d}", os.O_CREAT | os.O_WRONLY))
    write(root / "small" / "s.txt")
    for cache in (None, {}):  # a snapshot, and an audit (its cache update comes last)
        walk = Walk(TreePaths(root), str(root), accept=NameFilter(), stats=ScanStats(),
                    workers=4, batch_rows=100, mtime_cache=cache, split_at=256)
        seen: list[str] = []
        flat_cached_after = None
        for rows, update in rechunk(iter(walk), 100):
            seen.extend(r["path"] for r in rows)
            if "/flat" in update:
                flat_cached_after = len([p for p in seen if p.startswith("/flat/")])
        assert walk.chunks_shared > 0  # other workers stat-ed parts of it
        assert len(seen) == len(set(seen)) == 1 + 1 + 3000 + 2
        assert seen.index("/flat") < min(i for i, p in enumerate(seen) if p.startswith("/flat/"))
        if cache is not None:
            assert flat_cached_after == 3000  # recorded only with its last row
