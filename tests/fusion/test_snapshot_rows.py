"""Snapshot rows of new paths are created by a short path (``_Event.new_snapshot_rows``);
every other row goes through the general rules. The two must leave the same store.

Each test drives two real stores with the same events. In the second, every row says
``is_dir`` instead of ``is_directory`` (the same field to the rules, but not the form the
short path takes), so all of its rows go through the general rules; then every table of
the two stores is compared record by record.
"""

from __future__ import annotations

import random
import time

import pytest

from fustor.store.records import AGG
from tests.fusion.harness import FakeWall, View


def _general(rows: list) -> list:
    out = []
    for r in rows:
        if isinstance(r, dict) and "is_directory" in r:
            r = dict(r)
            r["is_dir"] = r.pop("is_directory")
        out.append(r)
    return out


def _dump(view: View) -> dict:
    """Every table, raw, except the aggregates' ``last_change_at`` (the job's own wall time)."""
    out = {}
    with view.store.read() as r:
        for name in r.dbs._fields:
            db = getattr(r.dbs, name)
            rows = []
            for k, v in r.txn.cursor(db=db).iternext():
                v = bytes(v)
                if name == "aggregates":
                    f = list(AGG.unpack_from(v))
                    f[6] = 0.0
                    v = repr(f).encode() + v[AGG.size:]
                elif name == "meta" and k in (b"view_state", b"created_at", b"tree_id"):
                    continue  # the store's own identity; the state is compared below
                rows.append((bytes(k), v))
            out[name] = rows
    return out


class Pair:
    """The same events into two stores: one as sent, one through the general rules."""

    def __init__(self, tmp_path, wall: FakeWall) -> None:
        self.fast = View(tmp_path / "fast.lmdb", wall, hot_file_threshold=30.0)
        self.slow = View(tmp_path / "slow.lmdb", wall, hot_file_threshold=30.0)

    def event(self, src: str, etype: str, rows: list):
        a = self.fast.event(src, etype, rows)
        b = self.slow.event(src, etype, _general(rows))
        named = [{**x, "reason": x["reason"].replace("is_dir ", "is_directory ")}
                 for x in b.rejected]  # the reason names the field as the row spelt it
        assert (a.applied, a.ignored, a.rejected) == (b.applied, b.ignored, named)
        return a

    def check(self) -> None:
        fast, slow = _dump(self.fast), _dump(self.slow)
        for name in fast:
            assert fast[name] == slow[name], name
        for f in ("last_event_latency_ms", "last_event_at", "audit_cycle", "audit_rows_seen",
                  "last_audit_start", "last_audit_finished_at"):
            assert getattr(self.fast.st, f) == getattr(self.slow.st, f), f
        self.fast.check()
        self.slow.check()

    def close(self) -> None:
        self.fast.close()
        self.slow.close()


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path, FakeWall())
    yield p
    p.close()


def _row(path, m, size=0, is_dir=False, **extra):
    return {"path": path, "modified_time": m, "size": size, "is_directory": is_dir,
            "created_time": m, **extra}


def test_a_crawl_of_new_paths_is_created_with_its_flags_and_aggregates(pair):
    t = pair.fast.wall.t
    rows = [_row("/d", t - 500, 4096, True)]
    rows += [_row(f"/d/f{i}", t - 100 - i, i) for i in range(50)]
    rows += [_row("/d/hot", t - 2.5, 7), _row("/d/sub", t - 3, 0, True, audit_skipped=True),
             _row("/d/sub/x", t - 900, 9), _row("/e/deep/new", t - 50, 1)]  # parents made
    res = pair.event("snapshot", "update", rows)
    assert res.applied == len(rows)
    with pair.fast.store.read() as r:
        hot = r.get(b"/d/hot")
        assert hot.integrity_suspect and hot.known_by_agent
        assert r.suspect(b"/d/hot") is not None
        assert r.get(b"/d/sub").audit_skipped
        assert not r.get(b"/d/f1").integrity_suspect
        s = r.stats(b"/")
        assert (s.file_count, s.total_size) == (53, sum(range(50)) + 7 + 9 + 1)
    pair.check()


def test_rows_the_short_path_does_not_take_give_the_same_store(pair):
    t = pair.fast.wall.t
    pair.event("realtime", "update", [_row("/k/old", t - 10, 3), _row("/k/dir", t - 10, 0, True)])
    pair.event("realtime", "delete", [{"path": "/k/gone"}])  # a tombstone
    long_dir = "/" + "L" * 200
    rows = [
        _row("/k/old", t - 20, 4),  # exists, older: Rule 2
        _row("/k/old", t - 5, 5),  # exists, newer
        _row("/k/gone", t - 3600, 1),  # tombstoned
        _row("/k/dir", t - 1, 0, False),  # a file where a directory is
        _row("/k/new", t - 40, 6),
        _row("/k/new", t - 30, 6),  # twice in one event
        {"path": "/k/int", "modified_time": int(t - 100), "size": 2, "is_directory": False},
        {"path": "/k/nodir", "modified_time": t - 100, "size": 2, "created_time": t - 1},
        _row("/k/./dot", t - 100, 1),
        _row("/k/.git", t - 100, 0, True),
        _row("/k/.git/config", t - 100, 7),
        _row("/k/..x", t - 100, 1),
        _row("/k/.../f", t - 100, 1),
        _row("/k/.", t - 100, 1),
        _row("/k/../k2", t - 100, 1),
        _row("/k//two", t - 100, 1),
        _row("/k/trail/", t - 100, 1),
        _row(long_dir + "/f", t - 100, 1),
        _row("/k/caf\udce9", t - 100, 1),  # not UTF-8 on disk
        _row("/k/nan", float("nan"), 1),
        _row("/k/future", time.time() + 2 * 366 * 24 * 3600.0, 1),
        _row("/k/neg", t - 100, -1),
        _row("/k/..", t - 100, 1),
        _row("/", t - 100, 0, False),
        _row("/", t - 100, 0, True),
        "not a row",
        {"file_path": "/k/alias", "modified_time": t - 100, "size": 1, "is_directory": False,
         "created_time": t - 100},
        _row("/k/strdir", t - 100, 0, "false"),
    ]
    pair.event("snapshot", "update", rows)
    pair.check()


@pytest.mark.parametrize("seed", range(8))
def test_random_crawls_between_other_sources_give_the_same_store(pair, seed):
    rng = random.Random(seed)
    wall = pair.fast.wall
    dirs = ["/a", "/a/b", "/a/b/c", "/d", "/d/e", "/q"]
    names = [f"n{i}" for i in range(12)] + ["N1", "Ä", "x\udcff"]
    for _step in range(40):
        wall.advance(rng.choice([0.0, 0.5, 3.0, 20.0]))
        src = rng.choice(["snapshot", "snapshot", "snapshot", "realtime", "audit",
                          "on_demand_job"])
        etype = "delete" if rng.random() < 0.15 else "update"
        rows = []
        for _ in range(rng.randint(1, 40)):
            d = rng.choice(dirs)
            is_dir = rng.random() < 0.1
            path = rng.choice(dirs) if is_dir else f"{d}/{rng.choice(names)}"
            m = wall.t - rng.choice([0.5, 10.0, 29.0, 31.0, 300.0, rng.uniform(0, 5000)])
            if etype == "delete":
                rows.append({"path": path} if src == "realtime" else
                            {"path": path, "modified_time": m})
            else:
                rows.append(_row(path, m, rng.randint(0, 1 << 40), is_dir,
                                 **({"audit_skipped": True} if rng.random() < 0.1 else {})))
        if src == "audit" and rng.random() < 0.2:
            pair.fast.audit_start()
            pair.slow.audit_start()
        pair.event(src, etype, rows)
        if rng.random() < 0.1:
            assert pair.fast.audit_end() == pair.slow.audit_end()
    pair.check()


def test_the_latency_is_the_last_timed_rows_whichever_path_took_it(pair):
    t = pair.fast.wall.t
    pair.event("snapshot", "update", [_row("/a", t - 100, 1), _row("/b", t - 7, 1), "bad"])
    assert pair.fast.st.last_event_latency_ms == pytest.approx(7000.0)
    pair.event("snapshot", "update", [_row("/c", t - 100, 1), _row("/a", t - 9, 1)])
    assert pair.fast.st.last_event_latency_ms == pytest.approx(9000.0)
    pair.check()


def test_a_max_nodes_view_keeps_its_limit(tmp_path):
    wall = FakeWall()
    v = View(tmp_path / "cap.lmdb", wall, max_nodes=5)
    try:
        res = v.event("snapshot", "update", [_row(f"/f{i}", wall.t - 100, 1) for i in range(10)])
        assert res.applied == 4 and res.ignored == 6  # the root counts
        v.check()
    finally:
        v.close()



def test_a_re_snapshot_drops_unchanged_rows_and_applies_the_rest(pair):
    t = pair.fast.wall.t
    rows = [_row("/r", t - 900, 0, True)] + [_row(f"/r/f{i}", t - 500 - i, i) for i in range(30)]
    assert pair.event("snapshot", "update", rows).applied == 31
    again = [dict(r) for r in rows]
    again[3]["modified_time"] = t - 100  # changed since
    again[4]["size"] = 999  # same mtime, other size: still no newer than the node
    again[5]["modified_time"] = t - 5000  # older than the node
    again[6]["audit_skipped"] = True  # bypasses the mtime guard
    again[0]["audit_skipped"] = True
    res = pair.event("snapshot", "update", again)
    assert (res.applied, res.ignored) == (3, 28)
    with pair.fast.store.read() as r:
        assert r.get(b"/r/f2").modified_time == t - 100
        assert r.get(b"/r/f3").size == 3
    pair.check()
