"""Agent-facing routes (the receiver): sessions, event batches, consistency signals.

Paths and payloads are those of the 0.8.17 wire protocol (spec/fusion-protocol.md
§3). Unlike the original, every route needs the pipe's ingest key (checked before
the body is read), every session route checks that the session belongs to that
pipe, and an unknown or expired session answers 419 on every route, so agents
re-create their session at once.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import ClientDisconnect

from fustor.errors import BadPayloadError, MalformedJsonError
from fustor.fusion.auth import principal, requires
from fustor.protocol import dumps, loads

router = APIRouter(prefix="/api/v1/pipe")


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_type: Literal["insert", "update", "delete", "move"]
    event_schema: str
    table: str
    fields: list[str]
    # each row is checked by the rules, which reject a bad row alone (a row that is not an
    # object too) and apply the rest; checking every row here as well cost as much as
    # parsing the JSON
    rows: list
    index: int = -1
    message_source: Literal["realtime", "snapshot", "audit", "on_demand_job"] = "realtime"
    metadata: dict | None = None


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    events: list[Event]
    source_type: str = "message"
    is_end: bool = False
    metadata: dict | None = None


class SentinelFeedback(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "suspect_update"
    updates: list[dict] = []


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    can_realtime: bool = False
    agent_status: dict | None = None


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="ignore")
    task_id: str
    client_info: dict | None = None
    session_timeout_seconds: int | None = None
    source_type: str | None = None


def json_response(obj, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


def validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def parse(request: Request, model: type[BaseModel] | None = None, *, tolerant: bool = False) -> dict:
    """The JSON body as plain dicts, checked against ``model`` (422 naming the field)."""
    try:
        raw = await request.body()
    except ClientDisconnect:  # the client went away mid-body: nothing to apply, no answer read
        raise MalformedJsonError("the request body ended early: the client disconnected") from None
    try:
        obj = loads(raw) if raw else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting thousands deep
        if tolerant:
            return {}
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise MalformedJsonError(f"the request body is not valid JSON: {why}") from None
    if not isinstance(obj, dict):
        if tolerant:
            return {}
        raise BadPayloadError("the request body must be a JSON object")
    if model is not None:
        try:
            model.model_validate(obj)
        except ValidationError as exc:
            raise BadPayloadError(validation_message(exc)) from None
    return obj


def fusion(request: Request):
    return request.app.state.fusion


@router.get("/session/", **requires("any"))
async def discover(request: Request):
    """Which pipe (agent key) or view (query key) this key is for."""
    who = principal(request)
    scope = who.pipe or min(who.views, default=None) or ("admin" if who.admin else None)
    return json_response({"view_id": scope, "status": "authorized"})


@router.post("/session/", **requires("ingest", CreateSession))
async def create_session(request: Request):
    """Open a session for the key's pipe; the reply says leader or follower."""
    body = await parse(request, CreateSession)
    ip = request.client.host if request.client else None
    return json_response(await fusion(request).create_session(principal(request), body, ip))


@router.post("/session/{session_id}/heartbeat", **requires("ingest", Heartbeat))
async def heartbeat(session_id: str, request: Request):
    """Keep the session alive; returns the role and any queued commands."""
    body = await parse(request, tolerant=True)
    return json_response(fusion(request).heartbeat(principal(request), session_id, body))


@router.delete("/session/{session_id}", **requires("ingest"))
async def close_session(session_id: str, request: Request):
    """Close the session; leadership passes to the oldest other session."""
    return json_response(fusion(request).close_session(principal(request), session_id))


@router.post("/ingest/{session_id}/events", **requires("ingest", EventBatch))
async def push_events(session_id: str, request: Request):
    """Apply a batch of events; 200 means committed to disk (all rows, or all valid rows)."""
    fusion(request).session_of(principal(request), session_id)  # before reading the body
    body = await parse(request, EventBatch)
    return json_response(await fusion(request).push(principal(request), session_id, body))


@router.post("/consistency/audit/start", **requires("ingest"))
async def audit_start(request: Request):
    """An audit cycle of the key's pipe begins (agents may also just send audit rows)."""
    return json_response(await fusion(request).audit_start(principal(request)))


@router.post("/consistency/audit/end", **requires("ingest"))
async def audit_end(request: Request):
    """The audit cycle of the key's pipe is over: what it did not see is deleted."""
    return json_response(await fusion(request).audit_end(principal(request)))


@router.get("/consistency/sentinel/tasks", **requires("ingest"))
async def sentinel_tasks(request: Request):
    """Suspect paths of the key's pipe for the agent to re-stat."""
    return json_response(await fusion(request).sentinel_tasks(principal(request)))


@router.post("/consistency/sentinel/feedback", **requires("ingest", SentinelFeedback))
async def sentinel_feedback(request: Request):
    """Re-stat results for the suspects of the key's pipe."""
    body = await parse(request)
    return json_response(await fusion(request).sentinel_feedback(principal(request), body))
