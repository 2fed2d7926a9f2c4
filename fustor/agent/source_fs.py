"""Source ``fs``: what an agent sees of one directory tree, as row dicts.

No networking: the pipe calls these methods and hands the rows to the sender.
All paths in rows are view paths — relative to the root with a leading ``/``,
the root itself is ``/`` (fusion-protocol §4.2, agent.md §12.8).

* :meth:`FsSource.snapshot`, :meth:`~FsSource.audit`, :meth:`~FsSource.scan_path`
  — parallel stat walks, streamed in bounded memory (``scanner.py``);
* :meth:`~FsSource.stat_paths` — the sentinel's re-stat of suspect paths;
* :meth:`~FsSource.start_watch` / :meth:`~FsSource.drain` — realtime events,
  numbered by ``seq`` (``watcher.py``); :meth:`~FsSource.take_lost` — where events
  were lost, for a scoped repair.

Watches are armed by the walks (Linux): the snapshot's, every full audit's, and
:meth:`~FsSource.arm` (a walk of directories only, for a pipe that does not
snapshot). ``start_watch`` itself watches the root only, so the first rows of a
snapshot flow at once instead of after a separate arming walk of the whole tree.

Choices worth knowing:

* Symlinks are never followed. Walks and realtime report a symlink by
  ``lstat`` (``is_directory`` false, the link's own size and times) and never
  enter a symlink to a directory; ``file_pattern`` applies to them as to files.
* A new file is reported as soon as it is created (``is_atomic_write: false``)
  and again when closed after writing (``true``); see ``watcher.py``.
* The audit cache maps *view paths* of directories to their mtime.
* ``status["unreadable"]`` and ``status["scan_errors"]`` accumulate over the
  life of the source (the first 20 distinct paths are kept).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from fustor.agent.realtime_queue import RealtimeQueue
from fustor.agent.scanner import (
    DEEP,
    LISTED,
    NameFilter,
    ScanStats,
    TreePaths,
    Walk,
    lstat_row,
    rechunk,
    sentinel_stat,
)
from fustor.agent.watcher import make_watcher

_NO_FILES = NameFilter("\0")  # a name no file has: a walk of directories only
FIRST_SNAPSHOT_ROWS = 100  # the first snapshot push is small: fusion shows rows at once

log = logging.getLogger(__name__)


class FsSource:
    """One watched directory tree.

    Scans may run concurrently with each other and with the watcher; each
    scan uses its own ``scan_workers`` threads, which end when the iteration
    ends or is closed.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        file_pattern: str = "*",
        scan_workers: int = 4,
        throttle_interval_sec: float = 5.0,
        batch_rows: int = 1000,
        max_pending_events: int = 100_000,
        max_pending_bytes: int = 64 << 20,
        backend: str = "auto",
    ) -> None:
        self.paths = TreePaths(root)
        self.accept = NameFilter(file_pattern)
        self.scan_workers = max(1, scan_workers)
        self.batch_rows = max(1, batch_rows)
        self._stats = ScanStats()
        self._events = RealtimeQueue(max_pending_events, max_pending_bytes)
        self._watcher = make_watcher(backend, self.paths, self.accept, self._events,
                                     throttle_interval_sec)

    @property
    def root(self) -> str:
        return self.paths.root

    # -- walks -------------------------------------------------------------------

    def _walk(self, start: str | list[tuple[str, int]], *, workers: int, recursive: bool = True,
              mtime_cache: dict[str, float] | None = None, arm: bool = False,
              accept: NameFilter | None = None,
              first_rows: int | None = None) -> Iterator[tuple[list[dict], dict]]:
        w = self._watcher
        armer = w.armer if arm and w.watching else None
        walk = Walk(self.paths, start, accept=accept or self.accept, stats=self._stats,
                    workers=workers, batch_rows=self.batch_rows, recursive=recursive,
                    mtime_cache=mtime_cache, armer=armer,
                    is_watched=w.watched_before if armer is not None else None)
        whole_tree = start == self.paths.root and recursive
        with closing(rechunk(iter(walk), self.batch_rows, first_rows)) as batches:
            yield from batches
        if armer is not None and whole_tree and walk.complete:
            w.armed_walk_done(walk.unwatched)

    def snapshot(self) -> Iterator[list[dict]]:
        """Update rows for the whole tree in batches of ``batch_rows`` (the last
        may be shorter, and the first holds at most ``FIRST_SNAPSHOT_ROWS``: the view has
        rows to show while the walk goes on); a directory's row comes before its entries' rows."""
        with closing(self._walk(self.paths.root, workers=self.scan_workers, arm=True,
                                first_rows=FIRST_SNAPSHOT_ROWS)) as batches:
            for rows, _ in batches:
                yield rows

    def arm(self) -> int:
        """Arm a watch on every directory (a walk that stats directories only); returns
        how many could not be armed. For a pipe that does not snapshot (a follower,
        ``message-only``); a snapshot arms as it goes."""
        w = self._watcher
        if w.armer is None or not w.watching:
            return w.unwatched_dirs  # this backend arms by itself, or nothing is watched
        with closing(self._walk(self.paths.root, workers=self.scan_workers, arm=True,
                                accept=_NO_FILES)) as batches:
            for _ in batches:
                if not w.watching:
                    break  # stopped meanwhile: the rest of the walk would arm nothing
        return w.unwatched_dirs

    def audit(self, mtime_cache: dict[str, float],
              scope: list[tuple[str, bool]] | None = None,
              ) -> Iterator[tuple[list[dict], dict[str, float]]]:
        """Audit rows (§12.6) with the cache updates that go with them.

        A directory whose view path is in ``mtime_cache`` with an unchanged
        mtime is silent: its row carries ``audit_skipped`` and its files are not
        read, but its subdirectories are still walked. Other directories send
        their row and their files' rows (with ``parent_path``/``parent_mtime``),
        and their new mtime rides with the batch holding their last row. An
        empty cache makes a full audit (which is how the pipe re-reads silent
        directories now and then, §16.7). ``mtime_cache`` is only read.

        ``scope`` (from :meth:`take_lost`) limits the audit to where realtime events were
        lost: ``(dir, True)`` audits that subtree; ``(dir, False)`` lists that directory
        (its files, and the subdirectories that were not watched, whole); a watched
        subdirectory is reported "unknown", which keeps it as it is in fusion. A
        directory that is gone is replaced by its nearest existing ancestor, listed.
        """
        cache = dict(mtime_cache)  # the pipe may update its copy while we walk
        start: str | list[tuple[str, int]] = self.paths.root
        if scope is not None:
            start = self._scope_starts(scope)
        with closing(self._walk(start, workers=self.scan_workers, mtime_cache=cache,
                                arm=True)) as batches:
            yield from batches

    def _scope_starts(self, scope: list[tuple[str, bool]]) -> list[tuple[str, int]]:
        starts: dict[str, int] = {}
        for rel, recursive in scope:
            full = self.paths.resolve(rel)
            while full is not None and full != self.paths.root and not os.path.isdir(full):
                full, recursive = os.path.dirname(full), False
            if full is None:
                continue
            mode = DEEP if recursive else LISTED
            starts[full] = min(mode, starts.get(full, mode))  # DEEP wins
        return sorted(starts.items())

    def scan_path(self, path: str, recursive: bool = True) -> Iterator[list[dict]]:
        """On-demand scan of one path (a view path, or absolute under the root).

        A path escaping the root (``..``, a sibling sharing the root's prefix,
        a symlinked ancestor leading out) or a missing path yields nothing. A
        file gives one row; a directory gives its row and, recursively or one
        level deep, the rows of its entries.
        """
        full = self.paths.resolve(path)
        if full is None:
            log.warning("scan of %r refused: outside the root %r", path, self.paths.root)
            return
        row = lstat_row(self.paths, full)
        if row is None:
            log.warning("scan of %r: no such path", path)
            return
        if not row["is_directory"]:
            if full == self.paths.root or self.accept(row["file_name"]):
                yield [row]
            return
        workers = max(1, self.scan_workers // 2) if recursive else 1
        with closing(self._walk(full, workers=workers, recursive=recursive)) as batches:
            for rows, _ in batches:
                yield rows

    def stat_paths(self, paths: list[str]) -> list[dict]:
        """Sentinel re-stat (§12.7), in the calling thread: ``exists`` with mtime
        and size, or ``missing``; paths outside the root or failing otherwise
        are left out."""
        out = []
        for path in paths:
            answer = sentinel_stat(self.paths, path)
            if answer is not None:
                out.append(answer)
        return out

    # -- realtime ----------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._watcher.backend

    @property
    def fully_armed(self) -> bool:
        """A walk of the whole tree has armed every directory it could since the start."""
        return self._watcher.fully_armed

    def use_moves(self, on: bool) -> None:
        """Send a watched directory's rename or move inside the tree as one move row (the
        ``move`` extension) while ``on``: the pipe turns it on once fusion takes moves
        and holds this tree's snapshot, and off when the session ends."""
        self._watcher.moves_ok = on

    def rewalk(self, path: str) -> None:
        """Walk the directory at view path ``path`` and send its rows as realtime events
        (fusion did not hold what moved there)."""
        self._watcher.rewalk(path)

    def start_watch(self) -> None:
        """Start realtime: the root is watched at once, the rest as walks arm it (on
        Linux; the watchdog backend arms the whole tree here). Never raises for a watch
        failure: it shows as ``watch_limit_reached`` in :attr:`status`."""
        self._watcher.start()

    def stop_watch(self) -> None:
        self._watcher.stop()

    def drain(self, max_events: int = 1000, timeout: float = 0.2) -> list[dict]:
        """Up to ``max_events`` realtime events in order, waiting at most
        ``timeout`` seconds for the first: ``{"event_type", "rows": [row], "seq"}``."""
        return self._watcher.drain(max_events, timeout)

    def take_lost(self) -> str | list[tuple[str, bool]] | None:
        """Where realtime events were lost since the last call (None: nowhere; ``"all"``:
        unknown, the whole tree; else ``[(view path of a directory, recursive)]``), and
        forget it. Call it *before* the repairing audit, so a loss during it shows again."""
        return self._events.take_lost()

    def keep_lost(self, scope: str | list[tuple[str, bool]]) -> None:
        """Put back what :meth:`take_lost` gave, when the repair did not finish."""
        if scope == "all":
            self._events.mark_lost(None, new=False)
            return
        for rel, recursive in scope:
            self._events.mark_lost(rel, recursive, new=False)

    def clear_overflow(self) -> None:
        self._events.take_lost()

    def queued(self, path: str) -> bool:
        """Whether a realtime event for the view path ``path`` waits in the queue, not yet
        drained (see :meth:`RealtimeQueue.queued`)."""
        return self._events.queued(path)

    @property
    def status(self) -> dict:
        w = self._watcher
        q = self._events
        return {
            "backend": w.backend,
            "watching": w.watching,
            "watched_dirs": w.watched_dirs if w.watching else 0,
            "unwatched_dirs": w.unwatched_dirs,
            "fully_armed": w.fully_armed,
            "watch_limit_reached": w.watch_limit_reached,
            "overflowed": q.overflowed,
            "last_overflow_at": q.last_overflow_at,
            "unreadable": self._stats.unreadable,
            "scan_errors": self._stats.errors,
            "events_dropped": q.dropped,
            "events_coalesced": q.coalesced,
            "queued_events": len(q),
            "queued_bytes": q.bytes,
            "moves_sent": w.moves_sent,
            "tree_walks": q.walks,
        }
