"""Open or create one tree's LMDB environment: format version, map growth, read/write entry points.

One environment = one file ``<name>.lmdb`` (``subdir=False``) plus LMDB's
``<name>.lmdb-lock``, which a backup never needs.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import lmdb
import orjson

from fustor.errors import (
    NotFoundError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
    StoreFormatError,
)
from fustor.store import keys
from fustor.store.records import IS_DIR, Node
from fustor.store.tree import DUPSORT, Dbs, TreeReader, TreeWriter
from fustor.store.writer import Writer, is_disk_full

FORMAT_VERSION = 2
DB_NAMES = Dbs._fields
# what a file that LMDB can open but that does not hold together is (a plain copy of a
# live store taken while it was written, or a damaged disk); never "run migrate" for it
TORN = "not a consistent fustor store: torn copy or corruption; restore from a backup"
DEFAULT_MAP_SIZE = 8 << 30  # address space only; the file grows as pages are used
GROW_WAIT_S = 5.0  # how long a map growth waits for readers to leave
MIN_MAP_SIZE = 1 << 20


def open_env(path: Path, *, readonly: bool, map_size: int) -> lmdb.Environment:
    kw = dict(
        subdir=False, readonly=readonly, max_dbs=len(DB_NAMES) + 2, readahead=False,
        max_readers=1024, map_size=map_size, meminit=False,
    )
    try:
        return lmdb.open(str(path), lock=True, **kw)
    except lmdb.Error as exc:
        if not readonly:
            raise
        # A copy in a read-only directory cannot get a lock file; read it without one.
        if "ermission" in str(exc) or "Read-only" in str(exc):
            return lmdb.open(str(path), lock=False, **kw)
        raise


class _Gate:
    """Readers share the map; a map resize waits until no reader is inside."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    def enter(self) -> None:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1

    def leave(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            if not self._cond.wait_for(lambda: not self._readers, timeout):
                self._resizing = False
                self._cond.notify_all()
                raise StoreBusyError("the store must grow but readers stay open; retry shortly")
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


_OPEN: dict[str, Store] = {}


class Store:
    """One tree on disk. ``read()`` for queries, ``submit()``/``write()`` for changes."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        readonly: bool = False,
        map_size: int | None = None,
        tree_id: str | None = None,
        max_queue: int = 64,
        max_group: int = 16,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise NotFoundError(f"no store at {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                _create_atomically(self.path, tree_id or uuid.uuid4().hex)
        size = self.path.stat().st_size if self.path.exists() else 0
        self._map_size = max(map_size or DEFAULT_MAP_SIZE, MIN_MAP_SIZE, 2 * size)
        self._closed = False
        self._writer: Writer | None = None
        self._owner: Store | None = None
        key = os.path.realpath(self.path)
        shared = _OPEN.get(key)
        if shared is not None:
            # LMDB allows one environment per file per process: a second Store on the same
            # file (e.g. `inspect` run in-process) reads through the first one's environment.
            if not readonly:
                raise StoreError(f"{self.path} is already open for writing in this process")
            self._owner = shared
            self.env, self._gate, self.dbs = shared.env, shared._gate, shared.dbs
            self.format_version = shared.format_version
            return
        try:
            self.env = open_env(self.path, readonly=readonly, map_size=self._map_size)
        except lmdb.InvalidError:
            raise StoreFormatError(f"{self.path} is not a fustor store (not an LMDB file), or "
                                   f"is {TORN}") from None
        except lmdb.Error as exc:
            raise StoreFormatError(f"{self.path} cannot be opened as a fustor store: {exc}") from None
        self._gate = _Gate()
        try:
            self.format_version = self._check_format(tree_id)
            self.dbs = self._open_dbs()
        except BaseException:
            self.env.close()
            raise
        _OPEN[key] = self
        if not readonly:
            self._writer = Writer(self._run_group, self._grow, self.path.name, max_queue, max_group)

    # -- open ---------------------------------------------------------------------
    def _check_format(self, tree_id: str | None) -> int:
        if self.env.stat()["entries"] == 0:
            if self.readonly:
                raise StoreFormatError(f"{self.path} is empty, not a fustor store")
            self._create(tree_id or uuid.uuid4().hex)
            return FORMAT_VERSION
        pages = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        if pages > self.path.stat().st_size:  # cut short: its last pages were never copied
            raise StoreFormatError(f"{self.path} is {TORN} (the file ends before its last page)")
        try:
            with self.env.begin() as txn:
                if txn.get(b"meta") is None:
                    raise StoreFormatError(f"{self.path} is an LMDB file but not a fustor store")
                tables = txn.get(b"aggregates") is not None
            meta = self.env.open_db(b"meta", create=False)
            with self.env.begin() as txn:
                raw = txn.get(b"format_version", db=meta)
            version = 0 if raw is None else int(orjson.loads(raw))
        except (lmdb.Error, ValueError, TypeError) as exc:
            raise StoreFormatError(f"{self.path} is {TORN} ({exc})") from None
        if raw is None and tables:  # format 0 had no aggregates: its version was lost
            raise StoreFormatError(f"{self.path} is {TORN} (its format version is unreadable)")
        if version < FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path} is in store format {version}; this fustor reads format "
                f"{FORMAT_VERSION}. Run `fustor migrate {self.path.parent}` to upgrade it."
            )
        if version > FORMAT_VERSION:
            raise StoreFormatError(
                f"{self.path} was written by a newer fustor (store format {version}); this "
                f"fustor reads format {FORMAT_VERSION}. Upgrade fustor to open it."
            )
        return version

    def _create(self, tree_id: str) -> None:
        _init_tables(self.env, tree_id)

    def _open_dbs(self) -> Dbs:
        if self.readonly:
            with self.env.begin() as txn:
                missing = [n for n in DB_NAMES if txn.get(n.encode()) is None]
            if missing:
                raise StoreFormatError(f"{self.path} lacks tables {missing}; it is not a fustor store")
            return Dbs(*(_open_db(self.env, n, create=False) for n in DB_NAMES))
        return Dbs(*(_open_db(self.env, n) for n in DB_NAMES))

    # -- reads --------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[TreeReader]:
        """A consistent snapshot for queries; it never waits for the writer."""
        if self._closed or (self._owner is not None and self._owner._closed):
            raise StoreClosedError(f"{self.path} is closed")
        self._gate.enter()
        try:
            for attempt in (0, 1):
                try:
                    txn = self.env.begin()
                    break
                except lmdb.MapResizedError:  # another process grew the map
                    if attempt:
                        raise
                    self.env.set_mapsize(0)
            try:
                yield TreeReader(txn, self.dbs)
            finally:
                txn.abort()
        finally:
            self._gate.leave()

    @property
    def tree_id(self) -> str:
        with self.read() as r:
            return r.meta("tree_id")

    # -- writes -------------------------------------------------------------------
    def submit(self, fn: Callable[[TreeWriter], object], *, block: bool = True,
               timeout: float | None = None) -> Future:
        """Run ``fn(writer)`` in the next write transaction; the future resolves after commit."""
        if self._closed:
            raise StoreClosedError(f"{self.path} is closed")
        if self._writer is None:
            raise StoreError(f"{self.path} is open read-only")
        return self._writer.submit(fn, block=block, timeout=timeout)

    def write(self, fn: Callable[[TreeWriter], object]):
        """Like :meth:`submit` but waits for the commit and returns ``fn``'s result."""
        return self.submit(fn).result()

    @property
    def queued(self) -> int:
        return self._writer.queued if self._writer else 0

    def _run_group(self, group: list) -> list:
        """Run the jobs in one transaction. A job may carry ``undo()``: it is called (in
        this thread, latest first) whenever the job's changes do not reach the disk —
        its own failure, or the whole group's (map full: the group runs again; disk full)
        — so state a job keeps beside the store can follow the store exactly."""
        out = []
        ran: list = []
        txn = self.env.begin(write=True)
        try:
            for fn, _fut in group:
                child = self.env.begin(write=True, parent=txn)
                ran.append(fn)
                try:
                    w = TreeWriter(child, self.dbs)
                    result = fn(w)
                    w.finish()
                except lmdb.MapFullError as exc:
                    child.abort()
                    raise exc
                except lmdb.Error as exc:
                    child.abort()
                    if is_disk_full(exc):
                        raise
                    _undo([ran.pop()])
                    out.append((False, StoreError(f"write failed: {exc}")))
                    continue
                except Exception as exc:
                    child.abort()
                    _undo([ran.pop()])
                    out.append((False, exc))
                    continue
                child.commit()
                out.append((True, result))
            txn.commit()
        except BaseException:
            txn.abort()
            _undo(ran)
            raise
        return out

    def _grow(self) -> None:
        with self._gate.exclusive(GROW_WAIT_S):
            self._map_size *= 2
            self.env.set_mapsize(self._map_size)

    # -- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owner is not None:
            return
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        _OPEN.pop(os.path.realpath(self.path), None)
        with self._gate.exclusive():
            self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def disk_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def map_size(self) -> int:
        """Bytes of address space mapped for this store (the file may be smaller)."""
        return self.env.info()["map_size"]

    def copy_to(self, dest: str | os.PathLike, compact: bool = True) -> None:
        """A consistent backup while the writer keeps committing."""
        self.env.copy(str(dest), compact=compact)


def _init_tables(env: lmdb.Environment, tree_id: str) -> None:
    with env.begin(write=True) as txn:
        dbs = Dbs(*(_open_db(env, n, txn=txn) for n in DB_NAMES))
        w = TreeWriter(txn, dbs)
        w.put_meta("format_version", FORMAT_VERSION)
        w.put_meta("tree_id", tree_id)
        w.put_meta("created_at", time.time())
        w.put_meta("migrations", [])
        w.upsert(keys.ROOT, True)
        w.finish()


def _open_db(env: lmdb.Environment, name: str, **kw):
    """One named table (DUPSORT for the child-mtime index and the name index)."""
    return env.open_db(name.encode(), dupsort=name in DUPSORT, **kw)


def _create_atomically(path: Path, tree_id: str) -> None:
    """A new store is made complete under a temporary name, then renamed: a crash while
    creating it (a view added by a reload, a forest member's first push) never leaves an
    empty or half-made file under the store's name."""
    tmp = path.with_name(path.name + ".creating")
    for leftover in (tmp, Path(str(tmp) + "-lock")):
        leftover.unlink(missing_ok=True)
    env = open_env(tmp, readonly=False, map_size=MIN_MAP_SIZE * 4)
    try:
        _init_tables(env, tree_id)
        env.sync(True)
    finally:
        env.close()
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is durable
    finally:
        os.close(fd)
    Path(str(tmp) + "-lock").unlink(missing_ok=True)


def apply_changes(w: TreeWriter, changes) -> int:
    """Apply ``("upsert", path, is_dir, size, mtime, ctime)`` / ``("delete", path)`` tuples."""
    n = 0
    norm = keys.normalise
    create, node_key, parent_of = w.create, keys.node_key, keys.parent_of
    for ch in changes:
        if ch[0] == "delete":
            w.delete(norm(ch[1]))
        else:
            _op, path, is_dir, size, mtime, ctime = ch
            path = norm(path)
            # a new path is one put (TreeWriter.create); an existing one is updated
            if path == keys.ROOT or not create(path, node_key(path), parent_of(path),
                                               IS_DIR if is_dir else 0, size, mtime, ctime):
                w.upsert(path, is_dir, size, mtime, ctime)
        n += 1
    return n


__all__ = ["Store", "Node", "FORMAT_VERSION", "apply_changes"]


def _undo(jobs: list) -> None:
    for fn in reversed(jobs):
        undo = getattr(fn, "undo", None)
        if undo is not None:
            undo()
