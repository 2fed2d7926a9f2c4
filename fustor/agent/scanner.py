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
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

UNREADABLE_KEPT = 20
# Pieces in flight between the workers and the consumer, per worker.
PIECES_PER_WORKER = 2
MTIME_EPSILON = 1e-6


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


_WORKER_DONE = object()


class Walk:
    """One parallel walk from ``start`` (an absolute directory path).

    Iterate it to get pieces; closing the iteration early stops the workers.
    ``mtime_cache`` switches to audit rows (§12.6): a directory whose cached
    mtime is unchanged is *silent* — its row carries ``audit_skipped`` and its
    files are not read — but its subdirectories are always walked.
    """

    def __init__(
        self,
        paths: TreePaths,
        start: str,
        *,
        accept: NameFilter,
        stats: ScanStats,
        workers: int,
        batch_rows: int,
        recursive: bool = True,
        mtime_cache: dict[str, float] | None = None,
    ) -> None:
        self._paths = paths
        self._accept = accept
        self._stats = stats
        self._workers = max(1, workers)
        self._batch_rows = max(1, batch_rows)
        self._recursive = recursive
        self._cache = mtime_cache
        self._stack = [start]
        self._pending = 1  # directories pushed and not finished
        self._cond = threading.Condition()
        self._out: queue.Queue = queue.Queue(maxsize=PIECES_PER_WORKER * self._workers)
        self._cancel = threading.Event()

    # -- consumer side ---------------------------------------------------------

    def __iter__(self) -> Iterator[Piece]:
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
            while (directory := self._next_dir()) is not None:
                try:
                    self._scan_dir(directory)
                except Exception:  # a bug must not hang the walk
                    log.exception("scan of %r failed", directory)
                finally:
                    with self._cond:
                        self._pending -= 1
                        if self._pending == 0:
                            self._cond.notify_all()
        finally:
            self._put(_WORKER_DONE)

    def _next_dir(self) -> str | None:
        with self._cond:
            while not self._stack and self._pending and not self._cancel.is_set():
                self._cond.wait()
            if self._cancel.is_set() or not self._stack:
                return None
            return self._stack.pop()

    def _push(self, directory: str) -> None:
        with self._cond:
            self._stack.append(directory)
            self._pending += 1
            self._cond.notify()

    def _put(self, item: object) -> bool:
        while not self._cancel.is_set():
            try:
                self._out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _scan_dir(self, directory: str) -> None:
        paths = self._paths
        rel = paths.rel(directory)
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
        buf = [row]
        own_row_sent = False
        parent_mtime = st.st_mtime
        try:
            with listing:
                for entry in listing:
                    if self._cancel.is_set():
                        return
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir and self._recursive:
                        if not own_row_sent:
                            if not self._put(Piece(buf, {})):
                                return
                            buf, own_row_sent = [], True
                        self._push(entry.path)
                        continue
                    if silent or not (is_dir or self._accept(entry.name)):
                        continue
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished since the listing
                    child = stat_row(child_rel(rel, entry.name), est)
                    if audit and not is_dir:
                        child["parent_path"] = rel
                        child["parent_mtime"] = parent_mtime
                    buf.append(child)
                    if len(buf) >= self._batch_rows:
                        if not self._put(Piece(buf, {})):
                            return
                        buf, own_row_sent = [], True
        except OSError as exc:  # the listing broke off half-way
            self._stats.failed(rel, exc)
            if audit:  # what was not listed is unknown, not gone
                buf.append(unknown_row(rel))
            self._put(Piece(buf, {}))
            return
        self._put(Piece(buf, {rel: st.st_mtime} if audit and not silent else {}))


def unknown_row(rel: str) -> dict:
    """An audit row for a directory that exists but could not be read: no ``modified_time``
    and ``audit_skipped``, which fusion takes as "keep it and its children as they are"."""
    return {"path": rel, "is_directory": True, "audit_skipped": True}


def rechunk(pieces: Iterator[Piece], batch_rows: int) -> Iterator[tuple[list[dict], dict]]:
    """Batches of exactly ``batch_rows`` rows (the last may be shorter).

    A piece's cache update travels with the batch holding the piece's last row,
    so a directory is recorded in the cache only together with its last row.
    Closing this generator closes ``pieces`` at once (the walk's workers stop).
    """
    batch_rows = max(1, batch_rows)
    batch: list[dict] = []
    updates: dict[str, float] = {}
    with closing(pieces):
        for rows, cache in pieces:
            if not rows:
                updates.update(cache)
                continue
            i = 0
            while i < len(rows):
                take = batch_rows - len(batch)
                batch.extend(rows[i:i + take])
                i += take
                if i >= len(rows):
                    updates.update(cache)
                if len(batch) >= batch_rows:
                    yield batch, updates
                    batch, updates = [], {}
    if batch or updates:
        yield batch, updates


def iter_tree_rows(
    paths: TreePaths, accept: NameFilter, top: str
) -> Iterator[tuple[str, dict]]:
    """``(abs_path, row)`` for ``top`` and everything under it, parents first.

    A small sequential walk for directories that appear in realtime (created,
    moved in, renamed); the big walks use :class:`Walk`.
    """
    row = lstat_row(paths, top)
    if row is None:
        return
    yield top, row
    if not row["is_directory"]:
        return
    stack = [(top, row["path"])]
    while stack:
        directory, rel = stack.pop()
        try:
            # One directory open at a time: subdirectories wait on the stack.
            with os.scandir(directory) as listing:
                for entry in listing:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        if not (is_dir or accept(entry.name)):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    child = child_rel(rel, entry.name)
                    yield entry.path, stat_row(child, st)
                    if is_dir:
                        stack.append((entry.path, child))
        except OSError as exc:
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
