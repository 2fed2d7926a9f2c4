"""Realtime: file-system events → compact queued events → numbered rows for the pipe.

::

    kernel ─► backend (inotify on Linux, watchdog elsewhere) ─► Watcher handlers
                                                                   │ stat now, encode
                                                                   ▼
               drain() ◄── expands tree events by a walk ◄── RealtimeQueue (bounded)

Two backends, one behaviour:

* ``inotify`` (Linux, ``watch_inotify.py``): our own watch table over a thin inotify
  binding. Watches are armed by the walks (the snapshot's, an audit's, the walk of a
  directory that appeared), so there is no separate arming walk before the first row,
  and a directory rename costs O(1) in the number of watches.
* ``watchdog`` (other platforms, ``watch_watchdog.py``): watchdog's recursive observer.

Event mapping (agent.md §12.4, with the §16 fixes):

* directory created or moved in (or renamed) → a *tree* event: when drained, a walk
  reports the directory and everything already inside it (mkdir -p, cp -r, tar, mv);
* file created → an update row with ``is_atomic_write: false`` at once: the file exists
  but a writer may still hold it. This loses nothing — hard links, fifos, empty files
  and files moved in from outside never get a close-write — and costs one extra row
  for files that are then written and closed;
* file modified / attributes changed → ``is_atomic_write: false``, at most one per path
  every ``throttle_interval_sec`` (the creation row counts);
* file closed after writing → ``is_atomic_write: true``, always; resets the throttle;
* deleted or moved away → one delete row (for a directory it deletes the whole subtree
  in fusion); renamed → a delete row for the old path and a tree event (or an update
  row) for the new one;
* a watched directory renamed or moved inside the tree (inotify, both halves of the
  rename in one read) → one *move* row, when fusion takes moves (``moves_ok``, set by the
  pipe once its snapshot reached fusion) and holds all of it as it is: none of its
  directories went unwatched, no walk of either place waits (``RealtimeQueue.put_move``);
  else the delete and the tree event;
* ``file_pattern`` applies to file names here too; directories always pass.

Loss is never silent: a full queue or a kernel queue overflow is recorded with where it
happened (when known) and the leader re-audits that (``take_lost``); a watch that cannot
be armed counts in ``unwatched_dirs`` and sets ``watch_limit_reached`` when the cause is
the per-user limit. Handlers log and go on; they never raise.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator

from fustor.agent.realtime_queue import MOVE, TREE, UPDATE, RealtimeQueue, decode
from fustor.agent.scanner import Armer, NameFilter, TreePaths, iter_tree_rows

log = logging.getLogger(__name__)

THROTTLE_PRUNE_AT = 10_000
MAX_UNWATCHED_KEPT = 100_000  # directories remembered as unwatched; past that, "somewhere"


class Watcher:
    """What every backend shares: the handlers that turn an event into a queued event,
    and the drain that numbers rows and expands tree events."""

    backend = "none"
    armer: Armer | None = None  # set by backends whose walks arm watches

    def __init__(self, paths: TreePaths, accept: NameFilter, events: RealtimeQueue,
                 throttle_interval_sec: float) -> None:
        self.paths = paths
        self.accept = accept
        self.events = events
        self.throttle_interval = throttle_interval_sec
        self.root_lost = False
        self.watch_limit_reached = False
        self.unwatched_dirs = 0
        self.fully_armed = False  # a walk of the whole tree armed every directory it could
        self._throttle: dict[str, float] = {}  # path → monotonic time, oldest first
        self._drain_lock = threading.Lock()
        self._walk: Iterator[dict] | None = None
        self._seq = 0
        # the pipe sets it while fusion takes moves and holds this tree's snapshot
        self.moves_ok = False
        self.moves_sent = 0
        self._unwatched: list[str] = []  # directories a walk could not arm (sorted, absolute)
        self._unwatched_lost = False  # more than MAX_UNWATCHED_KEPT: somewhere

    # -- what backends implement --------------------------------------------------------
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def watching(self) -> bool:
        raise NotImplementedError

    @property
    def watched_dirs(self) -> int:
        raise NotImplementedError

    def watched_before(self, abs_path: str, parent: int | None) -> bool:
        """Was this directory watched (so its own events were not lost)? A backend that
        cannot tell says no, and the repair walks it whole."""
        return False

    def armed_walk_done(self, unwatched: int) -> None:
        """A walk of the whole tree armed what it could; ``unwatched`` it could not."""
        self.unwatched_dirs = unwatched
        self.fully_armed = True

    def _reset(self) -> None:
        self._throttle.clear()
        with self._drain_lock:
            if self._walk is not None:
                self._walk.close()  # type: ignore[attr-defined]
                self._walk = None
                self.events.set_walking(None)
        self.fully_armed = False
        self._unwatched.clear()
        self._unwatched_lost = False

    def _not_armed(self, path: str) -> None:
        """A directory could not be watched (the limit): its changes are unseen, so a
        move of a tree that holds it is sent as rows of a walk."""
        kept = self._unwatched
        i = bisect.bisect_left(kept, path)
        if i < len(kept) and kept[i] == path:
            return
        if len(kept) < MAX_UNWATCHED_KEPT:
            kept.insert(i, path)
        else:
            self._unwatched_lost = True

    def _holds_unwatched(self, path: str) -> bool:
        """Whether ``path`` or a directory under it could not be armed: O(log n)."""
        if self._unwatched_lost:
            return True
        kept = self._unwatched
        if not kept:
            return False
        i = bisect.bisect_left(kept, path)
        if i < len(kept) and kept[i] == path:
            return True
        prefix = path + "/"
        i = bisect.bisect_left(kept, prefix, i)
        return i < len(kept) and kept[i].startswith(prefix)

    # -- handlers (the backend's reader thread; absolute paths) -----------------------
    def _inside(self, path: str) -> bool:
        if self.paths.inside(path):
            return True
        log.debug("event outside the root ignored: %r", path)
        return False

    def _update(self, path: str, atomic: bool | None) -> None:
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return  # gone again: its delete event follows
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and atomic is not None:
            return  # a directory's own changes are reported by walks, not events
        self.events.put_update(self.paths.rel(path), st.st_size, st.st_mtime, st.st_ctime,
                               is_dir, atomic)

    def _file_created(self, path: str) -> None:
        if not self._inside(path) or not self.accept(os.path.basename(path)):
            return
        self._remember_write(path)
        self._update(path, False)

    def _file_moved_in(self, path: str) -> None:
        if self._inside(path) and self.accept(os.path.basename(path)):
            self._update(path, None)

    def _modified(self, path: str) -> None:
        if not self._inside(path) or not self.accept(os.path.basename(path)):
            return
        last = self._throttle.get(path)
        if last is not None and time.monotonic() - last < self.throttle_interval:
            return
        self._remember_write(path)
        self._update(path, False)

    def _closed(self, path: str) -> None:
        if not self._inside(path) or not self.accept(os.path.basename(path)):
            return
        self._throttle.pop(path, None)
        self._update(path, True)

    def _deleted(self, path: str, is_dir: bool) -> None:
        if not self._inside(path) or path == self.paths.root:
            return
        self._throttle.pop(path, None)
        if is_dir or self.accept(os.path.basename(path)):
            self.events.put_delete(self.paths.rel(path))

    def _dir_appeared(self, path: str) -> None:
        if self._inside(path) and path != self.paths.root:
            self.events.put_tree(self.paths.rel(path))

    def _queue_move(self, old: str, path: str) -> bool:
        """A directory went from ``old`` to ``path``: queue it as one move if fusion can
        take it that way; False (nothing queued) when it must go as the per-file form."""
        if not (self.moves_ok and self.fully_armed and old != self.paths.root
                and path != self.paths.root and self.paths.inside(path)
                and self.paths.inside(old) and not self._holds_unwatched(old)):
            return False
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return False
        if not stat.S_ISDIR(st.st_mode) or not self.events.put_move(
                self.paths.rel(old), self.paths.rel(path), st.st_size, st.st_mtime, st.st_ctime):
            return False
        self._throttle.pop(old, None)
        self.moves_sent += 1
        return True

    def _remember_write(self, path: str) -> None:
        table = self._throttle
        now = time.monotonic()
        table.pop(path, None)
        table[path] = now
        if len(table) > THROTTLE_PRUNE_AT:
            # oldest first: drop what has expired, then the oldest until 10 % is free
            keep = int(THROTTLE_PRUNE_AT * 0.9)
            for key in list(table):
                if now - table[key] < self.throttle_interval and len(table) <= keep:
                    break
                del table[key]

    # -- draining (the pipe's worker thread) -------------------------------------------
    def drain(self, max_events: int, timeout: float) -> list[dict]:
        """Up to ``max_events`` events ``{"event_type", "rows": [row], "seq"}`` in order,
        waiting at most ``timeout`` for the first. A tree event becomes the rows of its
        walk, spread over as many drains as it takes (what follows it waits)."""
        out: list[dict] = []
        with self._drain_lock:
            while len(out) < max_events:
                if self._walk is not None:
                    for row in self._walk:
                        self._seq += 1
                        out.append({"event_type": "update", "rows": [row], "seq": self._seq})
                        if len(out) >= max_events:
                            break
                    else:
                        self._walk = None
                        self.events.set_walking(None)
                    continue
                entries = self.events.take(max_events - len(out), 0 if out else timeout)
                if not entries:
                    break
                for entry in entries:
                    kind, rel, row = decode(entry)
                    if kind == MOVE:
                        self._seq += 1
                        if self.moves_ok:
                            out.append({"event_type": "move", "rows": [row], "seq": self._seq})
                            continue
                        # fusion no longer takes moves (a new session): the per-file form
                        out.append({"event_type": "delete",
                                    "rows": [{"path": row["moved_from"]}], "seq": self._seq})
                        kind = TREE
                    if kind == TREE:
                        self.events.set_walking(rel)
                        self._walk = iter_tree_rows(self.paths, self.accept,
                                                    self.paths.absolute(rel), self.armer)
                        continue
                    self._seq += 1
                    out.append({"event_type": "update" if kind == UPDATE else "delete",
                                "rows": [row if row is not None else {"path": rel}],
                                "seq": self._seq})
        return out

    def rewalk(self, rel: str) -> None:
        """Report the directory at view path ``rel`` and everything under it by a walk (a
        move fusion could not apply)."""
        self.events.put_tree(rel)


def make_watcher(backend: str, paths: TreePaths, accept: NameFilter, events: RealtimeQueue,
                 throttle_interval_sec: float) -> Watcher:
    """``backend``: ``inotify``, ``watchdog`` or ``auto`` (inotify where the kernel has it)."""
    if backend == "auto":
        backend = "inotify" if _has_inotify() else "watchdog"
    if backend == "inotify":
        from fustor.agent.watch_inotify import InotifyWatcher

        return InotifyWatcher(paths, accept, events, throttle_interval_sec)
    if backend == "watchdog":
        from fustor.agent.watch_watchdog import WatchdogWatcher

        return WatchdogWatcher(paths, accept, events, throttle_interval_sec)
    raise ValueError(f"unknown realtime backend {backend!r} (inotify, watchdog or auto)")


def _has_inotify() -> bool:
    try:
        import inotify_simple  # noqa: F401  (Linux only: a thin ctypes binding)
    except (ImportError, OSError):
        return False
    return hasattr(os, "uname") and os.uname().sysname == "Linux"
