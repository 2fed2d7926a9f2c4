"""Forest views: one member tree per pipe; which member holds the complete copy, and what differs."""

import httpx

from fustor.fusion.app import create_app
from tests.fusion.conftest import batch, event, make_fusion, row

FOREST = """
receivers:
  r: {driver: http, port: 18888, api_keys: [{key: k1, pipe_id: nfs1}, {key: k2, pipe_id: nfs2}, {key: k3, pipe_id: nfs3}]}
views:
  uploads: {driver: forest-fs, api_keys: [q]}
pipes:
  nfs1: {receiver: r, views: [uploads]}
  nfs2: {receiver: r, views: [uploads]}
  nfs3: {receiver: r, views: [uploads]}
"""
Q = {"X-API-Key": "q"}

# nfs1 holds the complete upload; nfs2 lacks two files and one differs in size; nfs3 has other data
TREES = {
    "nfs1": [("/up/run1/a.fq", 100), ("/up/run1/b.fq", 200), ("/up/run2/c.fq", 300), ("/up/run2/d.fq", 400),
             ("/other/x", 1)],
    "nfs2": [("/up/run1/a.fq", 100), ("/up/run1/b.fq", 150), ("/up/run2/c.fq", 300), ("/other/x", 1)],
    "nfs3": [("/elsewhere/z", 5)],
}


async def load(c, pipe, files, end=True):
    key = {"X-API-Key": "k" + pipe[-1]}
    r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h:{pipe}"}, headers=key)
    assert r.status_code == 200 and r.json()["role"] == "leader"  # one leader per member
    sid = r.json()["session_id"]
    rows = [row(p, mtime=1000.0, size=s) for p, s in files]
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json=batch([event(rows)], is_end=end), headers=key)
    assert r.status_code == 200
    return sid


async def forest_client(tmp_path):
    f = make_fusion(tmp_path, FOREST)
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)), base_url="http://f")
    return f, c


async def test_stats_per_member_and_best_answer_which_copy_is_complete(tmp_path):
    f, c = await forest_client(tmp_path)
    async with c:
        for pipe, files in TREES.items():
            await load(c, pipe, files)
        st = (await c.get("/api/v1/views/uploads/stats", params={"path": "/up", "best": "file_count"},
                          headers=Q)).json()
        by = {m["fusion_pipe_id"]: m for m in st["members"]}
        assert (by["nfs1"]["file_count"], by["nfs1"]["total_size"], by["nfs1"]["dir_count"]) == (4, 1000, 3)
        assert (by["nfs2"]["file_count"], by["nfs2"]["total_size"]) == (3, 550)
        assert by["nfs3"]["status"] == "error" and "not in" in by["nfs3"]["message"]
        assert st["best"]["fusion_pipe_id"] == "nfs1" and st["best"]["value"] == 4
        size = (await c.get("/api/v1/views/uploads/stats", params={"path": "/up", "best": "total_size"},
                            headers=Q)).json()
        assert size["best"] == {"fusion_pipe_id": "nfs1", "view_id": "nfs1", "reason": "total_size", "value": 1000}
        bad = await c.get("/api/v1/views/uploads/stats", params={"best": "colour"}, headers=Q)
        assert bad.status_code == 400
        tree = (await c.get("/api/v1/views/uploads/tree", params={"path": "/up", "max_depth": 1,
                                                                   "best": "file_count"}, headers=Q)).json()
        assert tree["best_view_selected"] == "nfs1"
        assert [k["name"] for k in tree["members"]["nfs1"]["data"]["children"]] == ["run1", "run2"]
        every = (await c.get("/api/v1/views/uploads/tree", params={"path": "/up", "max_depth": 0},
                             headers=Q)).json()
        assert every["members"]["nfs3"]["status"] == "error" and every["members"]["nfs2"]["status"] == "ok"
    await f.stop()


async def test_compare_lists_exactly_what_a_partial_copy_lacks(tmp_path):
    f, c = await forest_client(tmp_path)
    async with c:
        for pipe in ("nfs1", "nfs2"):
            await load(c, pipe, TREES[pipe])
        cmp = (await c.get("/api/v1/views/uploads/compare", params={"path": "/up", "members": "nfs1,nfs2"},
                           headers=Q)).json()
        got = {(d["path"], d["difference"], tuple(d["missing_in"])) for d in cmp["differences"]}
        assert got == {("/up/run1", "subtree", ()), ("/up/run1/b.fq", "size", ()),
                       ("/up/run2", "subtree", ()), ("/up/run2/d.fq", "missing", ("nfs2",))}
        assert cmp["next_after"] is None
        same = (await c.get("/api/v1/views/uploads/compare", params={"path": "/other", "members": "nfs1,nfs2"},
                            headers=Q)).json()
        assert same["differences"] == []
        page1 = (await c.get("/api/v1/views/uploads/compare",
                             params={"path": "/up", "members": "nfs1,nfs2", "limit": 2}, headers=Q)).json()
        page2 = (await c.get("/api/v1/views/uploads/compare",
                             params={"path": "/up", "members": "nfs1,nfs2", "limit": 2,
                                     "after": page1["next_after"]}, headers=Q)).json()
        paths = [d["path"] for d in page1["differences"] + page2["differences"]]
        assert paths == ["/up/run1", "/up/run1/b.fq", "/up/run2", "/up/run2/d.fq"]
    await f.stop()


async def test_members_are_independent_and_survive_a_restart(tmp_path):
    f, c = await forest_client(tmp_path)
    async with c:
        sid1 = await load(c, "nfs1", TREES["nfs1"])
        await load(c, "nfs2", TREES["nfs2"], end=False)  # nfs2's snapshot still running
        s = f.sessions
        assert s.snapshot_complete("uploads:nfs1") and not s.snapshot_complete("uploads:nfs2")
        await c.delete(f"/api/v1/pipe/session/{sid1}", headers={"X-API-Key": "k1"})  # nfs1 loses its leader
        assert s.leader_connected("uploads:nfs2") and not s.leader_connected("uploads:nfs1")
        st = (await c.get("/api/v1/views/uploads/stats", params={"path": "/up"}, headers=Q)).json()
        assert {m["fusion_pipe_id"]: m["file_count"] for m in st["members"]} == {"nfs1": 4, "nfs2": 3}
    await f.stop()
    assert sorted(p.name for p in (tmp_path / "data" / "views" / "uploads").glob("*.lmdb")) == \
        ["nfs1.lmdb", "nfs2.lmdb"]
    f2, c2 = await forest_client(tmp_path)
    async with c2:
        st = (await c2.get("/api/v1/views/uploads/stats", params={"path": "/"}, headers=Q)).json()
        assert {m["fusion_pipe_id"]: m["file_count"] for m in st["members"]} == {"nfs1": 5, "nfs2": 4}
    # a config reload that drops nfs2 closes only that member
    from fustor.config import load_fusion_config

    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(FOREST.replace("  nfs2: {receiver: r, views: [uploads]}\n", "")
                   .replace(", {key: k2, pipe_id: nfs2}", ""))
    f2.reload(load_fusion_config(cfg))
    assert sorted(f2.views["uploads"].members) == ["nfs1"]
    await f2.stop()
