"""Who owns what while everything runs at once: a view's state is changed only by its
store's writer thread and put back there when a job does not commit; reloads, queries,
pushes and scans together leave every acknowledged row, a verified store and every session."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from fustor.config import load_fusion_config
from fustor.fusion.app import create_app
from fustor.fusion.views.fs import FsView
from fustor.store import Store
from fustor.store.inspect import verify
from tests.fusion.conftest import batch, event, make_fusion, row


def realtime_rows(n: int, base: float) -> list[dict]:
    return [row(f"/d{i % 50}/{'x' * 120}-{i}", mtime=base - (i % 7)) for i in range(n)]


async def test_a_batch_run_again_after_map_growth_counts_its_clock_samples_once(tmp_path):
    small = FsView("small", tmp_path / "small.lmdb")
    small.store.close()
    small.store = Store(tmp_path / "small.lmdb", map_size=1 << 20)  # grows during the batch
    big = FsView("big", tmp_path / "big.lmdb")
    try:
        rows = realtime_rows(6000, time.time())  # ~2 MB of keys: more than the 1 MiB map
        ev = event(rows, source="realtime")
        for v in (small, big):
            await v.apply_events([ev])
        assert small.store._map_size > 1 << 20  # it did grow, and so ran the batch again
        assert small.state.clock.sample_count() == big.state.clock.sample_count() > 0
    finally:
        small.close()
        big.close()


async def test_a_failed_job_leaves_the_state_as_committed_and_only_the_writer_touches_it(tmp_path):
    import threading

    v = FsView("v", tmp_path / "v.lmdb")
    touched_by: set[str] = set()
    real_restore = v.state.restore

    def restore(cp):
        touched_by.add(threading.current_thread().name)
        real_restore(cp)

    v.state.restore = restore
    try:
        before = (v.state.audit_cycle, v.state.last_event_at, v.state.clock.sample_count())

        def bad(w, st):
            st.audit_cycle += 5
            st.last_event_at = 123.0
            st.clock.update(time.time() - 3, True)
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await v.run(bad)
        assert (v.state.audit_cycle, v.state.last_event_at, v.state.clock.sample_count()) == before
        assert len(touched_by) == 1 and next(iter(touched_by)).startswith("fustor-writer")
    finally:
        v.close()


async def test_jobs_are_purged_timeouts_validated_and_agents_sharing_an_id_coexist(fusion_app):
    f, c = fusion_app
    from tests.fusion.conftest import INGEST

    a = {"X-API-Key": INGEST}
    for bad in (-5, 100_000):
        r = await c.post("/api/v1/pipe/session/", json={"task_id": "h:r", "session_timeout_seconds": bad}, headers=a)
        assert r.status_code == 422 and "session_timeout_seconds" in r.json()["detail"]
    job = f.sessions.start_scan("research", "research", "/", True)  # running: kept
    old = f.sessions.start_scan("research", "research", "/old", True)
    old.created_at -= 25 * 3600
    done = f.sessions.start_scan("research", "research", "/done", True)
    done.completed_at = time.time() - 2 * 3600
    assert f.sessions.purge_jobs() == 2 and set(f.sessions.jobs) == {job.job_id}
    app = create_app(f)
    hosts = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 5000)), base_url="http://f")
             for ip in ("10.0.0.1", "10.0.0.2")]
    try:
        sids = []
        for _round in range(3):  # two cloned agents with one agent_id, reconnecting in turn
            for h in hosts:
                r = await h.post("/api/v1/pipe/session/", json={"task_id": "clone:research"}, headers=a)
                sids.append(r.json()["session_id"])
        live = {s.client_ip for s in f.sessions.sessions.values() if s.task_id == "clone:research"}
        assert live == {"10.0.0.1", "10.0.0.2"}  # neither evicts the other
        assert len([s for s in f.sessions.sessions.values() if s.task_id == "clone:research"]) == 2
    finally:
        for h in hosts:
            await h.aclose()


STRESS = """
admin_keys: [adm]
receivers:
  r: {port: 18888, api_keys: [{key: kf, pipe_id: plain}, {key: k1, pipe_id: m1}, {key: k2, pipe_id: m2}]}
views:
  plain: {api_keys: [q]}
  up: {driver: forest-fs, api_keys: [q]}
pipes:
  plain: {receiver: r, views: [plain]}
  m1: {receiver: r, views: [up]}
  m2: {receiver: r, views: [up]}
"""


@pytest.mark.slow
async def test_ingest_queries_reloads_and_scans_together(tmp_path):
    f = make_fusion(tmp_path, STRESS)
    app = create_app(f)
    cfg_file = tmp_path / "fusion.yaml"
    acked: dict[str, set[str]] = {"plain": set(), "m1": set(), "m2": set()}
    statuses: list[int] = []
    keys = {"plain": "kf", "m1": "k1", "m2": "k2"}
    deadline = time.monotonic() + 6.0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        sids = {}
        for pipe, key in keys.items():
            r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h:{pipe}"}, headers={"X-API-Key": key})
            sids[pipe] = r.json()["session_id"]
            await c.post(f"/api/v1/pipe/ingest/{sids[pipe]}/events", headers={"X-API-Key": key},
                         json=batch([event([row("/base")])], is_end=True))
            acked[pipe].add("/base")

        async def pusher(pipe: str) -> None:
            n = 0
            while time.monotonic() < deadline and n < 400:
                paths = [f"/p{n}/{i}" for i in range(50)]
                src = random.choice(["realtime", "snapshot"])
                r = await c.post(f"/api/v1/pipe/ingest/{sids[pipe]}/events", headers={"X-API-Key": keys[pipe]},
                                 json=batch([event([row(p, mtime=1000.0 + n) for p in paths], source=src)],
                                            source_type="message" if src == "realtime" else "snapshot"))
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acked[pipe].update(paths)
                n += 1
                await asyncio.sleep(0)

        async def reader() -> None:
            q = {"X-API-Key": "q"}
            while time.monotonic() < deadline:
                for url in ("/api/v1/views/plain/stats", "/api/v1/views/plain/tree?max_depth=1&limit=10",
                            "/api/v1/views/up/stats?best=file_count", "/api/v1/views/up/compare?path=/"):
                    statuses.append((await c.get(url, headers=q)).status_code)
                await asyncio.sleep(0.01)

        async def reloader() -> int:
            n = 0
            while time.monotonic() < deadline:
                diff = f.reload(load_fusion_config(cfg_file))
                assert not any(diff.values()), diff
                n += 1
                await asyncio.sleep(0.05)
            return n

        async def scanner() -> None:
            while time.monotonic() < deadline:
                r = await c.get("/api/v1/views/plain/tree", params={"path": "/", "max_depth": 0,
                                                                  "on_demand_scan": "true"},
                                headers={"X-API-Key": "adm"})
                statuses.append(r.status_code)
                for pipe, key in keys.items():  # each agent answers its scans at once
                    hb = await c.post(f"/api/v1/pipe/session/{sids[pipe]}/heartbeat", json={},
                                      headers={"X-API-Key": key})
                    statuses.append(hb.status_code)
                    for cmd in hb.json().get("commands", []):
                        await c.post(f"/api/v1/pipe/ingest/{sids[pipe]}/events", headers={"X-API-Key": key},
                                     json=batch([], source_type="job_complete",
                                                metadata={"scan_path": cmd["path"], "job_id": cmd["job_id"]}))
                await asyncio.sleep(0.05)

        results = await asyncio.gather(pusher("plain"), pusher("m1"), pusher("m2"), reader(), reloader(),
                                       scanner())
        assert results[4] > 10  # reloads did happen meanwhile
        assert set(f.sessions.sessions) == set(sids.values())  # no-op reloads dropped nobody
        assert not [s for s in statuses if s >= 500 and s != 503], sorted(set(statuses))
        trees = {"plain": f.views["plain"], "m1": f.views["up"].members["m1"], "m2": f.views["up"].members["m2"]}
        for pipe, tree in trees.items():
            assert verify(tree.store) == []
            with tree.store.read() as r:
                from fustor.store import keys as k
                missing = [p for p in acked[pipe] if r.get(k.normalise(p)) is None]
            assert missing == [], (pipe, len(missing))
    await f.stop()
