"""The name index: which nodes have a given (case-folded) name, kept by the writes.

Four tables (layout and the measurements behind it in ``fustor/store/README.md``):

- ``names`` (DUPSORT): ``fold(name)`` -> entry, one per node except the root. An entry
  is the 9-byte id of the node's directory, followed by the name itself only when it
  differs from its folded form (so ``A.txt`` and ``a.txt`` side by side stay apart).
  Exact names are one lookup, name prefixes one key range; its keys without
  duplicates are the distinct names, in order.
- ``name_dirs``: directory id -> the node-key prefix of that directory's children
  (``keys.dir_prefix``). An id is the first 8 bytes of BLAKE2b of that prefix plus one
  byte that tells apart the (astronomically rare) prefixes whose hashes collide, so
  the same directory has the same id in every tree. A node key is
  ``name_dirs[entry[:9]] + (entry[9:] or folded name)``.
- ``name_blobs``: block number (``>I``) -> ``\\0name\\0name\\0...\\0``, the distinct folded
  names in the order they first appeared, packed ~``BLOCK`` bytes per value. A
  substring or suffix is found by ``bytes.find`` over these blocks (C speed, no
  per-name Python work), then checked against ``names``. A name whose last node
  goes stays in its block (stale; ``meta.name_blob_stale`` counts them) until a
  compaction pass rewrites the full blocks one per job (:func:`compact_step`), or
  :func:`build_index` rewrites them all.
- ``name_filters``: block number -> a 4 KiB trigram filter of that block, written once
  the block is full (blocks never change after, until a compaction rewrites both). A
  literal whose trigrams are not all in a block's filter is not in that block, so a rare
  or absent literal reads ~4 KiB of filter per 16 KiB block instead of the block. Write
  jobs leave the filters of the blocks they fill to :func:`write_filters` (fusion runs it
  when the view's writer is idle), always in block order: the filtered blocks come first,
  and search reads every block after the last filtered one whole.

The writer calls :func:`add` when it creates a node, :func:`remove` for each node it
deletes (a directory delete then :func:`forget_dirs` for the directories that went, or
:func:`remove_subtree` for a subtree it walks), and :func:`flush` at the end of each job,
all in the job's write transaction. A job's removals and new entries are written at its
end — removals first, grouped by name, then the new entries sorted, one put per created
node (``overwrite=False`` tells a new distinct name for free); a directory's id is looked
up once per job, through one cursor; the block append is one put per job.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from itertools import islice

from fustor.store import keys
from fustor.store.records import IS_DIR, NODE

NAMES = "names"
DIRS = "name_dirs"
BLOBS = "name_blobs"
ID_SIZE = 9
BLOCK = 16 * 1024  # bytes of packed names per block value
FOLD_MAX = 500  # a folded name never reaches LMDB's 511-byte key limit
BLOCK_NO = struct.Struct(">I")
STALE = "name_blob_stale"
IN_BLOCKS = "name_blob_names"  # meta: names appended to the blocks and not compacted away
COMPACT_AT = "name_compact_at"  # meta: the next block of a running compaction pass
COMPACT_MIN = 100_000  # stale names before a compaction pass is worth its rewrites
FILTERS = "name_filters"
FILTER_BITS = 1 << 15  # per full block: ~4,000 distinct trigrams set ~12 % of the bits
FILTER_PRIME = 32749  # largest prime below FILTER_BITS


def fold(name: bytes) -> bytes:
    """The case-folded form of a name that the index is keyed by (lower case; names
    that are not UTF-8 are folded character by character where they decode)."""
    if name.isascii():
        return name.lower()
    f = name.decode("utf-8", "surrogateescape").lower().encode("utf-8", "surrogateescape")
    return f[:FOLD_MAX]


class Pending:
    """What one job changes in the index, applied at its end (:func:`flush`): the node keys
    it created (in order), the entries it removed, new distinct names, names that went,
    directory ids looked up (and the cursor they are looked up with)."""

    __slots__ = ("adds", "removes", "new_names", "stale", "ids", "cur")

    def __init__(self) -> None:
        self.adds: dict[bytes, None] = {}
        self.removes: list[tuple[bytes, bytes]] = []  # (folded name, entry) to delete
        self.new_names: list[bytes] = []
        self.stale = 0
        self.ids: dict[bytes, bytes] = {}
        self.cur = None  # a cursor on name_dirs, made by the job's first removal


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """``(children prefix of the parent, name)`` of a node key."""
    i = key.index(keys.SEP) + 1
    return key[:i], key[i:]


def dir_id(txn, dbs, prefix: bytes, create: bool = False, cur=None) -> bytes | None:
    """The id of the directory whose children's keys start with ``prefix`` (None if it has
    none and ``create`` is false). ``cur``: a cursor on ``name_dirs`` to reuse."""
    h = hashlib.blake2b(prefix, digest_size=ID_SIZE - 1).digest()
    if cur is None:
        cur = txn.cursor(db=dbs.name_dirs)
    last = -1
    if cur.set_range(h):
        while True:  # almost always one step: hashes of different prefixes rarely collide
            k = cur.key()
            if k[:-1] != h:
                break
            if cur.value() == prefix:
                return k
            last = k[-1]
            if not cur.next():
                break
    if not create:
        return None
    k = h + bytes((last + 1,))
    txn.put(k, prefix, db=dbs.name_dirs)
    return k


def folded_entry(dir_key: bytes, name: bytes) -> tuple[bytes, bytes]:
    """``(fold(name), entry)`` of a node named ``name`` in the directory with id ``dir_key``."""
    f = name.lower() if name.isascii() else fold(name)
    return f, (dir_key if f == name else dir_key + name)


def entry(dir_key: bytes, name: bytes, f: bytes) -> bytes:
    return dir_key + name if name != f else dir_key


def node_key_of(prefix: bytes, value: bytes, f: bytes) -> bytes:
    """The node key an entry stands for, given its directory's prefix."""
    return prefix + (value[ID_SIZE:] or f)


def add(w, key: bytes) -> None:
    """Index the node with node key ``key`` (just created), at the end of the job."""
    if key != keys.ROOT:
        w.index_pending.adds[key] = None


def _put_entries(w, p: Pending) -> None:
    """The ``names`` entries of the job's new nodes, in name order (neighbouring puts
    share the pages they descend through). One put per node: ``overwrite=False`` fails
    only when the name exists, which tells a new distinct name for free."""
    txn, dbs = w.txn, w.dbs
    names, ids, new = dbs.names, p.ids, p.new_names
    out = []
    for key in p.adds:
        i = key.index(b"\0") + 1
        prefix, name = key[:i], key[i:]
        d = ids.get(prefix)
        if d is None:
            d = ids[prefix] = dir_id(txn, dbs, prefix, create=True)
        f = name.lower() if name.isascii() else fold(name)  # folded_entry, inlined: every new node
        out.append((f, d if f == name else d + name))
    p.adds = {}
    out.sort()
    put = txn.put
    for f, v in out:
        if put(f, v, overwrite=False, db=names):
            new.append(f)  # first node with this name
        else:
            put(f, v, db=names)


def known_id(w, p: Pending, prefix: bytes) -> bytes | None:
    """``dir_id`` of ``prefix`` for a removal, remembered for the rest of the job."""
    d = p.ids.get(prefix)
    if d is None:
        if p.cur is None:
            p.cur = w.txn.cursor(db=w.dbs.name_dirs)
        d = dir_id(w.txn, w.dbs, prefix, cur=p.cur)
        if d is not None:
            p.ids[prefix] = d
    return d


def remove(w, key: bytes) -> None:
    """Drop the index entry of the node with node key ``key`` (about to be deleted)."""
    if key == keys.ROOT:
        return
    p = w.index_pending
    if p.adds.pop(key, 0) is None:  # created by this job: not written yet
        return
    i = key.index(b"\0") + 1
    prefix, name = key[:i], key[i:]
    d = known_id(w, p, prefix)
    if d is not None:
        p.removes.append(folded_entry(d, name))


def _drop_entries(w, p: Pending) -> None:
    """Delete the ``names`` entries of the job's removed nodes, name by name in order
    (neighbouring deletes share pages; a name many nodes had is checked for its last
    node once)."""
    txn, names = w.txn, w.dbs.names
    by_name: dict[bytes, list[bytes]] = {}
    for f, v in p.removes:
        e = by_name.get(f)
        if e is None:
            by_name[f] = [v]
        else:
            e.append(v)
    p.removes = []
    delete, get = txn.delete, txn.get
    for f in sorted(by_name):
        hit = False
        for v in by_name[f]:
            if delete(f, v, db=names):
                hit = True
        if hit and get(f, db=names) is None:
            p.stale += 1


def remove_subtree(w, path: bytes) -> None:
    """Drop the index entries of every strict descendant of directory ``path``, and the
    ids of ``path`` and of the directories below it."""
    gone = [path]
    stack = [path]
    while stack:  # by the children layout: the cost is the subtree, whatever the path length
        for k, v in w.iter_children_raw(stack.pop()):
            k = bytes(k)
            remove(w, k)
            if v[0] & IS_DIR:
                d = keys.path_of(k, bytes(v[NODE.size :]))
                gone.append(d)
                stack.append(d)
    forget_dirs(w, gone)


def forget_dirs(w, dirs: list[bytes]) -> None:
    """Drop the ids of directories ``dirs``, whose children's entries are gone."""
    forget_ids(w, [keys.dir_prefix(d) for d in dirs])


def forget_ids(w, prefixes: list[bytes]) -> None:
    p = w.index_pending
    for prefix in prefixes:  # after the entries: they are found through these ids
        d = known_id(w, p, prefix)
        if d is not None:
            del p.ids[prefix]
            w.txn.delete(d, db=w.dbs.name_dirs)


def flush(w) -> None:
    """Append the job's new distinct names to the blocks; count the names that went; and
    while the blocks hold many stale names, rewrite one full block without them."""
    p = w.index_pending
    if p.removes:  # before the adds: a name removed and added again in one job stays
        _drop_entries(w, p)
    if p.adds:
        _put_entries(w, p)
    stale = p.stale
    if p.new_names:  # the filters of blocks this fills are written later (write_filters)
        append_names(w.txn, w.dbs, p.new_names, filters=False)
        w.put_meta(IN_BLOCKS, int(w.meta(IN_BLOCKS, 0) or 0) + len(p.new_names))
        p.new_names = []
    if stale:
        w.put_meta(STALE, int(w.meta(STALE, 0) or 0) + stale)
        p.stale = 0
    at = w.meta(COMPACT_AT)
    if at is not None or stale:
        compact_step(w, at)


def compact_step(w, at: int | None) -> None:
    """One bounded step of a compaction pass: the next full block loses the names that
    have no node any more (its filter is rewritten with it). A pass starts when a quarter
    of the names in the blocks (and at least ``COMPACT_MIN``) are stale; it ends after
    the last full block."""
    stale = int(w.meta(STALE, 0) or 0)
    total = int(w.meta(IN_BLOCKS, 0) or 0)
    if at is None:
        if stale < COMPACT_MIN or stale * 4 < total:
            return
        at = 0
    txn, dbs = w.txn, w.dbs
    cur = txn.cursor(db=dbs.name_blobs)
    last = cur.key() if cur.last() else None
    # full blocks only: the last one is still filling up
    if last is None or not cur.set_range(BLOCK_NO.pack(at)) or cur.key() == last:
        w.put_meta(STALE, 0)  # the pass is over (names deleted during it wait for the next)
        txn.delete(COMPACT_AT.encode(), db=dbs.meta)
        return
    k = cur.key()
    names = cur.value()[1:-1].split(b"\0")
    keep = [f for f in names if txn.get(f, db=dbs.names) is not None]
    gone = len(names) - len(keep)
    if gone:
        if keep:
            block = b"\0" + b"\0".join(keep) + b"\0"
            txn.put(k, block, db=dbs.name_blobs)
            if txn.get(k, db=dbs.name_filters) is not None:  # else write_filters makes it
                txn.put(k, trigram_filter(block), db=dbs.name_filters)
        else:
            txn.delete(k, db=dbs.name_blobs)
            txn.delete(k, db=dbs.name_filters)
        w.put_meta(STALE, max(0, stale - gone))
        w.put_meta(IN_BLOCKS, max(0, total - gone))
    w.put_meta(COMPACT_AT, BLOCK_NO.unpack(k)[0] + 1)


def append_names(txn, dbs, names: list[bytes], filters: bool = True) -> None:
    """Append ``names`` to the last block. Each block that fills up gets its trigram filter,
    or with ``filters`` false none yet: :func:`write_filters` writes it later."""
    blobs = dbs.name_blobs
    cur = txn.cursor(db=blobs)
    if cur.last():
        no = BLOCK_NO.unpack(cur.key())[0]
        block = bytearray(cur.value())
    else:
        no, block = 0, bytearray(b"\0")
    for f in names:
        if len(block) + len(f) + 1 > BLOCK and len(block) > 1:
            sealed = bytes(block)
            txn.put(BLOCK_NO.pack(no), sealed, db=blobs)
            if filters:
                txn.put(BLOCK_NO.pack(no), trigram_filter(sealed), db=dbs.name_filters)
            no += 1
            block = bytearray(b"\0")
        block += f
        block += b"\0"
    txn.put(BLOCK_NO.pack(no), bytes(block), db=blobs)


def _unfiltered(txn, dbs) -> Iterator[tuple[bytes, bytes]]:
    """``(block number, block)`` of the full blocks still without a trigram filter, oldest
    first. Filters are written in block order, so these are the blocks after the last
    filtered one, except the last block (still filling up, never filtered)."""
    fcur = txn.cursor(db=dbs.name_filters)
    start = BLOCK_NO.pack(BLOCK_NO.unpack(fcur.key())[0] + 1) if fcur.last() else b""
    bcur = txn.cursor(db=dbs.name_blobs)
    if not bcur.last():
        return
    last = bcur.key()
    if not bcur.set_range(start):
        return
    for k, v in bcur.iternext():
        if k == last:
            return
        yield k, v


def blocks_waiting(txn, dbs) -> int:
    """Full blocks whose trigram filter is not written yet (O(1): two table sizes; every
    filter belongs to a full block, and the last block is never full)."""
    return max(0, txn.stat(dbs.name_blobs)["entries"] - txn.stat(dbs.name_filters)["entries"] - 1)


def write_filters(txn, dbs, limit: int = 8) -> bool:
    """Write the trigram filters of up to ``limit`` full blocks that have none (a write job
    leaves them to later: a block's filter costs ~2 µs per name in it, a third of what
    indexing a new name costs). Until then search reads those blocks whole, so answers
    are the same, only a literal's search reads more. True when more are due."""
    for k, block in islice(_unfiltered(txn, dbs), limit):
        txn.put(k, trigram_filter(block), db=dbs.name_filters)
    return blocks_waiting(txn, dbs) > 0


def trigram_bits(data: bytes) -> set[int]:
    """Bit numbers of the trigrams of ``data`` in a block's filter."""
    tris = set(zip(data, data[1:], data[2:], strict=False))
    return {((a << 16) | (b << 8) | c) % FILTER_PRIME for a, b, c in tris}


def trigram_filter(block: bytes) -> bytes:
    """A ``FILTER_BITS``-bit set of the block's trigrams (one hash: a trigram's bit is set in
    the filter of every block holding it; a clear bit proves it absent)."""
    out = bytearray(FILTER_BITS // 8)
    for h in trigram_bits(block):
        out[h >> 3] |= 1 << (h & 7)
    return bytes(out)


def build_index(txn, dbs, progress: Callable[[int], None] | None = None) -> int:
    """(Re)build ``names``, ``name_dirs`` and ``name_blobs`` from the nodes in one pass,
    inside the write transaction ``txn`` (``dbs`` holds the open tables). Returns the
    number of nodes indexed. For the migration that brings a store to the format with
    the index."""
    for db in (dbs.names, dbs.name_dirs, dbs.name_blobs, dbs.name_filters):
        txn.drop(db, delete=False)
    names = dbs.names
    pending: list[bytes] = []
    ids: dict[bytes, bytes] = {}
    n = 0
    for k in txn.cursor(db=dbs.nodes).iternext(values=False):
        k = bytes(k)
        if k == keys.ROOT:
            continue
        prefix, name = split_key(k)
        d = ids.get(prefix)
        if d is None:
            d = ids[prefix] = dir_id(txn, dbs, prefix, create=True)
        f = fold(name)
        v = d + name if name != f else d
        if txn.put(f, v, overwrite=False, db=names):
            pending.append(f)
        else:
            txn.put(f, v, db=names)
        n += 1
        if len(pending) >= 100_000:
            append_names(txn, dbs, pending)
            pending = []
        if progress and n % 500_000 == 0:
            progress(n)
    if pending:
        append_names(txn, dbs, pending)
    distinct = sum(1 for _ in txn.cursor(db=names).iternext_nodup(values=False))
    txn.put(STALE.encode(), b"0", db=dbs.meta)
    txn.put(IN_BLOCKS.encode(), str(distinct).encode(), db=dbs.meta)
    txn.delete(COMPACT_AT.encode(), db=dbs.meta)
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
        prefix, name = split_key(k)
        d = dir_id(txn, dbs, prefix)
        f = fold(name)
        if d is None or not cur.set_key_dup(f, entry(d, name, f)):
            problems.append({"path": _shown(txn, dbs, k), "problem": "node missing from the name index"})
    in_blobs = blob_names(txn, dbs)
    for f, v in txn.cursor(db=names).iternext():
        f, v = bytes(f), bytes(v)
        prefix = txn.get(v[:ID_SIZE], db=dbs.name_dirs)
        k = None if prefix is None else node_key_of(prefix, v, f)
        if k is None or txn.get(k, db=dbs.nodes) is None or fold(split_key(k)[1]) != f:
            problems.append({"path": _shown(txn, dbs, k) if k else "?", "name": keys.display(f),
                             "problem": "name index entry without its node"})
        elif f not in in_blobs:
            problems.append({"path": _shown(txn, dbs, k), "name": keys.display(f),
                             "problem": "name missing from the name blocks"})
            in_blobs.add(f)
    for k, filt in txn.cursor(db=dbs.name_filters).iternext():
        block = txn.get(k, db=dbs.name_blobs)
        if block is None or trigram_filter(block) != filt:
            problems.append({"path": f"name block {BLOCK_NO.unpack(k)[0]}",
                             "problem": "trigram filter does not match its name block"})
    return problems


def _shown(txn, dbs, k: bytes) -> str:
    v = txn.get(k, db=dbs.nodes)
    return keys.display(keys.path_of(k, bytes(v[NODE.size :]) if v is not None else b""))
