"""Operator routes (``/api/v1/management/``, admin key): the site at a glance, commands and
upgrades sent to agents over their heartbeats, the effective config, reload, and the
audit log of everything done here. The work is in ``fusion/control.py``."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from fustor.fusion.api.ingest import json_response, parse
from fustor.fusion.auth import principal, requires

router = APIRouter(prefix="/api/v1/management", tags=["management"])
ADMIN = requires("admin")


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["reload_config", "stop_pipe", "report_status", "scan"]
    pipe_id: str | None = None
    path: str | None = None
    recursive: bool = True


class UpgradeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str
    index_url: str | None = None
    find_links: str | None = None
    timeout_s: float = 300.0


def _control(request: Request):
    return request.app.state.fusion.control


@router.get("/dashboard", **ADMIN)
async def dashboard(request: Request):
    """Every view (size, freshness, snapshot/audit state, blind spots, suspects, leader),
    every agent (version, uptime, pipes with role, phase, rows, lag, last error, heartbeat
    age, commands, upgrade), every pipe and receiver."""
    control = _control(request)
    out, trees = control.dashboard_plan()  # sessions and fleet: read here, on the loop
    return json_response(await run_in_threadpool(control.dashboard_finish, out, trees))


@router.get("/agents", **ADMIN)
async def agents(request: Request):
    """The agents that have sessions now or had one in the last day."""
    return json_response({"agents": _control(request).agents()})


@router.get("/agents/{agent_id}", **ADMIN)
async def agent(agent_id: str, request: Request):
    """One agent, with its recent commands and upgrade."""
    return json_response(_control(request).agent(agent_id))


@router.post("/agents/{agent_id}/command", **requires("admin", CommandRequest))
async def command(agent_id: str, request: Request):
    """Queue reload_config, stop_pipe (pipe_id), report_status or scan (path) on every
    session of the agent; it is delivered with the next heartbeat reply. The answer says
    on how many sessions; the command's state (queued → delivered → done/failed) shows
    in ``GET agents/{agent_id}``."""
    body = await parse(request)
    return json_response(_control(request).command(principal(request), agent_id, body))


@router.post("/agents/{agent_id}/upgrade", **requires("admin", UpgradeRequest))
async def upgrade(agent_id: str, request: Request):
    """Make the agent install fustor ``version`` (PEP 440), verify it and restart; fusion
    follows it to succeeded (a heartbeat reports the version) or failed (the agent
    reports a rollback, or timeout_s + 60 s pass). One pending upgrade per agent (409)."""
    body = await parse(request)
    return json_response(_control(request).upgrade(principal(request), agent_id, body))


@router.get("/config", **ADMIN)
async def config(request: Request):
    """The effective config (all files merged), every key shown as <redacted>."""
    return json_response(_control(request).config_json())


@router.post("/reload", **ADMIN)
async def reload(request: Request):
    """Re-read the config files, as SIGHUP does: answers the applied diff, or 422 with the
    error that made it refuse (the running config stays)."""
    return json_response(_control(request).reload(principal(request)))


@router.get("/audit-log", **ADMIN)
async def audit_log(request: Request,
                    limit: int = Query(100, ge=1, le=10_000, description="Entries per page"),
                    after: int | None = Query(None, ge=0, description="Only entries after this "
                                              "seq (oldest first); omit for the newest")):
    """Every management action: time, key id (never the key), action, target, outcome."""
    return json_response(await run_in_threadpool(
        request.app.state.fusion.actions.read, limit, after))
