"""Exact differences between two trees (two stores) under one directory, by digests.

Equal subtree digests mean equal subtrees (see README: Digests), so only subtrees
whose digests differ are descended into: the cost is the differences (times the
fan-out of the directories holding them), not the size of the trees.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import compress, count, repeat
from operator import and_, itemgetter, ne, not_, or_

from fustor.store import keys
from fustor.store.records import (
    AGG,
    AGG_DIGEST,
    AGG_DIGEST_NOMTIME,
    IS_DIR,
    NODE,
    NODE_SIZE,
    NODE_SIZE_AND_MTIME,
)
from fustor.store.tree import TreeReader

_MTIME = slice(9, 17)  # of a node record
_FLAGS = itemgetter(0)  # of a node record; of a pair, its first item


def tally(ref: TreeReader, other: TreeReader, top: bytes, mtime: bool = True) -> dict:
    """Exact counts of what ``other`` lacks (``missing_*``), has more (``extra_*``) and has
    different (``different_files``: size, or mtime when ``mtime``; ``different_dirs``: a
    directory's own mtime when ``mtime``) compared with ``ref`` under ``top`` (included).
    An entry of one type in ``ref`` and the other in ``other`` is missing and extra."""
    c = {"missing_files": 0, "missing_dirs": 0, "extra_files": 0, "extra_dirs": 0,
         "different_files": 0, "different_dirs": 0}
    digest = AGG_DIGEST if mtime else AGG_DIGEST_NOMTIME
    sig = NODE_SIZE_AND_MTIME if mtime else NODE_SIZE
    key = keys.node_key(top)
    stack = [(key, ref.txn.get(key, db=ref.dbs.nodes), other.txn.get(key, db=other.dbs.nodes))]
    while stack:
        key, a, b = stack.pop()
        if a is not None and b is not None and (a[0] & IS_DIR) == (b[0] & IS_DIR):
            if not a[0] & IS_DIR:
                if bytes(a[sig]) != bytes(b[sig]):
                    c["different_files"] += 1
                continue
            if bytes(ref.aggregate_raw(key)[digest]) == bytes(other.aggregate_raw(key)[digest]):
                continue
            if mtime and bytes(a[_MTIME]) != bytes(b[_MTIME]):
                c["different_dirs"] += 1
            _push_children(ref, other, keys.path_of(key, bytes(a[NODE.size :])), stack, sig.stop)
            continue
        _count_unmatched(c, key, a, ref, b, other)
    c["equal"] = not any(c.values())
    return c


def _count_unmatched(c: dict, key: bytes, a: bytes | None, ref: TreeReader, b: bytes | None,
                     other: TreeReader) -> None:
    """Count an entry that is not of one type in both trees: ``ref``'s record ``a`` (and its
    subtree) as missing, ``other``'s record ``b`` as extra; None where a side lacks it."""
    for rec, r, side in ((a, ref, "missing"), (b, other, "extra")):
        if rec is None:
            continue
        if rec[0] & IS_DIR:
            f, d = AGG.unpack_from(r.aggregate_raw(key))[:2]
            c[side + "_files"] += f
            c[side + "_dirs"] += d
        else:
            c[side + "_files"] += 1


class Summary:
    """What :func:`tally` says of every member against ``ref`` under ``top``, gathered from
    the differing children a complete walk visits: :func:`differing_children` of ``top``,
    and again of every child it reports as "subtree", with nothing cut by paging. The
    listing's walk then also gives the summary, and no differing directory is read twice.

    A pair whose children the walk does not descend into (a directory both hold while
    some third member lacks it) is tallied on its own, so the counts stay exact."""

    FIELDS = ("missing_files", "missing_dirs", "extra_files", "extra_dirs",
              "different_files", "different_dirs")

    def __init__(self, readers: dict[str, TreeReader], ref: str, mtime: bool) -> None:
        self.readers, self.ref, self.mtime = readers, ref, mtime
        self.digest = AGG_DIGEST if mtime else AGG_DIGEST_NOMTIME
        self.sig = NODE_SIZE_AND_MTIME if mtime else NODE_SIZE
        self.counts = {n: dict.fromkeys(self.FIELDS, 0) for n in readers if n != ref}

    @classmethod
    def start(cls, readers: dict[str, TreeReader], ref: str, top: bytes,
              mtime: bool = True) -> Summary | None:
        """A summary that has counted ``top`` itself, for the walk to feed; None when
        ``top`` is not a directory in every member (then :func:`tally` answers)."""
        key = keys.node_key(top)
        recs = {n: r.txn.get(key, db=r.dbs.nodes) for n, r in readers.items()}
        if not all(v is not None and v[0] & IS_DIR for v in recs.values()):
            return None
        s = cls(readers, ref, mtime)
        s.add(top, key, recs, "subtree")
        return s

    def add(self, path: bytes, key: bytes, have: dict[str, bytes], why: str) -> None:
        """Count one entry the walk reported: ``have`` holds the raw node record of each
        member that has it; "subtree" says the walk descends into it."""
        ref = self.readers[self.ref]
        a = have.get(self.ref)
        for n, c in self.counts.items():
            b = have.get(n)
            if a is None or b is None or (a[0] & IS_DIR) != (b[0] & IS_DIR):
                if a is not None or b is not None:
                    _count_unmatched(c, key, a, ref, b, self.readers[n])
                continue
            if not a[0] & IS_DIR:
                if a[self.sig] != b[self.sig]:
                    c["different_files"] += 1
                continue
            other = self.readers[n]
            if ref.aggregate_raw(key)[self.digest] == other.aggregate_raw(key)[self.digest]:
                continue
            if why != "subtree":  # the walk stops here for this pair: count its subtree now
                sub = tally(ref, other, path, self.mtime)
                for f in self.FIELDS:
                    c[f] += sub[f]
            elif self.mtime and a[_MTIME] != b[_MTIME]:
                c["different_dirs"] += 1

    def result(self) -> dict[str, dict]:
        return {n: {**c, "equal": not any(c.values())} for n, c in self.counts.items()}


def _push_children(ref: TreeReader, other: TreeReader, path: bytes, stack: list, end: int) -> None:
    """Push the pairs of same-named children of ``path`` (None where one side lacks it);
    when both list the same names, only directories and pairs whose first ``end`` record
    bytes (flags, size, mtime) differ."""
    xl, yl = ref.children_raw(path), other.children_raw(path)
    if len(xl) == len(yl) and [k for k, _ in xl] == [k for k, _ in yl]:
        stack.extend((bytes(x[0]), x[1], y[1]) for x, y in zip(xl, yl, strict=True)
                     if x[1][0] & IS_DIR or x[1][:end] != y[1][:end])
        return
    xm, ym = dict(xl), dict(yl)
    common = xm.keys() & ym.keys()
    stack.extend((bytes(k), xm[k], None) for k in xm.keys() - common)
    stack.extend((bytes(k), None, ym[k]) for k in ym.keys() - common)
    stack.extend((bytes(k), xm[k], ym[k]) for k in common
                 if xm[k][0] & IS_DIR or xm[k][:end] != ym[k][:end])


def same_subtree(readers: list[TreeReader], top: bytes, mtime: bool = True) -> bool:
    """True when every reader holds ``top`` as a directory with the same subtree digest
    (without mtimes when ``mtime`` is false): O(readers), whatever the subtrees hold."""
    digest = AGG_DIGEST if mtime else AGG_DIGEST_NOMTIME
    key = keys.node_key(top)
    seen = set()
    for r in readers:
        a = r.aggregate_raw(key)
        if a is None:
            return False
        seen.add(bytes(a[digest]))
    return len(seen) == 1


def differing_children(readers: dict[str, TreeReader], d: bytes, mtime: bool = True
                       ) -> Iterator[tuple[bytes, bytes, dict[str, bytes], str, bool]]:
    """``(path, key, raw node record by member, difference, descend)`` for each child of
    ``d`` that is not the same in every reader, in key order. ``difference`` is "missing"
    (some readers lack it), "type", "size", "mtime" (only when ``mtime``) or "subtree" (a
    directory whose digests differ; ``descend`` is then True).

    Children are grouped by key and compared as raw records (size and mtime bytes of
    files, digests of directories); nothing is decoded (``unpack_node(key, record)``
    does it for the entries a caller shows)."""
    names = list(readers)
    file_sig = NODE_SIZE_AND_MTIME if mtime else NODE_SIZE
    agg_sig = AGG_DIGEST if mtime else AGG_DIGEST_NOMTIME
    total = len(readers)
    lists = [readers[n].children_raw(d) for n in names]
    agg = readers[names[0]].aggregate_raw(keys.node_key(d))
    subdirs = agg is None or AGG.unpack_from(agg)[1] > 1  # its dir_count counts itself
    for key, have in _candidates(names, lists, file_sig.stop, subdirs):
        recs = list(have.values())
        first = recs[0]
        descend = False
        if len(recs) < total:
            why = "missing"
        elif any((r[0] ^ first[0]) & IS_DIR for r in recs):
            why = "type"
        elif first[0] & IS_DIR:
            if len({readers[n].aggregate_raw(key)[agg_sig] for n in have}) == 1:
                continue
            why, descend = "subtree", True
        elif any(r[file_sig] != first[file_sig] for r in recs):
            why = "size" if any(r[NODE_SIZE] != first[NODE_SIZE] for r in recs) else "mtime"
        else:
            continue
        yield keys.path_of(key, bytes(first[NODE.size :])), key, have, why, descend


def _candidates(names: list[str], lists: list[list[tuple[bytes, bytes]]], end: int,
                subdirs: bool = True) -> list[tuple[bytes, dict[str, bytes]]]:
    """``(key, {member: record})`` in key order for the children worth a look, from each
    member's sorted ``(key, record)`` list: every child some member lacks, and of the
    others the directories (unless ``subdirs`` is false: the first member has none) and
    those whose first ``end`` record bytes (flags, size, mtime) differ between members.

    The passes over all rows run in C (zip, map, compress, set membership); Python code
    runs only for the rows picked, so the cost per row is a few allocations."""
    cols = [tuple(zip(*x, strict=True)) if x else ((), ()) for x in lists]
    ks = [c[0] for c in cols]
    vals = [c[1] for c in cols]
    shown = ks[0]
    kids: list[tuple[bytes, dict[str, bytes]]] = []
    if any(k != shown for k in ks[1:]):
        # names differ: take out the children some member lacks, so that the remaining
        # rows of every member line up on the names all of them hold
        shared = set(shown).intersection(*ks[1:])
        alone: dict[bytes, dict[str, bytes]] = {}
        for i, n in enumerate(names):
            keep = list(map(shared.__contains__, ks[i]))
            for k, v in compress(zip(ks[i], vals[i], strict=True), map(not_, keep)):
                alone.setdefault(k, {})[n] = v
            vals[i] = tuple(compress(vals[i], keep))
            if i == 0:
                shown = tuple(compress(shown, keep))
        kids += alone.items()
    sig = itemgetter(slice(0, end))
    first = list(map(sig, vals[0])) if len(vals) > 2 else map(sig, vals[0])
    picked = None
    if subdirs:  # directories are compared by digest, whatever their records say
        picked = map(and_, map(_FLAGS, vals[0]), repeat(IS_DIR))
    for v in vals[1:]:
        differ = map(ne, first, map(sig, v))
        picked = differ if picked is None else map(or_, picked, differ)
    kids += [(shown[i], {n: v[i] for n, v in zip(names, vals, strict=True)})
             for i in compress(count(), picked)]
    kids.sort(key=_FLAGS)  # (the key)
    return kids
