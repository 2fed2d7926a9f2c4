"""Exact differences between two trees (two stores) under one directory, by digests.

Equal subtree digests mean equal subtrees (see README: Digests), so only subtrees
whose digests differ are descended into: the cost is the differences (times the
fan-out of the directories holding them), not the size of the trees.
"""

from __future__ import annotations

from collections.abc import Iterator

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
    lists = [readers[n].children_raw(d) for n in names]
    file_sig = NODE_SIZE_AND_MTIME if mtime else NODE_SIZE
    agg_sig = AGG_DIGEST if mtime else AGG_DIGEST_NOMTIME
    total = len(readers)
    kids: dict | None = None
    first = lists[0]
    ks = [k for k, _ in first]
    if all(len(x) == len(first) for x in lists) and all([k for k, _ in x] == ks for x in lists[1:]):
        # the usual case: every member lists the same names. Compare each child's flags,
        # size (and mtime) bytes across members in list comprehensions, and keep only the
        # directories and the rows that differ: nothing is decoded for equal files
        end = file_sig.stop
        sigs = [[v[:end] for _, v in x] for x in lists]
        pick = [i for i, t in enumerate(zip(*sigs, strict=True)) if t[0][0] & IS_DIR or t.count(t[0]) != total]
        kids = {ks[i]: {n: x[i][1] for n, x in zip(names, lists, strict=True)} for i in pick}
    if kids is None:
        # names differ: every child some member lacks, and of the others only the
        # directories and those whose flags, size (or mtime) bytes differ
        end = file_sig.stop
        maps = [dict(x) for x in lists]
        common = set(maps[0]).intersection(*maps[1:])
        kids = {}
        for m, n in zip(maps, names, strict=True):
            for k in m.keys() - common:
                kids.setdefault(k, {})[n] = m[k]
        m0 = maps[0]
        if total == 2:
            m1 = maps[1]
            pick = [k for k in common if m0[k][0] & IS_DIR or m0[k][:end] != m1[k][:end]]
        else:
            pick = [k for k in common
                    if m0[k][0] & IS_DIR or any(m[k][:end] != m0[k][:end] for m in maps[1:])]
        for k in pick:
            kids[k] = {n: m[k] for n, m in zip(names, maps, strict=True)}
    for key in sorted(kids):
        have = kids[key]
        flags = {v[0] & IS_DIR for v in have.values()}
        descend = False
        why = None
        if len(have) < total:
            why = "missing"
        elif len(flags) > 1:
            why = "type"
        elif flags == {IS_DIR}:
            aggs = [readers[n].aggregate_raw(key) for n in have]
            if len({bytes(a[agg_sig]) for a in aggs}) > 1:
                why, descend = "subtree", True
        elif len({bytes(v[file_sig]) for v in have.values()}) > 1:
            sizes = {bytes(v[NODE_SIZE]) for v in have.values()}
            why = "size" if len(sizes) > 1 else "mtime"
        if why is None:
            continue
        yield keys.path_of(key, bytes(next(iter(have.values()))[NODE.size :])), key, have, why, descend
