"""The consistency rules of an fs view (spec/consistency.md §4-§10), run inside a store
write transaction.

Every function takes the transaction's ``TreeWriter`` ``w`` and the view's
``ViewState`` ``st``; all per-path state is in the store, so a restart loses
nothing. The caller saves ``st`` (``st.save(w)``) once at the end of its job.

    process_event(w, st, event)   rows in arrival order:
        validate row ─ reject (index, path, reason); the other rows still apply
        clock.update(mtime, sample only if realtime) ─► watermark WM
        audit source: auto-start a cycle, mark the node seen, drop its blind deletion
        delete ─► realtime: delete subtree, tombstone (WM, wall), clear blind entries
                  compensation: tombstone or newer node blocks; else delete, blind deletion
        upsert ─► Rule 1 tombstone gate ─► Rule 2 mtime guard (compensation)
                  ─► Rule 3 parent mtime (audit, new path) ─► capacity (new nodes)
                  ─► write node with its flags ─► suspect / blind-spot entries

Sources: ``realtime`` (stream of truth) and the compensation sources ``snapshot``,
``audit``, ``on_demand_job`` (stat walks, applied only when strictly newer).

Upstream quirks (spec §15) and what we do:

1. Realtime always wins over the tree, even with an older mtime: kept.
2. Changed: upstream's tombstone gate also drops a *realtime* re-create whose mtime
   is not above the deletion watermark, which hides real files (``rm f; touch f``,
   ``git checkout`` within the skew). Realtime events of one agent arrive in order,
   so a realtime upsert after a realtime delete is newer by construction: it passes
   the gate and lifts the tombstone. Stat-walk rows (snapshot, audit, on-demand)
   are still gated, which is what tombstones are for.
3. ``audit_skipped`` rows bypass the mtime guard (a silent dir may regress its
   mtime): kept; the row is a fresh stat.
4. A dropped non-silent dir row leaves a stale ``audit_skipped``: kept (it only
   ever protects children from deletion).
5. Snapshot rows do not clear blind deletions; every session start clears both
   blind sets: kept.
6. Sentinel ``status: "missing"`` stores mtime 0.0 upstream: changed. The first
   report keeps the node unchanged and flagged; a second consecutive one deletes
   it as a blind deletion (``suspects.update_suspect``).
7. Tombstones are purged only at audit end: kept.
9. Rule 3 looks ``parent_path`` up exactly as sent (no normalisation), so it is
   inert for 0.8.17 agents that send agent-side absolute paths: kept.
10. An event with no rows is not processed (``EventResult.processed`` False; the
    caller counts it as an error): kept.
11. The skew is a whole number of seconds (truncated): kept.
13. Auto-created parents have mtime 0.0: kept.
(8, 12 and 14 concern the query API and sessions, not these rules.)

Our own choices where upstream raises or does something unhelpful:

- A row whose path cannot be stored (``..``, NUL, name > 255 bytes), has no
  path, or carries a non-numeric/non-finite/negative field is rejected alone with
  its reason; upstream would abort the rest of the event.
- Deleting ``/`` is ignored (upstream refuses the tree delete but still writes a
  tombstone or a blind deletion for ``/``).
- An upsert without ``modified_time`` stores 0.0 and does not sample the clock.
- Capacity (``max_nodes``) is all or nothing per row: a new node is created only
  if it and all its missing parents fit (upstream creates parents until full and
  may leave an orphan). A file in the way of a parent counts as a new node.
- Audit "seen" is a per-node mark rather than a set of paths: a path seen by the
  audit whose node is later deleted and re-created by a compensation row in the
  same cycle loses its mark and may be judged missing (realtime re-creates are
  protected by their ``last_updated_at``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from fustor.clock import LogicalClock
from fustor.errors import PathError
from fustor.fusion.audit import (
    audit_end,
    audit_end_step,
    audit_start,
    begin_cycle,
    reset,
    session_start,
)
from fustor.fusion.suspects import MISSING, sweep_chunk, sweep_suspects, update_suspect
from fustor.fusion.view_state import ViewState
from fustor.store import TreeWriter, keys
from fustor.store.records import AUDIT_SKIPPED, IS_DIR, KNOWN, NODE_HEAD, SUSPECT, unpack_node

__all__ = [
    "EPS", "TEPS", "EventResult", "LogicalClock", "ViewState", "audit_end", "audit_end_step",
    "audit_start",
    "process_event", "reset", "session_start", "sweep_chunk", "sweep_suspects", "update_suspect",
]

EPS = 1e-6  # mtime equality
TEPS = 1e-5  # tombstone margin: a re-create must be this much newer than the deletion

REALTIME, SNAPSHOT, AUDIT, ON_DEMAND = "realtime", "snapshot", "audit", "on_demand_job"
SOURCES = frozenset((REALTIME, SNAPSHOT, AUDIT, ON_DEMAND))
EVENT_TYPES = frozenset(("insert", "update", "delete", MOVE := "move"))
SIZE_LIMIT = 2**63  # sizes are stored as signed 64-bit integers
SCHEMAS = frozenset(("fs",))  # event_schema routed to fs views and forest members (§4.3)
# times a file system can hold: not past a year from now (a clock gone wild, or a bogus
# value, would otherwise become every ancestor's latest_mtime), not before year ~880
MAX_FUTURE_S = 366 * 24 * 3600.0
MIN_TIME = -(2.0**35)

_norm = keys.normalise
_ROOT = keys.ROOT
_isfinite = math.isfinite
_wall_clock = time.time


@dataclass(slots=True)
class EventResult:
    """Outcome of one event: ``applied`` rows changed state, ``ignored`` rows lost
    arbitration (stale, tombstoned, over capacity), ``rejected`` rows were invalid."""

    processed: bool = False
    applied: int = 0
    ignored: int = 0
    rejected: list[dict] = field(default_factory=list)
    # moves whose source fusion does not hold: view paths the agent must walk instead
    unresolved: list[str] = field(default_factory=list)


class _Invalid(Exception):
    pass


def _number(row: dict, name: str, default: float) -> float:
    v = row.get(name)
    if v is None:
        return default
    if isinstance(v, float):
        if _isfinite(v):
            return float(v)
    elif isinstance(v, int) and not isinstance(v, bool) and -SIZE_LIMIT < v < SIZE_LIMIT:
        return float(v)
    raise _Invalid(f"{name} must be a finite number, got {v!r}")


def _time(row: dict, name: str, default: float | None, latest: float) -> float | None:
    v = _number(row, name, default)
    if v is not None and not MIN_TIME <= v <= latest:
        raise _Invalid(f"{name} {v!r} is not a plausible time (more than a year ahead of "
                       "fusion's clock, or before year 880)")
    return v


def _flag(row: dict, *names: str) -> bool:
    """A boolean field (the first of ``names`` present); a string such as "false" is
    refused rather than read as true."""
    for name in names:
        v = row.get(name)
        if v is None:
            continue
        if v is True or v is False:
            return v
        raise _Invalid(f"{name} must be true or false, got {v!r}")
    return False


def _size(row: dict) -> int:
    v = row.get("size")
    if v is None:
        return 0
    if v.__class__ is int:
        if 0 <= v < SIZE_LIMIT:
            return v
    elif isinstance(v, float) and v.is_integer() and 0 <= v < SIZE_LIMIT:
        return int(v)
    raise _Invalid(f"size must be a whole number of bytes, got {v!r}")


def _path(row: dict) -> bytes:
    raw = row.get("path") or row.get("file_path")
    if not raw:
        raise _Invalid("row has no path")
    if not isinstance(raw, (str, bytes)):
        raise _Invalid(f"path must be a string, got {type(raw).__name__}")
    try:
        return _norm(raw)
    except PathError as exc:
        raise _Invalid(exc.message) from None


def _moved_from(row: dict, path: bytes) -> bytes:
    raw = row.get("moved_from")
    if not raw:
        raise _Invalid("a move row needs moved_from (the directory's old path)")
    if not isinstance(raw, (str, bytes)):
        raise _Invalid(f"moved_from must be a string, got {type(raw).__name__}")
    try:
        old = _norm(raw)
    except PathError as exc:
        raise _Invalid(f"moved_from: {exc.message}") from None
    if old == _ROOT or path == _ROOT:
        raise _Invalid("the root of a view cannot be moved or replaced")
    if old == path or path.startswith(old + b"/"):
        raise _Invalid("a directory cannot be moved into itself")
    return old


def process_event(w: TreeWriter, st: ViewState, event: dict) -> EventResult:
    """Apply one wire event (``event_type``, ``message_source``, ``rows``) row by row."""
    res = EventResult()
    rows = event.get("rows") or []
    if not rows:
        return res
    res.processed = True
    src = event.get("message_source") or REALTIME
    etype = event.get("event_type")
    schema = event.get("event_schema", "fs")
    moving = etype == MOVE
    if (src not in SOURCES or etype not in EVENT_TYPES or schema not in SCHEMAS
            or (moving and src != REALTIME)):
        reason = (f"unknown message_source {src!r}" if src not in SOURCES
                  else f"unknown event_type {etype!r}" if etype not in EVENT_TYPES
                  else f"a move comes from realtime only, not {src!r}" if moving
                  else f"event_schema {schema!r} is not routed to this view (it takes "
                       f"{', '.join(sorted(SCHEMAS))})")
        res.rejected = [{"index": i, "path": _raw_path(r), "reason": reason}
                        for i, r in enumerate(rows)]
        return res
    st.sync(w)
    deleting = etype == "delete"
    realtime = src == REALTIME
    now = st.now
    clock = st.clock
    if src == AUDIT and st.last_audit_start is None:
        begin_cycle(w, st, now())
    ctx = _Event(w, st, src)
    apply = ctx.delete if deleting else ctx.move if moving else ctx.upsert
    latency = st.last_event_latency_ms
    applied = ignored = 0
    # the real clock, not the view's (tests move that one): a sanity bound on input
    latest = _wall_clock() + MAX_FUTURE_S
    # only realtime rows can be skew samples: in any other event the skew holds for every
    # row, so the watermark is the row's wall time minus it (what clock.update returns)
    skew = None if realtime else clock.skew()
    rejected = res.rejected

    def general(items) -> bool:
        """The rules for rows ``(index, row)``: validate, take the clock, apply. True when
        the last row's time became the event's latency."""
        nonlocal applied, ignored, latency
        timed = False
        for i, row in items:
            given = fields = None
            try:
                if row.__class__ is not dict:
                    raise _Invalid("row is not an object")
                path = _path(row)
                if deleting:
                    mtime = _time(row, "modified_time", None, latest)
                else:
                    given = row.get("modified_time")
                    mtime = _time(row, "modified_time", 0.0, latest)
                    is_dir = _flag(row, "is_directory", "is_dir")
                    if path == _ROOT and not is_dir:
                        raise _Invalid("the root of a view is a directory")
                    fields = (is_dir, _size(row), _time(row, "created_time", 0.0, latest))
                    if moving:
                        if not is_dir:
                            raise _Invalid("only a directory moves as a whole (is_directory "
                                           "true); a file's move is a delete and an update")
                        fields += (_moved_from(row, path),)
            except _Invalid as exc:
                rejected.append({"index": i, "path": _raw_path(row), "reason": str(exc)})
                timed = False
                continue
            wall = now()
            if realtime:  # a realtime row that carries an mtime is a skew sample (not a move:
                # a renamed directory keeps its mtime, which says nothing about the clocks)
                wm = clock.update(mtime, given is not None and not moving)
            else:
                wm = wall if skew is None else wall - skew
            timed = mtime is not None and (deleting or given is not None)  # not rows without a time
            if timed:
                latency = (wm - mtime) * 1000.0 if wm > mtime else 0.0
            if apply(row, path, mtime, fields, wall, wm):
                applied += 1
            else:
                ignored += 1
        return timed

    if src == SNAPSHOT and not deleting and ctx.cap is None:  # a crawl: mostly new paths
        done, dropped, lat = ctx.new_snapshot_rows(rows, general, latest, skew)
        applied += done
        ignored += dropped
        if lat is not None:
            latency = lat
    else:
        general(enumerate(rows))
    if src == AUDIT:
        st.audit_rows_seen += applied + ignored
    if applied or ignored:
        st.last_event_at = now()
        st.last_event_latency_ms = latency
    res.applied = applied
    res.ignored = ignored
    res.unresolved = ctx.unresolved
    return res


def _raw_path(row) -> object:
    if row.__class__ is not dict:
        return None
    p = row.get("path") or row.get("file_path")
    return p if isinstance(p, str) else (None if p is None else repr(p))


class _Capacity:
    """Counts nodes while an event runs, so ``max_nodes`` holds without reading
    aggregates per row (they are only exact after ``w.flush()``)."""

    __slots__ = ("count", "limit", "w")

    def __init__(self, w: TreeWriter, limit: int) -> None:
        self.w = w
        self.limit = limit
        self.count = -1  # counted on first need

    def _recount(self) -> None:
        self.w.flush()
        s = self.w.stats(_ROOT)
        self.count = s.file_count + s.dir_count

    def allow(self, path: bytes) -> bool:
        """True (and counted) when ``path`` and its missing parents fit."""
        if self.count < 0:
            self._recount()
        need = 1
        w = self.w
        p = keys.parent_of(path)
        while True:
            n = w.get(p)
            if n is not None and n.is_dir:
                break
            need += 1
            if p == _ROOT:
                break
            p = keys.parent_of(p)
        if self.count + need > self.limit:
            return False
        self.count += need
        return True

    def removed(self, n: int) -> None:
        if self.count >= 0:
            self.count -= n

    def invalidate(self) -> None:
        self.count = -1


class _Event:
    """The rules for the rows of one event (one source, one event type).

    Within one event some tables can only shrink (an upsert event never adds a
    tombstone; a realtime event never adds a blind-spot entry), so whether they
    are empty is read once per event, which saves per-row lookups in the common
    case of empty tables.
    """

    __slots__ = ("audit", "cap", "has_add", "has_del", "has_tombs", "src", "st", "unresolved",
                 "w")

    def __init__(self, w: TreeWriter, st: ViewState, src: str) -> None:
        self.w = w
        self.st = st
        self.src = src
        self.audit = src == AUDIT
        dbs = w.dbs
        self.has_tombs = w.count(dbs.tombstones) > 0
        self.has_add = w.count(dbs.blind_additions) > 0
        self.has_del = w.count(dbs.blind_deletions) > 0
        self.cap = _Capacity(w, st.max_nodes) if st.max_nodes > 0 else None
        self.unresolved: list[str] = []

    def _mark_seen(self, path: bytes, node, row_is_dir: bool) -> None:
        """Record an audit sighting of ``path`` that did not rewrite its node."""
        w = self.w
        if node is None:
            node = w.get(path)
        if row_is_dir or (node is not None and node.is_dir):
            w.add_audit_dir(path)
        cycle = self.st.audit_cycle
        if node is not None and node.audit_mark != cycle:
            node.audit_mark = cycle
            w.put_flags(node)

    # -- snapshot rows of new paths (the bulk of a crawl) --------------------------------
    def new_snapshot_rows(self, rows: list, general, latest: float,
                          skew) -> tuple[int, int, float | None]:
        """Apply a snapshot event's rows, creating the nodes of new paths here, dropping
        rows no newer than the node they name, and handing every other row to
        ``general([(index, row)])`` (the general rules). Returns the rows created and
        dropped here, and the event's latency when its last timed row was one of them.

        A row of a new path, with no tombstone, ends in the general rules as a plain
        create (nothing to compare, Rule 3 is the audit's): the node is written with
        ``known_by_agent``, and as a suspect when the file is younger than the hot-file
        threshold. Here a row in the form our agents and 0.8.17's send (a canonical ``str``
        path under a short parent, float times, an int size, ``is_directory`` a bool) is
        checked field by field without the general validation, and one put both tests
        that the path is new and writes it (``TreeWriter.create``). When the path exists,
        a row no newer than its node is dropped here (Rule 2, which changes nothing for a
        snapshot row). Anything else takes the general rules, which decide exactly as
        before."""
        w = self.w
        st = self.st
        now = st.now
        T = st.hot_file_threshold
        create = w.create
        txn = w.txn
        tombs = w.dbs.tombstones if self.has_tombs else None
        nodes = w.dbs.nodes
        head = NODE_HEAD.unpack_from  # flags, size, modified_time, created_time
        root = _ROOT
        limit = keys.PARENT_LIMIT
        canonical = keys.canonical
        done = dropped = 0
        lat = None
        for i, row in enumerate(rows):
            if row.__class__ is dict:
                p = row.get("path") or row.get("file_path")
                m = row.get("modified_time")
                c = row.get("created_time")
                z = row.get("size")
                d = row.get("is_directory")
                if (p.__class__ is str and m.__class__ is float and c.__class__ is float
                        and z.__class__ is int and (d is True or d is False)
                        and MIN_TIME <= m <= latest and MIN_TIME <= c <= latest
                        and 0 <= z < SIZE_LIMIT):
                    try:
                        raw = p.encode("utf-8", "surrogateescape")
                    except UnicodeEncodeError:
                        raw = b""
                    k = raw.rfind(b"/")
                    # as keys.normalise would leave it, and node_key for a short parent
                    if 0 <= k <= limit and b"\0" not in raw and canonical(raw):
                        if k == 0:
                            parent, key = root, b"/\0" + raw[1:]
                        else:
                            parent = raw[:k]
                            key = parent + b"\0" + raw[k + 1:]
                        if tombs is None or txn.get(key, db=tombs) is None:
                            wall = now()
                            wm = wall if skew is None else wall - skew
                            age = wm - m
                            hot = age < T
                            skipped = row.get("audit_skipped")
                            flags = (KNOWN | (SUSPECT if hot else 0)
                                     | ((IS_DIR | (AUDIT_SKIPPED if skipped else 0)) if d else 0))
                            if create(raw, key, parent, flags, z, m, c):
                                done += 1
                                lat = age * 1000.0 if age > 0 else 0.0
                                # (no blind addition to drop: those die with their node)
                                if hot:
                                    self._new_suspect(raw, wall, age, m)
                                continue
                            # The path exists. Rule 2 drops a row no newer than the node
                            # (unless it says audit_skipped), and a dropped snapshot row
                            # changes nothing: most rows of a re-snapshot after a restart.
                            if not skipped and head(txn.get(key, db=nodes))[2] >= m:
                                dropped += 1
                                lat = age * 1000.0 if age > 0 else 0.0
                                continue
            if general(((i, row),)):
                lat = None
        return done, dropped, lat

    def _new_suspect(self, path: bytes, wall: float, age: float, mtime: float) -> None:
        """A suspect entry for a node a stat-walk row found hot: it stays one for what is
        left of the hot-file threshold. Existing entries are not renewed (repeating a hot
        row does not extend it)."""
        w = self.w
        T = self.st.hot_file_threshold
        entry = w.suspect(path)
        if entry is None:
            life = T - age
            w.put_suspect(path, wall + (T if life > T else (life if life > 0 else 0.0)), mtime)
        elif entry[1] == MISSING:  # the scan saw the file: drop the sentinel's report
            w.put_suspect(path, entry[0], mtime)

    # -- delete rows ----------------------------------------------------------------
    def delete(self, row: dict, path: bytes, mtime, _fields, wall: float, wm: float) -> bool:
        if path == _ROOT:
            return False
        w = self.w
        cap = self.cap
        if self.src == REALTIME:
            n = w.delete(path)  # drops the subtree's suspects and blind additions
            # Even for an unknown path: a stale compensation row must not create it.
            w.put_tombstone(path, wm, wall)
            self.has_tombs = True
            if self.has_del:
                w.discard_blind("deletions", path)
            if self.has_add:
                w.discard_blind("additions", path)
            if cap is not None:
                cap.removed(n)
            return True
        if self.has_tombs and w.tombstone(path) is not None:
            if self.audit:
                self._mark_seen(path, None, False)
            return False
        old = w.get(path)
        if old is not None and mtime is not None and old.modified_time > mtime:  # ties delete
            if self.audit:
                self._mark_seen(path, old, False)
            return False
        n = w.delete(path)
        w.add_blind("deletions", path)
        self.has_del = True
        if cap is not None:
            cap.removed(n)
        return True

    # -- move rows (our own agents; realtime only) ----------------------------------
    def move(self, row: dict, path: bytes, mtime: float, fields: tuple, wall: float,
             wm: float) -> bool:
        """A directory renamed or moved inside the tree (``moved_from`` → ``path``): what
        the realtime rows of the per-file form would do — a delete of the old directory,
        then an update for the directory and for everything that was under it, at the new
        place — done with the nodes fusion holds, in this one job. Each moved node is
        confirmed by realtime (``last_updated_at``) and keeps its size, times and flags;
        a suspect keeps its expiry. The directory itself takes the row's fresh stat.

        When fusion does not hold the old directory there is nothing to move: the old
        path is deleted all the same and the new path is reported back (``unresolved``),
        so the agent walks it and sends its rows."""
        w = self.w
        is_dir, size, ctime, old = fields
        src = w.get(old)
        if src is None or not src.is_dir:
            self.delete(row, old, None, None, wall, wm)
            self.unresolved.append(path.decode("utf-8", "surrogateescape"))
            return False
        cap = self.cap
        # rename(2) replaces what was at the target (an empty directory)
        n = w.delete(path)
        if cap is not None and n:
            cap.invalidate()
        # realtime updates lift tombstones and blind deletions at the places they write
        # (blind additions there went with the nodes the delete above removed)
        if self.has_tombs:
            w.lift_tombstones(path)
        if self.has_del:
            w.discard_blind_at_and_below("deletions", path)
        w.upsert(path, True, size, mtime, ctime, last_updated_at=wall, integrity_suspect=False,
                 known_by_agent=True, audit_skipped=src.audit_skipped,
                 audit_mark=src.audit_mark, current=None)
        cut = len(old)
        upsert, get, hashed = w.upsert, w.get, keys.needs_path_tail
        for page in w.subtree_pages(old):
            for k, v in page:
                node = unpack_node(k, v)
                new = path + node.path[cut:]
                # Key order puts a node after its parent, with nothing under it made yet,
                # except for a key under a long (hashed) parent: a child may have made it
                # already, as an empty directory, so it is read.
                upsert(new, node.is_dir, node.size, node.modified_time, node.created_time,
                       last_updated_at=wall, integrity_suspect=node.integrity_suspect,
                       known_by_agent=True, audit_skipped=node.audit_skipped,
                       audit_mark=node.audit_mark,
                       current=get(new) if hashed(node.path) else None)
        if w.count(w.dbs.suspects):
            for p, exp, m in list(w.iter_suspects_under(old)):
                w.put_suspect(path + p[cut:], exp, m)
        self.delete(row, old, None, None, wall, wm)  # the old place: a realtime delete
        if cap is not None:
            cap.invalidate()
        return True

    # -- upsert rows ----------------------------------------------------------------
    def upsert(self, row: dict, path: bytes, mtime: float, fields: tuple, wall: float,
               wm: float) -> bool:
        w = self.w
        st = self.st
        src = self.src
        audit = self.audit
        if audit and row.get("modified_time") is None and row.get("audit_skipped") is True:
            # "Unknown": the agent saw this entry but could not read it (a failed lstat, a
            # listing that broke off). It is kept as it is, and its children are not judged
            # by this cycle (it is not recorded as a reported directory).
            w.discard_audit_dir(path)
            node = w.get(path)
            if node is not None and node.audit_mark != st.audit_cycle:
                node.audit_mark = st.audit_cycle
                w.put_flags(node)
            return False
        is_dir, size, ctime = fields
        if audit and self.has_del:
            w.discard_blind("deletions", path)  # seen again, whatever the rules decide
        # Rule 1: tombstone gate (stat-walk rows; realtime lifts the tombstone).
        if self.has_tombs:
            ts = w.tombstone(path)
            if ts is not None:
                if mtime > ts[0] + TEPS or src == "realtime":
                    w.delete_tombstone(path)  # reincarnation
                else:
                    if audit:
                        self._mark_seen(path, None, is_dir)
                    return False
        old = w.get(path)
        bypass = bool(row.get("audit_skipped"))
        skipped = bypass if is_dir else None
        switch = old is not None and old.is_dir != is_dir
        T = st.hot_file_threshold
        cap = self.cap

        if src == REALTIME:
            if old is None and cap is not None and not cap.allow(path):
                return False
            atomic = row.get("is_atomic_write", True) is not False
            was_suspect = old is not None and old.integrity_suspect
            w.upsert(
                path, is_dir, size, mtime, ctime, last_updated_at=wall,
                integrity_suspect=not atomic, known_by_agent=True, audit_skipped=skipped,
                audit_mark=old.audit_mark if switch else None, current=old,
            )
            if atomic:
                if was_suspect and not switch:
                    w.delete_suspect(path)
            else:  # partial write: suspect for a full threshold from now, renewed each time
                w.put_suspect(path, wall + T, mtime)
            if self.has_add:
                w.discard_blind("additions", path)
            if self.has_del:
                w.discard_blind("deletions", path)
            if switch and cap is not None:
                cap.invalidate()
            return True

        # Rule 2: compensation rows must be strictly newer (silent dirs bypass it).
        if old is not None and not bypass and old.modified_time >= mtime:
            if audit:
                self._mark_seen(path, old, is_dir)
            return False
        if old is None:
            # Rule 3: an audit row for an unknown path whose parent (looked up
            # exactly as sent) is newer in the tree than the scan saw it is stale.
            if audit:
                parent = _exact_dir(w, row.get("parent_path"))
                if parent is not None and parent.modified_time > _parent_mtime(row):
                    return False
            if cap is not None and not cap.allow(path):
                return False
        snapshot = src == SNAPSHOT
        age = wm - mtime
        changed = old is None or abs(old.modified_time - mtime) > EPS
        known = suspect = None
        if changed:
            known = snapshot
            suspect = age < T
        else:  # only silent dir rows get here
            if snapshot:
                known = True
            if age >= T:
                suspect = False
        was_suspect = old is not None and old.integrity_suspect
        w.upsert(
            path, is_dir, size, mtime, ctime,
            # a type switch creates a new node; it keeps the old realtime confirmation
            last_updated_at=old.last_updated_at if switch else None,
            integrity_suspect=suspect, known_by_agent=known, audit_skipped=skipped,
            audit_mark=st.audit_cycle if audit else (old.audit_mark if switch else None),
            current=old,
        )
        if audit and is_dir:
            w.add_audit_dir(path)
        if switch and cap is not None:
            cap.invalidate()
        if snapshot:
            if self.has_add:
                w.discard_blind("additions", path)
        elif changed:
            w.add_blind("additions", path)
            self.has_add = True
        if suspect:
            self._new_suspect(path, wall, age, mtime)
        elif suspect is False and was_suspect and not switch:
            w.delete_suspect(path)
        return True


def _exact_dir(w: TreeWriter, parent_path):
    """The directory stored under ``parent_path`` taken verbatim (upstream does not
    normalise it), or None."""
    if isinstance(parent_path, str):
        try:
            raw = parent_path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return None
    elif isinstance(parent_path, bytes):
        raw = parent_path
    else:
        return None
    try:
        if _norm(raw) != raw:
            return None
    except PathError:
        return None
    node = w.get(raw)
    return node if node is not None and node.is_dir else None


def _parent_mtime(row: dict) -> float:
    v = row.get("parent_mtime")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and _isfinite(v):
        return float(v)
    return 0.0
