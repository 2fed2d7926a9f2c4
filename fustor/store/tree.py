"""Nodes, the children layout and per-directory subtree aggregates.

``TreeReader`` answers queries inside one read transaction; ``TreeWriter`` adds the
write primitives inside one write transaction. Paths passed to both are
normalised bytes (:func:`fustor.store.keys.normalise`).

Aggregates: ``aggregates[key(D)] = (file_count, dir_count, total_size, latest_mtime,
digest, digest_nomtime, last_change_at, child_count)`` of the whole subtree of
directory ``D``, ``D`` itself included (so ``dir_count >= 1`` and ``latest_mtime >=
D.modified_time``); ``child_count`` counts direct children only. ``total_size`` sums
file sizes only. The digests are sums of per-entry hashes (README: Digests), so they
take deltas like the counts.
A writer does not touch ancestors per row: each change adds a delta to its
parent's pending entry; :meth:`TreeWriter.flush` applies the pending entries
deepest directory first, each one read and written once, and hands the sum on
to the parent. ``latest_mtime`` is a maximum, so a removal only matters when it
removed the maximum; then that directory's value is recomputed from its direct
children (files' mtimes and subdirectories' aggregates), never from the subtree —
through the ``child_mtimes`` index in O(log n) for a directory of ``BIG_DIR`` or more
children.

Other derived tables hook in where nodes are made and removed: ``create`` (every new
node), ``_delete_at`` (the node deleted) and ``_delete_subtree`` /
``_delete_subtree_by_walk`` (a deleted directory's descendants); their rebuild from
the nodes is a builder in ``fustor/store/derive.py``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from itertools import islice
from typing import NamedTuple

from fustor.errors import PathError
from fustor.store import index, keys
from fustor.store.records import (
    AGG,
    DIGEST_SEED,
    DOUBLE,
    ENTRY,
    IS_DIR,
    NODE,
    PAIR,
    Aggregate,
    Node,
    Stats,
    entry_digests,
    entry_hash,
    float_of_sortable,
    mtime_number,
    pack_agg,
    pack_node,
    pack_record,
    sortable_float,
    unpack_agg,
    unpack_node,
)
from fustor.store.search import Found, Query, Searcher
from fustor.store.state import StateReads, StateWrites

NEG = float("-inf")
_COUNT = struct.Struct("<q")
_NODE_HEAD = struct.Struct("<Bqd")  # flags, size, mtime: the head of a node record
CHILD_COUNT_AT = AGG.size - _COUNT.size  # child_count is the aggregate's last field
_int = int.from_bytes
_unpack_agg = AGG.unpack_from
_entry = ENTRY.pack
_bits = DOUBLE.pack
_seed_copy = DIGEST_SEED.copy
# a directory with this many direct children keeps an index of their mtimes (so the
# newest is found in O(log n)); it loses the index again below SMALL_DIR
BIG_DIR = 512
SMALL_DIR = 256


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
    child_mtimes: object  # DUPSORT: dir key -> sortable(mtime) + name, for big directories
    tombstone_expiry: object  # sortable(wall_ts) + node key -> empty
    names: object
    name_dirs: object
    name_blobs: object
    name_filters: object


# tables opened with DUPSORT
DUPSORT = frozenset({"child_mtimes", index.NAMES})


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

    def children_raw(self, path: bytes) -> list[tuple[bytes, bytes]]:
        """The direct children of directory ``path`` as ``(key, record)``, read at C speed:
        its aggregate's ``child_count`` says how many records follow its prefix, so no
        Python code runs per child. Only for read transactions (a write job applies its
        counts at its flush); [] for a file or a missing path."""
        agg = self.txn.get(keys.node_key(path), db=self.dbs.aggregates)
        if agg is None:
            return []
        n = _COUNT.unpack_from(agg, CHILD_COUNT_AT)[0]
        if n <= 0:
            return []
        prefix = keys.dir_prefix(path)
        cur = self.txn.cursor(db=self.dbs.nodes)
        if not cur.set_range(prefix):
            return []
        out = list(islice(cur.iternext(), n))
        if len(out) != n or not out[-1][0].startswith(prefix):  # a count out of step
            return list(self._range(prefix))
        return out

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
        for page in self.subtree_pages(path, db=db):
            yield from page

    def subtree_pages(self, path: bytes, page: int = 4096, db=None) -> Iterator[list[tuple[bytes, bytes]]]:
        """:meth:`iter_subtree` as lists of at most ``page`` ``(key, value)`` copies; each
        page opens a new cursor after the last key, so the caller may write between pages
        (keys outside the subtree). Not for DUPSORT tables (a page resumes after a key, not
        after one of its values)."""
        db = self.dbs.nodes if db is None else db
        fixed = _fixed_size(self.dbs, db)
        want = path + b"/"
        for prefix, must_filter in keys.subtree_ranges(path):
            last: bytes | None = None
            while True:
                cur = self.txn.cursor(db=db)
                if not cur.set_range(last or prefix):
                    break
                if last is not None and cur.key() == last and not cur.next():
                    break
                out: list[tuple[bytes, bytes]] = []
                seen = 0
                ended = True
                for k, v in cur.iternext():
                    if not k.startswith(prefix):
                        break
                    seen += 1
                    last = k
                    if k != keys.ROOT and (  # the root's range holds its own key
                            not must_filter
                            or keys.path_of(k, bytes(v[fixed:])).startswith(want)):
                        out.append((k, v))
                    if seen >= page:
                        ended = False
                        break
                if out:
                    yield out
                if ended:
                    break

    # -- aggregates ---------------------------------------------------------------
    def stats(self, path: bytes) -> Stats | None:
        """Subtree aggregates of ``path`` in O(1); a file reports itself."""
        key = keys.node_key(path)
        v = self.txn.get(key, db=self.dbs.aggregates)
        if v is not None:
            return Stats(*AGG.unpack_from(v)[:4])
        n = self.txn.get(key, db=self.dbs.nodes)
        if n is None:
            return None
        node = unpack_node(key, n)
        if node.is_dir:  # pragma: no cover - a directory always has its aggregate
            return self.stats_by_scan(path)
        return Stats(1, 0, node.size, node.modified_time)

    def aggregate(self, path: bytes) -> Aggregate | None:
        """The whole aggregate record of directory ``path`` (None for a file or a missing path)."""
        v = self.txn.get(keys.node_key(path), db=self.dbs.aggregates)
        return None if v is None else unpack_agg(v)

    def suspects_under(self, path: bytes) -> int:
        """Suspect entries at ``path`` or below it: a key range of the suspects table, so
        the cost is the number of suspects under ``path``, not the size of the view."""
        n = 1 if self.txn.get(keys.node_key(path), db=self.dbs.suspects) is not None else 0
        if path == keys.ROOT:
            return self.count(self.dbs.suspects)
        for _k, _v in self.iter_subtree(path, self.dbs.suspects):
            n += 1
        return n

    def iter_suspects_under(self, path: bytes) -> Iterator[tuple[bytes, float, float]]:
        """``(path, expires_at, recorded_mtime)`` of the suspect entries strictly below
        ``path``, read in pages (the caller may write between them)."""
        for page in self.subtree_pages(path, db=self.dbs.suspects):
            for k, v in page:
                exp, m = PAIR.unpack_from(v)
                yield keys.path_of(k, bytes(v[PAIR.size:])), exp, m

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


def _index_value(name: bytes, mtime: float) -> bytes:
    return sortable_float(mtime) + name


_READ = object()  # upsert(current=...) not given: read the node


class TreeWriter(TreeReader, StateWrites):
    """Write primitives inside one write transaction; call :meth:`flush` before commit."""

    def __init__(self, txn, dbs: Dbs, now: float | None = None) -> None:
        super().__init__(txn, dbs)
        # directory -> pending [files, dirs, size, added mtime, removed mtime, digest,
        # digest_nomtime, children] deltas of this job
        self._pend: dict[bytes, list] = {}
        # directories known to exist in this job -> whether they keep a child-mtime index
        self._dirs: dict[bytes, bool] = {}
        # strict ancestors of every directory in _pend or _dirs, made on the job's first
        # directory delete and kept from then on: deleting a directory that is not in here
        # has nothing of this job's state to forget (no per-delete rebuild)
        self._anc: set[bytes] | None = None
        # whether any directory keeps a child-mtime index (None: not looked yet)
        self._any_index: bool | None = None
        # table -> False while it is known to be empty in this job (a put makes it True)
        self._filled: dict = {}
        self._ncur = None  # a cursor on the nodes for deletes and maxima, made at first use
        # the fusion-side wall time of this job's changes (last_change_at)
        self.now = time.time() if now is None else now
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
        current: Node | None | object = _READ,
    ) -> Node:
        """Create or update the node at ``path``; missing parents are created as empty
        directories, and a node of the other type at ``path`` is removed first.
        Flags left ``None`` keep their stored value (``False``/0 for a new node).
        ``current``: the node at ``path`` (or None) as the caller just read it in this
        job, which saves reading it again; it is updated in place."""
        nodes = self.dbs.nodes
        # keys.node_key and keys.parent_of from one rfind (this runs for every row)
        i = path.rfind(b"/")
        if i <= 0:
            key = keys.ROOT if path == keys.ROOT else b"/\0" + path[1:]
            parent = keys.ROOT
        else:
            parent = path[:i]
            key = parent + b"\0" + path[i + 1 :] if i <= keys.PARENT_LIMIT else keys.node_key(path)
        if current is _READ:
            raw = self.txn.get(key, db=nodes)
            old = None if raw is None else unpack_node(key, raw)
        else:
            old = current
        if old is not None:
            if old.is_dir != is_dir:
                if path == keys.ROOT:
                    raise PathError("the root of a view is a directory")
                self._delete_node(path, key, old)
                old = None
        elif path == keys.ROOT and not is_dir:
            raise PathError("the root of a view is a directory")
        if path != keys.ROOT and parent not in self._dirs:
            self._ensure_dir(parent)
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
            if path not in self._dirs:
                self._know_dir(path, key)
            if modified_time != old_m:
                a = entry_hash(path, True, 0)
                self._acc(path, 0, 0, 0, modified_time, old_m if modified_time < old_m else None,
                          a * (mtime_number(modified_time) - mtime_number(old_m)), 0)
        elif size != old_size or modified_time != old_m:
            if size == old_size:  # only the mtime moved: one hash, the same for both
                a = entry_hash(path, False, size)
                dig, dnm = a * (mtime_number(modified_time) - mtime_number(old_m)), 0
            else:
                new = entry_digests(path, False, size, modified_time)
                was = entry_digests(path, False, old_size, old_m)
                dig, dnm = new[0] - was[0], new[1] - was[1]
            self._acc(
                parent, 0, 0, size - old_size,
                modified_time if modified_time != old_m else None,
                old_m if modified_time < old_m else None,
                dig, dnm,
            )
            if modified_time != old_m and self._dirs[parent]:
                self._index_move(parent, path, old_m, modified_time)
        return node

    def put_flags(self, node: Node) -> None:
        """Rewrite ``node``'s record after changing flags or ``last_updated_at`` only
        (fields that no aggregate depends on)."""
        self.txn.put(keys.node_key(node.path), pack_node(node), db=self.dbs.nodes)

    def _create(self, node: Node, key: bytes, parent: bytes) -> None:
        """Create ``node``, known to be absent (the caller just read or removed it)."""
        if not self.create(node.path, key, parent, node.flags(), node.size,
                           node.modified_time, node.created_time, node.last_updated_at,
                           node.audit_mark):
            raise AssertionError(f"store: {keys.display(node.path)!r} exists already")

    def create(self, path: bytes, key: bytes, parent: bytes, flags: int, size: int,
               mtime: float, ctime: float, last_updated_at: float = 0.0,
               audit_mark: int = 0) -> bool:
        """Create the node at ``path`` (node key ``key``, parent directory ``parent``)
        unless one is there already: then nothing is written and the answer is False.
        Missing parents are created as empty directories. ``flags``: the record's flag
        bits (``records.IS_DIR``, ``SUSPECT``, ``KNOWN``, ``AUDIT_SKIPPED``).

        One put decides existence (``overwrite=False``), so a crawl's new rows cost no
        read; this runs for every new node."""
        if parent not in self._dirs and path != keys.ROOT:
            self._ensure_dir(parent)
        rec = pack_record(path, flags, size, mtime, ctime, last_updated_at, audit_mark)
        if not self.txn.put(key, rec, overwrite=False, db=self.dbs.nodes):
            return False
        if key != keys.ROOT:  # index.add, inlined
            self.index_pending.adds[key] = None
        is_dir = flags & IS_DIR
        # entry_digests, inlined
        h = _seed_copy()
        h.update(path + _entry(is_dir, 0 if is_dir else size))
        dnm = _int(h.digest(), "little")
        dig = dnm * (_int(_bits(mtime), "little") + 1)
        if not is_dir:
            e = self._pend.get(parent)
            if e is None:
                self._acc(parent, 1, 0, size, mtime, None, dig, dnm, 1)
            else:  # the common case of a crawl: _acc inlined
                e[0] += 1
                e[2] += size
                if mtime > e[3]:
                    e[3] = mtime
                e[5] += dig
                e[6] += dnm
                e[7] += 1
            if self._dirs[parent]:
                self._index_put(parent, path, mtime)
        else:
            self.txn.put(key, pack_agg(path, (0, 1, 0, mtime, dig, dnm, self.now, 0)),
                         db=self.dbs.aggregates)
            self._dirs[path] = False
            self._note(path)
            if path != keys.ROOT:
                self._acc(parent, 0, 1, 0, mtime, None, dig, dnm, 1)
                if self._dirs[parent]:
                    self._index_put(parent, path, mtime)
        # (node created: hooks of other derived tables go here)
        return True

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
                    self._know_dir(d, key)
                    break
                self._delete_node(d, key, unpack_node(key, raw))  # a file is in the way
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
        raw = self.txn.pop(key, db=self.dbs.nodes)
        if raw is None:
            return 0
        flags, size, mtime = _NODE_HEAD.unpack_from(raw)
        return self._delete_at(path, key, flags & IS_DIR, size, mtime, popped=True)

    def _delete_node(self, path: bytes, key: bytes, node: Node) -> int:
        return self._delete_at(path, key, node.is_dir, node.size, node.modified_time)

    def _delete_at(self, path: bytes, key: bytes, is_dir, size: int, mtime: float,
                   popped: bool = False) -> int:
        """Delete the node at ``path`` (its record already gone when ``popped``)."""
        parent = keys.parent_of(path)
        dbs = self.dbs
        if not popped:
            self.txn.delete(key, db=dbs.nodes)
        index.remove(self, key)
        self._drop_node_state(key, path, bool(is_dir))
        # (node deleted: hooks of other derived tables go here; a directory's
        # descendants go in _delete_subtree)
        if not is_dir:
            dig, dnm = entry_digests(path, False, size, mtime)
            self._acc(parent, -1, 0, -size, None, mtime, -dig, -dnm, -1)
            if self._has_index(parent):
                self._index_del(parent, path, mtime)
            return 1
        f, dc, s, m, dig, dnm, _lca, cc = AGG.unpack_from(self.txn.pop(key, db=dbs.aggregates))
        if self._has_any_index():
            self.txn.delete(key, db=dbs.child_mtimes)
        exact = not self._forget_job_state(path)  # the stored aggregate is the subtree's
        removed = self._delete_subtree(path, (dc, cc) if exact else None)
        self._acc(parent, -f, -dc, -s, None, m, -_int(dig, "little"), -_int(dnm, "little"), -1)
        if self._has_index(parent):
            self._index_del(parent, path, m)
        return removed + 1

    def _delete_subtree(self, path: bytes, counts: tuple[int, int] | None = None) -> int:
        """Remove every strict descendant of directory ``path`` from the per-path tables and
        the name index; returns how many nodes went. ``counts``: the directory's stored
        (dir_count, child_count) when they are exact (this job touched nothing under it) —
        with no subdirectories its descendants are its children, one key range."""
        dbs = self.dbs
        ranges = keys.subtree_ranges(path)
        if ranges[0][1]:
            index.remove_subtree(self, path)  # while the nodes are there to say where names are
            return self._delete_subtree_by_walk(path)
        if counts is not None and counts[0] == 1:  # dir_count counts the directory itself
            ranges = ranges[:1] if counts[1] else []
        if ranges and self._may_hold(dbs.suspects):
            for k, v in list(self.iter_subtree(path, dbs.suspects)):
                self._forget_suspect(k, v)  # while the nodes are there to say file or directory
        # one pass over the nodes: each one's name index entry goes with it
        removed, dirs = 0, [path]
        remove = index.remove
        if ranges and self._ncur is None:
            self._ncur = self.txn.cursor(db=dbs.nodes)
        cur = self._ncur
        pending = self.index_pending
        for prefix, _ in ranges:
            if not cur.set_range(prefix):
                continue
            # the directory's own children, when the job created none of them (no pending
            # aggregate under it, no pending index addition at all): their entries are built
            # with its id, looked up once (index.remove without the per-key
            # pending-addition check and id lookup)
            direct = counts is not None and prefix == ranges[0][0] and not pending.adds
            if direct:
                did, plen = index.known_id(self, pending, prefix), len(prefix)
                drop, entry_of = pending.removes.append, index.folded_entry
            while True:
                k = cur.key()
                if not k.startswith(prefix):
                    break
                if not direct:
                    remove(self, k)
                elif did is not None:
                    drop(entry_of(did, k[plen:]))
                v = cur.value()
                if v[0] & IS_DIR:
                    dirs.append(keys.path_of(k, bytes(v[NODE.size :])))
                removed += 1
                if not cur.delete():
                    break
        index.forget_dirs(self, dirs)
        if len(dirs) > 1:  # only directories have aggregates and child-mtime indexes
            self._delete_range(path, dbs.aggregates)
            if self._has_any_index():
                self._delete_range(path, dbs.child_mtimes)
        if ranges and self._may_hold(dbs.blind_additions):
            self._delete_range(path, dbs.blind_additions)
        return removed

    def _delete_subtree_by_walk(self, path: bytes) -> int:
        """The subtree of a directory whose path is too long for its own key range (its
        descendants' keys share only a hashed prefix with unrelated paths): found by
        following the children layout, so the cost is the subtree, not the prefix."""
        dbs = self.dbs
        txn = self.txn
        found: list[tuple[bytes, bool]] = []
        stack = [path]
        while stack:
            d = stack.pop()
            for k, v in self._range(keys.dir_prefix(d)):
                is_dir = bool(v[0] & IS_DIR)
                found.append((bytes(k), is_dir))
                if is_dir:
                    stack.append(keys.path_of(k, bytes(v[NODE.size :])))
        for k, is_dir in found:
            s = txn.get(k, db=dbs.suspects)
            if s is not None:
                self._forget_suspect(k, s, is_dir)
            txn.delete(k, db=dbs.nodes)
            txn.delete(k, db=dbs.blind_additions)
            if is_dir:
                txn.delete(k, db=dbs.aggregates)
                txn.delete(k, db=dbs.child_mtimes)
        return len(found)

    def _forget_job_state(self, path: bytes) -> bool:
        """Drop this job's pending deltas and directory cache for directory ``path`` and
        everything under it; True when this job changed something under ``path``.
        O(1) unless it did."""
        pending = self._pend.pop(path, None) is not None
        self._dirs.pop(path, None)
        if self._anc is None:
            self._anc = set()
            for d in (*self._pend, *self._dirs):
                self._note(d)
        if path not in self._anc:
            return pending
        inside = path + b"/"
        for p in [p for p in self._pend if p.startswith(inside)]:
            del self._pend[p]
        for p in [p for p in self._dirs if p.startswith(inside)]:
            del self._dirs[p]
        return True

    def _note(self, d: bytes) -> None:
        """Record ``d``'s ancestors in ``_anc`` (stops at the first one already there)."""
        anc = self._anc
        if anc is None:  # no directory deleted yet in this job
            return
        while d != keys.ROOT:
            d = keys.parent_of(d)
            if d in anc:
                return
            anc.add(d)

    def _may_hold(self, db) -> bool:
        """Whether table ``db`` may have rows (its row count is read once per job; a put
        to it in the job marks it)."""
        v = self._filled.get(db)
        if v is None:
            v = self._filled[db] = self.txn.stat(db)["entries"] > 0
        return v

    def _has_any_index(self) -> bool:
        """Whether some directory keeps a child-mtime index (looked up once per job)."""
        if self._any_index is None:
            self._any_index = self.txn.stat(self.dbs.child_mtimes)["entries"] > 0
        return self._any_index

    def _know_dir(self, d: bytes, key: bytes) -> bool:
        indexed = self._has_any_index() and self.txn.get(key, db=self.dbs.child_mtimes) is not None
        self._dirs[d] = indexed
        self._note(d)
        return indexed

    def _has_index(self, d: bytes) -> bool:
        """Whether existing directory ``d`` keeps a child-mtime index."""
        v = self._dirs.get(d)
        if v is not None:
            return v
        if not self._has_any_index():  # none anywhere: nothing to look up (or to cache)
            return False
        return self._know_dir(d, keys.node_key(d))

    # -- child-mtime index of big directories ---------------------------------------
    def _index_put(self, d: bytes, child: bytes, mtime: float) -> None:
        name = child[child.rfind(b"/") + 1 :]
        self.txn.put(keys.node_key(d), _index_value(name, mtime), db=self.dbs.child_mtimes)

    def _index_del(self, d: bytes, child: bytes, mtime: float) -> None:
        name = child[child.rfind(b"/") + 1 :]
        self.txn.delete(keys.node_key(d), _index_value(name, mtime), db=self.dbs.child_mtimes)

    def _index_move(self, d: bytes, child: bytes, old: float, new: float) -> None:
        if old != new:
            self._index_del(d, child, old)
            self._index_put(d, child, new)

    def build_child_index(self, d: bytes, key: bytes | None = None) -> None:
        """Index the mtimes of ``d``'s direct children (files: their mtime; directories:
        their subtree's latest_mtime), replacing any index it had."""
        key = keys.node_key(d) if key is None else key
        db = self.dbs.child_mtimes
        aggdb = self.dbs.aggregates
        self.txn.delete(key, db=db)
        items = []
        for k, v in self.iter_children_raw(d):
            m = AGG.unpack_from(self.txn.get(k, db=aggdb))[3] if v[0] & IS_DIR else NODE.unpack_from(v)[2]
            items.append(_index_value(keys.name_of_key(k), m))
        items.sort()
        cur = self.txn.cursor(db=db)
        cur.putmulti([(key, it) for it in items], dupdata=True)
        self._any_index = True
        self._dirs[d] = True
        self._note(d)

    def _drop_child_index(self, d: bytes, key: bytes) -> None:
        self.txn.delete(key, db=self.dbs.child_mtimes)
        self._dirs[d] = False

    def lift_tombstones(self, path: bytes) -> None:
        """Drop the tombstones at and below ``path`` (what realtime rows written there do)."""
        below = [keys.path_of(k, bytes(v[PAIR.size:]))
                 for page in self.subtree_pages(path, db=self.dbs.tombstones) for k, v in page]
        for p in (path, *below):
            self.delete_tombstone(p)

    def discard_blind_at_and_below(self, kind: str, path: bytes) -> None:
        """Drop the blind-spot entries of ``kind`` at and below ``path``."""
        self._delete_range(path, self._blind_db(kind))
        self.discard_blind(kind, path)

    def _delete_range(self, path: bytes, db, count_dirs: bool = False):
        """Delete ``path``'s strict descendants from ``db``; returns how many (and, with
        ``count_dirs``, ``(how many, how many were directories)``)."""
        fixed = _fixed_size(self.dbs, db)
        dup = db is self.dbs.child_mtimes
        want = path + b"/"
        n = 0
        dirs = 0
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
                if count_dirs and cur.value()[0] & IS_DIR:
                    dirs += 1
                if not cur.delete(dupdata=dup):
                    break
        return (n, dirs) if count_dirs else n

    # -- aggregates ---------------------------------------------------------------
    def _acc(self, d: bytes, df: int, dd: int, ds: int, added, removed, dig: int = 0,
             dnm: int = 0, dchildren: int = 0) -> None:
        e = self._pend.get(d)
        if e is None:
            e = self._pend[d] = [0, 0, 0, NEG, NEG, 0, 0, 0]
            self._note(d)
        e[0] += df
        e[1] += dd
        e[2] += ds
        if added is not None and added > e[3]:
            e[3] = added
        if removed is not None and removed > e[4]:
            e[4] = removed
        e[5] += dig
        e[6] += dnm
        e[7] += dchildren

    def finish(self) -> None:
        """The end of a job, before its commit: the name index's pending entries (written
        once per job, so a node created and deleted within the job never reaches it),
        then the pending aggregate deltas."""
        index.flush(self)
        self.flush()

    def flush(self) -> None:
        """Apply pending aggregate deltas, deepest directory first, once per directory
        (call it before reading aggregates mid-job; the name index waits for
        :meth:`finish`).

        Every pending entry is a change in that subtree, so it also moves the
        directory's ``last_change_at`` to this job's time and is handed on to the parent.
        """
        pend = self._pend
        if not pend:
            return
        buckets: dict[int, list[bytes]] = {}
        for d in pend:
            buckets.setdefault(keys.depth(d), []).append(d)
        aggdb = self.dbs.aggregates
        now = self.now
        depth = max(buckets)
        while depth >= 0:
            for d in buckets.pop(depth, ()):
                e = pend.pop(d)
                key = keys.node_key(d)
                raw = self.txn.get(key, db=aggdb)
                if raw is None:
                    raise PathError(f"aggregate of {keys.display(d)!r} is missing")
                f, dc, s, m, dig, dnm, lca, cc = _unpack_agg(raw)  # unpack_agg, inlined
                dig, dnm = _int(dig, "little"), _int(dnm, "little")
                cc += e[7]
                indexed = self._has_index(d)
                if not indexed and cc >= BIG_DIR:
                    self.build_child_index(d, key)
                    indexed = True
                elif indexed and cc < SMALL_DIR:
                    self._drop_child_index(d, key)
                    indexed = False
                add, rem = e[3], e[4]
                best = add if add > m else m
                # a removal at or above the best candidate may have taken the maximum
                nm = self._max_of_children(d, key, indexed, best) if rem >= best else best
                self.txn.put(key, pack_agg(d, (f + e[0], dc + e[1], s + e[2], nm, dig + e[5],
                                               dnm + e[6], now if now > lca else lca, cc)), db=aggdb)
                if d == keys.ROOT:
                    continue
                p = keys.parent_of(d)
                if nm != m and self._has_index(p):
                    self._index_move(p, d, m, nm)
                pe = pend.get(p)
                if pe is None:
                    pe = pend[p] = [0, 0, 0, NEG, NEG, 0, 0, 0]
                    buckets.setdefault(depth - 1, []).append(p)
                pe[0] += e[0]
                pe[1] += e[1]
                pe[2] += e[2]
                if nm > m and nm > pe[3]:
                    pe[3] = nm
                elif nm < m and m > pe[4]:
                    pe[4] = m
                pe[5] += e[5]
                pe[6] += e[6]
            depth -= 1

    def _max_of_children(self, d: bytes, key: bytes, indexed: bool = False,
                         bound: float = float("inf")) -> float:
        """The largest of ``d``'s own mtime and its children's (latest) mtimes. ``bound`` is
        known to be at least that maximum, so the first value reaching it ends the search
        (many equal mtimes are common)."""
        own = self.txn.get(key, db=self.dbs.nodes)
        m = NODE.unpack_from(own)[2] if own is not None else 0.0
        if m >= bound:
            return m
        if indexed:  # the newest child is the last of the index: O(log n)
            cur = self.txn.cursor(db=self.dbs.child_mtimes)
            if cur.set_key(key) and cur.last_dup():
                cm = float_of_sortable(cur.value())
                return cm if cm > m else m
            return m
        aggdb = self.dbs.aggregates
        if self._ncur is None:
            self._ncur = self.txn.cursor(db=self.dbs.nodes)
        cur = self._ncur
        prefix = keys.dir_prefix(d)
        if not cur.set_range(prefix):
            return m
        while True:
            k = cur.key()
            if not k.startswith(prefix):
                return m
            v = cur.value()
            if v[0] & IS_DIR:
                cm = AGG.unpack_from(self.txn.get(k, db=aggdb))[3]
            else:
                cm = NODE.unpack_from(v)[2]
            if cm > m:
                if cm >= bound:
                    return cm
                m = cm
            if not cur.next():
                return m
