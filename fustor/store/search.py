"""Search by name over the name index (``fustor/store/index.py``): plans, filters, paging.

What a pattern means (``match="auto"``, the default):

- with ``/``: a glob on the whole path, case-sensitive like the paths themselves
  (``fnmatchcase``); answered by a scan of its fixed directory part;
- with ``*``, ``?`` or ``[``: a glob on the name, case-insensitive;
- otherwise: a case-insensitive substring of the name.

``match="exact"`` (the name, case-insensitive), ``"substring"`` and ``"glob"`` force a
reading, so names holding ``*?[`` can be asked for literally.

Results come in one order whatever plan answers: by folded name, then index entry
(the directory's id, a hash of its path: the same in every tree). A page ends with ``next_after``, an opaque
cursor (the last result's place in that order) to pass back as ``after``; the
same order in every tree lets a forest merge its members' answers page by page.

Plans, cheapest first: a small subtree (``SUBTREE_SCAN`` entries, known in O(1)
from its aggregate) is scanned and sorted; an exact name is one lookup; a glob
whose literal prefix is its longest literal (or ``PREFIX_ENOUGH`` bytes) is a key
range of ``names``; anything else with a literal (substring, suffix, inner text)
finds the distinct names holding its longest literal with ``bytes.find`` over
the name blocks, up to ``BLOB_CAP`` names, and sorts them; past the cap the
literal is common, so the distinct names are read in order and tested one by one
until the page is full — or, under a directory small enough that scanning it costs
less than that walk would (``COMMON_SCAN``), its subtree is scanned. A candidate's
node key is checked against the directory before its record is read. The slow case
left: a pattern common in the whole tree but rare under a large directory reads
many distinct names.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import heapq
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fustor.errors import BadQueryError, PathError
from fustor.store import index, keys
from fustor.store.index import fold
from fustor.store.records import AGG, IS_DIR, NODE, Node, unpack_node

SUBTREE_SCAN = 5_000  # entries below which a directory's subtree is scanned, not the index
BLOB_CAP = 5_000  # distinct names a block scan collects before the literal counts as common
COMMON_SCAN = 800  # page of 100 / a common pattern's share (1/8) of the names
PREFIX_ENOUGH = 6  # a glob's literal prefix this long is a narrow enough key range
MATCHES = ("auto", "exact", "substring", "glob")
KINDS = ("f", "d", None)


@dataclass(slots=True)
class Query:
    """A search: ``pattern`` read as ``match`` says, under ``path``, with optional filters
    (``kind`` "f" files, "d" directories, None both; sizes in bytes and mtimes in epoch
    seconds, bounds included)."""

    pattern: str
    path: bytes = keys.ROOT
    match: str = "auto"
    kind: str | None = "f"
    min_size: int | None = None
    max_size: int | None = None
    min_mtime: float | None = None
    max_mtime: float | None = None


@dataclass(slots=True)
class Found:
    """One page: the nodes, and ``next_after`` when more matches follow (``truncated``)."""

    nodes: list[Node]
    next_after: str | None = None
    plan: str = ""

    @property
    def truncated(self) -> bool:
        return self.next_after is not None


def encode_after(f: bytes, key: bytes) -> str:
    return base64.urlsafe_b64encode(f + b"\0" + key).decode().rstrip("=")


def decode_after(after: str | None) -> tuple[bytes, bytes] | None:
    if not after:
        return None
    try:
        raw = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4))
    except (binascii.Error, ValueError):
        raise BadQueryError("after: not a cursor of this search; pass next_after back as it "
                            "came") from None
    f, sep, k = raw.partition(b"\0")
    if not sep or not k:
        raise BadQueryError("after: not a cursor of this search; pass next_after back as it came")
    return f, k


def _glob_parts(glob: str) -> list[str | None]:
    """The glob as literal runs (str) and wildcards (None), bracket classes as fnmatch reads them."""
    out: list[str | None] = []
    buf: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c in "*?":
            pass
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                buf.append(c)
                continue
            i = j + 1
        else:
            buf.append(c)
            continue
        if buf:
            out.append("".join(buf))
            buf = []
        out.append(None)
    if buf:
        out.append("".join(buf))
    return out


class _Plan:
    """How one query finds its candidates, and the name test every candidate passes."""

    def __init__(self, q: Query) -> None:
        if q.match not in MATCHES:
            raise BadQueryError(f"match must be one of {', '.join(MATCHES)}")
        if q.kind not in KINDS:
            raise BadQueryError("type must be f (files), d (directories) or any (both)")
        if not q.pattern:
            raise BadQueryError("pattern: give a name, part of one or a glob")
        self.q = q
        match = q.match
        if match == "auto":
            match = "glob" if any(c in q.pattern for c in "*?[") else "substring"
            if "/" in q.pattern:
                match = "path"
        elif match == "glob" and "/" in q.pattern:
            match = "path"
        self.mode = match
        self.path_test: Callable[[str], bool] | None = None
        self.dir = q.path
        self.prefix = self.literal = b""
        self.empty = False
        try:
            raw = q.pattern.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise BadQueryError("pattern holds a character that no name can hold") from None
        if match == "path":
            self.path_test = re.compile(fnmatch.translate(q.pattern), re.S).match
            self.name_test = _always
            self.dir = _fixed_dir(raw, q.path)
            self.empty = self.dir is None
            return
        needle = fold(raw)
        if b"/" in needle and match in ("exact", "substring"):
            self.empty = True  # a name never holds "/"
        if match == "exact":
            self.exact = needle
            self.name_test = needle.__eq__
        elif match == "substring":
            self.literal = needle
            self.name_test = lambda f: needle in f
        else:
            parts = _glob_parts(needle.decode("utf-8", "surrogateescape"))
            lits = [p.encode("utf-8", "surrogateescape") for p in parts if p is not None]
            if None not in parts:  # no wildcard at all: the name itself
                self.mode = "exact"
                self.exact = lits[0] if lits else b""
                self.name_test = self.exact.__eq__
                return
            self.prefix = lits[0] if parts[0] is not None else b""
            self.literal = max(lits, key=len) if lits else b""
            self.name_test = _glob_test(needle, parts)


def _order(t: tuple) -> tuple[bytes, bytes]:
    return t[0], t[1]


def _always(_f: bytes) -> bool:
    return True


def _glob_test(needle: bytes, parts: list) -> Callable[[bytes], bool]:
    # the common shapes on bytes; anything else through fnmatch's regex on the decoded name
    if len(parts) == 2 and parts[0] is None and needle[:1] == b"*":
        tail = parts[1].encode("utf-8", "surrogateescape")
        return lambda f: f.endswith(tail)
    if len(parts) == 2 and parts[1] is None and needle[-1:] == b"*":
        head = parts[0].encode("utf-8", "surrogateescape")
        return lambda f: f.startswith(head)
    if len(parts) == 3 and parts[1] is not None and needle[:1] == b"*" and needle[-1:] == b"*":
        mid = parts[1].encode("utf-8", "surrogateescape")
        return lambda f: mid in f
    rx = re.compile(fnmatch.translate(needle.decode("utf-8", "surrogateescape")), re.S).match
    return lambda f: rx(f.decode("utf-8", "surrogateescape")) is not None


def _fixed_dir(raw: bytes, under: bytes) -> bytes | None:
    """The directory a path glob is confined to, within ``under``; None if they do not meet."""
    cut = min((i for i in (raw.find(b"*"), raw.find(b"?"), raw.find(b"[")) if i >= 0),
              default=len(raw))
    if not raw.startswith(b"/"):
        return under  # "*/x.bam": anywhere
    head = raw[: raw.rfind(b"/", 0, cut)]
    try:
        fixed = keys.normalise(head or b"/")
    except PathError:
        return None
    if fixed == under or under == keys.ROOT or fixed.startswith(under + b"/"):
        return fixed
    if fixed == keys.ROOT or under.startswith(fixed + b"/"):
        return under
    return None


class Searcher:
    """Runs one :class:`Query` inside one read transaction."""

    def __init__(self, txn, dbs, q: Query) -> None:
        self.txn, self.dbs, self.q = txn, dbs, q
        self.plan = _Plan(q)
        p = self.plan
        self.ranges = keys.subtree_ranges(p.dir) if p.dir is not None else []
        self.hashed = any(f for _p, f in self.ranges)
        self.source = ""

    # -- the public entry points -------------------------------------------------------
    def page(self, after: str | None = None, limit: int | None = 1000) -> Found:
        if limit is not None and limit <= 0:
            return Found([], None, "")
        want = None if limit is None else limit + 1
        out: list[Node] = []
        ks: list[tuple[bytes, bytes]] = []
        for f, k, node in self.stream(decode_after(after), want):
            if limit is not None and len(out) >= limit:
                return Found(out, encode_after(*ks[-1]), self.source)
            out.append(node)
            ks.append((f, k))
        return Found(out, None, self.source)

    def stream(self, after: tuple[bytes, bytes] | None,
               want: int | None = None) -> Iterator[tuple[bytes, bytes, Node]]:
        """``(folded name, node key, node)`` of every match after ``after``, in order;
        ``want`` says how many the caller may take at most (a sorting plan keeps only those)."""
        p = self.plan
        if p.empty:
            self.source = "none"
            return iter(())
        size = self._size(p.dir)
        if size is None:
            self.source = "none"
            return iter(())
        if p.mode == "path" or (p.dir != keys.ROOT and size <= SUBTREE_SCAN):
            return self._subtree(after, want)
        if p.mode == "exact":
            self.source = "exact"
            return self._accept(self._dups_from([p.exact], after))
        if p.prefix and (len(p.prefix) >= PREFIX_ENOUGH or len(p.prefix) >= len(p.literal)):
            self.source = "prefix"
            return self._accept(self._dups_from(self._scan_names(p.prefix, after), after))
        if p.literal:
            hits = self._blob_hits(p.literal)
            if hits is not None:
                self.source = "blocks"
                if after is not None:
                    hits = [h for h in hits if h >= after[0]]
                return self._accept(self._dups_from(hits, after))
        # common: reading the names in order finds a page in about limit/(share of the tree
        # under dir * share of names matching) names; scanning dir costs its size. They cross
        # near sqrt(limit * names / share matching): below that, the subtree is cheaper.
        if p.dir != keys.ROOT and size <= math.isqrt(COMMON_SCAN * (self._size(keys.ROOT) or 1)):
            return self._subtree(after, want)
        self.source = "names"
        return self._accept(self._dups_from(self._scan_names(p.prefix, after), after))

    # -- sources --------------------------------------------------------------------
    def _size(self, d: bytes) -> int | None:
        v = self.txn.get(keys.node_key(d), db=self.dbs.aggregates)
        if v is not None:
            f, dc = AGG.unpack_from(v)[:2]
            return f + dc
        return 1 if self.txn.get(keys.node_key(d), db=self.dbs.nodes) is not None else None

    def _scan_names(self, prefix: bytes, after) -> Iterator[bytes]:
        """Distinct folded names starting with ``prefix`` that pass the name test, in order."""
        test = self.plan.name_test
        start = prefix
        if after is not None and after[0] > start:
            start = after[0]
        cur = self.txn.cursor(db=self.dbs.names)
        if not cur.set_range(start):
            return
        for f in cur.iternext_nodup(values=False):
            if not f.startswith(prefix):
                return
            if test(f):
                yield f

    def _blob_hits(self, literal: bytes) -> list[bytes] | None:
        """The distinct names holding ``literal`` that pass the name test, sorted; None
        past ``BLOB_CAP`` of them. Names whose nodes are gone may be among them."""
        test = self.plan.name_test
        hits: set[bytes] = set()
        for v in self._blocks_holding(literal):
            i = v.find(literal)
            while i >= 0:
                s = v.rfind(b"\0", 0, i) + 1
                e = v.find(b"\0", i)
                name = v[s:e]
                if test(name):
                    hits.add(name)
                    if len(hits) > BLOB_CAP:
                        return None
                i = v.find(literal, e)
        return sorted(hits)

    def _blocks_holding(self, literal: bytes) -> Iterator[bytes]:
        """The name blocks whose trigram filter does not rule ``literal`` out (the last,
        still open block has no filter and is always read)."""
        blobs = self.dbs.name_blobs
        bits = [(h >> 3, 1 << (h & 7)) for h in index.trigram_bits(literal)]
        if not bits:  # shorter than a trigram: every block
            yield from self.txn.cursor(db=blobs).iternext(keys=False)
            return
        get = self.txn.get
        last = None
        for k, f in self.txn.cursor(db=self.dbs.name_filters).iternext():
            last = k
            for i, m in bits:
                if not f[i] & m:
                    break
            else:
                yield get(k, db=blobs)
        cur = self.txn.cursor(db=blobs)
        if cur.set_range(last) if last is not None else cur.first():
            for k, v in cur.iternext():
                if k != last:
                    yield v

    def _dups_from(self, names, after) -> Iterator[tuple[bytes, bytes]]:
        """``(name, entry)`` of each name's nodes, in order, after ``after``."""
        cur = self.txn.cursor(db=self.dbs.names)
        for f in names:
            if after is not None and f <= after[0]:
                if f < after[0]:
                    continue
                ok = cur.set_range_dup(f, after[1])
                if ok and cur.value() == after[1]:
                    ok = cur.next_dup()
            else:
                ok = cur.set_key(f)
            while ok:
                yield f, cur.value()
                ok = cur.next_dup()

    def _subtree(self, after, want) -> Iterator[tuple[bytes, bytes, Node]]:
        """Scan the subtree of the plan's directory; keep the first ``want`` matches in order."""
        self.source = "subtree"
        p = self.plan
        test, path_test = p.name_test, p.path_test
        nodes = self.dbs.nodes
        ids: dict[bytes, bytes | None] = {}

        def matches() -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
            for prefix, must_filter in self.ranges:
                cur = self.txn.cursor(db=nodes)
                if not cur.set_range(prefix):
                    continue
                for k, v in cur.iternext():
                    if not k.startswith(prefix):
                        break
                    if k == keys.ROOT or not self._record_ok(v):
                        continue
                    parent, name = index.split_key(k)
                    f = fold(name)
                    if not test(f):
                        continue
                    if must_filter or path_test is not None:
                        full = keys.path_of(k, bytes(v[NODE.size :]))
                        if must_filter and not full.startswith(p.dir + b"/"):
                            continue
                        if path_test is not None and not path_test(keys.display(full)):
                            continue
                    d = ids.get(parent, b"")
                    if d == b"":
                        d = ids[parent] = index.dir_id(self.txn, self.dbs, parent)
                    if d is None:  # pragma: no cover - every parent has an id
                        continue
                    e = index.entry(d, name, f)
                    if after is not None and (f, e) <= after:
                        continue
                    yield f, e, k, v

        best = (sorted(matches(), key=_order) if want is None
                else heapq.nsmallest(want, matches(), key=_order))
        return ((f, e, unpack_node(k, v)) for f, e, k, v in best)

    # -- filters --------------------------------------------------------------------
    def _record_ok(self, v: bytes) -> bool:
        q = self.q
        flags, size, mtime = NODE.unpack_from(v)[:3]
        if q.kind is not None and bool(flags & IS_DIR) != (q.kind == "d"):
            return False
        if q.min_size is not None and size < q.min_size:
            return False
        if q.max_size is not None and size > q.max_size:
            return False
        if q.min_mtime is not None and mtime < q.min_mtime:
            return False
        return q.max_mtime is None or mtime <= q.max_mtime

    def _accept(self, cands: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes, Node]]:
        """The candidates under the plan's directory whose record passes the filters."""
        ranges, hashed, d = self.ranges, self.hashed, self.plan.dir
        prefixes = tuple(p for p, _f in ranges)
        nodes, dirs = self.dbs.nodes, self.dbs.name_dirs
        get = self.txn.get
        everywhere = d == keys.ROOT
        seen: dict[bytes, bytes | None] = {}
        for f, e in cands:
            did = e[: index.ID_SIZE]
            parent = seen.get(did, b"")
            if parent == b"":
                if len(seen) >= 65_536:  # bounded: a long walk meets many directories
                    seen.clear()
                parent = seen[did] = get(did, db=dirs)
            if parent is None:  # pragma: no cover - an entry always has its directory
                continue
            k = parent + (e[index.ID_SIZE :] or f)
            if not everywhere and not k.startswith(prefixes):
                continue
            v = get(k, db=nodes)
            if v is None or not self._record_ok(v):
                continue
            if hashed and not everywhere:
                if not keys.path_of(k, bytes(v[NODE.size :])).startswith(d + b"/"):
                    continue
            yield f, e, unpack_node(k, v)
