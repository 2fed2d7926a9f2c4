"""Consistency state kept beside the tree: tombstones, suspects, blind spots, audit marks, meta.

Every table is keyed like the ``nodes`` database (``keys.node_key``), so a
subtree's entries are found with the same key ranges. Mixed into
``TreeReader`` / ``TreeWriter``; ``self.txn`` and ``self.dbs`` come from there.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from fustor.store import index, keys
from fustor.store.records import EXPIRY, IS_DIR, PAIR, pack_pair

# meta: how many suspect entries are directories (so the count of suspect *files* is
# O(1): entries of the suspects table minus this), kept in the same transactions
SUSPECT_DIRS = "suspect_dirs"
# expired tombstones purged by one call: the writer is never held long by a purge
PURGE_CHUNK = 5_000


def _expiry_key(expires_at: float, key: bytes) -> bytes:
    # big-endian IEEE floats sort like numbers only when non-negative: clamp at 0
    return EXPIRY.pack(max(expires_at, 0.0)) + key


class StateReads:
    txn: object
    dbs: object

    # tombstones: path -> (logical_ts, wall_ts)
    def tombstone(self, path: bytes) -> tuple[float, float] | None:
        v = self.txn.get(keys.node_key(path), db=self.dbs.tombstones)
        return None if v is None else PAIR.unpack_from(v)

    def tombstones_due(self, wall_cutoff: float) -> bool:
        """True when some tombstone's wall stamp is older than ``wall_cutoff``: O(1)."""
        cur = self.txn.cursor(db=self.dbs.tombstone_expiry)
        return cur.first() and EXPIRY.unpack_from(cur.key())[0] < wall_cutoff

    def iter_tombstones(self) -> Iterator[tuple[bytes, float, float]]:
        for k, v in self.txn.cursor(db=self.dbs.tombstones):
            a, b = PAIR.unpack_from(v)
            yield keys.path_of(k, bytes(v[PAIR.size :])), a, b

    # suspects: path -> (expires_at (wall clock), recorded_mtime)
    def suspect(self, path: bytes) -> tuple[float, float] | None:
        v = self.txn.get(keys.node_key(path), db=self.dbs.suspects)
        return None if v is None else PAIR.unpack_from(v)

    def iter_suspects(self) -> Iterator[tuple[bytes, float, float]]:
        for k, v in self.txn.cursor(db=self.dbs.suspects):
            a, b = PAIR.unpack_from(v)
            yield keys.path_of(k, bytes(v[PAIR.size :])), a, b

    def suspect_file_count(self) -> int:
        """Suspect entries whose node is a file (pending "missing" reports included: the
        file is still in the tree, flagged, until a second report confirms it gone)."""
        return self.count(self.dbs.suspects) - int(self.meta(SUSPECT_DIRS, 0) or 0)

    def due_suspects(self, now: float, limit: int = 10_000) -> list[bytes]:
        """Paths whose suspect entry expires at or before ``now`` (wall clock)."""
        out = []
        cur = self.txn.cursor(db=self.dbs.suspect_expiry)
        for k in cur.iternext(values=False):
            if EXPIRY.unpack_from(k)[0] > now or len(out) >= limit:
                break
            key = k[EXPIRY.size :]
            v = self.txn.get(key, db=self.dbs.suspects)
            if v is not None:
                out.append(keys.path_of(key, bytes(v[PAIR.size :])))
        return out

    # blind spots: two path sets
    def _blind_db(self, kind: str):
        return self.dbs.blind_additions if kind == "additions" else self.dbs.blind_deletions

    def in_blind(self, kind: str, path: bytes) -> bool:
        return self.txn.get(keys.node_key(path), db=self._blind_db(kind)) is not None

    def iter_blind(self, kind: str) -> Iterator[bytes]:
        for k, v in self.txn.cursor(db=self._blind_db(kind)):
            yield keys.path_of(k, bytes(v))

    def count(self, db) -> int:
        return self.txn.stat(db)["entries"]

    # audit: directories seen in the open cycle
    def iter_audit_dirs(self) -> Iterator[bytes]:
        for k, v in self.txn.cursor(db=self.dbs.audit_dirs):
            yield keys.path_of(k, bytes(v))

    # meta: name -> JSON value
    def meta(self, name: str, default=None):
        v = self.txn.get(name.encode(), db=self.dbs.meta)
        return default if v is None else orjson.loads(v)


class StateWrites:
    txn: object
    dbs: object

    def put_tombstone(self, path: bytes, logical_ts: float, wall_ts: float) -> None:
        key = keys.node_key(path)
        dbs = self.dbs
        old = self.txn.get(key, db=dbs.tombstones)
        if old is not None:
            self.txn.delete(_expiry_key(PAIR.unpack_from(old)[1], key), db=dbs.tombstone_expiry)
        self.txn.put(key, pack_pair(logical_ts, wall_ts, path), db=dbs.tombstones)
        self.txn.put(_expiry_key(wall_ts, key), b"", db=dbs.tombstone_expiry)

    def delete_tombstone(self, path: bytes) -> bool:
        key = keys.node_key(path)
        old = self.txn.get(key, db=self.dbs.tombstones)
        if old is None:
            return False
        self.txn.delete(_expiry_key(PAIR.unpack_from(old)[1], key), db=self.dbs.tombstone_expiry)
        return self.txn.delete(key, db=self.dbs.tombstones)

    def purge_tombstones(self, wall_cutoff: float, limit: int = PURGE_CHUNK) -> int:
        """Drop up to ``limit`` tombstones whose wall stamp is older than ``wall_cutoff``,
        oldest first, by the expiry index: the cost is what is purged, not the table."""
        n = 0
        cur = self.txn.cursor(db=self.dbs.tombstone_expiry)
        tombs = self.dbs.tombstones
        if not cur.first():
            return 0
        while n < limit:
            k = cur.key()
            if not k or EXPIRY.unpack_from(k)[0] >= wall_cutoff:
                break
            self.txn.delete(k[EXPIRY.size :], db=tombs)
            n += 1
            if not cur.delete():
                break
        return n

    def _is_dir_node(self, key: bytes) -> bool:
        raw = self.txn.get(key, db=self.dbs.nodes)
        return raw is not None and bool(raw[0] & IS_DIR)

    def _count_suspect_dirs(self, delta: int) -> None:
        n = int(self.meta(SUSPECT_DIRS, 0) or 0) + delta
        self.put_meta(SUSPECT_DIRS, max(n, 0))

    def put_suspect(self, path: bytes, expires_at: float, recorded_mtime: float) -> None:
        key = keys.node_key(path)
        old = self.txn.get(key, db=self.dbs.suspects)
        if old is not None:
            self.txn.delete(_expiry_key(PAIR.unpack_from(old)[0], key), db=self.dbs.suspect_expiry)
        elif self._is_dir_node(key):
            self._count_suspect_dirs(+1)
        self.txn.put(key, pack_pair(expires_at, recorded_mtime, path), db=self.dbs.suspects)
        self._filled[self.dbs.suspects] = True
        self.txn.put(_expiry_key(expires_at, key), b"", db=self.dbs.suspect_expiry)

    def delete_suspect(self, path: bytes) -> bool:
        key = keys.node_key(path)
        v = self.txn.get(key, db=self.dbs.suspects)
        if v is None:
            return False
        self._forget_suspect(key, v)
        return True

    def _forget_suspect(self, key: bytes, value: bytes, is_dir: bool | None = None) -> None:
        """Drop a suspect entry; ``is_dir`` is given when its node is already deleted."""
        if self._is_dir_node(key) if is_dir is None else is_dir:
            self._count_suspect_dirs(-1)
        self.txn.delete(key, db=self.dbs.suspects)
        self.txn.delete(_expiry_key(PAIR.unpack_from(value)[0], key), db=self.dbs.suspect_expiry)

    def recount_suspect_dirs(self) -> int:
        """Set the directory-suspect counter from the tables (stores written before it)."""
        n = sum(1 for k, _v in self.txn.cursor(db=self.dbs.suspects) if self._is_dir_node(k))
        self.put_meta(SUSPECT_DIRS, n)
        return n

    def add_blind(self, kind: str, path: bytes) -> None:
        tail = path if keys.needs_path_tail(path) else b""
        db = self._blind_db(kind)
        self.txn.put(keys.node_key(path), tail, db=db)
        self._filled[db] = True

    def discard_blind(self, kind: str, path: bytes) -> bool:
        return self.txn.delete(keys.node_key(path), db=self._blind_db(kind))

    def add_audit_dir(self, path: bytes) -> None:
        tail = path if keys.needs_path_tail(path) else b""
        self.txn.put(keys.node_key(path), tail, db=self.dbs.audit_dirs)

    def discard_audit_dir(self, path: bytes) -> bool:
        return self.txn.delete(keys.node_key(path), db=self.dbs.audit_dirs)

    def clear(self, db) -> None:
        """Empty one table."""
        self.txn.drop(db, delete=False)
        if db is self.dbs.suspects:
            self.put_meta(SUSPECT_DIRS, 0)
        elif db is self.dbs.tombstones:
            self.txn.drop(self.dbs.tombstone_expiry, delete=False)
        elif db is self.dbs.name_blobs:
            for name in (index.STALE, index.IN_BLOCKS):
                self.put_meta(name, 0)

    def put_meta(self, name: str, value) -> None:
        self.txn.put(name.encode(), orjson.dumps(value), db=self.dbs.meta)

    def _drop_node_state(self, key: bytes, path: bytes, is_dir: bool) -> None:
        """Entries that die with their (already deleted) node: suspect and blind addition."""
        if self._may_hold(self.dbs.suspects):
            v = self.txn.get(key, db=self.dbs.suspects)
            if v is not None:
                self._forget_suspect(key, v, is_dir)
        if self._may_hold(self.dbs.blind_additions):
            self.txn.delete(key, db=self.dbs.blind_additions)
