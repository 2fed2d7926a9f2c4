"""Stat walks of a source tree: snapshot, audit, on-demand scans and sentinel stats.

Everything here reads the file system and returns row dicts in the wire shape
(fusion-protocol §4.2); nothing here talks to the network.

The parallel walk::

    caller's generator ◄── bounded queue of pieces ◄── N worker threads ◄─┐
        (re-chunks into                                 │  pop a dir      │
         batches of batch_rows)                         └─ push subdirs ──┘ LIFO stack

* Workers take directories from a shared LIFO stack (depth-first keeps the set
  of pending directories small) and put *pieces* ``(rows, cache_update)`` on a
  queue that holds at most a few pieces; a slow consumer blocks the workers, so
  memory stays bounded whatever the size of the tree.
* A worker puts a directory's own row on the queue before it pushes any of its
  subdirectories, so a directory's row always precedes its entries' rows.
* Symlinks are never followed: entries are ``lstat``-ed and a symlink is
  reported as what it is (``is_directory`` false, the link's own size and
  times), a symlink to a directory is not entered.
* A directory that cannot be stat-ed or listed (permissions, removed during the
  walk, I/O error) is counted in :class:`ScanStats`; the walk goes on. Entries
  that vanish between listing and stat are skipped silently.
* Names are ``str`` as ``os`` decodes them (``surrogateescape`` for bytes that
  are not UTF-8); encoding them for JSON is the sender's job.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
import re
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import NamedTuple, Protocol

log = logging.getLogger(__name__)

UNREADABLE_KEPT = 20
# Pieces in flight between the workers and the consumer, per worker.
PIECES_PER_WORKER = 2
MTIME_EPSILON = 1e-6
# Files of one directory past which its stats are shared out to other workers.
SPLIT_AT = 2048
_TOP = object()  # the parent of a walk's start: the armer finds its place itself


class TreePaths:
    """The root of a source and the mapping between absolute and view paths.

    View paths are relative to the root with a leading ``/``; the root is ``/``.
    """

    def __init__(self, root: str | Path) -> None:
        # realpath: the watcher and the walks must agree on one spelling of the root.
        self.root = os.path.realpath(os.fspath(root))
        self._prefix = self.root if self.root.endswith("/") else self.root + "/"

    def inside(self, abs_path: str) -> bool:
        return abs_path == self.root or abs_path.startswith(self._prefix)

    def rel(self, abs_path: str) -> str:
        """View path of an absolute path known to be inside the root."""
        if abs_path == self.root:
            return "/"
        return "/" + abs_path[len(self._prefix):]

    def absolute(self, rel: str) -> str:
        """Absolute path of a view path (no checks: for paths this source made)."""
        if rel == "/":
            return self.root
        return self._prefix + rel[1:]

    def resolve(self, path: str) -> str | None:
        """Absolute path for a view path (or an absolute path under the root).

        Returns None when the path escapes the root: ``..`` components, a sibling
        directory that merely shares the root as a string prefix, or a symlinked
        ancestor that points outside. The last component itself is not
        resolved, so a symlink is reported as the link.
        """
        if not isinstance(path, str) or "\0" in path:
            return None
        if self.inside(path):
            candidate = path
        else:
            candidate = os.path.join(self.root, path.lstrip("/"))
        candidate = os.path.normpath(candidate)
        if candidate.startswith("//"):
            candidate = "/" + candidate.lstrip("/")
        if not self.inside(candidate):
            return None
        if candidate == self.root:
            return candidate
        parent = os.path.realpath(os.path.dirname(candidate))
        full = os.path.join(parent, os.path.basename(candidate))
        return full if self.inside(full) else None


class NameFilter:
    """``file_pattern``: a case-sensitive fnmatch pattern on file basenames."""

    def __init__(self, pattern: str = "*") -> None:
        self.pattern = pattern
        self._match_all = pattern in ("", "*")
        self._match = re.compile(fnmatch.translate(pattern), re.DOTALL).match

    def __call__(self, name: str) -> bool:
        return self._match_all or self._match(name) is not None


class ScanStats:
    """Directory failures seen by the walks of one source (cumulative)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors = 0
        self._unreadable: list[str] = []

    def failed(self, rel: str, exc: BaseException) -> None:
        log.warning("cannot read directory %r: %s", rel, exc)
        with self._lock:
            self.errors += 1
            if len(self._unreadable) < UNREADABLE_KEPT and rel not in self._unreadable:
                self._unreadable.append(rel)

    @property
    def unreadable(self) -> list[str]:
        with self._lock:
            return list(self._unreadable)


def stat_row(rel: str, st: os.stat_result) -> dict:
    """An update row (fusion-protocol §4.2) for a stat result."""
    return {
        "path": rel,
        "file_name": "" if rel == "/" else rel.rsplit("/", 1)[1],
        "size": st.st_size,
        "modified_time": st.st_mtime,
        "created_time": st.st_ctime,
        "is_directory": stat.S_ISDIR(st.st_mode),
    }


def child_rel(rel: str, name: str) -> str:
    return "/" + name if rel == "/" else rel + "/" + name


def lstat_row(paths: TreePaths, abs_path: str) -> dict | None:
    """Row for one path, or None when it does not exist (any more)."""
    try:
        return stat_row(paths.rel(abs_path), os.lstat(abs_path))
    except (OSError, ValueError):
        return None


class Piece(NamedTuple):
    rows: list[dict]
    cache: dict[str, float]


class Armer(Protocol):
    """Arms realtime watches as a walk reaches each directory (the watcher implements it).
    A directory is armed *before* it is listed, so whatever changes after its listing
    raises an event, and whatever changed before is in the listing."""

    def arm_top(self, abs_path: str) -> int | None: ...

    def arm_child(self, abs_path: str, parent: int) -> int | None: ...


# How a walk treats a directory it takes from its stack:
DEEP = 0  # list it and walk every subdirectory
SHALLOW = 1  # list it; subdirectories are rows, not entered (on-demand, non-recursive)
LISTED = 2  # audit repair: list it; a watched subdirectory is "unknown" (kept as it is in
#             fusion: its own events were not lost), an unwatched one is walked DEEP

_WORKER_DONE = object()


class _Dir:
    """A directory whose files are being stat-ed in several parts (a big flat directory):
    its cache update rides with the piece of whichever part ends last."""

    __slots__ = ("cache", "lock", "parent_mtime", "rel", "remaining")

    def __init__(self, rel: str, parent_mtime: float, cache: dict[str, float]) -> None:
        self.rel = rel
        self.parent_mtime = parent_mtime
        self.cache = cache
        self.remaining = 1  # the listing itself
        self.lock = threading.Lock()


class _Chunk(NamedTuple):
    d: _Dir
    entries: list[os.DirEntry]


class Walk:
    """One parallel walk from ``starts`` (absolute directory paths, each with its mode).

    Iterate it to get pieces; closing the iteration early stops the workers.
    ``mtime_cache`` switches to audit rows (§12.6): a directory whose cached
    mtime is unchanged is *silent* — its row carries ``audit_skipped`` and its
    files are not read — but its subdirectories are always walked. ``armer`` arms a
    realtime watch on each directory before listing it; ``unwatched`` counts those it
    could not arm. A directory's files are stat-ed in chunks of ``split_at`` (at most
    ``batch_rows``) as they are listed, and a chunk goes to an idle worker when there is
    one: a big flat directory is shared (the listing is one stream; the stats are the cost).
    """

    def __init__(
        self,
        paths: TreePaths,
        starts: list[tuple[str, int]] | str,
        *,
        accept: NameFilter,
        stats: ScanStats,
        workers: int,
        batch_rows: int,
        recursive: bool = True,
        mtime_cache: dict[str, float] | None = None,
        armer: Armer | None = None,
        is_watched: Callable[[str, int], bool] | None = None,
        split_at: int = SPLIT_AT,
    ) -> None:
        self._paths = paths
        self._accept = accept
        self._stats = stats
        self._workers = max(1, workers)
        self._batch_rows = max(1, batch_rows)
        self._cache = mtime_cache
        self._armer = armer
        self._is_watched = is_watched
        self._split_at = max(1, split_at)
        if isinstance(starts, str):
            starts = [(starts, DEEP if recursive else SHALLOW)]
        # (path, parent watch or _TOP, mode) or a _Chunk
        self._stack: list = [(p, _TOP, mode) for p, mode in reversed(starts)]
        self._pending = len(self._stack)  # items pushed and not finished
        self._cond = threading.Condition()
        self._out: queue.Queue = queue.Queue(maxsize=PIECES_PER_WORKER * self._workers)
        self._cancel = threading.Event()
        self._chunks_waiting = 0
        self.chunks_shared = 0  # chunks of big directories that other workers stat-ed
        self.unwatched = 0
        self.complete = False  # every item was taken and finished (not cancelled)

    # -- consumer side ---------------------------------------------------------

    def __iter__(self) -> Iterator[Piece]:
        if not self._stack:
            self.complete = True
            return
        threads = [
            threading.Thread(target=self._run_worker, name=f"fustor-scan-{i}", daemon=True)
            for i in range(self._workers)
        ]
        for t in threads:
            t.start()
        try:
            running = len(threads)
            while running:
                item = self._out.get()
                if item is _WORKER_DONE:
                    running -= 1
                else:
                    yield item
            self.complete = not self._cancel.is_set()
        finally:
            self._cancel.set()
            with self._cond:
                self._cond.notify_all()
            for t in threads:
                while t.is_alive():
                    self._discard_queued()
                    t.join(0.05)

    def _discard_queued(self) -> None:
        try:
            while True:
                self._out.get_nowait()
        except queue.Empty:
            pass

    # -- worker side -------------------------------------------------------------

    def _run_worker(self) -> None:
        try:
            while (item := self._next()) is not None:
                try:
                    if isinstance(item, _Chunk):
                        with self._cond:
                            self._chunks_waiting -= 1
                        self._stat_chunk(item)
                    else:
                        self._scan_dir(*item)
                except Exception:  # a bug must not hang the walk
                    log.exception("scan of %r failed", item[0])
                finally:
                    with self._cond:
                        self._pending -= 1
                        if self._pending == 0:
                            self._cond.notify_all()
        finally:
            self._put(_WORKER_DONE)

    def _next(self):
        with self._cond:
            while not self._stack and self._pending and not self._cancel.is_set():
                self._cond.wait()
            if self._cancel.is_set() or not self._stack:
                return None
            return self._stack.pop()

    def _push(self, item) -> None:
        with self._cond:
            self._stack.append(item)
            self._pending += 1
            if isinstance(item, _Chunk):
                self._chunks_waiting += 1
            self._cond.notify()

    def _put(self, item: object) -> bool:
        while not self._cancel.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _arm(self, directory: str, parent) -> int | None:
        armer = self._armer
        if armer is None:
            return None
        if parent is _TOP:
            wd = armer.arm_top(directory)
        elif parent is None:
            wd = None  # its parent has no watch: it cannot be placed in the watch table
        else:
            wd = armer.arm_child(directory, parent)
        if wd is None:
            with self._cond:
                self.unwatched += 1
        return wd

    def _scan_dir(self, directory: str, parent, mode: int) -> None:
        paths = self._paths
        rel = paths.rel(directory)
        wd = self._arm(directory, parent)
        try:
            st = os.lstat(directory)
        except OSError as exc:
            self._stats.failed(rel, exc)
            if self._cache is not None and not isinstance(exc, FileNotFoundError):
                # it was listed a moment ago: unreadable is "unknown", never "gone"
                self._put(Piece([unknown_row(rel)], {}))
            return
        if not stat.S_ISDIR(st.st_mode):  # replaced by a file since it was listed
            if self._accept(os.path.basename(directory)):
                self._put(Piece([stat_row(rel, st)], {}))
            return
        row = stat_row(rel, st)
        audit = self._cache is not None
        cached = self._cache.get(rel) if audit else None
        silent = cached is not None and abs(cached - st.st_mtime) < MTIME_EPSILON
        if silent:
            row["audit_skipped"] = True
        try:
            listing = os.scandir(directory)
        except OSError as exc:
            self._stats.failed(rel, exc)
            if audit:
                # Contents unknown: a skipped row protects the children from
                # missing-detection instead of claiming an empty listing.
                row["audit_skipped"] = True
            self._put(Piece([row], {}))
            return
        parent_mtime = st.st_mtime
        d = _Dir(rel, parent_mtime, {rel: st.st_mtime} if audit and not silent else {})
        buf = [row]
        own_row_sent = False
        files: list[os.DirEntry] = []
        chunk = min(self._split_at, self._batch_rows)  # also what one worker holds at once
        try:
            with listing:
                for entry in listing:
                    if self._cancel.is_set():
                        return
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir and mode != SHALLOW:
                        if not own_row_sent:
                            if not self._put(Piece(buf, {})):
                                return
                            buf, own_row_sent = [], True
                        if mode == LISTED and self._watched(entry.path, wd):
                            buf.append(unknown_row(child_rel(rel, entry.name)))
                            if len(buf) >= self._batch_rows:
                                if not self._put(Piece(buf, {})):
                                    return
                                buf = []
                        else:
                            self._push((entry.path, wd, DEEP))
                        continue
                    if silent or not (is_dir or self._accept(entry.name)):
                        continue
                    files.append(entry)
                    if len(files) >= chunk:
                        if not own_row_sent:
                            if not self._put(Piece(buf, {})):
                                return
                            buf, own_row_sent = [], True
                        self._hand_off(d, files)
                        files = []
                buf.extend(self._rows(d, files, audit))
        except OSError as exc:  # the listing broke off half-way
            self._stats.failed(rel, exc)
            buf.extend(self._rows(d, files, audit))
            if audit:  # what was not listed is unknown, not gone
                buf.append(unknown_row(rel))
            d.cache = {}
        self._part_done(d, buf)

    def _watched(self, path: str, parent: int | None) -> bool:
        if self._is_watched is None:
            return True  # no watcher to ask: its events were not ours to lose
        return parent is not None and self._is_watched(path, parent)

    def _hand_off(self, d: _Dir, files: list[os.DirEntry]) -> None:
        """A chunk of a big directory's files: to another worker, or stat-ed here when
        enough chunks already wait (so a fast listing cannot pile them up)."""
        with self._cond:
            crowded = self._workers == 1 or self._chunks_waiting >= self._workers
        if crowded:
            rows = self._rows(d, files, self._cache is not None)
            for i in range(0, len(rows), self._batch_rows):
                if not self._put(Piece(rows[i:i + self._batch_rows], {})):
                    return
            return
        with d.lock:
            d.remaining += 1
        with self._cond:
            self.chunks_shared += 1
        self._push(_Chunk(d, files))

    def _stat_chunk(self, chunk: _Chunk) -> None:
        self._part_done(chunk.d, self._rows(chunk.d, chunk.entries, self._cache is not None))

    def _rows(self, d: _Dir, entries: list[os.DirEntry], audit: bool) -> list[dict]:
        rows = []
        rel = d.rel
        for entry in entries:
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished since the listing
            child = stat_row(child_rel(rel, entry.name), est)
            if audit and not stat.S_ISDIR(est.st_mode):
                child["parent_path"] = rel
                child["parent_mtime"] = d.parent_mtime
            rows.append(child)
        return rows

    def _part_done(self, d: _Dir, rows: list[dict]) -> None:
        """Put one part's rows; the part that ends last carries the directory's cache
        update (under the lock, so no other part of it is put after that)."""
        with d.lock:
            d.remaining -= 1
            last = d.remaining == 0
            if not rows and not (last and d.cache):
                return
            step = self._batch_rows
            for i in range(0, max(len(rows), 1), step):
                end = i + step >= len(rows)
                if not self._put(Piece(rows[i:i + step], d.cache if last and end else {})):
                    return


def unknown_row(rel: str) -> dict:
    """An audit row for a directory that exists but could not be read: no ``modified_time``
    and ``audit_skipped``, which fusion takes as "keep it and its children as they are"."""
    return {"path": rel, "is_directory": True, "audit_skipped": True}


def rechunk(pieces: Iterator[Piece], batch_rows: int,
            first_rows: int | None = None) -> Iterator[tuple[list[dict], dict]]:
    """Batches of exactly ``batch_rows`` rows (the last may be shorter); with
    ``first_rows``, the first batch holds only that many (it reaches fusion sooner).

    A piece's cache update travels with the batch holding the piece's last row,
    so a directory is recorded in the cache only together with its last row.
    Closing this generator closes ``pieces`` at once (the walk's workers stop).
    """
    batch_rows = max(1, batch_rows)
    size = max(1, min(first_rows, batch_rows)) if first_rows else batch_rows
    batch: list[dict] = []
    updates: dict[str, float] = {}
    with closing(pieces):
        for rows, cache in pieces:
            if not rows:
                updates.update(cache)
                continue
            i = 0
            while i < len(rows):
                take = size - len(batch)
                batch.extend(rows[i:i + take])
                i += take
                if i >= len(rows):
                    updates.update(cache)
                if len(batch) >= size:
                    yield batch, updates
                    batch, updates = [], {}
                    size = batch_rows
    if batch or updates:
        yield batch, updates


def iter_tree_rows(
    paths: TreePaths, accept: NameFilter, top: str, armer: Armer | None = None
) -> Iterator[dict]:
    """Rows for ``top`` and everything under it, parents first.

    A small sequential walk for directories that appear in realtime (created, moved in,
    renamed): it runs a little at a time as the pipe drains, so it is a generator that
    holds one open directory at most. Each directory is armed before it is listed.
    """
    row = lstat_row(paths, top)
    if row is None:
        return
    if not row["is_directory"]:
        if accept(row["file_name"]):
            yield row
        return
    wd = armer.arm_top(top) if armer is not None else None
    yield row
    stack = [(top, row["path"], wd)]
    while stack:
        directory, rel, parent = stack.pop()
        try:
            # One directory open at a time: subdirectories wait on the stack.
            with os.scandir(directory) as listing:
                for entry in listing:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        if not (is_dir or accept(entry.name)):
                            continue
                        if is_dir and armer is not None and parent is not None:
                            child_wd = armer.arm_child(entry.path, parent)
                        else:
                            child_wd = None
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    child = child_rel(rel, entry.name)
                    yield stat_row(child, st)
                    if is_dir:
                        stack.append((entry.path, child, child_wd))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):  # gone again: its delete follows
                log.warning("cannot list new directory %r: %s", rel, exc)


def sentinel_stat(paths: TreePaths, path: str) -> dict | None:
    """Sentinel answer for one view path (§12.7); None when it cannot be told."""
    full = paths.resolve(path)
    if full is None:
        log.warning("sentinel path %r is outside the root; ignored", path)
        return None
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return {"path": path, "mtime": 0.0, "status": "missing"}
    except OSError as exc:
        log.warning("cannot stat %r: %s", path, exc)
        return None
    return {"path": path, "mtime": st.st_mtime, "size": st.st_size, "status": "exists"}
