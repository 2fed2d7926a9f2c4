"""Offline reading of one store file for ``fustor inspect`` (read-only; safe while a server writes).

A torn copy of a store (copied while it was written) can make LMDB itself abort the
process (an assertion, or SIGBUS past the end of a cut file) in the middle of a scan,
so :func:`report_isolated` reads in a child process and turns such a crash into
"not a consistent fustor store" instead of a dead command.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import lmdb

from fustor.errors import FustorError, StoreFormatError
from fustor.store import derive, index, keys
from fustor.store.env import TORN, Store
from fustor.store.records import Node


def node_dict(n: Node) -> dict:
    return {
        "path": n.path_str, "name": n.name, "is_dir": n.is_dir, "size": n.size,
        "modified_time": n.modified_time, "created_time": n.created_time,
        "last_updated_at": n.last_updated_at, "integrity_suspect": n.integrity_suspect,
        "known_by_agent": n.known_by_agent, "audit_skipped": n.audit_skipped,
    }


def summary(store: Store) -> dict:
    with store.read() as r:
        root = r.stats(keys.ROOT)
        dbs = r.dbs
        return {
            "path": str(store.path),
            "format_version": r.meta("format_version"),
            "tree_id": r.meta("tree_id"),
            "migrations": r.meta("migrations", []),
            "nodes": r.count(dbs.nodes),
            "files": root.file_count,
            "dirs": root.dir_count,
            "disk_bytes": store.disk_bytes(),
            "stats": root.as_dict(),
            "tombstones": r.count(dbs.tombstones),
            "suspects": r.count(dbs.suspects),
            "blind_additions": r.count(dbs.blind_additions),
            "blind_deletions": r.count(dbs.blind_deletions),
            "name_index": {"entries": r.count(dbs.names), "blocks": r.count(dbs.name_blobs),
                           "stale_names": int(r.meta(index.STALE, 0) or 0)},
        }


def show_path(store: Store, path: str, limit: int = 100) -> dict | None:
    p = keys.normalise(path)
    with store.read() as r:
        node = r.get(p)
        if node is None:
            return None
        out = {"node": node_dict(node), "stats": r.stats(p).as_dict()}
        agg = r.aggregate(p)
        if agg is not None:
            out["aggregate"] = {"digest": f"{agg.digest:032x}",
                                "digest_nomtime": f"{agg.digest_nomtime:032x}",
                                "last_change_at": agg.last_change_at, "child_count": agg.child_count}
        if node.is_dir:
            kids, nxt = r.children(p, limit=limit)
            out["children"] = [node_dict(k) for k in kids]
            out["more_children"] = nxt is not None
        return out


def verify(store: Store, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Recompute everything derived from the nodes in one pass over them and compare:
    every directory's aggregates (counts, size, latest_mtime, both digests, child_count;
    last_change_at only grows towards the root), the child-mtime index of big
    directories, the tombstone expiry index, the name index (entries missing or
    without their node). Also reports nodes whose parent is missing
    or is not a directory, and aggregate records without a directory. Returns the
    mismatches (empty = ok)."""
    with store.read() as r:
        return derive.check(r, progress) + index.verify(r.txn, r.dbs)


def open_readonly(path: str | Path) -> Store:
    return Store(path, readonly=True)


def report(path: str | Path, node_path: str | None = None, limit: int = 100,
           check: bool = False, progress: bool = False) -> dict:
    """What ``fustor inspect`` shows: :func:`summary`, the node at ``node_path`` (None if it
    is not in the store: ``out["node"]`` is None), and with ``check`` the result of
    :func:`verify`. ``progress`` prints the verify progress on stderr."""
    st = open_readonly(path)
    try:
        out = summary(st)
        if node_path is not None:
            out["node"] = show_path(st, node_path, limit)
        if check:
            def tell(n: int) -> None:
                print(f"  verified {n:,} nodes...", file=sys.stderr, flush=True)

            problems = verify(st, tell if progress else None)
            out["verify"] = {"ok": not problems, "problems": problems[:1000],
                             "problem_count": len(problems)}
        return out
    except lmdb.Error as exc:
        raise StoreFormatError(f"{path} is {TORN} ({exc})") from None
    finally:
        st.close()


def report_isolated(path: str | Path, **kw) -> dict:
    """:func:`report` run in a child process, so that LMDB aborting on a torn file is an
    error here, not the end of this process."""
    ctx = multiprocessing.get_context("spawn")  # never fork a process that has LMDB open
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        try:
            return pool.submit(report, str(path), **kw).result()
        except BrokenProcessPool:
            raise StoreFormatError(f"{path} is {TORN} (reading it crashed the reader)") from None
        except FustorError:
            raise
