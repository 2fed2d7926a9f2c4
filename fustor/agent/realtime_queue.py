"""The realtime queue: compact events between the watcher's reader and the pipe.

One queued event is one ``bytes`` object (~130 bytes for a 70-byte path, deque slot
included), never a dict of strings: at a million queued events that is the difference
between ~130 MB and ~1 GB. Layout::

    byte 0      kind (bits 0-1: 0 move, 1 update, 2 delete, 3 tree) | 4 is_directory
                | 8 is_atomic_write false | 16 is_atomic_write true
    update      + struct "<qdd" (size, mtime, ctime), then the view path (fs bytes)
    delete/tree + the view path
    move        + struct "<qddH" (the new place's stat, the old path's length), the old
                path, then the new path

A *tree* event stands for "this directory appeared (created, moved in, renamed): report
it and everything under it". It is expanded into rows by a walk when it is drained, so a
``mv`` of a 200k-file directory queues two events, not 200k.

A *move* event stands for "the directory at the old path is now at the new path", for a
fusion that moves what it holds (the ``move`` extension, ``fustor/protocol.py``): no walk,
one row, queued instead of the delete and the tree event only when no walk of either
place waits or runs (:meth:`RealtimeQueue.put_move`); otherwise the watcher queues those
two as before.

Bounds: at most ``max_events`` events and ``max_bytes`` bytes. A put into a full queue
drops the event and records *where* the loss is (the directory to re-audit), so the
repair can be scoped; past ``MAX_LOST_DIRS`` distinct places, or when the kernel says
its own queue overflowed, the loss is "somewhere": the whole tree.

Coalescing (each saves rows, none changes the final state fusion reaches):

* a delete of ``D`` pops the events at the tail of the queue that concern ``D`` or paths
  under it (``rm -rf`` deletes the children just before the directory, so a backlog of
  200k file deletes collapses into the one directory delete, which fusion applies to
  the whole subtree);
* while a tree event for ``D`` waits, events for paths under ``D`` are not queued: the
  walk, which happens later, reports the state they describe (``cp -r``, ``tar x``).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import deque

log = logging.getLogger(__name__)

MOVE, UPDATE, DELETE, TREE = 0, 1, 2, 3
KIND_MASK = 3
IS_DIR = 4
ATOMIC_FALSE = 8
ATOMIC_TRUE = 16
_STAT = struct.Struct("<qdd")
_MOVE = struct.Struct("<qddH")
_HEAD = 1
_UPDATE_HEAD = _HEAD + _STAT.size
_MOVE_HEAD = _HEAD + _MOVE.size
ENTRY_OVERHEAD = 48  # what an entry costs beyond its length: the bytes header and deque slot
MAX_LOST_DIRS = 10_000  # places remembered for a scoped repair; past that, the whole tree
ALL = "all"


def _path_at(entry: bytes) -> int:
    """Where the (new) view path starts in an entry."""
    kind = entry[0] & KIND_MASK
    if kind == UPDATE:
        return _UPDATE_HEAD
    if kind == MOVE:
        return _MOVE_HEAD + _MOVE.unpack_from(entry, _HEAD)[3]
    return _HEAD


def _related(a: bytes, b: bytes) -> bool:
    """One path is the other or under it."""
    if len(a) > len(b):
        a, b = b, a
    return a == b or a == b"/" or b.startswith(a + b"/")


def _parent(rel: bytes) -> bytes:
    i = rel.rfind(b"/")
    return b"/" if i <= 0 else rel[:i]


class RealtimeQueue:
    """Bounded FIFO of compact realtime events; thread-safe, the put side never blocks."""

    def __init__(self, max_events: int = 100_000, max_bytes: int = 64 << 20) -> None:
        self.max_events = max(1, max_events)
        self.max_bytes = max(1024, max_bytes)
        self._q: deque[bytes] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._pending_trees: dict[bytes, int] = {}
        self._lost: set[tuple[bytes, bool]] = set()
        self._lost_all = False
        self.dropped = 0
        self.coalesced = 0
        self.last_overflow_at: float | None = None
        self.peak_bytes = 0
        self._walking: bytes | None = None  # the tree being walked by the drain

    # -- putting (the watcher's reader thread, and the watchdog fallback's) -------------
    def put_update(self, rel: str, size: int, mtime: float, ctime: float, is_dir: bool,
                   atomic: bool | None = None) -> bool:
        flags = UPDATE | (IS_DIR if is_dir else 0)
        if atomic is not None:
            flags |= ATOMIC_TRUE if atomic else ATOMIC_FALSE
        path = os.fsencode(rel)
        entry = bytes((flags,)) + _STAT.pack(size, mtime, ctime) + path
        return self._put(entry, path, _UPDATE_HEAD)

    def put_delete(self, rel: str) -> bool:
        path = os.fsencode(rel)
        return self._put(bytes((DELETE,)) + path, path, _HEAD)

    def put_tree(self, rel: str) -> bool:
        path = os.fsencode(rel)
        return self._put(bytes((TREE,)) + path, path, _HEAD)

    def _put(self, entry: bytes, path: bytes, head: int) -> bool:
        kind = entry[0] & KIND_MASK
        with self._cond:
            if self._pending_trees and self._under_pending_tree(path):
                self.coalesced += 1
                return True
            if kind == DELETE:
                self._pop_tail_under(path)
            size = len(entry) + ENTRY_OVERHEAD
            if len(self._q) >= self.max_events or self._bytes + size > self.max_bytes:
                self.dropped += 1
                self._record_loss(entry, path)
                return False
            self._q.append(entry)
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            if kind == TREE:
                self._pending_trees[path] = self._pending_trees.get(path, 0) + 1
            self._cond.notify()
            return True

    def put_move(self, old: str, new: str, size: int, mtime: float, ctime: float) -> bool:
        """Queue the move of a directory from ``old`` to ``new`` (both in the tree). False,
        and nothing queued, unless every event about the subtree until now has reached
        fusion or waits in order before it — no walk under or above either place waits or
        runs (it would list a place that changed under it), no loss waits for a repair —
        and it fits; the caller then queues the delete and the tree event instead."""
        o, n = os.fsencode(old), os.fsencode(new)
        with self._cond:
            q = self._q
            if self._lost_all or self._lost or len(o) > 0xFFFF:
                return False
            if self._walking is not None and (_related(self._walking, o)
                                              or _related(self._walking, n)):
                return False
            if any(_related(p, o) or _related(p, n) for p in self._pending_trees):
                return False
            entry = (bytes((MOVE | IS_DIR,)) + _MOVE.pack(size, mtime, ctime, len(o)) + o + n)
            size = len(entry) + ENTRY_OVERHEAD
            if len(q) >= self.max_events or self._bytes + size > self.max_bytes:
                return False
            q.append(entry)
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            self._cond.notify()
            return True

    @property
    def walks(self) -> int:
        """Tree walks queued or running (a directory that appeared, being reported)."""
        with self._cond:
            return sum(self._pending_trees.values()) + (self._walking is not None)

    def set_walking(self, rel: str | None) -> None:
        """The drain walks the tree at ``rel`` now (None: no walk): no move may touch it."""
        with self._cond:
            self._walking = None if rel is None else os.fsencode(rel)

    def _under_pending_tree(self, path: bytes) -> bool:
        pending = self._pending_trees
        p = path
        while True:
            i = p.rfind(b"/")
            if i <= 0:
                return False  # "/" itself is never a tree event
            p = p[:i]
            if p in pending:
                return True

    def _pop_tail_under(self, path: bytes) -> None:
        q = self._q
        prefix = path + b"/"
        while q:
            tail = q[-1]
            kind = tail[0] & KIND_MASK
            if kind == MOVE:  # it also deletes its old place: never dropped
                return
            off = _UPDATE_HEAD if kind == UPDATE else _HEAD
            if not (tail.startswith(prefix, off) or (len(tail) - off == len(path)
                                                      and tail.endswith(path))):
                return
            q.pop()
            self._bytes -= len(tail) + ENTRY_OVERHEAD
            self.coalesced += 1
            if kind == TREE:
                self._tree_taken(tail[off:])

    def _tree_taken(self, path: bytes) -> None:
        n = self._pending_trees.get(path, 0) - 1
        if n > 0:
            self._pending_trees[path] = n
        else:
            self._pending_trees.pop(path, None)

    # -- loss ---------------------------------------------------------------------------
    def _record_loss(self, entry: bytes, path: bytes) -> None:
        if not self.overflowed:
            log.warning("realtime queue full (%d events, %d bytes): events are being lost; "
                        "the leader re-audits the directories concerned", len(self._q), self._bytes)
        self.last_overflow_at = time.time()
        if self._lost_all:
            return
        kind = entry[0] & KIND_MASK
        if kind == TREE or (kind == UPDATE and entry[0] & IS_DIR):
            self._lost.add((path, True))  # its content was never reported
        if path != b"/":
            self._lost.add((_parent(path), False))
        if len(self._lost) > MAX_LOST_DIRS:
            self._lost_all = True
            self._lost.clear()

    def mark_lost(self, rel_dir: str | None = None, recursive: bool = True, why: str = "",
                  new: bool = True) -> None:
        """Events were lost elsewhere (the kernel's queue: ``rel_dir`` None, the whole tree);
        ``new`` False puts back a loss whose repair did not finish (not a new overflow)."""
        with self._cond:
            if new:
                if not self.overflowed:
                    log.warning("realtime events lost (%s); the leader re-audits %s",
                                why or "?", "the whole tree" if rel_dir is None else repr(rel_dir))
                self.last_overflow_at = time.time()
            if rel_dir is None:
                self._lost_all = True
                self._lost.clear()
            elif not self._lost_all:
                self._lost.add((os.fsencode(rel_dir), recursive))
                if len(self._lost) > MAX_LOST_DIRS:
                    self._lost_all = True
                    self._lost.clear()

    @property
    def overflowed(self) -> bool:
        return self._lost_all or bool(self._lost)

    def take_lost(self) -> str | list[tuple[str, bool]] | None:
        """What was lost since the last call, and forget it: None (nothing), ``ALL``, or
        ``[(view path of a directory, recursive)]`` with no entry under a recursive one."""
        with self._cond:
            if self._lost_all:
                self._lost_all = False
                self._lost.clear()
                return ALL
            if not self._lost:
                return None
            lost, self._lost = self._lost, set()
        return minimal_scope([(os.fsdecode(p), r) for p, r in lost])

    def clear_overflow(self) -> None:
        self.take_lost()

    # -- draining (one thread at a time) ---------------------------------------------------
    def take(self, max_events: int, timeout: float) -> list[bytes]:
        """Up to ``max_events`` entries in order, waiting at most ``timeout`` for the
        first; stops after a tree entry (its walk comes before what follows it) and after a
        move (which becomes a walk when moves cannot be sent)."""
        out: list[bytes] = []
        with self._cond:
            if not self._q and timeout > 0:
                self._cond.wait_for(lambda: bool(self._q), timeout)
            q = self._q
            while q and len(out) < max_events:
                e = q.popleft()
                self._bytes -= len(e) + ENTRY_OVERHEAD
                out.append(e)
                kind = e[0] & KIND_MASK
                if kind == TREE:
                    self._tree_taken(e[_HEAD:])
                    break
                if kind == MOVE:
                    break
        return out

    def queued(self, path: str) -> bool:
        """Whether an event for the view path ``path`` (of any kind) waits to be drained.
        It only reads the queue: a way to know an event has reached it, as tests do."""
        p = os.fsencode(path)
        with self._cond:
            return any(len(e) - _path_at(e) == len(p) and e.endswith(p) for e in self._q)

    def __len__(self) -> int:
        return len(self._q)

    @property
    def bytes(self) -> int:
        return self._bytes


def decode(entry: bytes) -> tuple[int, str, dict | None]:
    """``(kind, view path, update row or None)`` of one entry; a move's row is the new
    place's update row with ``moved_from``."""
    flags = entry[0]
    kind = flags & KIND_MASK
    if kind == MOVE:
        size, mtime, ctime, n = _MOVE.unpack_from(entry, _HEAD)
        old = os.fsdecode(entry[_MOVE_HEAD:_MOVE_HEAD + n])
        rel = os.fsdecode(entry[_MOVE_HEAD + n:])
        return kind, rel, {"path": rel, "file_name": rel.rsplit("/", 1)[1], "size": size,
                           "modified_time": mtime, "created_time": ctime,
                           "is_directory": True, "moved_from": old}
    if kind != UPDATE:
        return kind, os.fsdecode(entry[_HEAD:]), None
    size, mtime, ctime = _STAT.unpack_from(entry, _HEAD)
    rel = os.fsdecode(entry[_UPDATE_HEAD:])
    row = {"path": rel, "file_name": "" if rel == "/" else rel.rsplit("/", 1)[1], "size": size,
           "modified_time": mtime, "created_time": ctime, "is_directory": bool(flags & IS_DIR)}
    if flags & ATOMIC_TRUE:
        row["is_atomic_write"] = True
    elif flags & ATOMIC_FALSE:
        row["is_atomic_write"] = False
    return kind, rel, row


def minimal_scope(scope: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Drop entries covered by a recursive entry above (or at) them; sorted by path."""
    recursive = {p for p, r in scope if r}

    def covered(p: str, r: bool) -> bool:
        q = p
        while q != "/":
            q = q.rsplit("/", 1)[0] or "/"
            if q in recursive:
                return True
        return not r and p in recursive

    out = {(p, r) for p, r in scope if not covered(p, r)}
    return sorted(out)
