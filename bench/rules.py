"""Benchmark of fusion's consistency rules and store in one process, without HTTP.

    python bench/rules.py [--files 300000] [--dir DIR] [--json]

``bench/treegen.py`` rows as agents send them (dicts), in snapshot events of 1,000 rows
through ``process_event``, one write job per event, committed like fusion's pushes:

* ``snapshot_rows_per_s`` — a first snapshot (every path new);
* ``resnapshot_rows_per_s`` — the same rows again (what an agent restart sends);
* ``realtime_rows_per_s`` — realtime updates of every path with a newer mtime.

For the first snapshot it also splits a row's cost (µs): the rules and store
(``rules_us``), the name index written at each job's end (``index_us``), and the rest
(aggregates, commit). The store goes in a temp dir (``--dir`` to choose where: on tmpfs
the commit costs next to nothing). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import scratch_dir  # noqa: E402
from treegen import rows  # noqa: E402

from fustor.fusion import arbitration as rules  # noqa: E402
from fustor.store import Store, index  # noqa: E402

BATCH = 1000


def events(batch: list[dict], source: str) -> list[dict]:
    return [{"event_type": "update", "message_source": source, "rows": batch[i:i + BATCH]}
            for i in range(0, len(batch), BATCH)]


def run(store: Store, state: rules.ViewState, evs: list[dict], spent: dict) -> float:
    """Seconds to apply ``evs``, one write job each; ``spent['rules']`` gathers the time
    inside ``process_event``."""
    def job(w, ev):
        t = time.perf_counter()
        rules.process_event(w, state, ev)
        spent["rules"] += time.perf_counter() - t
        state.save(w)

    t0 = time.perf_counter()
    for ev in evs:
        store.write(lambda w, ev=ev: job(w, ev))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300_000)
    ap.add_argument("--dir", help="make the temp dir holding the store here (default: the system's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    wall = time.time()
    first = [{"path": p, "modified_time": m, "size": s, "is_directory": d, "created_time": c}
             for _op, p, d, s, m, c in rows(args.files) if p != "/"]
    newer = [{**r, "modified_time": r["modified_time"] + 1.0} for r in first]
    n = len(first)
    out: dict = {"rows": n}
    flush = index.flush
    in_index = [0.0]

    def timed_flush(w) -> None:  # the name index's share of each job's end
        t = time.perf_counter()
        flush(w)
        in_index[0] += time.perf_counter() - t

    with scratch_dir("fustor-rules-", args.dir) as work:
        store = Store(work / "rules.lmdb")
        state = rules.ViewState(hot_file_threshold=30.0, now=lambda: wall)
        with store.read() as r:
            state.load(r)
        spent = {"rules": 0.0}
        index.flush = timed_flush
        try:
            secs = run(store, state, events(first, "snapshot"), spent)
        finally:
            index.flush = flush
        out["snapshot_rows_per_s"] = round(n / secs)
        out["rules_us"] = round(spent["rules"] / n * 1e6, 2)
        out["index_us"] = round(in_index[0] / n * 1e6, 2)
        out["rest_us"] = round((secs - spent["rules"] - in_index[0]) / n * 1e6, 2)
        say(f"snapshot of {n:,} new paths: {n / secs:,.0f} rows/s (per row: rules and store "
            f"{out['rules_us']} µs, name index {out['index_us']} µs, the rest {out['rest_us']} µs)")
        secs = run(store, state, events(first, "snapshot"), {"rules": 0.0})
        out["resnapshot_rows_per_s"] = round(n / secs)
        say(f"the same snapshot again: {n / secs:,.0f} rows/s")
        secs = run(store, state, events(newer, "realtime"), {"rules": 0.0})
        out["realtime_rows_per_s"] = round(n / secs)
        say(f"realtime updates of every path: {n / secs:,.0f} rows/s")
        store.close()
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
