"""One source tree = one store: applies arbitrated batches and answers queries.

Changes run as jobs on the store's writer thread (one write transaction, the
request answered after commit); queries run in read transactions and never wait
for the writer. The view's consistency scalars (clock, audit cycle, ...) live in
``ViewState`` and are saved into the store's ``meta`` by the same transaction
that changed them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

from fustor.errors import BadQueryError, NotFoundError, PathError, TooManyItemsError
from fustor.fusion import arbitration as rules
from fustor.fusion.suspects import SWEEP_BUDGET_S, SWEEP_CHUNK
from fustor.store import Node, Store, index, keys
from fustor.store.records import AUDIT_SKIPPED, IS_DIR, KNOWN, NODE_HEAD, SUSPECT
from fustor.store.state import SUSPECT_DIRS

# levels of children one tree answer may nest (JSON encoders stop near 255)
MAX_NESTING = 200
# meta key set when a leader's snapshot completed at least once (survives restarts)
SNAPSHOT_META = "snapshot_completed_at"
# name-block filters written while idle: blocks per write job, and the pause between jobs
FILTER_BLOCKS = 2
FILTER_PAUSE_S = 0.02


def node_json(n: Node, only_path: bool = False) -> dict:
    if only_path:
        return {"name": n.name, "content_type": "directory" if n.is_dir else "file",
                "path": n.path_str}
    d = {
        "name": n.name,
        "content_type": "directory" if n.is_dir else "file",
        "path": n.path_str,
        "size": n.size,
        "modified_time": n.modified_time,
        "created_time": n.created_time,
        "integrity_suspect": n.integrity_suspect,
        "agent_missing": not n.known_by_agent,
    }
    if n.is_dir:
        d["audit_skipped"] = n.audit_skipped
    return d


def record_json(path: str, name: str, record: bytes) -> dict:
    """:func:`node_json` of a raw node record, for a caller that already holds the path
    (and name) as text: answers listing many records skip building a ``Node`` each."""
    f, size, mtime, ctime = NODE_HEAD.unpack_from(record)
    d = {
        "name": name,
        "content_type": "directory" if f & IS_DIR else "file",
        "path": path,
        "size": size,
        "modified_time": mtime,
        "created_time": ctime,
        "integrity_suspect": bool(f & SUSPECT),
        "agent_missing": not f & KNOWN,
    }
    if f & IS_DIR:
        d["audit_skipped"] = bool(f & AUDIT_SKIPPED)
    return d


def suspect_update(u) -> tuple[bytes, float, int | None, str | None] | None:
    """``(path, mtime, size, status)`` of one re-stat result, or None if it is unusable."""
    if not isinstance(u, dict):
        return None
    path, mtime = u.get("path"), u.get("mtime", u.get("current_mtime"))
    size, status = u.get("size"), u.get("status")
    if not isinstance(path, str) or not path or isinstance(mtime, bool) \
            or not isinstance(mtime, (int, float)) or not math.isfinite(mtime):
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        size = None
    try:
        return keys.normalise(path), float(mtime), size, status if isinstance(status, str) else None
    except PathError:
        return None


class FsView:
    driver = "fs"

    def __init__(self, view_id: str, store_path: Path, *, hot_file_threshold: float = 30.0,
                 tombstone_ttl_seconds: float = 3600.0, max_nodes: int = 0,
                 max_tree_items: int = 100_000, settle_s: float | None = None,
                 now: Callable[[], float] = time.time) -> None:
        self.id = view_id
        self.store = Store(store_path)
        self.max_tree_items = max_tree_items
        self.settle_s = hot_file_threshold if settle_s is None else settle_s
        self.state = rules.ViewState(
            hot_file_threshold=hot_file_threshold, tombstone_ttl_seconds=tombstone_ttl_seconds,
            max_nodes=max_nodes, now=now,
        )
        with self.store.read() as r:
            self.state.load(r)
            self.snapshot_completed_at = r.meta(SNAPSHOT_META)
            uncounted = r.meta(SUSPECT_DIRS) is None and r.count(r.dbs.suspects) > 0
        if uncounted:  # written before suspect directories were counted
            self.store.write(lambda w: w.recount_suspect_dirs())

    def close(self) -> None:
        try:  # the clock samples are saved at most once a second while running
            self.store.write(lambda w: self.state.save(w, force=True))
        except Exception:  # closing must not fail; at worst a second of samples is lost
            pass
        self.store.close()

    # -- writes -------------------------------------------------------------------
    async def run(self, fn: Callable, *, save: bool = True):
        """Run ``fn(writer, state)`` in the next write transaction; return after commit.
        The state is changed only in the writer thread, and put back there (``undo``)
        when the job's changes do not reach the disk."""
        st = self.state
        cp: list = []

        def job(w):
            cp[:] = [st.checkpoint()]
            out = fn(w, st)
            if save:
                st.save(w)
            return out

        job.undo = lambda: st.restore(cp[0]) if cp else None
        return await asyncio.wrap_future(self.store.submit(job, block=False))

    async def apply_events(self, events: list[dict]) -> dict:
        def job(w, st):
            applied = 0
            rejected = []
            unresolved: list[str] = []
            for i, ev in enumerate(events):
                res = rules.process_event(w, st, ev)
                applied += res.applied
                for rej in res.rejected:
                    rejected.append({"event": i, **rej})
                unresolved += res.unresolved
            return {"applied": applied, "rejected": rejected, "unresolved": unresolved}

        return await self.run(job)

    async def mark_snapshot_complete(self) -> None:
        now = time.time()
        await self.run(lambda w, st: w.put_meta(SNAPSHOT_META, now), save=False)
        self.snapshot_completed_at = now

    async def audit_start(self) -> None:
        await self.run(rules.audit_start)

    async def audit_end(self) -> int:
        """Close the open audit cycle in bounded write jobs (``audit_end_step``), each queued
        after the previous one committed; returns the number of paths judged missing."""
        missing, cursor, done = 0, None, False
        while not done:
            n, cursor, done = await self.run(
                lambda w, st, c=cursor: rules.audit_end_step(w, st, c))
            missing += n
        return missing

    async def session_start(self) -> None:
        await self.run(rules.session_start)

    async def sweep_suspects(self, chunk: int = SWEEP_CHUNK, budget_s: float | None = SWEEP_BUDGET_S) -> int:
        """Settle every due suspect, ``chunk`` entries (and ``budget_s`` seconds) per write
        job at most: each job is queued after the previous one committed, so pushes queued
        meanwhile go first and wait for one chunk at most. Returns the number cleared."""
        cleared = 0
        more = True
        while more:
            n, more = await self.run(lambda w, st: rules.sweep_chunk(w, st, chunk, budget_s))
            cleared += n
        return cleared

    def _purge_cutoff(self) -> float:
        # what the last audit end purges: tombstones older than the TTL at that time
        # (the spec purges only at audit end; this finishes that purge in chunks)
        st = self.state
        return st.last_audit_finished_at - st.tombstone_ttl_seconds if st.last_audit_finished_at else 0.0

    def name_blocks_waiting(self) -> int:
        """Full name blocks whose trigram filter is not written yet (ingest leaves them to
        idle time: :meth:`write_name_filters`)."""
        with self.store.read() as r:
            return index.blocks_waiting(r.txn, r.dbs)

    async def write_name_filters(self, pause_s: float = FILTER_PAUSE_S) -> int:
        """Write the waiting name-block filters, two blocks (~3 ms) per write job, each job
        queued ``pause_s`` after the previous one committed, and only while no push waits:
        ingest and realtime go first, and this thread's CPU (it holds the GIL) never
        keeps the event loop waiting long. Returns the number of jobs run."""
        jobs = 0
        more = True
        while more and self.store.queued == 0:
            more = await self.run(lambda w, st: index.write_filters(w.txn, w.dbs, FILTER_BLOCKS),
                                  save=False)
            jobs += 1
            if more and pause_s:
                await asyncio.sleep(pause_s)
        return jobs

    def tombstones_due(self) -> bool:
        """True when the last audit end left expired tombstones for later chunks."""
        cutoff = self._purge_cutoff()
        with self.store.read() as r:
            return cutoff > 0 and r.tombstones_due(cutoff)

    async def purge_tombstones(self) -> int:
        """Go on with the last audit end's tombstone purge: one bounded chunk."""
        return await self.run(lambda w, st: w.purge_tombstones(self._purge_cutoff()), save=False)

    async def update_suspects(self, updates: list[dict]) -> int:
        """Apply re-stat results; an item without a usable path and mtime is skipped
        (the sentinel protocol says so), never an error for the rest."""
        items = [u for u in (suspect_update(x) for x in updates) if u is not None]

        def job(w, st):
            for path, mtime, size, status in items:
                rules.update_suspect(w, st, path, mtime, size, status)
            return len(items)

        return await self.run(job)

    async def reset(self) -> None:
        await self.run(rules.reset)
        self.snapshot_completed_at = None

    # -- queries (sync; call them from a thread) -------------------------------------
    def tree(self, path: str, *, recursive: bool = True, max_depth: int | None = None,
             only_path: bool = False, after: str | None = None, limit: int = 10_000) -> dict:
        """The node at ``path`` and its children (``limit`` per directory, name order,
        ``next_after`` to page on). The answer never holds more than ``max_tree_items``
        entries: an unbounded tree over it is refused up front (its size is one aggregate
        read), a ``max_depth`` one as soon as the walk passes it. Walked with a stack, so
        any depth works."""
        p = keys.normalise(path)
        if max_depth is None and not recursive:
            max_depth = 1
        with self.store.read() as r:
            top = r.get(p)
            if top is None:
                raise NotFoundError(f"path {path!r} is not in view {self.id!r} (not found or not yet synced)")
            out = node_json(top, only_path)
            if not top.is_dir or max_depth == 0:
                return out
            budget = self.max_tree_items if self.max_tree_items > 0 else None
            if budget is not None:
                st = r.stats(p)
                count = st.file_count + st.dir_count
                if count <= budget:
                    budget = None  # the whole subtree fits
                elif max_depth is None:
                    raise TooManyItemsError(
                        f"the tree under {path!r} has {count} items, over this view's limit of "
                        f"{self.max_tree_items}; ask for a max_depth, a more specific path, or "
                        "raise driver_params.max_tree_items"
                    )
            after_b = keys.normalise("/" + after)[1:] if after else None
            emitted = 0
            stack = [(out, top.path, 1, after_b)]
            while stack:
                parent_json, dpath, depth, start_after = stack.pop()
                kids, nxt = r.children(dpath, after=start_after, limit=limit)
                emitted += len(kids)
                if budget is not None and emitted > budget:
                    raise TooManyItemsError(
                        f"this answer would hold more than this view's limit of {budget} items "
                        f"(max_depth={max_depth}, limit={limit} per directory); ask for a "
                        "smaller max_depth or limit and page on with after/next_after")
                children = []
                for k in kids:
                    j = node_json(k, only_path)
                    children.append(j)
                    if k.is_dir and (max_depth is None or depth < max_depth):
                        if depth >= MAX_NESTING:
                            raise BadQueryError(
                                f"the tree under {path!r} is deeper than {MAX_NESTING} levels, "
                                f"more than one JSON answer can nest; ask for max_depth <= "
                                f"{MAX_NESTING} and go on from a deeper path")
                        stack.append((j, k.path, depth + 1, None))
                parent_json["children"] = children
                if nxt is not None:
                    parent_json["next_after"] = keys.display(nxt)
            return out

    def stats(self, path: str = "/") -> dict:
        """Counts of the subtree at ``path`` (every count describes that path) and the
        view's health. O(1): one aggregate record and table sizes."""
        p = keys.normalise(path)
        st = self.state
        with self.store.read() as r:
            s = r.stats(p)
            if s is None:
                raise NotFoundError(f"path {path!r} is not in view {self.id!r}")
            dbs = r.dbs
            n_add, n_del = r.count(dbs.blind_additions), r.count(dbs.blind_deletions)
            suspect_files = r.suspect_file_count()
            settled = self.settled(r, p)
        last = st.last_event_at
        return {
            "path": keys.display(p),
            **s.as_dict(),
            **settled,
            # the names of the original's answer, for the same subtree (the directory
            # itself counts in dir_count and item_count, as "/" did there)
            "item_count": s.file_count + s.dir_count,
            "total_files": s.file_count,
            "total_directories": s.dir_count,
            "total_size": s.total_size,
            "latency_ms": st.last_event_latency_ms,
            "has_blind_spot": bool(n_add or n_del),
            "blind_spot_additions": n_add,
            "blind_spot_deletions": n_del,
            "suspect_file_count": suspect_files,
            "logical_now": st.clock.watermark(),
            "last_audit_finished_at": st.last_audit_finished_at,
            "audit_cycle_count": st.audit_cycle_count,
            "is_auditing": st.last_audit_start is not None,
            "last_event_at": last or None,
            "seconds_since_last_event": round(max(0.0, time.time() - last), 3) if last else None,
        }

    def settled(self, r, p: bytes) -> dict:
        """Has the data under ``p`` stopped changing? ``last_change_at``: fusion's wall time
        of the latest change under ``p`` (deletions included; for a file, its directory's);
        ``suspects_under``: suspect entries at or under ``p`` (a key range, not a scan of
        the view); ``settled``: quiet for ``settle_s`` and no suspect under ``p``. What it
        promises and cannot know: docs/consistency.md, "Settled"."""
        agg = r.aggregate(p)
        if agg is None:  # a file: the time its directory last changed
            agg = r.aggregate(keys.parent_of(p))
        last = agg.last_change_at if agg is not None else 0.0
        quiet = max(0.0, time.time() - last)
        under = r.suspects_under(p)
        return {"last_change_at": last, "quiet_for_s": round(quiet, 3), "suspects_under": under,
                "settle_s": self.settle_s, "settled": quiet >= self.settle_s and under == 0}

    def search(self, pattern: str, path: str = "/", limit: int = 1000, after: str | None = None,
               **filters) -> dict:
        """One page of the nodes under ``path`` matching ``pattern`` (see
        :mod:`fustor.store.search`), by name; ``next_after`` pages on."""
        p = keys.normalise(path)
        with self.store.read() as r:
            found = r.search(pattern, p, limit, after=after, **filters)
            return {"pattern": pattern, "path": keys.display(p),
                    "results": [node_json(n) for n in found.nodes],
                    "truncated": found.truncated, "next_after": found.next_after}

    locate = search  # on one tree, "where is it" is the search itself

    def blind_spots(self, limit: int = 10_000) -> dict:
        """What only audits saw: added entries (files and directories, each with its
        ``content_type``; an entry leaves the list when its node goes) and deleted paths.
        Each count is the length of its full list; ``*_truncated`` says a list was cut."""
        with self.store.read() as r:
            adds = []
            for p in r.iter_blind("additions"):
                if len(adds) >= limit:
                    break
                n = r.get(p)
                if n is not None:
                    adds.append(node_json(n))
            dels = []
            for p in r.iter_blind("deletions"):
                if len(dels) >= limit:
                    break
                dels.append(keys.display(p))
            n_add, n_del = r.count(r.dbs.blind_additions), r.count(r.dbs.blind_deletions)
            return {"additions_count": n_add, "additions": adds,
                    "additions_truncated": n_add > len(adds),
                    "deletion_count": n_del, "deletions": dels,
                    "deletions_truncated": n_del > len(dels)}

    def suspect_list(self, limit: int = 100_000) -> list[dict]:
        wall, mono = time.time(), time.monotonic()
        out = []
        with self.store.read() as r:
            for p, expires, _m in r.iter_suspects():
                out.append({"path": keys.display(p), "suspect_until": mono + (expires - wall),
                            "expires_at": expires})
                if len(out) >= limit:
                    break
        return out

    def suspects_due(self, now: float) -> bool:
        with self.store.read() as r:
            return bool(r.due_suspects(now, limit=1))

    def suspect_paths(self) -> list[str]:
        return [s["path"] for s in self.suspect_list()]
