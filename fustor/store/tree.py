"""Nodes, the children layout and per-directory subtree aggregates.

``TreeReader`` answers queries inside one read transaction; ``TreeWriter`` adds the
write primitives inside one write transaction. Paths passed to both are
normalised bytes (:func:`fustor.store.keys.normalise`).

Aggregates: ``aggregates[key(D)] = (file_count, dir_count, total_size, latest_mtime)``
of the whole subtree of directory ``D``, ``D`` itself included (so ``dir_count >= 1``
and ``latest_mtime >= D.modified_time``). ``total_size`` sums file sizes only.
A writer does not touch ancestors per row: each change adds a delta to its
parent's pending entry; :meth:`TreeWriter.flush` applies the pending entries
deepest directory first, each one read and written once, and hands the sum on
to the parent. ``latest_mtime`` is a maximum, so a removal only matters when it
removed the maximum; then that directory's value is recomputed from its direct
children (files' mtimes and subdirectories' aggregates), never from the subtree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from fustor.errors import PathError
from fustor.store import index, keys
from fustor.store.records import AGG, IS_DIR, NODE, Node, Stats, pack_node, unpack_node
from fustor.store.search import Found, Query, Searcher
from fustor.store.state import StateReads, StateWrites

NEG = float("-inf")


class Dbs(NamedTuple):
    """Handles of the named databases of one environment."""

    nodes: object
    aggregates: object
    tombstones: object
    suspects: object
    suspect_expiry: object
    blind_additions: object
    blind_deletions: object
    audit_dirs: object
    meta: object
    names: object
    name_dirs: object
    name_blobs: object
    name_filters: object


def _pack_agg(path: bytes, f: int, d: int, s: int, m: float) -> bytes:
    head = AGG.pack(f, d, s, m)
    return head + path if keys.needs_path_tail(path) else head


class TreeReader(StateReads):
    """Queries over one consistent snapshot (a read transaction)."""

    def __init__(self, txn, dbs: Dbs) -> None:
        self.txn = txn
        self.dbs = dbs

    # -- nodes ------------------------------------------------------------------
    def get(self, path: bytes) -> Node | None:
        key = keys.node_key(path)
        v = self.txn.get(key, db=self.dbs.nodes)
        return None if v is None else unpack_node(key, v)

    def children(
        self, path: bytes, after: bytes | None = None, limit: int | None = None
    ) -> tuple[list[Node], bytes | None]:
        """Direct children of ``path`` sorted by name bytes, starting after name ``after``.

        Returns ``(nodes, next_after)``; ``next_after`` is the name to pass on to get
        the next page, or ``None`` when the listing is complete.
        """
        prefix = keys.dir_prefix(path)
        start = prefix + after if after else prefix
        out: list[Node] = []
        if limit is not None and limit <= 0:
            return out, after
        for k, v in self._range(prefix, start):
            if after and k == start:
                continue
            if limit is not None and len(out) >= limit:
                return out, out[-1].path.rsplit(b"/", 1)[-1]
            out.append(unpack_node(k, v))
        return out, None

    def _range(self, prefix: bytes, start: bytes | None = None, db=None) -> Iterator[tuple[bytes, bytes]]:
        """Raw ``(key, value)`` of the keys starting with ``prefix``, from ``start`` on."""
        cur = self.txn.cursor(db=self.dbs.nodes if db is None else db)
        if not cur.set_range(start or prefix):
            return
        for k, v in cur.iternext():
            if not k.startswith(prefix):
                return
            yield k, v

    def iter_children(self, path: bytes) -> Iterator[Node]:
        for k, v in self._range(keys.dir_prefix(path)):
            yield unpack_node(k, v)

    def iter_children_raw(self, path: bytes) -> Iterator[tuple[bytes, bytes]]:
        """``(key, record)`` of the direct children, undecoded (for fast comparisons)."""
        return self._range(keys.dir_prefix(path))

    def aggregate_raw(self, key: bytes) -> bytes | None:
        """The undecoded aggregate record of the directory with node key ``key``."""
        return self.txn.get(key, db=self.dbs.aggregates)

    def walk(self, path: bytes, max_depth: int | None = None) -> Iterator[tuple[int, Node]]:
        """``(depth, node)`` pre-order from ``path`` (depth 0), children sorted by name."""
        top = self.get(path)
        if top is None:
            return
        yield 0, top
        if not top.is_dir or max_depth == 0:
            return
        stack = [self.iter_children(top.path)]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            depth = len(stack)
            yield depth, node
            if node.is_dir and (max_depth is None or depth < max_depth):
                stack.append(self.iter_children(node.path))

    def iter_subtree(self, path: bytes, db=None) -> Iterator[tuple[bytes, bytes]]:
        """Raw ``(key, value)`` of every strict descendant of ``path`` in ``db`` (default nodes)."""
        db = self.dbs.nodes if db is None else db
        fixed = _fixed_size(self.dbs, db)
        want = path + b"/"
        for prefix, must_filter in keys.subtree_ranges(path):
            for k, v in self._range(prefix, db=db):
                if must_filter and not keys.path_of(k, bytes(v[fixed:])).startswith(want):
                    continue
                if path == keys.ROOT and k == keys.ROOT:
                    continue
                yield k, v

    # -- aggregates ---------------------------------------------------------------
    def stats(self, path: bytes) -> Stats | None:
        """Subtree aggregates of ``path`` in O(1); a file reports itself."""
        key = keys.node_key(path)
        v = self.txn.get(key, db=self.dbs.aggregates)
        if v is not None:
            return Stats(*AGG.unpack_from(v))
        n = self.txn.get(key, db=self.dbs.nodes)
        if n is None:
            return None
        node = unpack_node(key, n)
        if node.is_dir:  # pragma: no cover - a directory always has its aggregate
            return self.stats_by_scan(path)
        return Stats(1, 0, node.size, node.modified_time)

    def stats_by_scan(self, path: bytes) -> Stats | None:
        """The same figures as :meth:`stats`, recomputed by a range scan (for checking)."""
        top = self.get(path)
        if top is None:
            return None
        if not top.is_dir:
            return Stats(1, 0, top.size, top.modified_time)
        f = s = 0
        d = 1
        m = top.modified_time
        unpack = NODE.unpack_from
        for _k, v in self.iter_subtree(path):
            flags, size, mtime = unpack(v)[:3]
            if flags & IS_DIR:
                d += 1
            else:
                f += 1
                s += size
            if mtime > m:
                m = mtime
        return Stats(f, d, s, m)

    # -- search -------------------------------------------------------------------
    def search(self, pattern: str, path: bytes = keys.ROOT, limit: int | None = 1000, *,
               after: str | None = None, **filters) -> Found:
        """Nodes under ``path`` matching ``pattern`` (see :mod:`fustor.store.search` for what a
        pattern means, the filters and the order), one page of at most ``limit``."""
        return Searcher(self.txn, self.dbs, Query(pattern, path, **filters)).page(after, limit)


def _fixed_size(dbs: Dbs, db) -> int:
    if db is dbs.nodes:
        return NODE.size
    if db is dbs.aggregates:
        return AGG.size
    if db is dbs.tombstones or db is dbs.suspects:
        return 16
    return 0


class TreeWriter(TreeReader, StateWrites):
    """Write primitives inside one write transaction; call :meth:`flush` before commit."""

    def __init__(self, txn, dbs: Dbs) -> None:
        super().__init__(txn, dbs)
        self._pend: dict[bytes, list] = {}
        self._dirs: set[bytes] = set()
        self.index_pending = index.Pending()

    # -- upsert -------------------------------------------------------------------
    def upsert(
        self,
        path: bytes,
        is_dir: bool,
        size: int = 0,
        modified_time: float = 0.0,
        created_time: float = 0.0,
        *,
        last_updated_at: float | None = None,
        integrity_suspect: bool | None = None,
        known_by_agent: bool | None = None,
        audit_skipped: bool | None = None,
        audit_mark: int | None = None,
    ) -> Node:
        """Create or update the node at ``path``; missing parents are created as empty
        directories, and a node of the other type at ``path`` is removed first.
        Flags left ``None`` keep their stored value (``False``/0 for a new node)."""
        nodes = self.dbs.nodes
        key = keys.node_key(path)
        raw = self.txn.get(key, db=nodes)
        old = None
        if raw is not None:
            old = unpack_node(key, raw)
            if old.is_dir != is_dir:
                if path == keys.ROOT:
                    raise PathError("the root of a view is a directory")
                self._delete_at(path, key, old)
                old = None
        elif path == keys.ROOT and not is_dir:
            raise PathError("the root of a view is a directory")
        if path != keys.ROOT:
            parent = keys.parent_of(path)
            if parent not in self._dirs:
                self._ensure_dir(parent)
        else:
            parent = keys.ROOT
        if old is None:
            node = Node(
                path, is_dir, size, modified_time, created_time,
                last_updated_at or 0.0, bool(integrity_suspect), bool(known_by_agent),
                bool(audit_skipped), audit_mark or 0,
            )
            self._create(node, key, parent)
            return node
        node = old
        old_size, old_m = node.size, node.modified_time
        node.size = size
        node.modified_time = modified_time
        node.created_time = created_time
        if last_updated_at is not None:
            node.last_updated_at = last_updated_at
        if integrity_suspect is not None:
            node.integrity_suspect = integrity_suspect
        if known_by_agent is not None:
            node.known_by_agent = known_by_agent
        if audit_skipped is not None:
            node.audit_skipped = audit_skipped
        if audit_mark is not None:
            node.audit_mark = audit_mark
        self.txn.put(key, pack_node(node), db=nodes)
        if is_dir:
            self._dirs.add(path)
            if modified_time != old_m:
                self._acc(path, 0, 0, 0, modified_time, old_m if modified_time < old_m else None)
        elif size != old_size or modified_time != old_m:
            self._acc(
                parent, 0, 0, size - old_size,
                modified_time if modified_time != old_m else None,
                old_m if modified_time < old_m else None,
            )
        return node

    def put_flags(self, node: Node) -> None:
        """Rewrite ``node``'s record after changing flags or ``last_updated_at`` only
        (fields that no aggregate depends on)."""
        self.txn.put(keys.node_key(node.path), pack_node(node), db=self.dbs.nodes)

    def _create(self, node: Node, key: bytes, parent: bytes) -> None:
        self.txn.put(key, pack_node(node), db=self.dbs.nodes)
        index.add(self, key)
        m = node.modified_time
        if node.is_dir:
            self.txn.put(key, _pack_agg(node.path, 0, 1, 0, m), db=self.dbs.aggregates)
            self._dirs.add(node.path)
            if node.path != keys.ROOT:
                self._acc(parent, 0, 1, 0, m, None)
        else:
            self._acc(parent, 1, 0, node.size, m, None)

    def _ensure_dir(self, d: bytes) -> None:
        missing = []
        nodes = self.dbs.nodes
        while True:
            if d in self._dirs:
                break
            key = keys.node_key(d)
            raw = self.txn.get(key, db=nodes)
            if raw is not None:
                if raw[0] & IS_DIR:
                    self._dirs.add(d)
                    break
                self._delete_at(d, key, unpack_node(key, raw))  # a file is in the way
            missing.append(d)
            if d == keys.ROOT:
                break
            d = keys.parent_of(d)
        for p in reversed(missing):
            self._create(Node(p, True), keys.node_key(p), keys.parent_of(p))

    # -- delete -------------------------------------------------------------------
    def delete(self, path: bytes) -> int:
        """Remove the node at ``path`` and, for a directory, its whole subtree, with
        their suspect and blind-addition entries. Returns the number of nodes removed;
        a missing path removes nothing; the root is never removed."""
        if path == keys.ROOT:
            return 0
        key = keys.node_key(path)
        raw = self.txn.get(key, db=self.dbs.nodes)
        if raw is None:
            return 0
        return self._delete_at(path, key, unpack_node(key, raw))

    def _delete_at(self, path: bytes, key: bytes, node: Node) -> int:
        parent = keys.parent_of(path)
        dbs = self.dbs
        self.txn.delete(key, db=dbs.nodes)
        index.remove(self, key)
        self._drop_node_state(key, path, node.is_dir)
        if not node.is_dir:
            self._acc(parent, -1, 0, -node.size, None, node.modified_time)
            return 1
        f, d, s, m = AGG.unpack_from(self.txn.get(key, db=dbs.aggregates))
        self.txn.delete(key, db=dbs.aggregates)
        inside = path + b"/"
        for p in [p for p in self._pend if p == path or p.startswith(inside)]:
            del self._pend[p]
        self._dirs = {p for p in self._dirs if not (p == path or p.startswith(inside))}
        for k, v in list(self.iter_subtree(path, dbs.suspects)):
            self._forget_suspect(k, v)  # while the nodes are there to say file or directory
        index.remove_subtree(self, path)
        removed = 0
        for db in (dbs.nodes, dbs.aggregates, dbs.blind_additions):
            n = self._delete_range(path, db)
            if db is dbs.nodes:
                removed = n
        self._acc(parent, -f, -d, -s, None, m)
        return removed + 1

    def _delete_range(self, path: bytes, db) -> int:
        fixed = _fixed_size(self.dbs, db)
        want = path + b"/"
        n = 0
        for prefix, must_filter in keys.subtree_ranges(path):
            cur = self.txn.cursor(db=db)
            if not cur.set_range(prefix):
                continue
            while True:
                k = cur.key()
                if not k or not k.startswith(prefix):
                    break
                if must_filter and not keys.path_of(k, bytes(cur.value()[fixed:])).startswith(want):
                    if not cur.next():
                        break
                    continue
                n += 1
                if not cur.delete():
                    break
        return n

    # -- aggregates ---------------------------------------------------------------
    def _acc(self, d: bytes, df: int, dd: int, ds: int, added, removed) -> None:
        e = self._pend.get(d)
        if e is None:
            e = self._pend[d] = [0, 0, 0, NEG, NEG]
        e[0] += df
        e[1] += dd
        e[2] += ds
        if added is not None and added > e[3]:
            e[3] = added
        if removed is not None and removed > e[4]:
            e[4] = removed

    def flush(self) -> None:
        """Apply pending aggregate deltas, deepest directory first, once per directory."""
        index.flush(self)
        pend = self._pend
        if not pend:
            return
        buckets: dict[int, list[bytes]] = {}
        for d in pend:
            buckets.setdefault(keys.depth(d), []).append(d)
        aggdb = self.dbs.aggregates
        depth = max(buckets)
        while depth >= 0:
            for d in buckets.pop(depth, ()):
                e = pend.pop(d)
                key = keys.node_key(d)
                raw = self.txn.get(key, db=aggdb)
                if raw is None:
                    raise PathError(f"aggregate of {keys.display(d)!r} is missing")
                f, dc, s, m = AGG.unpack_from(raw)
                add, rem = e[3], e[4]
                best = add if add > m else m
                # a removal at or above the best candidate may have taken the maximum
                nm = self._max_of_children(d, key) if rem >= best else best
                if e[0] or e[1] or e[2] or nm != m:
                    self.txn.put(key, _pack_agg(d, f + e[0], dc + e[1], s + e[2], nm), db=aggdb)
                if d == keys.ROOT or not (e[0] or e[1] or e[2] or nm != m):
                    continue
                p = keys.parent_of(d)
                pe = pend.get(p)
                if pe is None:
                    pe = pend[p] = [0, 0, 0, NEG, NEG]
                    buckets.setdefault(depth - 1, []).append(p)
                pe[0] += e[0]
                pe[1] += e[1]
                pe[2] += e[2]
                if nm > m and nm > pe[3]:
                    pe[3] = nm
                elif nm < m and m > pe[4]:
                    pe[4] = m
            depth -= 1

    def _max_of_children(self, d: bytes, key: bytes) -> float:
        own = self.txn.get(key, db=self.dbs.nodes)
        m = NODE.unpack_from(own)[2] if own is not None else 0.0
        aggdb = self.dbs.aggregates
        for k, v in self.iter_children_raw(d):
            if v[0] & IS_DIR:
                cm = AGG.unpack_from(self.txn.get(k, db=aggdb))[3]
            else:
                cm = NODE.unpack_from(v)[2]
            if cm > m:
                m = cm
        return m
