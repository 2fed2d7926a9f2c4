"""Format 1 -> 2.

Format 2 keeps the keys and the node, tombstone, suspect and blind-spot records of
format 1, and adds what is derived from them: aggregates with subtree digests,
``last_change_at`` and ``child_count``; the child-mtime index of big directories;
the tombstone expiry index; the name index (``fustor.store.index``). So the
migration copies the kept tables record by record, then rebuilds every derived table in one pass over the nodes
(``fustor.store.derive.rebuild``; a further derived table is one more builder
there). ``last_change_at`` of every directory becomes the migration time: the
history of changes was not recorded before, and "changed just now" is the answer
that never calls an unfinished upload settled.
"""

from __future__ import annotations

import time

FROM = 1
TO = 2
BATCH = 50_000
# copied as they are (same keys, same values in both formats)
KEPT = ("nodes", "tombstones", "suspects", "suspect_expiry", "blind_additions",
        "blind_deletions", "audit_dirs")
# meta keys that the new store writes itself
OWN_META = {b"format_version", b"tree_id"}


def migrate(src, dest, progress) -> None:
    from fustor.store import derive, index

    with src.begin() as txn:
        for name in KEPT:
            db = src.open_db(name.encode(), txn=txn, create=False)
            _copy(txn.cursor(db=db), dest, name, progress)
        meta = src.open_db(b"meta", txn=txn, create=False)
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=meta) if bytes(k) not in OWN_META]
        dest.write(lambda w: [w.txn.put(k, v, db=w.dbs.meta) for k, v in items])
    now = time.time()
    # --- every table derived from the nodes is rebuilt here, in one pass over them ---
    dest.write(lambda w: derive.rebuild(w, now, lambda n: progress(f"{n} nodes derived")))
    dest.write(lambda w: index.build_index(w.txn, w.dbs, lambda n: progress(f"{n} names indexed")))


def _copy(cursor, dest, name: str, progress) -> None:
    from fustor.migrations import write_in_batches

    def put(w, b):
        db = getattr(w.dbs, name)
        for k, v in b:
            w.txn.put(k, v, db=db)

    write_in_batches(((bytes(k), bytes(v)) for k, v in cursor), dest, put, BATCH, progress,
                     f"{name} copied")
