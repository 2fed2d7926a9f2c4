"""Realtime backend for platforms without inotify (macOS, BSD, Windows): watchdog's
recursive observer. Watchdog arms every directory itself when it starts (walks do not
arm here) and reports a kernel queue overflow only in its log, which is tapped.

On Linux the ``inotify`` backend is used instead (watch_inotify.py says why); this one
stays selectable there (``FsSource(backend="watchdog")``) so it is tested everywhere.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
import weakref
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

from fustor.agent.realtime_queue import RealtimeQueue
from fustor.agent.scanner import NameFilter, TreePaths
from fustor.agent.watcher import Watcher

log = logging.getLogger(__name__)

# A watch-limit probe costs three syscalls; new directories trigger at most one a second.
PROBE_INTERVAL_SEC = 1.0
WATCHDOG_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"

# Only these reach the handler, and the inotify mask is narrowed to them: no
# IN_OPEN / IN_CLOSE_NOWRITE from readers, no directory-modified echo per change.
_WANTED_EVENTS = (
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent,
    FileMovedEvent, DirMovedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent,
)


class WatchdogWatcher(Watcher):
    backend = "watchdog"

    def __init__(self, paths: TreePaths, accept: NameFilter, events: RealtimeQueue,
                 throttle_interval_sec: float) -> None:
        super().__init__(paths, accept, events, throttle_interval_sec)
        self._observer = None
        self._inotify_fd: int | None = None
        self._lock = threading.Lock()
        self._watched = 0
        self._last_probe = 0.0

    @property
    def watching(self) -> bool:
        obs = self._observer
        return obs is not None and obs.is_alive() and not self.root_lost

    @property
    def watched_dirs(self) -> int:
        return self._watched if self.watching else 0

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
            self._watched = _count_watches(self._inotify_fd)
            self.fully_armed = True  # watchdog armed the whole tree before returning
            self._probe_watch_limit(force=True)

    def stop(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
            if observer is not None:
                _stop_observer(observer)
        self._reset()

    def armed_walk_done(self, unwatched: int) -> None:
        pass  # walks do not arm here; the probe says whether the limit was hit

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

    def handle(self, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return  # watchdog's own walks of new directories: our tree walk reports those
        src = os.fsdecode(event.src_path)
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            dest = os.fsdecode(event.dest_path)
            if src:
                self._deleted(src, event.is_directory)
            if dest and event.is_directory:
                self._dir_appeared(dest)
                self._probe_watch_limit()
            elif dest:
                self._file_moved_in(dest)
        elif isinstance(event, DirCreatedEvent):
            self._watched += 1
            self._dir_appeared(src)
            self._probe_watch_limit()
        elif isinstance(event, FileCreatedEvent):
            self._file_created(src)
        elif isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            if src == self.paths.root:
                log.error("the root %r was deleted; realtime stopped", src)
                self.root_lost = True
                return
            if event.is_directory:
                self._watched = max(0, self._watched - 1)
            self._deleted(src, event.is_directory)
        elif isinstance(event, FileClosedEvent):
            self._closed(src)
        elif isinstance(event, (FileModifiedEvent, FileAttribEvent)):
            self._modified(src)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: WatchdogWatcher) -> None:
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
    _watchers: ClassVar[weakref.WeakSet[WatchdogWatcher]] = weakref.WeakSet()
    _guard: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def register(cls, watcher: WatchdogWatcher) -> None:
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
                watcher.events.mark_lost(None, why="inotify queue overflow")
