"""stats?path=P says whether the data under P has settled (issue 9)."""

import time

import httpx

from fustor.fusion.app import create_app
from fustor.fusion.views.fs import FsView
from tests.fusion.conftest import batch, event, make_fusion, row

SETTLE = 1.0


def wait_for(cond, deadline_s=10.0):
    """Poll ``cond`` until it is true; fail at the deadline (never a bare sleep)."""
    end = time.monotonic() + deadline_s
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < end, "condition not met before the deadline"
        time.sleep(0.02)


async def test_settled_flips_with_writes_and_suspects(tmp_path):
    v = FsView("v", tmp_path / "v.lmdb", hot_file_threshold=30.0, settle_s=SETTLE)
    try:
        old = time.time() - 3600  # cold rows: no suspects
        await v.apply_events([event([row("/up/a/f1", old), row("/up/b/f2", old), row("/other/x", old)])])
        st = v.stats("/up")
        assert st["settled"] is False and st["quiet_for_s"] < SETTLE
        assert st["suspects_under"] == 0 and st["settle_s"] == SETTLE
        wait_for(lambda: v.stats("/up")["settled"])
        first = v.stats("/up")["last_change_at"]

        # a write elsewhere does not unsettle /up; one under it does
        await v.apply_events([event([row("/other/y", old)])])
        assert v.stats("/up")["settled"] is True and v.stats("/")["settled"] is False
        await v.apply_events([event([row("/up/a/f1", old, size=99)], source="realtime")])
        st = v.stats("/up")
        assert st["settled"] is False and st["last_change_at"] > first
        wait_for(lambda: v.stats("/up")["settled"])

        # a deletion is a change too
        await v.apply_events([event([{"path": "/up/b/f2"}], source="realtime", etype="delete")])
        assert v.stats("/up")["settled"] is False
        assert v.stats("/up/a")["settled"] is True  # a sibling subtree stays settled
        wait_for(lambda: v.stats("/up")["settled"])

        # a file still being written keeps it unsettled however quiet it is
        await v.apply_events([event([row("/up/a/big.tmp", time.time(), is_atomic_write=False)],
                                    source="realtime")])
        assert v.stats("/up")["suspects_under"] == 1
        assert v.stats("/up/a/big.tmp")["suspects_under"] == 1
        t0 = time.monotonic()
        wait_for(lambda: v.stats("/up")["quiet_for_s"] >= 2 * SETTLE)
        assert time.monotonic() - t0 >= SETTLE
        st = v.stats("/up")
        assert st["settled"] is False and st["suspects_under"] == 1
        assert v.stats("/other")["suspects_under"] == 0
        # the close-write clears the suspect; then the quiet period runs again
        await v.apply_events([event([row("/up/a/big.tmp", time.time())], source="realtime")])
        assert v.stats("/up")["suspects_under"] == 0 and v.stats("/up")["settled"] is False
        wait_for(lambda: v.stats("/up")["settled"])
    finally:
        v.close()


FOREST = """
receivers:
  r: {driver: http, port: 18888, api_keys: [{key: k1, pipe_id: nfs1}, {key: k2, pipe_id: nfs2}]}
views:
  uploads: {driver: forest-fs, api_keys: [q], driver_params: {settle_s: 1.0}}
pipes:
  nfs1: {receiver: r, views: [uploads]}
  nfs2: {receiver: r, views: [uploads]}
"""


async def test_settled_per_forest_member_over_http(tmp_path):
    f = make_fusion(tmp_path, FOREST)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)),
                                 base_url="http://f") as c:
        sids = {}
        for pipe in ("nfs1", "nfs2"):
            key = {"X-API-Key": "k" + pipe[-1]}
            r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h:{pipe}"}, headers=key)
            sids[pipe] = r.json()["session_id"]
            r = await c.post(f"/api/v1/pipe/ingest/{sids[pipe]}/events",
                             json=batch([event([row("/up/a", 1000.0)])], is_end=True), headers=key)
            assert r.status_code == 200

        async def members():
            st = (await c.get("/api/v1/views/uploads/stats", params={"path": "/up"},
                              headers={"X-API-Key": "q"})).json()
            return {m["fusion_pipe_id"]: m for m in st["members"]}

        end = time.monotonic() + 10
        while not all(m["settled"] for m in (await members()).values()):
            assert time.monotonic() < end
            time.sleep(0.02)
        r = await c.post(f"/api/v1/pipe/ingest/{sids['nfs2']}/events",
                         json=batch([event([row("/up/b", 1000.0)], source="realtime")],
                                    source_type="message"), headers={"X-API-Key": "k2"})
        assert r.status_code == 200
        m = await members()
        assert m["nfs1"]["settled"] is True and m["nfs2"]["settled"] is False
        assert m["nfs2"]["suspects_under"] == 0 and m["nfs2"]["quiet_for_s"] < 1.0
    await f.stop()
