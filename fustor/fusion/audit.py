"""Audit cycles and the view hooks that drop consistency state (spec/consistency.md §9, §10).

An audit cycle is a number (``ViewState.audit_cycle``). While it is open, every
node an audit row reports gets ``audit_mark = cycle`` and every directory it
reports is recorded in the ``audit_dirs`` table. At the end, the direct children
of those directories that were not reported are judged missing:

    audit row ──► auto-start (no cycle open) ──► mark nodes, record dirs
    audit_start ─► late (< 5 s after a start that already saw rows)? keep the cycle
                   otherwise a new cycle number, audit_dirs emptied
    audit_end ──► (in bounded steps, one write job each: audit_end_step)
              ──► purge tombstones older than the TTL
              ──► for each recorded dir that still is a non-silent dir:
                    each child not marked, not tombstoned, not confirmed by realtime
                    since the cycle started ──► delete (recursively), blind deletion
              ──► close: finished_at, cycle_count + 1, no cycle open

Cycle numbers only grow, so marks of an abandoned cycle (new session, late start
refused) never count in a later one; after a reset the tree holds no marks at all.
"""

from __future__ import annotations

from fustor.fusion.view_state import ViewState
from fustor.store import TreeWriter, keys

LATE_START_WINDOW = 5.0  # s: an explicit start this soon after an auto-start keeps its rows


def begin_cycle(w: TreeWriter, st: ViewState, wall: float) -> None:
    """Open a new audit cycle (auto-start on the first audit row, or an explicit start)."""
    w.clear(w.dbs.audit_dirs)
    st.audit_cycle += 1
    st.audit_rows_seen = 0
    st.last_audit_start = wall


def audit_start(w: TreeWriter, st: ViewState) -> None:
    """Explicit start (E6). A start that arrives within 5 s of an auto-start which
    already saw rows is "late": the rows already seen stay seen."""
    st.sync(w)
    wall = st.now()
    late = (
        st.last_audit_start is not None
        and wall - st.last_audit_start < LATE_START_WINDOW
        and st.audit_rows_seen > 0
    )
    if late:
        st.last_audit_start = wall
    else:
        begin_cycle(w, st, wall)
    st.save(w)


# children judged (directories looked at count as one) per write job of an audit end: a
# 1M-entry view's end is ~hundreds of short jobs, so realtime pushes go in between
AUDIT_END_CHUNK = 2000


def audit_end(w: TreeWriter, st: ViewState) -> int:
    """Close the open cycle in one job (tests, tools): every step of :func:`audit_end_step`.
    Returns the number of paths judged missing; without an open cycle does nothing."""
    missing, cursor, done = 0, None, False
    while not done:
        n, cursor, done = audit_end_step(w, st, cursor, budget=None)
        missing += n
    return missing


def audit_end_step(w: TreeWriter, st: ViewState, cursor: tuple | None = None,
                   budget: int | None = AUDIT_END_CHUNK) -> tuple[int, tuple | None, bool]:
    """One bounded job of closing the open cycle: tombstone TTL purge (first step), then
    missing-item detection over the recorded directories, ``budget`` children per step.

    ``cursor`` is None for the first step, then what the previous step returned (the cycle
    being closed and where a big directory's listing stopped). Each recorded directory
    leaves ``audit_dirs`` once judged, so the steps go on from the table itself. Returns
    ``(missing, cursor, done)``; the last step closes the cycle. A step finding another
    cycle (a session start replaced it meanwhile) ends without closing anything.
    """
    st.sync(w)
    start = st.last_audit_start
    if start is None:
        return 0, None, True
    if cursor is None:
        w.purge_tombstones(st.now() - st.tombstone_ttl_seconds)
        cursor = (st.audit_cycle, None, None)
    cycle, cur_dir, after = cursor
    if cycle != st.audit_cycle:
        return 0, None, True
    missing = looked = 0
    while budget is None or looked < budget:
        d = next(iter(w.iter_audit_dirs()), None)
        if d is None:
            _close_cycle(w, st)
            return missing, None, True
        if d != cur_dir:
            cur_dir, after = d, None
        looked += 1
        parent = w.get(d)
        # Protections 1 and 2: silent dirs and dirs not reported this cycle (never
        # recorded) keep their children.
        if parent is None or not parent.is_dir or parent.audit_skipped:
            w.discard_audit_dir(d)
            continue
        kids, after = w.children(d, after=after, limit=None if budget is None else budget - looked + 1)
        looked += len(kids)
        for child in kids:
            if child.audit_mark == cycle:
                continue
            # Protection 4: realtime confirmed it after the scan began; its old
            # mtime (cp -p, rsync -a, tar x) says nothing about its existence.
            if child.last_updated_at > start:
                continue
            # Protection 3: realtime already knows about this path.
            if w.tombstone(child.path) is not None:
                continue
            w.delete(child.path)  # drops the subtree's suspects and blind additions too
            w.add_blind("deletions", child.path)
            missing += 1
        if after is None:
            w.discard_audit_dir(d)
    return missing, (cycle, cur_dir, after), False


def _close_cycle(w: TreeWriter, st: ViewState) -> None:
    w.clear(w.dbs.audit_dirs)
    # Only now change the in-memory state: if a write above fails (map growth),
    # the job runs again and must still find its cycle open.
    st.last_audit_finished_at = st.now()
    st.audit_cycle_count += 1
    st.last_audit_start = None
    st.audit_rows_seen = 0
    st.save(w)


def session_start(w: TreeWriter, st: ViewState) -> None:
    """A new session on the view (any role): blind spots and the open audit cycle go;
    tree, tombstones, suspects and clock stay."""
    st.sync(w)
    w.clear(w.dbs.blind_additions)
    w.clear(w.dbs.blind_deletions)
    w.clear(w.dbs.audit_dirs)
    st.last_audit_start = None
    st.audit_rows_seen = 0
    st.save(w)


def reset(w: TreeWriter, st: ViewState) -> None:
    """Empty the view: only the root remains (size 0, mtime 0); every table, counter
    and clock sample is gone."""
    # The store has no "drop the tree" primitive that keeps the writer's caches
    # right, so delete each top-level subtree (range deletes, O(nodes)).
    top = [child.path for child in w.iter_children(keys.ROOT)]
    for p in top:
        w.delete(p)
    w.upsert(
        keys.ROOT, True, 0, 0.0, 0.0, last_updated_at=0.0, integrity_suspect=False,
        known_by_agent=False, audit_skipped=False, audit_mark=0,
    )
    dbs = w.dbs
    for db in (dbs.tombstones, dbs.suspects, dbs.suspect_expiry, dbs.blind_additions,
               dbs.blind_deletions, dbs.audit_dirs, dbs.name_blobs, dbs.name_filters):
        w.clear(db)  # every name in the name blocks is gone: none is kept stale
    st.clear()
    st.save(w, force=True)
