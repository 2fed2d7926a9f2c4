"""Background work holds the single writer for one bounded chunk at a time: a realtime
push is answered (and on disk) while a big suspect sweep is still running."""

from __future__ import annotations

import asyncio
import time

import httpx

from fustor.store import Store, keys
from tests.fusion.conftest import INGEST, live_server, make_fusion, until

N_SUSPECTS = 100_000


def _hot_files(path, n: int) -> None:
    """A store holding ``n`` files that are all listed as suspects and already due
    (a restore wrote them at once; their mtimes did not move since)."""
    due = time.time() - 1
    with Store(path) as st:
        def job(w):
            w.upsert(keys.normalise("/restore"), True, 0, 1000.0, 1000.0)
            for i in range(n):
                p = keys.normalise(f"/restore/d{i // 1000:03d}/f{i:06d}")
                if i % 1000 == 0:
                    w.upsert(keys.normalise(f"/restore/d{i // 1000:03d}"), True, 0, 1000.0, 1000.0)
                w.upsert(p, False, 1, 1000.0, 1000.0, integrity_suspect=True)
                w.put_suspect(p, due, 1000.0)
        st.write(job)


def _suspects_left(view) -> int:
    with view.store.read() as r:
        return r.suspect_file_count()


async def test_realtime_push_is_answered_while_a_100k_suspect_sweep_runs(tmp_path):
    _hot_files(tmp_path / "data" / "views" / "research.lmdb", N_SUSPECTS)
    f = make_fusion(tmp_path)
    view = f.views["research"]
    assert _suspects_left(view) == N_SUSPECTS
    async with live_server(f) as url, httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": INGEST}, timeout=60) as c:
        sid = (await c.post("/api/v1/pipe/session/", json={"task_id": "h:research"})).json()["session_id"]
        # the sweep loop (every 0.5 s) starts on its own
        await until(lambda: _suspects_left(view) < N_SUSPECTS, what="the sweep to start")
        answered_mid_sweep = 0
        for i in range(10_000):  # bounded: ends with the sweep at the latest
            row = {"path": f"/live/f{i}", "size": 1, "modified_time": 1000.0 + i,
                   "created_time": 1000.0, "is_directory": False}
            r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json={
                "source_type": "message", "events": [{
                    "event_type": "update", "event_schema": "fs", "table": "files",
                    "fields": list(row), "rows": [row], "message_source": "realtime"}]})
            left = _suspects_left(view)
            assert r.status_code == 200 and r.json()["applied_rows"] == 1
            with view.store.read() as rd:  # acknowledged means committed
                assert rd.get(keys.normalise(f"/live/f{i}")) is not None
            if left == 0:
                break
            answered_mid_sweep += 1
        # a sweep in one job would have made every push wait for all of it
        assert answered_mid_sweep >= 3, answered_mid_sweep
        await until(lambda: _suspects_left(view) == 0, what="the sweep to finish")
        with view.store.read() as rd:
            assert not rd.get(keys.normalise("/restore/d099/f099999")).integrity_suspect


async def test_realtime_pushes_are_answered_while_an_audit_end_judges_100k_children(tmp_path):
    f = make_fusion(tmp_path)
    view = f.views["research"]
    n = 100_000
    files = [{"path": f"/big/f{i:06d}", "size": 1, "modified_time": 1000.0,
              "created_time": 1000.0, "is_directory": False} for i in range(n)]
    top = [{"path": "/big", "size": 0, "modified_time": 1000.0, "created_time": 1000.0,
            "is_directory": True}]

    async def push(c, sid, rows, source, kind, end=False):
        body = {"source_type": kind, "is_end": end, "events": [{
            "event_type": "update", "event_schema": "fs", "table": "files",
            "fields": list((rows or top)[0]), "rows": rows, "message_source": source}]}
        r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    async with live_server(f) as url, httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": INGEST}, timeout=120) as c:
        sid = (await c.post("/api/v1/pipe/session/", json={"task_id": "h:research"})).json()["session_id"]
        await push(c, sid, top, "snapshot", "snapshot")
        for i in range(0, n, 5000):
            await push(c, sid, files[i:i + 5000], "snapshot", "snapshot")
        # an audit that saw all but the last 1,000 files
        await push(c, sid, top, "audit", "audit")
        seen = files[:n - 1000]
        for i in range(0, len(seen), 5000):
            await push(c, sid, seen[i:i + 5000], "audit", "audit")
        end = asyncio.create_task(push(c, sid, [], "audit", "audit", end=True))
        answered_meanwhile = 0
        for i in range(10_000):  # bounded: ends with the audit end at the latest
            if end.done():
                break
            await push(c, sid, [{"path": f"/live/f{i}", "size": 1, "modified_time": 1000.0,
                                 "created_time": 1000.0, "is_directory": False}],
                       "realtime", "message")
            answered_meanwhile += not end.done()
        assert (await end)["phase"] == "audit_end"
        assert answered_meanwhile >= 3, answered_meanwhile
        with view.store.read() as r:
            st = r.stats(keys.normalise("/big"))
            assert st.file_count == n - 1000
            assert r.count(r.dbs.blind_deletions) == 1000
        assert view.state.last_audit_start is None and view.state.audit_cycle_count == 1


async def test_name_block_filters_are_written_when_the_writer_is_idle(tmp_path):
    f = make_fusion(tmp_path)
    view = f.views["research"]
    async with live_server(f) as url, httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": INGEST}, timeout=60) as c:
        sid = (await c.post("/api/v1/pipe/session/", json={"task_id": "h:research"})).json()["session_id"]
        rows = [{"path": f"/up/sample_{i:05d}_{i * 7919 % 100003:06d}.fastq.gz", "size": i,
                 "modified_time": 1000.0 + i, "created_time": 1000.0, "is_directory": False}
                for i in range(4000)]
        r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json={
            "source_type": "snapshot", "is_end": True, "events": [{
                "event_type": "update", "event_schema": "fs", "table": "files",
                "fields": list(rows[0]), "rows": rows, "message_source": "snapshot"}]})
        assert r.status_code == 200 and r.json()["applied_rows"] == 4000
        # the sweep loop (every 0.5 s) writes the filters the push left, while idle
        await until(lambda: view.name_blocks_waiting() == 0, what="the name block filters")
        with view.store.read() as rd:
            assert rd.count(rd.dbs.name_filters) == rd.count(rd.dbs.name_blobs) - 1 >= 3
        assert view.name_blocks_waiting() == 0
        r = await c.get("/api/v1/views/research/search", params={"pattern": "_01234_"},
                        headers={"X-API-Key": "query-key"})
        assert [x["path"] for x in r.json()["results"]] == [rows[1234]["path"]]
