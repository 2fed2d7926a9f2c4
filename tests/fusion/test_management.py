"""The management API in process: dashboard, commands over heartbeats, upgrades followed to
the end, redacted config, reload, and the audit log of every action."""

from __future__ import annotations

import stat

from fustor.errors import ReloadRefusedError
from tests.fusion.conftest import ADMIN, INGEST, INGEST_B, QUERY, batch, event, row

ADM = {"X-API-Key": ADMIN}
A = {"X-API-Key": INGEST}
M = "/api/v1/management"


def status(pipe="p1", version="1.0.0", commands=(), **kw):
    """What a current agent sends in each heartbeat."""
    return {"agent_id": "host-a", "pipe_id": pipe, "host": "node17", "version": version,
            "uptime_seconds": 12.5, "state": "running", "phase": "realtime", "role": "leader",
            "events_pushed": 7, "rows_pushed": 700, "rows_per_s": 35.0, "lag_s": 0.4,
            "last_error": None, "is_realtime_ready": True, "watch": {"watching": True},
            "commands": list(commands), **kw}


async def session(c, task="host-a:p1", headers=A):
    r = await c.post("/api/v1/pipe/session/", json={"task_id": task}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


async def beat(c, sid, st=None, headers=A) -> list[dict]:
    body = {"can_realtime": True} if st is None else {"can_realtime": True, "agent_status": st}
    r = await c.post(f"/api/v1/pipe/session/{sid}/heartbeat", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["commands"]


async def agent(c, agent_id="host-a") -> dict:
    r = await c.get(f"{M}/agents/{agent_id}", headers=ADM)
    assert r.status_code == 200, r.text
    return r.json()


async def test_dashboard_shows_views_and_agents_old_and_new(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    await c.post(f"/api/v1/pipe/ingest/{sid}/events", headers=A,
                 json=batch([event([row("/d", is_dir=True), row("/d/a.txt", size=5)])], is_end=True))
    await beat(c, sid, status())
    old = await session(c, "old-agent:other", {"X-API-Key": INGEST_B})  # 0.8.17: no status
    await beat(c, old, headers={"X-API-Key": INGEST_B})
    d = (await c.get(f"{M}/dashboard", headers=ADM)).json()
    views = {v["view_id"]: v for v in d["views"]}
    assert views["research"]["file_count"] == 1 and views["research"]["total_size"] == 5
    assert views["research"]["snapshot_complete"] and views["research"]["leader_agent"] == "host-a"
    assert views["other"]["file_count"] == 0 and not views["other"]["snapshot_complete"]
    agents = {a["agent_id"]: a for a in d["agents"]}
    new = agents["host-a"]
    assert (new["host"], new["version"], new["connected"]) == ("node17", "1.0.0", True)
    assert new["uptime_seconds"] >= 12.5 and new["last_heartbeat_age_s"] < 5
    [p] = new["pipes"]
    assert (p["pipe_id"], p["fusion_pipe_id"], p["role"], p["phase"], p["rows_pushed"],
            p["rows_per_s"], p["lag_s"]) == ("p1", "research", "leader", "realtime", 700, 35.0, 0.4)
    legacy = agents["old-agent"]  # shown with what its session tells
    assert legacy["version"] is None and legacy["pipes"][0]["role"] == "leader"
    assert legacy["pipes"][0]["reports_status"] is False
    assert {p["pipe_id"] for p in d["pipes"]} == {"research", "other"}
    assert d["receivers"][0]["receiver_id"] == "main"
    await c.delete(f"/api/v1/pipe/session/{sid}", headers=A)
    gone = (await agent(c))
    assert gone["connected"] is False and gone["pipes"] == []


async def test_a_command_is_queued_delivered_once_and_finished_by_the_agents_report(fusion_app):
    f, c = fusion_app
    s1, s2 = await session(c, "host-a:p1"), await session(c, "host-a:p2")
    r = await c.post(f"{M}/agents/host-a/command", json={"type": "reload_config"}, headers=ADM)
    assert r.status_code == 200 and r.json()["sessions_queued"] == 2
    cid = r.json()["command_id"]
    assert (await agent(c))["commands"][0]["state"] == "queued"
    got = await beat(c, s1, status())
    assert got == [{"type": "reload_config", "command_id": cid}]
    assert await beat(c, s1, status()) == []  # delivered once per session
    assert (await agent(c))["commands"][0]["state"] == "delivered"
    await beat(c, s2, status("p2", commands=[{"command_id": cid, "type": "reload_config",
                                              "state": "done", "detail": "added: x"}]))
    cmd = (await agent(c))["commands"][0]
    assert (cmd["state"], cmd["detail"], cmd["by"]) == ("done", "added: x", "admin:ops")


async def test_command_errors_are_clear(fusion_app):
    f, c = fusion_app
    await session(c)
    cases = [
        ("nobody", {"type": "reload_config"}, 404),
        ("host-a", {"type": "format_disk"}, 422),
        ("host-a", {"type": "upgrade"}, 422),
        ("host-a", {"type": "stop_pipe"}, 422),
        ("host-a", {"type": "stop_pipe", "pipe_id": "nope"}, 404),
        ("host-a", {"type": "scan", "path": "relative"}, 422),
        ("host-a", {"type": "scan", "path": "/a/../../etc"}, 422),
    ]
    for agent_id, body, code in cases:
        r = await c.post(f"{M}/agents/{agent_id}/command", json=body, headers=ADM)
        assert r.status_code == code, (body, r.text)
        assert r.json()["detail"]
    r = await c.post(f"{M}/agents/host-a/command", content=b"{nope", headers=ADM)
    assert r.status_code == 400
    log = (await c.get(f"{M}/audit-log", headers=ADM)).json()["entries"]
    assert [e["outcome"] for e in log] == ["not_found", "invalid_payload", "invalid_payload",
                                           "invalid_payload", "not_found", "invalid_payload",
                                           "invalid_payload"]


async def test_stop_pipe_is_done_when_that_pipe_closes_its_session(fusion_app):
    f, c = fusion_app
    s1, s2 = await session(c, "host-a:p1"), await session(c, "host-a:p2")
    cid = (await c.post(f"{M}/agents/host-a/command", json={"type": "stop_pipe", "pipe_id": "p2"},
                        headers=ADM)).json()["command_id"]
    [cmd] = await beat(c, s2)
    assert cmd == {"type": "stop_pipe", "command_id": cid, "pipe_id": "p2", "agent_pipe_id": "p2"}
    await c.delete(f"/api/v1/pipe/session/{s1}", headers=A)  # another pipe closing: not it
    assert (await agent(c))["commands"][0]["state"] == "delivered"
    await c.delete(f"/api/v1/pipe/session/{s2}", headers=A)
    assert (await agent(c))["commands"][0]["state"] == "done"


async def test_scan_command_runs_a_job_on_that_agent_only(fusion_app):
    f, c = fusion_app
    mine, theirs = await session(c, "host-a:p1"), await session(c, "host-b:p1")
    r = await c.post(f"{M}/agents/host-a/command", json={"type": "scan", "path": "/d//x/"},
                     headers=ADM)
    assert r.status_code == 200 and r.json()["sessions_queued"] == 1
    job_id = r.json()["job_id"]
    [cmd] = await beat(c, mine)
    assert (cmd["type"], cmd["path"], cmd["job_id"]) == ("scan", "/d/x", job_id)
    assert await beat(c, theirs) == []
    await c.post(f"/api/v1/pipe/ingest/{mine}/events", headers=A,
                 json=batch([], source_type="job_complete", metadata={"scan_path": "/d/x", "job_id": job_id}))
    assert (await agent(c))["commands"][0]["state"] == "done"
    job = await c.get(f"/api/v1/views/research/jobs/{job_id}", headers={"X-API-Key": QUERY})
    assert job.json()["status"] == "COMPLETED"


async def test_an_upgrade_is_followed_to_success_or_failure_one_at_a_time(fusion_app):
    f, c = fusion_app
    sid = await session(c)
    await beat(c, sid, status(version="1.0.0"))
    for bad in ({"version": "latest"}, {"version": "1.0; rm -rf /"}, {}, {"version": "1.0+local"},
                {"version": "2.0", "timeout_s": 0}, {"version": "2.0", "index_url": 5}):
        r = await c.post(f"{M}/agents/host-a/upgrade", json=bad, headers=ADM)
        assert r.status_code == 422, (bad, r.text)
    r = await c.post(f"{M}/agents/host-a/upgrade", headers=ADM,
                     json={"version": "2.0", "index_url": "https://u:pw@pypi.example/simple"})
    assert r.status_code == 200, r.text
    assert (r.json()["target_version"], r.json()["from_version"]) == ("2.0", "1.0.0")
    again = await c.post(f"{M}/agents/host-a/upgrade", json={"version": "2.1"}, headers=ADM)
    assert again.status_code == 409
    [cmd] = await beat(c, sid, status(version="1.0.0"))
    assert (cmd["type"], cmd["version"], cmd["index_url"]) == \
        ("upgrade", "2.0", "https://u:pw@pypi.example/simple")
    assert (await agent(c))["upgrade"]["state"] == "pending"
    new = await session(c)  # the agent re-executed: a new session, the new version
    await beat(c, new, status(version="2.0"))
    a = await agent(c)
    assert (a["upgrade"]["state"], a["version"]) == ("succeeded", "2.0")
    assert a["commands"][-1]["state"] == "done"
    # a failed one: the agent rolled back and says so
    r = await c.post(f"{M}/agents/host-a/upgrade", json={"version": "3.0"}, headers=ADM)
    assert r.status_code == 200
    cid = r.json()["command_id"]
    await beat(c, new, status(version="2.0"))
    await beat(c, new, status(version="2.0", commands=[
        {"command_id": cid, "type": "upgrade", "state": "failed",
         "detail": "verification failed; rolled back to 2.0"}]))
    a = await agent(c)
    assert a["upgrade"]["state"] == "failed" and "rolled back" in a["upgrade"]["detail"]
    # and one that never reports back times out
    r = await c.post(f"{M}/agents/host-a/upgrade", json={"version": "4.0", "upgrade_timeout_sec": 5},
                     headers=ADM)
    assert r.status_code == 200
    start = f.fleet.agents["host-a"].upgrade.started_at
    f.fleet._now = lambda: start + 66  # pip timeout + the restart grace have passed
    a = await agent(c)
    assert a["upgrade"]["state"] == "failed" and "within 65 s" in a["upgrade"]["detail"]
    log = (await c.get(f"{M}/audit-log", headers=ADM)).json()["entries"]
    assert "pw" not in str(log) and "<redacted>@pypi.example" in str(log)
    assert [e["outcome"] for e in log if e["action"] == "upgrade"][-4:] == ["ok", "conflict", "ok", "ok"]


async def test_config_is_shown_without_any_key(fusion_app):
    f, c = fusion_app
    r = await c.get(f"{M}/config", headers=ADM)
    assert r.status_code == 200
    text = r.text
    for secret in (ADMIN, INGEST, INGEST_B, QUERY, "other-query"):
        assert secret not in text
    cfg = r.json()
    assert cfg["receivers"]["main"]["api_keys"][0] == {"pipe_id": "research", "key": "<redacted>"}
    assert cfg["views"]["research"]["api_keys"] == ["<redacted>"]
    assert cfg["admin_keys"] == [{"name": "ops", "key": "<redacted>"}]
    assert cfg["enabled_pipes"] == ["other", "research"]


async def test_reload_answers_the_diff_or_the_refusal_and_both_are_logged(fusion_app):
    f, c = fusion_app
    r = await c.post(f"{M}/reload", headers=ADM)
    assert r.status_code == 422 and "built-in default config" in r.json()["detail"]
    f.reloader = lambda: {"views_added": ["new"], "pipes_removed": []}
    r = await c.post(f"{M}/reload", headers=ADM)
    assert r.json() == {"status": "reloaded", "diff": {"views_added": ["new"], "pipes_removed": []}}

    def broken():
        raise ReloadRefusedError("reload refused, the running config is kept: x.yaml: pipes.p: bad")

    f.reloader = broken
    r = await c.post(f"{M}/reload", headers=ADM)
    assert r.status_code == 422 and r.json()["code"] == "reload_refused" and "x.yaml" in r.json()["detail"]
    log = (await c.get(f"{M}/audit-log", headers=ADM)).json()["entries"]
    assert [(e["action"], e["outcome"]) for e in log] == \
        [("reload", "reload_refused"), ("reload", "ok"), ("reload", "reload_refused")]
    assert log[1]["detail"] == "views_added: new"


async def test_audit_log_pages_and_survives_a_restart(fusion_app, tmp_path):
    f, c = fusion_app
    await session(c)
    for _ in range(5):
        await c.post(f"{M}/agents/host-a/command", json={"type": "report_status"}, headers=ADM)
    newest = (await c.get(f"{M}/audit-log", params={"limit": 2}, headers=ADM)).json()
    assert [e["seq"] for e in newest["entries"]] == [4, 5] and newest["next_after"] == 5
    page = (await c.get(f"{M}/audit-log", params={"limit": 2, "after": 1}, headers=ADM)).json()
    assert [e["seq"] for e in page["entries"]] == [2, 3] and page["next_after"] == 3
    assert (await c.get(f"{M}/audit-log", params={"after": 5}, headers=ADM)).json()["entries"] == []
    assert stat.S_IMODE(f.actions.path.stat().st_mode) == 0o600
    from fustor.fusion.action_log import ActionLog

    again = ActionLog(f.data_dir)  # a restarted fusion continues the numbering
    assert again.record("admin:ops", "x", None)["seq"] == 6
    with open(f.actions.path, "ab") as fh:
        fh.write(b'{"seq": 7, "at"')  # a torn last line (killed mid-write) is skipped
    after_crash = ActionLog(f.data_dir)
    assert [e["seq"] for e in after_crash.read(limit=3)["entries"]] == [4, 5, 6]
    assert after_crash.record("admin:ops", "y", None)["seq"] == 7  # and the next one is whole
    assert [e["action"] for e in ActionLog(f.data_dir).read(limit=2)["entries"]] == ["x", "y"]
