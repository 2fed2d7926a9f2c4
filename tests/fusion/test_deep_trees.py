"""A tree 2,000 directories deep (paths near the 4,096-byte limit) through a real server:
every query, the audit, deletes, forest compare and offline verify answer without a
RecursionError; and on-demand job ids never repeat."""

from __future__ import annotations

import httpx

from fustor.fusion.sessions import SessionManager
from fustor.store.inspect import verify
from tests.fusion.conftest import INGEST, QUERY, batch, event, live_server, make_fusion, row

DEPTH = 2000
DIRS = ["/d" * i for i in range(1, DEPTH + 1)]
BOTTOM = DIRS[-1] + "/bottom.txt"  # 4,011 bytes

FOREST = """
receivers:
  r: {driver: http, port: 18888, api_keys: [{key: k1, pipe_id: nfs1}, {key: k2, pipe_id: nfs2}]}
views:
  deep: {driver: forest-fs, api_keys: [q]}
pipes:
  nfs1: {receiver: r, views: [deep]}
  nfs2: {receiver: r, views: [deep]}
"""


def deep_rows(size: int = 10) -> list[dict]:
    return [row(p, is_dir=True) for p in DIRS] + [row(BOTTOM, size=size)]


async def open_session(c, key: str, task: str) -> str:
    r = await c.post("/api/v1/pipe/session/", json={"task_id": task}, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


async def push(c, key: str, sid: str, rows: list[dict], source: str = "snapshot", *,
               etype: str = "update", end: bool = False) -> dict:
    kind = {"snapshot": "snapshot", "audit": "audit", "realtime": "message"}[source]
    for i in range(0, max(len(rows), 1), 500):
        last = i + 500 >= len(rows)
        body = batch([event(rows[i:i + 500], source=source, etype=etype)] if rows else [],
                     source_type=kind, is_end=end and last)
        r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json=body, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
    return r.json()


async def test_a_2000_deep_tree_is_served_audited_and_deleted(tmp_path):
    assert len(BOTTOM) > 4000
    f = make_fusion(tmp_path)
    q = {"X-API-Key": QUERY}
    async with live_server(f) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        sid = await open_session(c, INGEST, "h:research")
        await push(c, INGEST, sid, deep_rows(), end=True)
        api = "/api/v1/views/research"

        st = (await c.get(f"{api}/stats", headers=q)).json()
        assert (st["file_count"], st["dir_count"]) == (1, DEPTH + 1)
        st = (await c.get(f"{api}/stats", params={"path": DIRS[-1]}, headers=q)).json()
        assert (st["file_count"], st["total_size"]) == (1, 10)
        # the whole tree nests deeper than one JSON answer can: a clear 400, not a 500
        r = await c.get(f"{api}/tree", headers=q)
        assert r.status_code == 400 and "max_depth" in r.json()["detail"]
        r = await c.get(f"{api}/tree", params={"max_depth": 100}, headers=q)
        assert r.status_code == 200
        r = await c.get(f"{api}/tree", params={"path": DIRS[-1]}, headers=q)
        assert r.status_code == 200 and [k["path"] for k in r.json()["children"]] == [BOTTOM]
        r = await c.get(f"{api}/search", params={"pattern": "bottom.txt"}, headers=q)
        assert [n["path"] for n in r.json()["results"]] == [BOTTOM]

        # an audit that saw the tree only down to level 1,000: the 1,000 levels below go
        await push(c, INGEST, sid, [row(p, is_dir=True) for p in ["/", *DIRS[:1000]]], "audit")
        assert (await push(c, INGEST, sid, [], "audit", end=True))["phase"] == "audit_end"
        st = (await c.get(f"{api}/stats", headers=q)).json()
        assert (st["file_count"], st["dir_count"], st["blind_spot_deletions"]) == (0, 1001, 1)

        # realtime puts it back, then deletes it from the top
        await push(c, INGEST, sid, deep_rows(), "realtime")
        assert (await c.get(f"{api}/stats", headers=q)).json()["dir_count"] == DEPTH + 1
        await push(c, INGEST, sid, [{"path": "/d"}], "realtime", etype="delete")
        st = (await c.get(f"{api}/stats", headers=q)).json()
        assert (st["file_count"], st["dir_count"]) == (0, 1)
        await push(c, INGEST, sid, deep_rows(), "realtime")
        assert verify(f.views["research"].store) == []


async def test_forest_compare_descends_2000_levels(tmp_path):
    f = make_fusion(tmp_path, FOREST)
    async with live_server(f) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        for key, pipe, size in (("k1", "nfs1", 10), ("k2", "nfs2", 11)):
            await push(c, key, await open_session(c, key, f"h:{pipe}"), deep_rows(size), end=True)
        r = await c.get("/api/v1/views/deep/compare", params={"limit": 100_000},
                        headers={"X-API-Key": "q"})
        assert r.status_code == 200, r.text
        diffs = r.json()["differences"]
        # every directory on the way differs in its subtree total, then the file itself
        assert [d["path"] for d in diffs] == [*DIRS, BOTTOM]
        assert diffs[-1]["difference"] == "size" and diffs[0]["difference"] == "subtree"
        # paged: the second page starts where the first stopped, deep down
        p1 = (await c.get("/api/v1/views/deep/compare", params={"limit": 1500},
                          headers={"X-API-Key": "q"})).json()
        p2 = (await c.get("/api/v1/views/deep/compare",
                          params={"limit": 1500, "after": p1["next_after"]},
                          headers={"X-API-Key": "q"})).json()
        assert [d["path"] for d in p1["differences"] + p2["differences"]] == [*DIRS, BOTTOM]


def test_100k_on_demand_jobs_get_distinct_ids():
    sm = SessionManager()
    ids = {sm.start_scan("v", "v", "/x", True, targets=[]).job_id for _ in range(100_000)}
    assert len(ids) == 100_000 and all(isinstance(i, str) and i for i in ids)
