"""Who may do what: every route of the OpenAPI document against every kind of caller.

Each route declares its scope (``x-fustor-scope``); this test derives what each caller
must get from that declaration and checks it on the real app. A route without a
declared scope, or without a sample request below, fails the test. Callers that must be
refused send no query parameters and a body that is not JSON, so a refusal that came
after validation would show as 422 instead of 401/403.
"""

from __future__ import annotations

import httpx
import pytest

from fustor.fusion.app import create_app
from fustor.fusion.auth import OPENAPI_FIELD
from tests.fusion.conftest import ADMIN, INGEST, INGEST_B, QUERY, batch, event, make_fusion, row

CALLERS = {
    "no key": None,
    "wrong key": "not-a-key",
    "ingest key of another pipe": INGEST_B,
    "query key of another view": "other-query",
    "ingest key": INGEST,
    "query key": QUERY,
    "admin key": ADMIN,
}

# operation -> (query params, JSON body, status for a caller that may use it)
SAMPLES: dict[str, tuple[dict, object, int]] = {
    "GET /": ({}, None, 200),
    "GET /ui": ({}, None, 200),
    "GET /api/v1/me": ({}, None, 200),
    "GET /metrics": ({}, None, 200),
    "GET /api/v1/views/{view_id}/tree": ({"path": "/", "max_depth": 1}, None, 200),
    "GET /api/v1/views/{view_id}/stats": ({"path": "/"}, None, 200),
    "GET /api/v1/views/{view_id}/search": ({"pattern": "*.txt"}, None, 200),
    "GET /api/v1/views/{view_id}/locate": ({"pattern": "*.txt"}, None, 200),
    "GET /api/v1/views/{view_id}/blind-spots": ({}, None, 200),
    "GET /api/v1/views/{view_id}/suspect-list": ({}, None, 200),
    "PUT /api/v1/views/{view_id}/suspect-list": ({}, {"updates": []}, 200),
    "DELETE /api/v1/views/{view_id}/reset": ({}, None, 204),
    "GET /api/v1/views/{view_id}/jobs": ({}, None, 200),
    "GET /api/v1/views/{view_id}/jobs/{job_id}": ({}, None, 200),
    "GET /api/v1/views/{view_id}/sessions": ({}, None, 200),
    "GET /api/v1/views/{view_id}/compare": ({"path": "/"}, None, 400),  # an fs view has no members
    "GET /api/v1/management/dashboard": ({}, None, 200),
    "GET /api/v1/management/agents": ({}, None, 200),
    "GET /api/v1/management/agents/{agent_id}": ({}, None, 200),
    "POST /api/v1/management/agents/{agent_id}/command": ({}, {"type": "report_status"}, 200),
    "POST /api/v1/management/agents/{agent_id}/upgrade": ({}, {"version": "9.9.9"}, 200),
    "GET /api/v1/management/config": ({}, None, 200),
    "POST /api/v1/management/reload": ({}, None, 422),  # in process: no config files to re-read
    "GET /api/v1/management/audit-log": ({"limit": 5}, None, 200),
    "GET /api/v1/pipe/session/": ({}, None, 200),
    "POST /api/v1/pipe/session/": ({}, {"task_id": "probe:p"}, 200),
    "POST /api/v1/pipe/session/{session_id}/heartbeat": ({}, {}, 200),
    "DELETE /api/v1/pipe/session/{session_id}": ({}, None, 200),
    "POST /api/v1/pipe/ingest/{session_id}/events": ({}, {"events": []}, 200),
    "POST /api/v1/pipe/consistency/audit/start": ({}, None, 200),
    "POST /api/v1/pipe/consistency/audit/end": ({}, None, 200),
    "GET /api/v1/pipe/consistency/sentinel/tasks": ({}, None, 200),
    "POST /api/v1/pipe/consistency/sentinel/feedback": ({}, {"type": "suspect_update", "updates": []}, 200),
}


def expected(scope: str, caller: str, path: str, allowed_status: int) -> int:
    """What ``caller`` must get from a route of ``scope`` aimed at view research / pipe research."""
    if scope == "public":
        return allowed_status
    if caller in ("no key", "wrong key"):
        return 401
    if scope == "any":
        return allowed_status
    if scope in ("admin", "metrics"):  # metrics: no key only if configured public (it is not)
        return allowed_status if caller == "admin key" else 403
    if scope == "query":
        return allowed_status if caller in ("query key", "admin key") else 403
    assert scope == "ingest", scope
    if caller == "ingest key":
        return allowed_status
    if caller == "ingest key of another pipe" and "{session_id}" not in path:
        return allowed_status  # these act on the caller's own pipe
    return 403


async def _fusion_with_state(tmp_path):
    f = make_fusion(tmp_path)
    who = f.principal(INGEST)
    s = await f.create_session(who, {"task_id": "agent1:research"})
    await f.push(who, s["session_id"], batch([event([row("/a.txt")])], is_end=True))
    job = f.sessions.start_scan("research", "research", "/", True)
    return f, job.job_id


def _url(path: str, job_id: str, session_id: str) -> str:
    return (path.replace("{view_id}", "research").replace("{job_id}", job_id)
            .replace("{agent_id}", "agent1").replace("{session_id}", session_id))


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_every_route_against_every_kind_of_caller(tmp_path, caller):
    f, job_id = await _fusion_with_state(tmp_path)
    app = create_app(f)
    spec = app.openapi()
    ops = [(m.upper(), p, o) for p, item in spec["paths"].items() for m, o in item.items()]
    undeclared = [f"{m} {p}" for m, p, o in ops if OPENAPI_FIELD not in o]
    unsampled = [f"{m} {p}" for m, p, _o in ops if f"{m} {p}" not in SAMPLES]
    assert undeclared == [] and unsampled == [], "declare a scope and add a sample request"
    ops.sort(key=lambda op: op[0] == "DELETE")  # destructive routes last
    key = CALLERS[caller]
    got, want = {}, {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        for method, path, op in ops:
            params, body, ok_status = SAMPLES[f"{method} {path}"]
            status = expected(op[OPENAPI_FIELD], caller, path, ok_status)
            sid = (await f.create_session(f.principal(INGEST), {"task_id": f"t{len(got)}:research"}))["session_id"]
            headers = {} if key is None else {"X-API-Key": key}
            if status in (401, 403):  # refusals come before any validation
                params, content = {}, b"\xff{ not json"
                headers["content-type"] = "application/json"
            else:
                content = None if body is None else httpx.Request("POST", "/", json=body).content
                if content is not None:
                    headers["content-type"] = "application/json"
            r = await c.request(method, _url(path, job_id, sid), params=params, content=content,
                                headers=headers)
            got[f"{method} {path}"], want[f"{method} {path}"] = r.status_code, status
            if r.status_code in (401, 403):
                assert r.json()["code"] in ("unauthorized", "forbidden")
                if key:
                    assert key not in r.text  # an error never repeats the key
    await f.stop()
    assert got == want


async def test_the_holes_found_in_the_field_are_closed(fusion_app):
    """A query key could wipe another view and end an audit half-way (deleting what the audit
    had not reached yet); an ingest key could read views. Not any more."""
    f, c = fusion_app
    who = f.principal(INGEST)
    sid = (await f.create_session(who, {"task_id": "h:research"}))["session_id"]
    files = [row(f"/f{i}") for i in range(10)]
    await f.push(who, sid, batch([event(files)], is_end=True))
    await f.push(who, sid, batch([event(files[:5], source="audit")], source_type="audit"))
    for key in ("other-query", INGEST, INGEST_B, QUERY):
        r = await c.delete("/api/v1/views/research/reset", headers={"X-API-Key": key})
        assert r.status_code == 403, (key, r.text)
        r = await c.put("/api/v1/views/research/suspect-list", json={"updates": []},
                        headers={"X-API-Key": key})
        assert r.status_code == 403
    for key in (QUERY, "other-query", ADMIN):
        for route in ("audit/end", "audit/start", "sentinel/feedback"):
            r = await c.post(f"/api/v1/pipe/consistency/{route}", headers={"X-API-Key": key},
                             json={"type": "suspect_update", "updates": []})
            assert r.status_code == 403, (key, route)
    r = await c.get("/api/v1/views/research/tree", headers={"X-API-Key": INGEST})
    assert r.status_code == 403
    stats = await c.get("/api/v1/views/research/stats", headers={"X-API-Key": QUERY})
    assert stats.json()["file_count"] == 10  # the half-done audit deleted nothing
    log = await c.get("/api/v1/management/audit-log", headers={"X-API-Key": ADMIN})
    assert log.json()["entries"] == []  # refused attempts changed nothing
    r = await c.delete("/api/v1/views/research/reset", headers={"X-API-Key": ADMIN})
    assert r.status_code == 204
    entry = (await c.get("/api/v1/management/audit-log", headers={"X-API-Key": ADMIN})).json()
    assert [(e["key_id"], e["action"], e["target"], e["outcome"]) for e in entry["entries"]] == \
        [("admin:ops", "reset view", "research", "ok")]


def policy(method: str, path: str) -> str:
    """The access model in one place: what each family of routes must declare."""
    if path in ("/", "/ui"):
        return "public"  # the page itself; everything it shows needs a key
    if path == "/api/v1/me":
        return "any"  # tells a key only its own scope
    if path == "/metrics":
        return "metrics"  # figures of every view and agent: admin, or public on loopback
    if path.startswith("/api/v1/management/"):
        return "admin"
    if path.startswith("/api/v1/views/"):
        return "query" if method == "GET" else "admin"  # changing view data is an admin act
    if path == "/api/v1/pipe/session/" and method == "GET":
        return "any"  # discovery: tells a key only its own scope
    assert path.startswith("/api/v1/pipe/"), path
    return "ingest"


def test_declared_scopes_follow_the_access_model(tmp_path):
    app = create_app(make_fusion(tmp_path))
    declared = {f"{m.upper()} {p}": o[OPENAPI_FIELD]
                for p, item in app.openapi()["paths"].items() for m, o in item.items()}
    assert declared == {op: policy(*op.split(" ", 1)) for op in declared}
