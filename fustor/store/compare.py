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
    Node,
    unpack_node,
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
            _push_children(ref, other, keys.path_of(key, bytes(a[NODE.size :])), stack)
            continue
        for rec, r, side in ((a, ref, "missing"), (b, other, "extra")):
            if rec is None:
                continue
            if rec[0] & IS_DIR:
                f, d = AGG.unpack_from(r.aggregate_raw(key))[:2]
                c[side + "_files"] += f
                c[side + "_dirs"] += d
            else:
                c[side + "_files"] += 1
    c["equal"] = not any(c.values())
    return c


def _push_children(ref: TreeReader, other: TreeReader, path: bytes, stack: list) -> None:
    """Push the pairs of same-named children of ``path`` (None where one side lacks it)."""
    xs, ys = ref.iter_children_raw(path), other.iter_children_raw(path)
    x, y = next(xs, None), next(ys, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x[0] < y[0]):
            stack.append((bytes(x[0]), x[1], None))
            x = next(xs, None)
        elif x is None or y[0] < x[0]:
            stack.append((bytes(y[0]), None, y[1]))
            y = next(ys, None)
        else:
            stack.append((bytes(x[0]), x[1], y[1]))
            x, y = next(xs, None), next(ys, None)


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


def differing_children(readers: dict[str, TreeReader], d: bytes,
                       mtime: bool = True) -> Iterator[tuple[bytes, dict[str, Node], str, bool]]:
    """``(path, nodes by member, difference, descend)`` for each child of ``d`` that is not
    the same in every reader, in key order. ``difference`` is "missing" (some readers lack
    it), "type", "size", "mtime" (only when ``mtime``) or "subtree" (a directory whose
    digests differ; ``descend`` is then True).

    Children are grouped by key and compared as raw records (size and mtime bytes of
    files, digests of directories); only the differing ones are decoded."""
    names = list(readers)
    lists = [list(readers[n].iter_children_raw(d)) for n in names]
    file_sig = NODE_SIZE_AND_MTIME if mtime else NODE_SIZE
    agg_sig = AGG_DIGEST if mtime else AGG_DIGEST_NOMTIME
    total = len(readers)
    kids: dict | None = None
    if all(len(x) == len(lists[0]) for x in lists) and all(
        x[-1][0] == lists[0][-1][0] and x[0][0] == lists[0][0][0] for x in lists if x
    ):
        # the usual case: every member lists the same names; compare record bytes in
        # step and decode nothing for the (many) equal entries
        kids = {}
        for row in zip(*lists, strict=True):
            k0, v0 = row[0]
            if any(k != k0 for k, _ in row[1:]):
                kids = None
                break
            if v0[0] & IS_DIR or any(v[file_sig] != v0[file_sig] or v[0] != v0[0]
                                     for _, v in row[1:]):
                kids[k0] = {n: v for n, (_, v) in zip(names, row, strict=True)}
    if kids is None:
        kids = {}
        for n, lst in zip(names, lists, strict=True):
            for k, v in lst:
                kids.setdefault(k, {})[n] = v
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
        nodes = {n: unpack_node(key, v) for n, v in have.items()}
        yield next(iter(nodes.values())).path, nodes, why, descend
