"""The name index: which nodes have a given (case-folded) name, kept by the writes.

Two tables (layout and the measurements behind it in ``fustor/store/README.md``):

- ``names`` (DUPSORT): ``fold(name)`` -> node key, one entry per node except the root.
  Exact names are one lookup, name prefixes one key range; its keys without
  duplicates are the distinct names, in order.
- ``name_blobs``: block number (``>I``) -> ``\\0name\\0name\\0...\\0``, the distinct folded
  names in the order they first appeared, packed ~``BLOCK`` bytes per value. A
  substring or suffix is found by ``bytes.find`` over these blocks (C speed, no
  per-name Python work), then checked against ``names``. A name whose last node
  goes stays in its block (stale) until :func:`build_index` rewrites the blocks;
  ``meta.name_blob_stale`` counts them.

The writer calls :func:`add` when it creates a node, :func:`remove` / :func:`remove_subtree`
before it deletes nodes, and :func:`flush` at the end of each job, all in the job's
write transaction. One put per created node (``overwrite=False`` tells a new distinct
name for free); the block append is one put per job.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from fustor.store import keys
from fustor.store.records import NODE

NAMES = "names"
BLOBS = "name_blobs"
BLOCK = 16 * 1024  # bytes of packed names per block value
FOLD_MAX = 500  # a folded name never reaches LMDB's 511-byte key limit
BLOCK_NO = struct.Struct(">I")
STALE = "name_blob_stale"


def fold(name: bytes) -> bytes:
    """The case-folded form of a name that the index is keyed by (lower case; names
    that are not UTF-8 are folded character by character where they decode)."""
    if name.isascii():
        return name.lower()
    f = name.decode("utf-8", "surrogateescape").lower().encode("utf-8", "surrogateescape")
    return f[:FOLD_MAX]


class Pending:
    """What one job changes in the index beyond the ``names`` puts (flushed at its end)."""

    __slots__ = ("new_names", "stale")

    def __init__(self) -> None:
        self.new_names: list[bytes] = []
        self.stale = 0


def add(w, key: bytes) -> None:
    """Index the node with node key ``key`` (just created)."""
    if key == keys.ROOT:
        return
    f = fold(keys.name_of_key(key))
    names = w.dbs.names
    if w.txn.put(f, key, overwrite=False, db=names):
        w.index_pending.new_names.append(f)  # first node with this name
    else:
        w.txn.put(f, key, db=names)


def remove(w, key: bytes) -> None:
    """Drop the index entry of the node with node key ``key`` (about to be deleted)."""
    if key == keys.ROOT:
        return
    f = fold(keys.name_of_key(key))
    names = w.dbs.names
    if w.txn.delete(f, key, db=names) and w.txn.get(f, db=names) is None:
        w.index_pending.stale += 1


def remove_subtree(w, path: bytes) -> None:
    """Drop the index entries of every strict descendant of directory ``path``."""
    for k, _v in w.iter_subtree(path):
        remove(w, bytes(k))


def flush(w) -> None:
    """Append the job's new distinct names to the blocks; count the names that went."""
    p = w.index_pending
    if p.new_names:
        append_names(w.txn, w.dbs, p.new_names)
        p.new_names = []
    if p.stale:
        w.put_meta(STALE, int(w.meta(STALE, 0) or 0) + p.stale)
        p.stale = 0


def append_names(txn, dbs, names: list[bytes]) -> None:
    blobs = dbs.name_blobs
    cur = txn.cursor(db=blobs)
    if cur.last():
        no = BLOCK_NO.unpack(cur.key())[0]
        block = bytearray(cur.value())
    else:
        no, block = 0, bytearray(b"\0")
    for f in names:
        if len(block) + len(f) + 1 > BLOCK and len(block) > 1:
            txn.put(BLOCK_NO.pack(no), bytes(block), db=blobs)
            no += 1
            block = bytearray(b"\0")
        block += f
        block += b"\0"
    txn.put(BLOCK_NO.pack(no), bytes(block), db=blobs)


def build_index(txn, dbs, progress: Callable[[int], None] | None = None) -> int:
    """(Re)build ``names`` and ``name_blobs`` from the nodes in one pass, inside the write
    transaction ``txn`` (``dbs`` holds the open tables). Returns the number of nodes
    indexed. For the migration that brings a store to the format with the index."""
    txn.drop(dbs.names, delete=False)
    txn.drop(dbs.name_blobs, delete=False)
    names = dbs.names
    pending: list[bytes] = []
    n = 0
    for k in txn.cursor(db=dbs.nodes).iternext(values=False):
        k = bytes(k)
        if k == keys.ROOT:
            continue
        f = fold(keys.name_of_key(k))
        if txn.put(f, k, overwrite=False, db=names):
            pending.append(f)
        else:
            txn.put(f, k, db=names)
        n += 1
        if len(pending) >= 100_000:
            append_names(txn, dbs, pending)
            pending = []
        if progress and n % 500_000 == 0:
            progress(n)
    if pending:
        append_names(txn, dbs, pending)
    txn.put(STALE.encode(), b"0", db=dbs.meta)
    return n


def blob_names(txn, dbs) -> set[bytes]:
    out: set[bytes] = set()
    for v in txn.cursor(db=dbs.name_blobs).iternext(keys=False):
        out.update(bytes(v).split(b"\0"))
    out.discard(b"")
    return out


def verify(txn, dbs, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Check the index against the nodes: every node has its entry, every entry its node,
    every distinct name is in a block. Returns the problems (empty = ok)."""
    problems: list[dict] = []
    names = dbs.names
    cur = txn.cursor(db=names)
    n = 0
    for k in txn.cursor(db=dbs.nodes).iternext(values=False):
        k = bytes(k)
        n += 1
        if progress and n % 500_000 == 0:
            progress(n)
        if k == keys.ROOT:
            continue
        if not cur.set_key_dup(fold(keys.name_of_key(k)), k):
            problems.append({"path": _shown(txn, dbs, k), "problem": "node missing from the name index"})
    in_blobs = blob_names(txn, dbs)
    for f, k in txn.cursor(db=names).iternext():
        f, k = bytes(f), bytes(k)
        if txn.get(k, db=dbs.nodes) is None or fold(keys.name_of_key(k)) != f:
            problems.append({"path": _shown(txn, dbs, k), "name": keys.display(f),
                             "problem": "name index entry without its node"})
    for f, k in txn.cursor(db=names).iternext_nodup(keys=True, values=True):
        if bytes(f) not in in_blobs:
            problems.append({"path": _shown(txn, dbs, bytes(k)), "name": keys.display(bytes(f)),
                             "problem": "name missing from the name blocks"})
    return problems


def _shown(txn, dbs, k: bytes) -> str:
    v = txn.get(k, db=dbs.nodes)
    return keys.display(keys.path_of(k, bytes(v[NODE.size :]) if v is not None else b""))
