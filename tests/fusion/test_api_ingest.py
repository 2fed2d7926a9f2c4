"""The agent protocol and the query API, in process (the fusion app behind httpx's ASGI transport)."""

from tests.fusion.conftest import ADMIN, INGEST, INGEST_B, QUERY, batch, event, make_fusion, row

A = {"X-API-Key": INGEST}
Q = {"X-API-Key": QUERY}
ADM = {"X-API-Key": ADMIN}


async def open_session(client, headers=A, task="agent1:research"):
    r = await client.post("/api/v1/pipe/session/", json={"task_id": task, "source_type": "fs",
                                                         "client_info": {"source_uri": "/data"}},
                          headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def push(client, sid, body, headers=A):
    return await client.post(f"/api/v1/pipe/ingest/{sid}/events", json=body, headers=headers)


async def test_first_session_leads_second_follows_and_failover_on_close(fusion_app):
    _f, c = fusion_app
    one = await open_session(c)
    two = await open_session(c, task="agent2:research")
    assert (one["role"], two["role"]) == ("leader", "follower")
    assert one["session_timeout_seconds"] == 30 and one["audit_interval_sec"] == 600.0
    r = await c.delete(f"/api/v1/pipe/session/{one['session_id']}", headers=A)
    assert r.json() == {"status": "terminated", "session_id": one["session_id"]}
    hb = await c.post(f"/api/v1/pipe/session/{two['session_id']}/heartbeat", json={"can_realtime": True},
                      headers=A)
    assert hb.json()["role"] == "leader" and hb.json()["commands"] == []


async def test_view_is_503_until_the_leaders_snapshot_ends_then_answers_stats(fusion_app):
    _f, c = fusion_app
    r = await c.get("/api/v1/views/research/stats", headers=Q)
    assert r.status_code == 503 and r.headers["retry-after"] == "10"
    sid = (await open_session(c))["session_id"]
    rows = [row("/d", is_dir=True, size=4096), row("/d/a.txt", size=5), row("/d/e/b.txt", size=7)]
    r = await push(c, sid, batch([event(rows)]))
    assert r.status_code == 200 and r.json()["count"] == 1
    r = await c.get("/api/v1/views/research/stats", headers=Q)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    r = await push(c, sid, batch([], is_end=True))
    assert r.json()["phase"] == "snapshot_complete"
    st = (await c.get("/api/v1/views/research/stats", headers=Q)).json()
    assert (st["file_count"], st["dir_count"], st["total_size"]) == (2, 3, 12)
    sub = (await c.get("/api/v1/views/research/stats", params={"path": "/d/e"}, headers=Q)).json()
    assert (sub["file_count"], sub["dir_count"], sub["total_size"]) == (1, 1, 7)
    tree = (await c.get("/api/v1/views/research/tree", params={"path": "/d", "max_depth": 1},
                        headers=Q)).json()
    assert [k["name"] for k in tree["children"]] == ["a.txt", "e"]
    assert "children" not in tree["children"][1]


async def test_realtime_delete_tombstones_and_old_snapshot_row_stays_dead(fusion_app):
    _f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    await push(c, sid, batch([event([row("/x.txt", mtime=1000.0)])], is_end=True))
    r = await push(c, sid, batch([event([{"path": "/x.txt"}], source="realtime", etype="delete")],
                                 source_type="message"))
    assert r.status_code == 200
    await push(c, sid, batch([event([row("/x.txt", mtime=1000.0)])]))
    r = await c.get("/api/v1/views/research/tree", params={"path": "/x.txt"}, headers=Q)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_keys_are_checked_on_every_session_route(fusion_app):
    _f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    assert (await c.post("/api/v1/pipe/session/", json={"task_id": "x"})).status_code == 401
    bad = {"X-API-Key": "nope"}
    assert (await c.post("/api/v1/pipe/session/", json={"task_id": "x"}, headers=bad)).status_code == 401
    other = {"X-API-Key": INGEST_B}
    for r in (
        await c.post(f"/api/v1/pipe/session/{sid}/heartbeat", json={}, headers=other),
        await push(c, sid, batch([]), headers=other),
        await c.delete(f"/api/v1/pipe/session/{sid}", headers=other),
    ):
        assert r.status_code == 403, r.text
    r = await c.post("/api/v1/pipe/session/nope/heartbeat", json={}, headers=A)
    assert r.status_code == 419
    assert (await push(c, "nope", batch([]))).status_code == 419
    assert (await c.post("/api/v1/pipe/session/", json={"task_id": "x"}, headers=Q)).status_code == 403


async def test_bad_payloads_are_refused_with_the_field_named_and_change_nothing(fusion_app):
    _f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    url = f"/api/v1/pipe/ingest/{sid}/events"
    r = await c.post(url, content=b"{not json", headers={**A, "content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    bad = batch([event([row("/a")])])
    bad["events"][0]["event_type"] = "explode"
    r = await c.post(url, json=bad, headers=A)
    assert r.status_code == 422 and "events.0.event_type" in r.json()["detail"]
    r = await c.post(url, json={"rows": []}, headers=A)
    assert r.status_code == 422 and "events" in r.json()["detail"]
    await push(c, sid, batch([], is_end=True))
    st = (await c.get("/api/v1/views/research/stats", headers=Q)).json()
    assert st["file_count"] == 0


async def test_rows_with_bad_paths_are_rejected_with_reasons_and_the_rest_applies(fusion_app):
    _f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    rows = [row("/ok.txt"), row("/../etc/passwd"), row("/n\x00ul"), row("/" + "x" * 300), row("/ok2.txt"),
            5, "a string", None]
    r = await push(c, sid, batch([event(rows)], is_end=True))
    assert r.status_code == 200
    rejected = r.json()["rejected"]
    assert sorted(str(x["path"]) for x in rejected) == sorted(
        ["/../etc/passwd", "/n\x00ul", "/" + "x" * 300, "None", "None", "None"])
    assert all(x["reason"] for x in rejected)
    assert [x["index"] for x in rejected if x["path"] is None] == [5, 6, 7]
    assert {x["reason"] for x in rejected if x["path"] is None} == {"row is not an object"}
    st = (await c.get("/api/v1/views/research/stats", headers=Q)).json()
    assert st["file_count"] == 2


async def test_body_over_the_limit_is_413(tmp_path):
    import httpx

    from fustor.fusion.app import create_app

    f = make_fusion(tmp_path)
    f.cfg.max_body_bytes = 1000
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)), base_url="http://f") as c:
        sid = (await open_session(c))["session_id"]
        r = await push(c, sid, batch([event([row(f"/f{i}") for i in range(100)])]))
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    await f.stop()


async def test_concurrent_push_disabled_refuses_a_second_session(fusion_app):
    _f, c = fusion_app
    b = {"X-API-Key": INGEST_B}
    assert (await open_session(c, b, "a1:other"))["role"] == "leader"
    r = await c.post("/api/v1/pipe/session/", json={"task_id": "a2:other"}, headers=b)
    assert r.status_code == 409 and "locked" in r.json()["detail"]


async def test_restarted_fusion_answers_from_its_store_at_once(tmp_path):
    import httpx

    from fustor.fusion.app import create_app

    f = make_fusion(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)), base_url="http://f") as c:
        sid = (await open_session(c))["session_id"]
        await push(c, sid, batch([event([row(f"/d/f{i}", size=1) for i in range(50)])], is_end=True))
    await f.stop()
    f2 = make_fusion(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f2)), base_url="http://f") as c:
        r = await c.get("/api/v1/views/research/stats", headers=Q)
        assert r.status_code == 200
        assert r.json()["file_count"] == 50 and r.json()["leader_connected"] is False
    await f2.stop()


async def test_on_demand_scan_reaches_the_agent_in_its_next_heartbeat(fusion_app):
    _f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    await push(c, sid, batch([event([row("/d", is_dir=True)])], is_end=True))
    scan = {"path": "/d/new", "on_demand_scan": "true"}
    r = await c.get("/api/v1/views/research/tree", params=scan, headers=Q)
    assert r.status_code == 403 and "admin key" in r.json()["detail"]  # readers cannot make agents walk
    r = await c.get("/api/v1/views/research/tree", params=scan, headers=ADM)
    assert r.status_code == 200 and r.json()["job_pending"] is True
    job_id = r.json()["job_id"]
    hb = (await c.post(f"/api/v1/pipe/session/{sid}/heartbeat", json={}, headers=A)).json()
    assert [(x["type"], x["path"], x["job_id"]) for x in hb["commands"]] == [("scan", "/d/new", job_id)]
    await push(c, sid, batch([event([row("/d/new", mtime=2000.0)], source="on_demand_job")],
                             source_type="on_demand_job"))
    r = await push(c, sid, batch([], source_type="job_complete",
                                 metadata={"scan_path": "/d/new", "job_id": job_id}))
    assert r.json() == {"status": "ok", "phase": "job_complete"}
    job = (await c.get(f"/api/v1/views/research/jobs/{job_id}", headers=Q)).json()
    assert job["status"] == "COMPLETED"
    node = (await c.get("/api/v1/views/research/tree", params={"path": "/d/new"}, headers=Q)).json()
    assert node["modified_time"] == 2000.0 and node["job_pending"] is False


async def test_sentinel_tasks_list_suspects_and_feedback_adopts_a_changed_mtime(fusion_app):
    _f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    await push(c, sid, batch([], is_end=True))
    await push(c, sid, batch([event([row("/hot.bin", mtime=5000.0, is_atomic_write=False)],
                                    source="realtime")], source_type="message"))
    tasks = (await c.get("/api/v1/pipe/consistency/sentinel/tasks", headers=A)).json()
    assert tasks["type"] == "suspect_check" and tasks["paths"] == ["/hot.bin"]
    node = (await c.get("/api/v1/views/research/tree", params={"path": "/hot.bin"}, headers=Q)).json()
    assert node["integrity_suspect"] is True
    fb = {"type": "suspect_update", "updates": [{"path": "/hot.bin", "mtime": 5001.0, "size": 99,
                                                   "status": "exists"}]}
    r = await c.post("/api/v1/pipe/consistency/sentinel/feedback", json=fb, headers=A)
    assert r.json() == {"status": "processed", "drivers_updated": 1}
    node = (await c.get("/api/v1/views/research/tree", params={"path": "/hot.bin"}, headers=Q)).json()
    assert (node["modified_time"], node["size"], node["integrity_suspect"]) == (5001.0, 99, True)
    listed = (await c.get("/api/v1/views/research/suspect-list", headers=Q)).json()
    assert [x["path"] for x in listed] == ["/hot.bin"]


async def test_a_name_that_is_not_utf8_round_trips_through_the_api(fusion_app):
    import json

    f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    body = json.dumps(batch([event([row("/d/caf\udce9.txt", size=3)])], is_end=True)).encode()
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", content=body,
                     headers={**A, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    with f.views["research"].store.read() as rd:
        assert rd.get(b"/d/caf\xe9.txt").size == 3
    r = await c.get("/api/v1/views/research/tree", params={"path": "/d"}, headers=Q)
    assert json.loads(r.content)["children"][0]["path"] == "/d/caf\udce9.txt"


async def test_a_full_writer_queue_answers_503_with_retry_after_and_loses_nothing(fusion_app):
    import threading

    f, c = fusion_app
    sid = (await open_session(c))["session_id"]
    store = f.views["research"].store
    gate, started = threading.Event(), threading.Event()
    blocker = store.submit(lambda w: (started.set(), gate.wait(30)))
    assert started.wait(10)  # the writer now holds the blocker: the queue only fills
    fillers = []
    try:
        while True:  # fill the bounded queue behind the blocked writer
            fillers.append(store.submit(lambda w: None, block=False))
    except Exception as exc:
        assert type(exc).__name__ == "StoreBusyError"
    r = await push(c, sid, batch([event([row("/late.txt")])], is_end=True))
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["code"] == "store_busy"
    gate.set()
    blocker.result(10)
    for fu in fillers:
        fu.result(10)
    r = await push(c, sid, batch([event([row("/late.txt")])], is_end=True))
    assert r.status_code == 200
    st = (await c.get("/api/v1/views/research/stats", headers=Q)).json()
    assert st["file_count"] == 1


FANOUT = """
receivers:
  main: {driver: http, port: 18888, api_keys: [{key: k-both, pipe_id: both}, {key: k-n1, pipe_id: n1}, {key: k-n2, pipe_id: n2}]}
views:
  left: {driver: fs, api_keys: [q]}
  right: {driver: fs, api_keys: [q2]}
  shared: {driver: fs, api_keys: [q3]}
pipes:
  both: {receiver: main, views: [left, right]}
  n1: {receiver: main, views: [shared]}
  n2: {receiver: main, views: [shared]}
"""


async def test_one_pipe_feeds_two_views_and_two_pipes_feed_one_view(tmp_path):
    import httpx

    from fustor.fusion.app import create_app

    f = make_fusion(tmp_path, FANOUT)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)), base_url="http://f") as c:
        sid = (await open_session(c, {"X-API-Key": "k-both"}, "a:both"))["session_id"]
        await push(c, sid, batch([event([row("/x", size=3)])], is_end=True), {"X-API-Key": "k-both"})
        for v, k in (("left", "q"), ("right", "q2")):  # fan-out: both views got the row
            st = (await c.get(f"/api/v1/views/{v}/stats", headers={"X-API-Key": k})).json()
            assert st["file_count"] == 1 and st["total_size"] == 3
        one = await open_session(c, {"X-API-Key": "k-n1"}, "a:n1")
        two = await open_session(c, {"X-API-Key": "k-n2"}, "b:n2")
        assert (one["role"], two["role"]) == ("leader", "follower")  # one election per view
        for key, sess, path in (("k-n1", one, "/from1"), ("k-n2", two, "/from2")):
            r = await push(c, sess["session_id"], batch([event([row(path)], source="realtime")],
                                                        source_type="message"), {"X-API-Key": key})
            assert r.status_code == 200
        await push(c, one["session_id"], batch([], is_end=True), {"X-API-Key": "k-n1"})
        st = (await c.get("/api/v1/views/shared/stats", headers={"X-API-Key": "q3"})).json()
        assert st["file_count"] == 2
    await f.stop()


async def test_an_agent_reconnecting_with_the_same_task_id_replaces_its_dead_session(fusion_app):
    _f, c = fusion_app
    old = await open_session(c, task="host1:research")
    assert old["role"] == "leader"
    again = await open_session(c, task="host1:research")  # host1 restarted after a crash
    assert again["role"] == "leader"  # not a follower of its own dead session until it times out
    r = await c.post(f"/api/v1/pipe/session/{old['session_id']}/heartbeat", json={}, headers=A)
    assert r.status_code == 419
    other = await open_session(c, task="host2:research")
    assert other["role"] == "follower"
    third = await open_session(c, task="host1:research")  # the leader restarts again
    hb = await c.post(f"/api/v1/pipe/session/{other['session_id']}/heartbeat", json={}, headers=A)
    assert hb.json()["role"] == "leader"  # the live follower took over at once
    assert third["role"] == "follower"
