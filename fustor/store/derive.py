"""Everything derived from the nodes, recomputed in one pass over the ``nodes`` table.

``fustor inspect --verify`` compares these figures with what the writer kept by deltas;
the format-2 migration writes them into a store whose nodes were copied as they were.

A builder sees every node once (``add``) and then either writes its table
(``write``) or reports where the stored table differs (``check``). To derive one
more table from the nodes, add a builder to :func:`builders`: the migration and
verify both pick it up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fustor.store import keys
from fustor.store.records import (
    AGG,
    DIGEST_MOD,
    EXPIRY,
    IS_DIR,
    NODE,
    PAIR,
    Aggregate,
    entry_digests,
    float_of_sortable,
    pack_agg,
    unpack_agg,
)
from fustor.store.tree import BIG_DIR, TreeReader, TreeWriter

NEG = float("-inf")


def iter_nodes(r: TreeReader) -> Iterator[tuple[bytes, bytes, bool, int, float]]:
    """``(key, path, is_dir, size, mtime)`` of every node, in key order."""
    unpack = NODE.unpack_from
    for k, v in r.txn.cursor(db=r.dbs.nodes):
        flags, size, mtime = unpack(v)[:3]
        yield bytes(k), keys.path_of(k, bytes(v[NODE.size :])), bool(flags & IS_DIR), size, mtime


class Aggregates:
    """Per-directory aggregates of whole subtrees (``last_change_at`` aside: it is history,
    not a function of the nodes; it is only checked to grow towards the root)."""

    def __init__(self) -> None:
        # dir path -> [files, dirs, size, latest_mtime, digest, digest_nomtime, children]
        self.acc: dict[bytes, list] = {}
        self.kinds: dict[bytes, bool] = {}

    def _get(self, d: bytes) -> list:
        t = self.acc.get(d)
        if t is None:
            t = self.acc[d] = [0, 0, 0, NEG, 0, 0, 0]
        return t

    def add(self, key: bytes, path: bytes, is_dir: bool, size: int, mtime: float) -> None:
        self.kinds[path] = is_dir
        dig, dnm = entry_digests(path, is_dir, size, mtime)
        if is_dir:  # the directory itself is part of its own subtree
            t = self._get(path)
            t[1] += 1
            t[3] = max(t[3], mtime)
            t[4] += dig
            t[5] += dnm
        if path == keys.ROOT:
            return
        t = self._get(keys.parent_of(path))
        t[6] += 1
        if not is_dir:
            t[0] += 1
            t[2] += size
            t[3] = max(t[3], mtime)
            t[4] += dig
            t[5] += dnm

    def finish(self) -> dict[bytes, list]:
        """Roll the per-directory sums up, deepest first; returns dir -> whole-subtree figures."""
        acc = self.acc
        for d in sorted(acc, key=keys.depth, reverse=True):
            if d == keys.ROOT or self.kinds.get(d) is not True:
                continue
            t = acc[d]
            p = self._get(keys.parent_of(d))
            p[0] += t[0]
            p[1] += t[1]
            p[2] += t[2]
            p[3] = max(p[3], t[3])
            p[4] += t[4]
            p[5] += t[5]
        return acc

    def write(self, w: TreeWriter, now: float) -> None:
        aggdb = w.dbs.aggregates
        w.clear(aggdb)
        for d, t in self.finish().items():
            if self.kinds.get(d) is True:
                w.txn.put(keys.node_key(d), pack_agg(d, (*t[:6], now, t[6])), db=aggdb)
        w.clear(w.dbs.child_mtimes)
        for d, t in self.acc.items():
            if self.kinds.get(d) is True and t[6] >= BIG_DIR:
                w.build_child_index(d)

    def check(self, r: TreeReader, problems: list[dict]) -> None:
        kinds = self.kinds
        for path in kinds:
            if path != keys.ROOT and kinds.get(keys.parent_of(path)) is not True:
                problems.append({"path": keys.display(path),
                                 "problem": "parent missing or not a directory"})
        totals = self.finish()
        aggdb = r.dbs.aggregates
        for path, t in totals.items():
            if kinds.get(path) is not True:
                continue
            raw = r.txn.get(keys.node_key(path), db=aggdb)
            if raw is not None and len(raw) < AGG.size:
                problems.append({"path": keys.display(path), "problem": "aggregate record too short",
                                 "stored": len(raw), "recomputed": AGG.size})
                continue
            got = None if raw is None else unpack_agg(raw)
            want = Aggregate(t[0], t[1], t[2], t[3], t[4] % DIGEST_MOD, t[5] % DIGEST_MOD, 0.0, t[6])
            if got is None or got._replace(last_change_at=0.0) != want:
                problems.append({"path": keys.display(path), "problem": "aggregate mismatch",
                                 "stored": _agg_json(got), "recomputed": _agg_json(want)})
                continue
            if path != keys.ROOT:
                up = r.txn.get(keys.node_key(keys.parent_of(path)), db=aggdb)
                if up is not None and len(up) >= AGG.size and AGG.unpack_from(up)[6] < got.last_change_at:
                    problems.append({"path": keys.display(path),
                                     "problem": "last_change_at newer than its parent's"})
            self._check_index(r, path, got, problems)
        for k, v in r.txn.cursor(db=aggdb):
            path = keys.path_of(k, bytes(v[AGG.size :]))
            if kinds.get(path) is not True:
                problems.append({"path": keys.display(path), "problem": "aggregate without a directory"})

    @staticmethod
    def _check_index(r: TreeReader, d: bytes, agg: Aggregate, problems: list[dict]) -> None:
        key = keys.node_key(d)
        cur = r.txn.cursor(db=r.dbs.child_mtimes)
        stored = []
        if cur.set_key(key):
            stored = [(float_of_sortable(v), bytes(v[8:])) for v in cur.iternext_dup()]
        if not stored:
            if agg.child_count >= BIG_DIR:
                problems.append({"path": keys.display(d), "problem": "big directory without its child-mtime index"})
            return
        want = []
        for k, v in r.iter_children_raw(d):
            m = AGG.unpack_from(r.txn.get(k, db=r.dbs.aggregates))[3] if v[0] & IS_DIR else NODE.unpack_from(v)[2]
            want.append((m, keys.name_of_key(k)))
        if sorted(stored) != sorted(want):
            problems.append({"path": keys.display(d), "problem": "child-mtime index differs from the children"})


class TombstoneExpiry:
    """The expiry index of the tombstones (not derived from the nodes, but rebuilt alike)."""

    def add(self, key: bytes, path: bytes, is_dir: bool, size: int, mtime: float) -> None:
        pass

    def write(self, w: TreeWriter, now: float) -> None:
        db = w.dbs.tombstone_expiry
        w.txn.drop(db, delete=False)
        for k, v in w.txn.cursor(db=w.dbs.tombstones):
            w.txn.put(EXPIRY.pack(max(PAIR.unpack_from(v)[1], 0.0)) + bytes(k), b"", db=db)

    def check(self, r: TreeReader, problems: list[dict]) -> None:
        want = sorted(EXPIRY.pack(max(PAIR.unpack_from(v)[1], 0.0)) + bytes(k)
                      for k, v in r.txn.cursor(db=r.dbs.tombstones))
        got = [bytes(k) for k in r.txn.cursor(db=r.dbs.tombstone_expiry).iternext(values=False)]
        if got != want:
            problems.append({"path": "/", "problem": "tombstone expiry index differs from the tombstones",
                             "stored": len(got), "recomputed": len(want)})


def builders() -> list:
    """One builder per derived table. (Another derived table: append its builder here.)"""
    return [Aggregates(), TombstoneExpiry()]


def _one_pass(r: TreeReader, found: list, progress: Callable[[int], None] | None) -> None:
    n = 0
    for key, path, is_dir, size, mtime in iter_nodes(r):
        for b in found:
            b.add(key, path, is_dir, size, mtime)
        n += 1
        if progress and n % 500_000 == 0:
            progress(n)


def rebuild(w: TreeWriter, now: float, progress: Callable[[int], None] | None = None) -> None:
    """Write every derived table from the nodes (one pass over them)."""
    found = builders()
    _one_pass(w, found, progress)
    for b in found:
        b.write(w, now)


def check(r: TreeReader, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Recompute every derived table from the nodes (one pass) and report the differences."""
    problems: list[dict] = []
    found = builders()
    _one_pass(r, found, progress)
    for b in found:
        b.check(r, problems)
    return problems


def _agg_json(a: Aggregate | None) -> list | None:
    """An aggregate in its record order, digests as hex (JSON cannot hold 128-bit ints)."""
    if a is None:
        return None
    return [*a[:4], f"{a.digest:032x}", f"{a.digest_nomtime:032x}", *a[6:]]
