"""One source tree = one store: applies arbitrated batches and answers queries.

Changes run as jobs on the store's writer thread (one write transaction, the
request answered after commit); queries run in read transactions and never wait
for the writer. The view's consistency scalars (clock, audit cycle, ...) live in
``ViewState`` and are saved into the store's ``meta`` by the same transaction
that changed them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from fustor.errors import NotFoundError, TooManyItemsError
from fustor.fusion import arbitration as rules
from fustor.store import Node, Store, keys

# meta key set when a leader's snapshot completed at least once (survives restarts)
SNAPSHOT_META = "snapshot_completed_at"


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


class FsView:
    driver = "fs"

    def __init__(self, view_id: str, store_path: Path, *, hot_file_threshold: float = 30.0,
                 tombstone_ttl_seconds: float = 3600.0, max_nodes: int = 0,
                 max_tree_items: int = 100_000, now: Callable[[], float] = time.time) -> None:
        self.id = view_id
        self.store = Store(store_path)
        self.max_tree_items = max_tree_items
        self.state = rules.ViewState(
            hot_file_threshold=hot_file_threshold, tombstone_ttl_seconds=tombstone_ttl_seconds,
            max_nodes=max_nodes, now=now,
        )
        with self.store.read() as r:
            self.state.load(r)
            self.snapshot_completed_at = r.meta(SNAPSHOT_META)

    def close(self) -> None:
        try:  # the clock samples are saved at most once a second while running
            self.store.write(lambda w: self.state.save(w, force=True))
        except Exception:  # closing must not fail; at worst a second of samples is lost
            pass
        self.store.close()

    # -- writes -------------------------------------------------------------------
    async def run(self, fn: Callable, *, save: bool = True):
        """Run ``fn(writer, state)`` in the next write transaction; return after commit."""
        st = self.state

        def job(w):
            out = fn(w, st)
            if save:
                st.save(w)
            return out

        fut = self.store.submit(job, block=False)
        try:
            return await asyncio.wrap_future(fut)
        except Exception:
            with self.store.read() as r:  # the failed job's in-memory changes are void
                st.load(r)
            raise

    async def apply_events(self, events: list[dict]) -> dict:
        def job(w, st):
            applied = 0
            rejected = []
            for i, ev in enumerate(events):
                res = rules.process_event(w, st, ev)
                applied += res.applied
                for rej in res.rejected:
                    rejected.append({"event": i, **rej})
            return {"applied": applied, "rejected": rejected}

        return await self.run(job)

    async def mark_snapshot_complete(self) -> None:
        now = time.time()
        await self.run(lambda w, st: w.put_meta(SNAPSHOT_META, now), save=False)
        self.snapshot_completed_at = now

    async def audit_start(self) -> None:
        await self.run(rules.audit_start)

    async def audit_end(self) -> int:
        return await self.run(rules.audit_end)

    async def session_start(self) -> None:
        await self.run(rules.session_start)

    async def sweep_suspects(self) -> int:
        return await self.run(rules.sweep_suspects)

    async def update_suspects(self, updates: list[dict]) -> int:
        def job(w, st):
            n = 0
            for u in updates:
                path, mtime = u.get("path"), u.get("mtime", u.get("current_mtime"))
                if not path or mtime is None:
                    continue
                rules.update_suspect(w, st, keys.normalise(path), float(mtime), u.get("size"),
                                     u.get("status"))
                n += 1
            return n

        return await self.run(job)

    async def reset(self) -> None:
        await self.run(rules.reset)
        self.snapshot_completed_at = None

    # -- queries (sync; call them from a thread) -------------------------------------
    def tree(self, path: str, *, recursive: bool = True, max_depth: int | None = None,
             only_path: bool = False, after: str | None = None, limit: int = 10_000) -> dict:
        p = keys.normalise(path)
        if max_depth is None and not recursive:
            max_depth = 1
        with self.store.read() as r:
            top = r.get(p)
            if top is None:
                raise NotFoundError(f"path {path!r} is not in view {self.id!r} (not found or not yet synced)")
            if top.is_dir and max_depth is None and self.max_tree_items > 0:
                st = r.stats(p)
                count = st.file_count + st.dir_count
                if count > self.max_tree_items:
                    raise TooManyItemsError(
                        f"the tree under {path!r} has {count} items, over this view's limit of "
                        f"{self.max_tree_items}; ask for a max_depth, a more specific path, or "
                        "raise driver_params.max_tree_items"
                    )
            out = node_json(top, only_path)
            if not top.is_dir or max_depth == 0:
                return out
            after_b = keys.normalise("/" + after)[1:] if after else None
            self._fill(r, out, top.path, 1, max_depth, only_path, limit, after_b)
            return out

    def _fill(self, r, out: dict, path: bytes, depth: int, max_depth: int | None,
              only_path: bool, limit: int, after: bytes | None = None) -> None:
        kids, nxt = r.children(path, after=after, limit=limit)
        children = []
        for k in kids:
            j = node_json(k, only_path)
            if k.is_dir and (max_depth is None or depth < max_depth):
                self._fill(r, j, k.path, depth + 1, max_depth, only_path, limit)
            children.append(j)
        out["children"] = children
        if nxt is not None:
            out["next_after"] = keys.display(nxt)

    def stats(self, path: str = "/") -> dict:
        p = keys.normalise(path)
        st = self.state
        with self.store.read() as r:
            s = r.stats(p)
            if s is None:
                raise NotFoundError(f"path {path!r} is not in view {self.id!r}")
            root = s if p == keys.ROOT else r.stats(keys.ROOT)
            dbs = r.dbs
            n_add, n_del = r.count(dbs.blind_additions), r.count(dbs.blind_deletions)
            suspects = r.count(dbs.suspects)
        now = time.time()
        last = st.last_event_at
        return {
            "path": keys.display(p),
            **s.as_dict(),
            "item_count": root.file_count + root.dir_count,
            "total_files": root.file_count,
            "total_directories": root.dir_count,
            "total_size": s.total_size,
            "latency_ms": st.last_event_latency_ms,
            "staleness_seconds": max(0.0, now - last) if last else None,
            "oldest_item_path": None,
            "has_blind_spot": bool(n_add or n_del),
            "blind_spot_additions": n_add,
            "blind_spot_deletions": n_del,
            "suspect_file_count": suspects,
            "logical_now": st.clock.watermark(),
            "last_audit_finished_at": st.last_audit_finished_at,
            "audit_cycle_count": st.audit_cycle_count,
            "is_auditing": st.last_audit_start is not None,
            "last_event_at": last,
        }

    def search(self, pattern: str, path: str = "/", limit: int = 1000) -> list[dict]:
        with self.store.read() as r:
            return [node_json(n) for n in r.search(pattern, keys.normalise(path), limit)]

    def blind_spots(self, limit: int = 10_000) -> dict:
        with self.store.read() as r:
            adds = []
            for p in r.iter_blind("additions"):
                n = r.get(p)
                if n is not None and not n.is_dir:
                    adds.append(node_json(n))
                    if len(adds) >= limit:
                        break
            dels = []
            for p in r.iter_blind("deletions"):
                dels.append(keys.display(p))
                if len(dels) >= limit:
                    break
            return {"additions_count": r.count(r.dbs.blind_additions), "additions": adds,
                    "deletion_count": r.count(r.dbs.blind_deletions), "deletions": dels}

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

    def suspect_paths(self) -> list[str]:
        return [s["path"] for s in self.suspect_list()]
