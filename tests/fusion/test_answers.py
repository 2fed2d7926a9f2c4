"""Answers that must be right at the edges: counts that describe one path, counts that agree
with their lists, bounded trees, paths that are not UTF-8, bad input refused with a reason,
and reloads that keep forest sessions. Each test failed before its fix."""

from __future__ import annotations

import os
from urllib.parse import quote

import httpx

from fustor.fusion.app import create_app
from fustor.protocol import dumps
from fustor.store import keys
from tests.fusion.conftest import ADMIN, INGEST, QUERY, batch, event, make_fusion, row

A = {"X-API-Key": INGEST}
Q = {"X-API-Key": QUERY}
ADM = {"X-API-Key": ADMIN}
V = "/api/v1/views/research"


async def session(c) -> str:
    r = await c.post("/api/v1/pipe/session/", json={"task_id": "h:research"}, headers=A)
    return r.json()["session_id"]


async def push(c, sid, rows, source="snapshot", is_end=True, etype="update", source_type=None):
    body = batch([event(rows, source=source, etype=etype)], source_type=source_type or source,
                 is_end=is_end)  # dumps: names that are not UTF-8 travel as \udcXX escapes
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", content=dumps(body),
                     headers={**A, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


async def test_every_count_in_a_stats_answer_describes_the_asked_path(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    await push(c, sid, [row("/a", is_dir=True), row("/a/1", size=1), row("/a/2", size=2), row("/b", size=4)])
    st = (await c.get(f"{V}/stats", params={"path": "/a"}, headers=Q)).json()
    assert (st["file_count"], st["total_files"], st["total_size"]) == (2, 2, 3)
    assert (st["dir_count"], st["total_directories"], st["item_count"]) == (1, 1, 3)
    root = (await c.get(f"{V}/stats", headers=Q)).json()
    assert (root["total_files"], root["total_directories"], root["item_count"]) == (3, 2, 5)
    assert "oldest_item_path" not in root and "staleness_seconds" not in root  # no placeholders
    assert root["seconds_since_last_event"] is not None


async def test_suspect_and_blind_spot_counts_agree_with_their_lists(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    await push(c, sid, [row("/old", mtime=1000.0)])
    hot = f.views["research"].state.clock.watermark() + 1.0  # just written: hot
    # audit rows for a new directory and a new file: both are blind-spot additions and suspects
    await push(c, sid, [row("/new", mtime=hot, is_dir=True), row("/new/f", mtime=hot)],
               source="audit", is_end=False)
    st = (await c.get(f"{V}/stats", headers=Q)).json()
    suspects = (await c.get(f"{V}/suspect-list", headers=Q)).json()
    assert sorted(s["path"] for s in suspects) == ["/new", "/new/f"]
    assert st["suspect_file_count"] == 1  # files only: /new is a directory
    blind = (await c.get(f"{V}/blind-spots", headers=Q)).json()
    assert blind["additions_count"] == len(blind["additions"]) == 2
    assert {(a["path"], a["content_type"]) for a in blind["additions"]} == \
        {("/new", "directory"), ("/new/f", "file")}
    assert (st["blind_spot_additions"], st["blind_spot_deletions"]) == (2, 0)
    # the counter follows deletes of a whole subtree and survives a restart
    await push(c, sid, [{"path": "/new"}], source="realtime", etype="delete", source_type="message",
               is_end=False)
    st = (await c.get(f"{V}/stats", headers=Q)).json()
    assert st["suspect_file_count"] == 0
    with f.views["research"].store.read() as r:
        assert r.count(r.dbs.suspects) == 0 and r.meta("suspect_dirs") == 0


async def test_tree_answers_are_bounded_whatever_the_depth_and_deep_trees_do_not_recurse(tmp_path):
    from tests.fusion.conftest import CONFIG

    f = make_fusion(tmp_path, CONFIG.replace("hot_file_threshold: 30.0", "hot_file_threshold: 30.0, max_tree_items: 50"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)), base_url="http://f") as c:
        sid = await session(c)
        deep = "/".join(["d"] * 1500)  # deeper than Python's recursion limit, under 4 KiB
        wide = [row(f"/w/f{i}") for i in range(80)]
        await push(c, sid, [row("/" + deep + "/leaf"), *wide])
        r = await c.get(f"{V}/tree", params={"path": "/w", "max_depth": 1000}, headers=Q)
        assert r.status_code == 400 and r.json()["code"] == "too_many_items"
        assert "limit of 50" in r.json()["detail"] and "after" in r.json()["detail"]
        r = await c.get(f"{V}/tree", params={"path": "/w", "max_depth": 1, "limit": 20}, headers=Q)
        assert r.status_code == 200 and len(r.json()["children"]) == 20 and r.json()["next_after"] == "f26"
        f.views["research"].max_tree_items = 0  # unlimited by config: still no RecursionError
        r = await c.get(f"{V}/tree", params={"path": "/d"}, headers=Q)
        assert r.status_code == 400 and "deeper than 200 levels" in r.json()["detail"]
        path, depth = "/d", 1
        while True:  # walk down 200 levels per answer, as the message says
            r = await c.get(f"{V}/tree", params={"path": path, "max_depth": 200}, headers=Q)
            assert r.status_code == 200, r.text
            node, level = r.json(), 0
            while node.get("children"):
                node, level = node["children"][0], level + 1
            if node["name"] == "leaf":
                break
            path, depth = node["path"], depth + level
        assert node["path"] == "/" + deep + "/leaf"
    await f.stop()


async def test_a_name_that_is_not_utf8_can_be_asked_for_by_path(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    name = os.fsdecode(b"caf\xe9")  # Latin-1 é: not UTF-8
    await push(c, sid, [row("/d", is_dir=True), row(f"/d/{name}", size=7), row("/d/ok", size=1)])
    listed = (await c.get(f"{V}/tree", params={"path": "/d"}, headers=Q)).json()
    assert f"/d/{name}" in [ch["path"] for ch in listed["children"]]
    raw = "/d/" + quote(os.fsencode(name))  # how a client names it: the bytes, percent-encoded
    assert raw == "/d/caf%E9"
    r = await c.get(f"{V}/tree?path={raw}", headers=Q)
    assert r.status_code == 200 and r.json()["size"] == 7 and r.json()["path"] == f"/d/{name}"
    assert (await c.get(f"{V}/stats?path=/d", headers=Q)).json()["file_count"] == 2
    found = (await c.get(f"{V}/search?pattern=caf%E9&path=/d", headers=Q)).json()
    assert [x["path"] for x in found["results"]] == [f"/d/{name}"]
    page = (await c.get(f"{V}/tree?path=/d&limit=1&after={quote(os.fsencode(name))}", headers=Q)).json()
    assert [ch["name"] for ch in page["children"]] == ["ok"]
    assert keys.normalise(f"/d/{name}") == b"/d/caf\xe9"


async def test_bad_input_gets_a_json_4xx_never_a_500(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    await push(c, sid, [row("/a")])
    r = await c.put(f"{V}/suspect-list", json={"updates": [{"path": "/a", "mtime": "x"}]}, headers=ADM)
    assert r.status_code == 422 and r.json()["code"] == "invalid_payload" and "updates[0]" in r.json()["detail"]
    deep = b"[" * 2000 + b"]" * 2000
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", content=deep, headers={**A, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
    r = await c.post("/api/v1/pipe/consistency/sentinel/feedback", headers=A,
                     json={"type": "suspect_update", "updates": [{"path": "/a", "mtime": "x"}, {"path": 5, "mtime": 1}]})
    assert r.status_code == 200  # the agent protocol skips unusable items


async def test_rows_with_wrong_types_absurd_times_or_another_schema_are_rejected(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    out = await push(c, sid, [row("/s", is_dir="false"), row("/far", mtime=1e300), row("/ok", mtime=1000.0),
                              row("/ct", created_time=4e9 * 10)])
    assert out["applied_rows"] == 1
    reasons = {r["path"]: r["reason"] for r in out["rejected"]}
    assert "true or false" in reasons["/s"] and "plausible time" in reasons["/far"]
    assert "created_time" in reasons["/ct"]
    ev = event([row("/other")])
    ev["event_schema"] = "db"
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json=batch([ev]), headers=A)
    assert r.json()["applied_rows"] == 0 and "event_schema 'db'" in r.json()["rejected"][0]["reason"]
    st = (await c.get(f"{V}/stats", headers=Q)).json()
    assert st["file_count"] == 1 and st["latest_mtime"] == 1000.0


async def test_a_full_disk_asks_agents_to_wait_30_seconds(fusion_app):
    from fustor.errors import StoreFullError

    f, c = fusion_app
    sid = await session(c)

    async def full(_events):
        raise StoreFullError("the store could not write to disk (ENOSPC): the disk is full")

    f.views["research"].apply_events = full
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json=batch([event([row("/x")])]), headers=A)
    assert r.status_code == 503 and r.json()["code"] == "store_full" and r.headers["retry-after"] == "30"


FOREST = """
receivers:
  r: {port: 18888, api_keys: [{key: k1, pipe_id: nfs1}, {key: k2, pipe_id: nfs2}]}
views:
  up: {driver: forest-fs, api_keys: [q]}
  plain: {api_keys: [qp]}
pipes:
  nfs1: {receiver: r, views: [up]}
  nfs2: {receiver: r, views: [up]}
"""


async def test_a_reload_with_the_same_config_keeps_forest_sessions(tmp_path):
    from fustor.config import load_fusion_config

    f = make_fusion(tmp_path, FOREST)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)), base_url="http://f") as c:
        sids = []
        for k, p in (("k1", "nfs1"), ("k2", "nfs2")):
            r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h:{p}"}, headers={"X-API-Key": k})
            sids.append(r.json()["session_id"])
        diff = f.reload(load_fusion_config(tmp_path / "fusion.yaml"))
        assert not any(diff.values())
        assert set(f.sessions.sessions) == set(sids)  # nobody has to re-snapshot
        for k, sid in zip(("k1", "k2"), sids, strict=True):
            r = await c.post(f"/api/v1/pipe/session/{sid}/heartbeat", json={}, headers={"X-API-Key": k})
            assert r.status_code == 200
        (tmp_path / "fusion.yaml").write_text(FOREST.replace("  nfs2: {receiver: r, views: [up]}\n", "")
                                              .replace(", {key: k2, pipe_id: nfs2}", ""))
        f.reload(load_fusion_config(tmp_path / "fusion.yaml"))
        assert set(f.sessions.sessions) == {sids[0]}  # only the removed pipe's session ends
    await f.stop()


async def test_a_second_fusion_on_the_same_data_dir_is_refused(tmp_path):
    from fustor.datadir import DataDirInUseError

    f = make_fusion(tmp_path)
    try:
        try:
            make_fusion(tmp_path)
        except DataDirInUseError as exc:
            assert f"PID {os.getpid()}" in exc.message
        else:
            raise AssertionError("a second fusion opened the same data dir")
    finally:
        await f.stop()
    make_fusion(tmp_path).views.clear()  # released on stop: a restart opens it
