"""Source ``fs``: what an agent sees of one directory tree, as row dicts.

No networking: the pipe calls these methods and hands the rows to the sender.
All paths in rows are view paths — relative to the root with a leading ``/``,
the root itself is ``/`` (fusion-protocol §4.2, agent.md §12.8).

* :meth:`FsSource.snapshot`, :meth:`~FsSource.audit`, :meth:`~FsSource.scan_path`
  — parallel stat walks, streamed in bounded memory (``scanner.py``);
* :meth:`~FsSource.stat_paths` — the sentinel's re-stat of suspect paths;
* :meth:`~FsSource.start_watch` / :meth:`~FsSource.drain` — realtime events
  from watchdog, numbered by ``seq`` (``watcher.py``).

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
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

from fustor.agent.scanner import (
    NameFilter,
    ScanStats,
    TreePaths,
    Walk,
    lstat_row,
    rechunk,
    sentinel_stat,
)
from fustor.agent.watcher import RealtimeQueue, Watcher

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
    ) -> None:
        self.paths = TreePaths(root)
        self.accept = NameFilter(file_pattern)
        self.scan_workers = max(1, scan_workers)
        self.batch_rows = max(1, batch_rows)
        self._stats = ScanStats()
        self._events = RealtimeQueue(max_pending_events)
        self._watcher = Watcher(self.paths, self.accept, self._events, throttle_interval_sec)

    @property
    def root(self) -> str:
        return self.paths.root

    # -- walks -------------------------------------------------------------------

    def _walk(self, start: str, *, workers: int, recursive: bool = True,
              mtime_cache: dict[str, float] | None = None) -> Iterator[tuple[list[dict], dict]]:
        walk = Walk(self.paths, start, accept=self.accept, stats=self._stats, workers=workers,
                    batch_rows=self.batch_rows, recursive=recursive, mtime_cache=mtime_cache)
        return rechunk(iter(walk), self.batch_rows)

    def snapshot(self) -> Iterator[list[dict]]:
        """Update rows for the whole tree in batches of ``batch_rows`` (the last
        may be shorter); a directory's row comes before its entries' rows."""
        with closing(self._walk(self.paths.root, workers=self.scan_workers)) as batches:
            for rows, _ in batches:
                yield rows

    def audit(self, mtime_cache: dict[str, float]) -> Iterator[tuple[list[dict], dict[str, float]]]:
        """Audit rows (§12.6) with the cache updates that go with them.

        A directory whose view path is in ``mtime_cache`` with an unchanged
        mtime is silent: its row carries ``audit_skipped`` and its files are not
        read, but its subdirectories are still walked. Other directories send
        their row and their files' rows (with ``parent_path``/``parent_mtime``),
        and their new mtime rides with the batch holding their last row. An
        empty cache makes a full audit (which is how the pipe re-reads silent
        directories now and then, §16.7). ``mtime_cache`` is only read.
        """
        cache = dict(mtime_cache)  # the pipe may update its copy while we walk
        with closing(self._walk(self.paths.root, workers=self.scan_workers,
                                mtime_cache=cache)) as batches:
            yield from batches

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

    def start_watch(self) -> None:
        """Watch the root recursively. Never raises for a watch failure: it shows
        as ``watch_limit_reached`` in :attr:`status`."""
        self._watcher.start()

    def stop_watch(self) -> None:
        self._watcher.stop()

    def drain(self, max_events: int = 1000, timeout: float = 0.2) -> list[dict]:
        """Up to ``max_events`` realtime events in order, waiting at most
        ``timeout`` seconds for the first: ``{"event_type", "rows": [row], "seq"}``."""
        return self._events.drain(max_events, timeout)

    def clear_overflow(self) -> None:
        """Acknowledge lost events. Call it *before* the repairing snapshot, so a
        loss during that snapshot shows again."""
        self._events.clear_overflow()

    @property
    def status(self) -> dict:
        w = self._watcher
        return {
            "watching": w.watching,
            "watched_dirs": w.watched_dirs if w.watching else 0,
            "watch_limit_reached": w.watch_limit_reached,
            "overflowed": self._events.overflowed,
            "unreadable": self._stats.unreadable,
            "scan_errors": self._stats.errors,
            "events_dropped": self._events.dropped,
        }
