"""Format 0 -> 1.

Format 0 kept one ``nodes`` table keyed by the full normalised path, each value
a JSON object ``{"is_dir", "size", "mtime", "ctime"}``, and no aggregates,
children layout or consistency tables. Format 1 is the layout described in
``fustor/store/README.md``; the nodes are re-inserted in key order (parents
before children), which rebuilds the aggregates.
"""

from __future__ import annotations

import orjson

FROM = 0
TO = 1
BATCH = 10_000


def migrate(src, dest, progress) -> None:
    from fustor.migrations import write_in_batches

    def records(txn, nodes):
        for key, value in txn.cursor(db=nodes):
            rec = orjson.loads(value)
            yield (bytes(key), bool(rec.get("is_dir")), int(rec.get("size", 0)),
                   float(rec.get("mtime", 0.0)), float(rec.get("ctime", 0.0)))

    with src.begin() as txn:
        nodes = src.open_db(b"nodes", txn=txn, create=False)
        write_in_batches(records(txn, nodes), dest, _apply, BATCH, progress, "nodes copied")


def _apply(w, batch) -> None:
    from fustor.store.keys import normalise

    for path, is_dir, size, mtime, ctime in batch:
        w.upsert(normalise(path), is_dir, size, mtime, ctime)
