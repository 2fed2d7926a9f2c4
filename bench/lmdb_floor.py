"""The floor under the store's ingest rate: the LMDB puts every row needs, and nothing else.

    python bench/lmdb_floor.py [--files 1000000] [--dir DIR] [--json]

For ``bench/treegen.py`` rows in crawl order, per row one put of a node-sized record
keyed like the store's nodes (``parent NUL name``) and, in the second pass, one put of a
name-index-sized entry into a DUPSORT table keyed by the lower-cased name (the names of
a commit sorted first, as the store writes them). Commits are fsynced, for several rows
per commit. No digest, aggregate, validation or Python object per row beyond the loop:
whatever the store does on top costs more. Prints rows/s and µs per row; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import scratch_dir  # noqa: E402
from treegen import rows  # noqa: E402

RECORD = struct.Struct("<BqdddI")  # the size of a node record's fixed fields


def prepared(files: int) -> list[tuple[bytes, bytes, bytes]]:
    """``(node key, record, folded name)`` per row, built before any timing."""
    out = []
    for _op, path, is_dir, size, mtime, ctime in rows(files):
        b = path.encode()
        if b == b"/":
            continue
        i = b.rfind(b"/")
        out.append(((b[:i] or b"/") + b"\0" + b[i + 1:], RECORD.pack(is_dir, size, mtime, ctime, 0.0, 0),
                    b[i + 1:].lower()))
    return out


def one_pass(env, nodes, names, items, per_commit: int, with_names: bool) -> float:
    t0 = time.perf_counter()
    for lo in range(0, len(items), per_commit):
        part = items[lo:lo + per_commit]
        with env.begin(write=True) as txn:
            for k, v, _f in part:
                txn.put(k, v, db=nodes)
            if with_names:
                for f, d in sorted((f, k[:9]) for k, _v, f in part):
                    txn.put(f, d, db=names)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--dir", help="make the temp dir holding the LMDB file here (default: the system's)")
    ap.add_argument("--commits", default="1000,4000,10000", help="rows per commit, comma separated")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    items = prepared(args.files)
    out: dict = {"rows": len(items)}
    with scratch_dir("fustor-floor-", args.dir) as work:
        env = lmdb.open(str(work / "floor.lmdb"), map_size=1 << 36, max_dbs=2, subdir=False)
        nodes = env.open_db(b"nodes")
        names = env.open_db(b"names", dupsort=True)
        for per_commit in (int(x) for x in args.commits.split(",")):
            for with_names in (False, True):
                secs = one_pass(env, nodes, names, items, per_commit, with_names)
                what = "nodes_and_names" if with_names else "nodes_only"
                out[f"{what}_{per_commit}_rows_per_s"] = round(len(items) / secs)
                say(f"{per_commit:>6} rows/commit, {what.replace('_', ' '):>15}: "
                    f"{len(items) / secs:>10,.0f} rows/s ({secs / len(items) * 1e6:.2f} µs/row)")
                with env.begin(write=True) as txn:
                    txn.drop(nodes, delete=False)
                    txn.drop(names, delete=False)
        env.close()
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
