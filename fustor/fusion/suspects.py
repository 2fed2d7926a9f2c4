"""The suspect list outside event processing: expiry sweep and sentinel feedback
(spec/consistency.md §7.4, §7.5).

    listed ──expiry, mtime moved──► renewed (full threshold, new mtime)
       │    ──expiry, mtime stable──► cleared
       │    ──sentinel: stable & cold──► cleared;  stable & hot ──► unchanged
       │    ──sentinel: changed──► node adopts mtime/size, renewed
       └────sentinel: missing──► pending (kept, renewed by the sweep)
                                   ──missing again──► node deleted, blind deletion
                                   ──seen (sentinel/realtime)──► back to the rules above

The sweep settles due entries in chunks of ``SWEEP_CHUNK``, one write job each.

Expiry is wall-clock epoch seconds (not monotonic as upstream) because it is
stored and must mean the same after a restart.
"""

from __future__ import annotations

import math
import time

from fustor.errors import PathError
from fustor.fusion.view_state import ViewState
from fustor.store import TreeWriter, keys

EPS = 1e-6
# recorded_mtime of an entry whose last sentinel report said "missing"; no real
# mtime can be -inf (rows with non-finite mtimes are rejected)
MISSING = float("-inf")


# entries one sweep job settles at most (~7 µs each): the writer is held for a few
# milliseconds, and a realtime push waits for one chunk, never for the whole sweep
SWEEP_CHUNK = 1000
# ... and for at most this long, on a loaded host too (a push queued behind a chunk
# waits for it: on 2 busy cores a full chunk took tens of ms, the realtime tail)
SWEEP_BUDGET_S = 0.004


def sweep_suspects(w: TreeWriter, st: ViewState, limit: int | None = None) -> int:
    """Settle suspects whose expiry has passed: a file whose mtime did not move
    since it was listed is cleared; one still changing is renewed for a full
    threshold with its new mtime. Logical age is not looked at, so a file with a
    future mtime clears after one stable period. Returns the number cleared.

    With ``limit``, at most that many entries are settled (one bounded write job);
    :func:`sweep_more` says whether another chunk is due."""
    return sweep_chunk(w, st, limit)[0]


def sweep_chunk(w: TreeWriter, st: ViewState, limit: int | None = SWEEP_CHUNK,
                budget_s: float | None = None) -> tuple[int, bool]:
    """One sweep job: ``(cleared, more)``, where ``more`` says that due entries may remain
    (the caller queues the next chunk as a new job, so other writes run in between).
    With ``budget_s`` the job also stops once it has run that long."""
    wall = st.now()
    renew_until = wall + st.hot_file_threshold
    cleared = settled = 0
    until = None if budget_s is None else time.perf_counter() + budget_s
    while True:
        room = None if limit is None else limit - settled
        if room is not None and room <= 0:
            return cleared, st.hot_file_threshold > 0
        due = w.due_suspects(wall, limit=min(room or 10_000, 10_000))
        if not due:
            return cleared, False
        for path in due:
            if until is not None and settled & 63 == 63 and time.perf_counter() > until:
                return cleared, True
            settled += 1
            entry = w.suspect(path)
            if entry is None:
                continue
            node = w.get(path)
            if node is None:  # cannot happen through the store's deletes; be safe
                w.delete_suspect(path)
                cleared += 1
            elif entry[1] == MISSING:  # awaiting the sentinel's next report
                w.put_suspect(path, renew_until, MISSING)
            elif abs(node.modified_time - entry[1]) > EPS:
                w.put_suspect(path, renew_until, node.modified_time)
            else:
                w.delete_suspect(path)
                node.integrity_suspect = False
                w.put_flags(node)
                cleared += 1
        if st.hot_file_threshold <= 0:  # renewed entries would be due again at once
            return cleared, False


def _valid_size(size) -> bool:
    return (
        isinstance(size, int) and not isinstance(size, bool) and 0 <= size < 2**63
    ) or (isinstance(size, float) and size.is_integer() and 0 <= size < 2**63)


def update_suspect(
    w: TreeWriter,
    st: ViewState,
    path: str | bytes,
    mtime: float,
    size: int | None = None,
    status: str | None = None,
) -> bool:
    """Apply one sentinel re-stat of ``path`` (E9 feedback or ``PUT /suspect-list``).

    Only listed suspects change. Stable and cold: cleared at once. Stable but hot:
    left to the expiry sweep. Changed: the node adopts the reported mtime (and
    size) and the entry is renewed for a full threshold.

    ``status == "missing"`` (the agent's stat found nothing; upstream stores mtime
    0.0 instead): the first report keeps the node unchanged and flagged, and the
    expiry sweep keeps it listed so the sentinel stats it again; a second
    "missing" in a row deletes it (a blind deletion). A report, a realtime event
    or an accepted compensation row in between that sees the file clears the
    pending report.
    Returns True when the suspect entry or the node changed.
    """
    try:
        p = keys.normalise(path)
    except PathError:
        return False
    if not isinstance(mtime, (int, float)) or isinstance(mtime, bool) or not math.isfinite(mtime):
        return False
    if size is not None and not _valid_size(size):
        size = None  # an unusable size says nothing about stability
    st.clock.update(mtime, can_sample=False)
    node = w.get(p)
    if node is None:
        return False
    entry = w.suspect(p)
    if entry is None:  # non-suspects are never modified by the sentinel
        return False
    wall = st.now()
    T = st.hot_file_threshold
    if status == "missing":
        if p == keys.ROOT:  # the root is never deleted; nothing to record
            return False
        if entry[1] == MISSING:
            # Second report in a row with nothing in between that saw the file:
            # confirmed gone. Learned from a stat walk, so it is a blind deletion.
            w.delete(p)
            w.add_blind("deletions", p)
            return True
        # First report: one failed stat is not proof (NFS hiccup, delete-and-recreate
        # in flight). Keep the node as it is, flagged, and remember the report.
        w.put_suspect(p, wall + T, MISSING)
        if not node.integrity_suspect:
            node.integrity_suspect = True
            w.put_flags(node)
        return True
    skew = st.clock.get_skew()
    raw_stable = abs(node.modified_time - mtime) < EPS
    skew_stable = abs(node.modified_time - (mtime + skew)) < EPS
    if skew_stable and not raw_stable:
        mtime = node.modified_time
        mtime_stable = True
    else:
        mtime_stable = raw_stable
    size_stable = size is None or node.size == size
    if mtime_stable and size_stable:
        if st.clock.watermark() - mtime >= T:  # cold: fast clear
            w.delete_suspect(p)
            node.integrity_suspect = False
            w.put_flags(node)
            return True
        if entry[1] == MISSING:  # the file is back: drop the pending "missing" report
            w.put_suspect(p, entry[0], node.modified_time)
            return True
        return False  # stable but hot: the expiry sweep decides
    new_size = node.size if size is None else int(size)
    w.upsert(p, node.is_dir, new_size, float(mtime), node.created_time, integrity_suspect=True)
    w.put_suspect(p, wall + T, float(mtime))
    return True
