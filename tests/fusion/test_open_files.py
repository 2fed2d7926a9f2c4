"""Open files: a real `fustor fusion serve` whose open-files limit leaves room for only
some connections answers every agent connection, served or refused with a retryable JSON
503, never with a stream of "Too many open files" accept errors; with a hard limit above
the soft one, the soft limit is raised and every connection is served."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.procs import Proc, free_port, wait_http

VIEWS = 6
AGENTS = 60
ADMIN = "nofile-admin"


def config(port: int, rport: int) -> str:
    keys = ", ".join(f"{{key: k{i}, pipe_id: p{i}}}" for i in range(VIEWS))
    lines = [f"host: 127.0.0.1\nport: {port}\nadmin_keys: [{ADMIN}]\nreceivers:",
             f"  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{keys}]}}",
             "views:", *(f"  v{i}: {{driver: fs}}" for i in range(VIEWS)),
             "pipes:", *(f"  p{i}: {{receiver: r, views: [v{i}]}}" for i in range(VIEWS))]
    return "\n".join(lines) + "\n"


def start(tmp_path, nofile):
    port, rport = free_port(), free_port()
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(config(port, rport))
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg), "-V"],
             tmp_path / "home", tmp_path / "fusion.log", env={"FUSTOR_PID_FILE": "0"},
             nofile=nofile)
    try:
        wait_http(f"http://127.0.0.1:{port}/", p)
        wait_http(f"http://127.0.0.1:{rport}/", p)
    except BaseException:
        p.stop()
        raise
    return p, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{rport}"


async def agents(rurl: str, n: int) -> list[httpx.Response | str]:
    """``n`` agents at once, each on its own connection (kept open until all have their
    answer): a session, then one batch. Each one's last answer, or its transport error."""
    answered: list = []
    everyone = asyncio.Event()

    async def one(i: int):
        async with httpx.AsyncClient(base_url=rurl, headers={"X-API-Key": f"k{i % VIEWS}"},
                                     timeout=30, limits=httpx.Limits(max_connections=1)) as c:
            try:
                r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h{i}:p{i % VIEWS}"})
                if r.status_code == 200:
                    row = {"path": f"/a{i}/f", "size": 1, "modified_time": 1000.0,
                           "created_time": 1000.0, "is_directory": False}
                    r = await c.post(f"/api/v1/pipe/ingest/{r.json()['session_id']}/events", json={
                        "source_type": "snapshot", "events": [{
                            "event_type": "update", "event_schema": "fs", "table": "files",
                            "fields": list(row), "rows": [row], "message_source": "snapshot"}]})
            except httpx.HTTPError as exc:
                r = f"{type(exc).__name__}: {exc}"
            answered.append(r)
            if len(answered) == n:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), 60)
            return r

    return await asyncio.gather(*(one(i) for i in range(n)))


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", headers={"X-API-Key": ADMIN}, timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


async def test_connections_past_the_limit_get_a_clean_retryable_503(tmp_path):
    p, url, rurl = start(tmp_path, (64, 64))
    try:
        assert metric(url, "fustor_open_files_limit") == 64
        assert metric(url, "fustor_store_open_files") >= 2 * VIEWS
        got = await agents(rurl, AGENTS)
        served = [r for r in got if isinstance(r, httpx.Response) and r.status_code == 200]
        refused = [r for r in got if isinstance(r, httpx.Response) and r.status_code == 503]
        assert len(served) + len(refused) == AGENTS, [r for r in got if r not in served + refused]
        assert served and refused
        for r in refused:
            assert r.headers["content-type"] == "application/json"
            assert r.headers["retry-after"] == "1"
            assert r.json()["code"] == "too_many_connections" and "retry" in r.json()["detail"]
        # once the connections are gone, everyone is served again
        retry = await agents(rurl, 5)
        assert [r.status_code for r in retry] == [200] * 5
        assert metric(url, 'fustor_http_unavailable_total{reason="too_many_connections"}') \
            == len(refused)
        assert p.alive()
        assert p.output().count("Too many open files") < 10
    finally:
        p.stop()


async def test_the_soft_limit_is_raised_to_the_hard_limit_at_start(tmp_path):
    p, url, rurl = start(tmp_path, (64, 4096))
    try:
        assert metric(url, "fustor_open_files_limit") == 4096
        assert "soft limit 4096 (raised from 64)" in p.output()
        got = await agents(rurl, AGENTS)
        assert [getattr(r, "status_code", r) for r in got] == [200] * AGENTS
    finally:
        p.stop()
