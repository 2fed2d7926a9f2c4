"""Realtime: watchdog's Observer on the root → ordered, numbered events.

::

    inotify ─► watchdog Observer ─► _Handler.dispatch (watchdog's thread)
                                        │ rows (stat at handling time)
                                        ▼
                               RealtimeQueue (bounded, seq 1, 2, 3, …) ─► drain()

Event mapping (agent.md §12.4, with the §16 fixes):

* directory created or moved in → an update row for it **and** for everything
  already inside it (mkdir -p, cp -r, tar, mv from outside the root);
* file created → an update row with ``is_atomic_write: false`` at once: the
  file exists but a writer may still hold it. This loses nothing — hard links,
  fifos, empty files and files moved in from outside never get a close-write —
  and costs one extra row for files that are then written and closed;
* file modified / attributes changed → ``is_atomic_write: false``, at most one
  per path every ``throttle_interval_sec`` (the creation row counts);
* file closed after writing → ``is_atomic_write: true``, always; resets the
  throttle;
* deleted → delete row; renamed → delete row for the old path, update rows for
  the new path (a directory: its whole new subtree);
* ``file_pattern`` applies to file names here too; directories always pass.

Watchdog reports a new directory's existing content itself; those events
duplicate our own walk of the directory, so a short-lived memory of the paths
our walks reported suppresses them (a deletion of a path forgets it).
Synthetic events (watchdog's own walks after moves) are ignored for the same
reason.

Loss is never silent: a full queue sets ``overflowed`` (the leader runs a full audit
and calls ``clear_overflow``), so does watchdog's report of a kernel queue
overflow; a failure to watch the root, or a probe finding the per-user inotify
watch limit exhausted, sets ``watch_limit_reached`` (the pipe falls back to
audits). Handlers log and go on; they never raise.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import ClassVar

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from fustor.agent.scanner import NameFilter, TreePaths, iter_tree_rows, lstat_row

log = logging.getLogger(__name__)

# How long (and how many) paths reported by a walk suppress watchdog's duplicates.
RECENT_TTL_SEC = 60.0
RECENT_MAX = 100_000
THROTTLE_PRUNE_AT = 10_000
# A watch-limit probe costs three syscalls; new directories trigger at most one a second.
PROBE_INTERVAL_SEC = 1.0
WATCHDOG_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"


# Only these reach the handler, and the inotify mask is narrowed to them: no
# IN_OPEN / IN_CLOSE_NOWRITE from readers, no directory-modified echo per change.
_WANTED_EVENTS = (
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent,
    FileMovedEvent, DirMovedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent,
)


class RealtimeQueue:
    """Bounded FIFO of realtime events, each numbered by a strictly increasing ``seq``.

    A put into a full queue drops the event, counts it and sets ``overflowed``;
    later events are queued again as soon as there is room (they are still
    true), and ``overflowed`` stays set until the owner clears it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._events: deque[dict] = deque()
        self._cond = threading.Condition()
        self._seq = 0
        self.overflowed = False
        self.dropped = 0

    def put(self, event_type: str, row: dict) -> bool:
        with self._cond:
            if len(self._events) >= self.capacity:
                if not self.overflowed:
                    log.warning(
                        "realtime queue full (%d events): events are being lost; "
                        "a full audit by the leader must repair the view", self.capacity)
                self.overflowed = True
                self.dropped += 1
                return False
            self._seq += 1
            self._events.append({"event_type": event_type, "rows": [row], "seq": self._seq})
            self._cond.notify()
            return True

    def mark_overflow(self, why: str) -> None:
        with self._cond:
            if not self.overflowed:
                log.warning("realtime events lost (%s); a full audit by the leader must repair the view", why)
            self.overflowed = True

    def clear_overflow(self) -> None:
        with self._cond:
            self.overflowed = False

    def drain(self, max_events: int, timeout: float) -> list[dict]:
        with self._cond:
            if not self._events and timeout > 0:
                self._cond.wait_for(lambda: bool(self._events), timeout)
            n = min(max(0, max_events), len(self._events))
            return [self._events.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._events)


class Watcher:
    """Owns the watchdog Observer of one source root."""

    def __init__(self, paths: TreePaths, accept: NameFilter, events: RealtimeQueue,
                 throttle_interval_sec: float) -> None:
        self.paths = paths
        self.accept = accept
        self.events = events
        self.throttle_interval = throttle_interval_sec
        self._observer = None
        self._inotify_fd: int | None = None
        self._lock = threading.Lock()
        self.root_lost = False
        self.watch_limit_reached = False
        self.watched_dirs = 0
        self._last_probe = 0.0
        # path → monotonic time; insertion order is age order (entries are re-inserted on update)
        self._throttle: dict[str, float] = {}
        self._recent: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------

    @property
    def watching(self) -> bool:
        obs = self._observer
        return obs is not None and obs.is_alive() and not self.root_lost

    def start(self) -> None:
        with self._lock:
            if self._observer is not None:
                return
            self.root_lost = False
            self.watch_limit_reached = False
            _OverflowTap.register(self)
            observer = None
            try:
                with _FD_LOCK:
                    before = _inotify_fds()
                    observer = Observer()
                    created = _inotify_fds() - before
                self._inotify_fd = created.pop() if len(created) == 1 else None
                observer.schedule(_Handler(self), self.paths.root, recursive=True,
                                  event_filter=list(_WANTED_EVENTS))
                observer.start()
            except OSError as exc:
                # Watchdog raises only for the root (or when no inotify instance is
                # left); it skips subdirectories it cannot watch, which the probe
                # below catches when the cause is the watch limit.
                log.error("cannot watch %r: %s; realtime is off, audits must cover it",
                          self.paths.root, exc)
                self.watch_limit_reached = True
                if observer is not None:
                    _stop_observer(observer)
                return
            self._observer = observer
            self.watched_dirs = _count_watches(self._inotify_fd)
            self._probe_watch_limit(force=True)

    def stop(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
            if observer is not None:
                _stop_observer(observer)
            self._throttle.clear()
            self._recent.clear()

    def _probe_watch_limit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_probe < PROBE_INTERVAL_SEC:
            return
        self._last_probe = now
        if _watch_limit_exhausted(self.paths.root) and not self.watch_limit_reached:
            log.error("inotify watch limit reached (fs.inotify.max_user_watches): new "
                      "directories under %r are not watched; audits must cover them",
                      self.paths.root)
            self.watch_limit_reached = True

    # -- event handling (watchdog's dispatch thread) -----------------------------

    def handle(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return
        src = os.fsdecode(event.src_path)
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            self._moved(src, os.fsdecode(event.dest_path), event.is_directory)
        elif isinstance(event, (FileCreatedEvent, DirCreatedEvent)):
            self._created(src, event.is_directory)
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self._deleted(src, event.is_directory)
        elif isinstance(event, FileClosedEvent):
            self._closed(src)
        elif isinstance(event, (FileModifiedEvent, FileAttribEvent)):
            self._modified(src)

    def _inside(self, path: str) -> bool:
        if self.paths.inside(path):
            return True
        log.debug("event outside the root ignored: %r", path)
        return False

    def _created(self, path: str, is_dir: bool) -> None:
        if not self._inside(path) or path == self.paths.root:
            return
        seen = self._recent.get(path)
        if seen is not None and time.monotonic() - seen < RECENT_TTL_SEC:
            return  # already reported by the walk of a new directory
        if is_dir:
            self._report_tree(path)
            self._probe_watch_limit()
            return
        if not self.accept(os.path.basename(path)):
            return
        row = lstat_row(self.paths, path)
        if row is None:
            return
        if not row["is_directory"]:
            row["is_atomic_write"] = False
            self._remember(self._throttle, path, THROTTLE_PRUNE_AT, self.throttle_interval)
        self.events.put("update", row)

    def _modified(self, path: str) -> None:
        if not self._inside(path) or not self.accept(os.path.basename(path)):
            return
        last = self._throttle.get(path)
        now = time.monotonic()
        if last is not None and now - last < self.throttle_interval:
            return
        row = lstat_row(self.paths, path)
        if row is None or row["is_directory"]:
            return
        self._remember(self._throttle, path, THROTTLE_PRUNE_AT, self.throttle_interval)
        row["is_atomic_write"] = False
        self.events.put("update", row)

    def _closed(self, path: str) -> None:
        if not self._inside(path) or not self.accept(os.path.basename(path)):
            return
        self._throttle.pop(path, None)
        row = lstat_row(self.paths, path)
        if row is None or row["is_directory"]:
            return  # gone again: its delete event follows
        row["is_atomic_write"] = True
        self.events.put("update", row)

    def _deleted(self, path: str, is_dir: bool) -> None:
        if not self._inside(path):
            return
        if path == self.paths.root:
            log.error("the root %r was deleted; realtime stopped", path)
            self.root_lost = True
            return
        self._forget(path)
        if is_dir:
            self.watched_dirs = max(0, self.watched_dirs - 1)
        elif not self.accept(os.path.basename(path)):
            return
        self.events.put("delete", {"path": self.paths.rel(path)})

    def _moved(self, src: str, dest: str, is_dir: bool) -> None:
        if src and self._inside(src) and src != self.paths.root:
            self._forget(src)
            if is_dir or self.accept(os.path.basename(src)):
                self.events.put("delete", {"path": self.paths.rel(src)})
        if not dest or not self._inside(dest):
            return
        if is_dir:
            # A renamed directory keeps its watches; one moved in from outside gets new ones.
            self._report_tree(dest, new_watches=not src)
            self._probe_watch_limit()
        elif self.accept(os.path.basename(dest)):
            row = lstat_row(self.paths, dest)
            if row is not None:
                self.events.put("update", row)

    def _report_tree(self, top: str, new_watches: bool = True) -> None:
        """Update rows for a new directory and everything already inside it."""
        for abs_path, row in iter_tree_rows(self.paths, self.accept, top):
            if new_watches and row["is_directory"]:
                self.watched_dirs += 1
            self._remember(self._recent, abs_path, RECENT_MAX, RECENT_TTL_SEC)
            if not self.events.put("update", row):
                return  # loss is flagged; the repairing snapshot covers the rest of this tree

    def _forget(self, path: str) -> None:
        self._throttle.pop(path, None)
        self._recent.pop(path, None)

    @staticmethod
    def _remember(table: dict[str, float], path: str, limit: int, ttl: float) -> None:
        now = time.monotonic()
        table.pop(path, None)
        table[path] = now
        if len(table) > limit:
            # Oldest first: drop what has expired, then the oldest until 10 % is free,
            # so a table full of fresh entries is not copied on every insert.
            keep = int(limit * 0.9)
            for key in list(table):
                if now - table[key] < ttl and len(table) <= keep:
                    break
                del table[key]


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher.handle(event)
        except Exception:
            log.exception("realtime handler failed on %r; continuing", event)


def _stop_observer(observer) -> None:
    try:
        observer.stop()
        if observer.ident is not None:
            observer.join(timeout=10)
    except Exception:
        log.exception("stopping the watchdog observer failed")


# -- kernel facts: which inotify instance is ours, how many watches, limit probe --

_FD_LOCK = threading.Lock()


def _inotify_fds() -> set[int]:
    fds = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:inotify":
                fds.add(int(name))
        except OSError:
            continue
    return fds


def _count_watches(fd: int | None) -> int:
    """Watches held by an inotify instance, from ``/proc/self/fdinfo`` (1 if unknown)."""
    if fd is None:
        return 1
    count = 0
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            tail = b""
            while chunk := f.read(1 << 20):
                data = tail + chunk
                count += data.count(b"inotify wd:")
                tail = data[-10:]
    except OSError:
        return 1
    return max(count, 1)


_libc = None


def _watch_limit_exhausted(path: str) -> bool:
    """True when one more inotify watch cannot be added for this user (ENOSPC)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = _libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            return False  # out of instances: says nothing about watches
        try:
            wd = _libc.inotify_add_watch(fd, os.fsencode(path), 0x00000400)  # IN_DELETE_SELF
            return wd < 0 and ctypes.get_errno() == errno.ENOSPC
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


class _OverflowTap(logging.Handler):
    """Watchdog reports a kernel queue overflow only in its log: turn that into
    ``overflowed`` for every running watcher (the record does not say whose)."""

    _instance: ClassVar[_OverflowTap | None] = None
    _watchers: ClassVar[weakref.WeakSet[Watcher]] = weakref.WeakSet()
    _guard: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def register(cls, watcher: Watcher) -> None:
        with cls._guard:
            cls._watchers.add(watcher)
            if cls._instance is None:
                cls._instance = cls(level=logging.WARNING)
                logging.getLogger(WATCHDOG_OVERFLOW_LOGGER).addHandler(cls._instance)

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" not in str(record.msg).lower():
            return
        for watcher in list(self._watchers):
            if watcher.watching:
                watcher.events.mark_overflow("inotify queue overflow")
