"""User-facing routes of a view: tree, stats, search, blind spots, suspects, jobs, sessions.

Reading needs a query key of the view (or an admin key); changing view data (reset,
suspect-list PUT, an on-demand scan) needs an admin key. See ``fusion/auth.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel

from fustor.errors import BadPayloadError, BadQueryError, NotFoundError
from fustor.fusion.api.ingest import json_response, parse
from fustor.fusion.auth import check, principal, requires
from fustor.fusion.views.forest import ForestView
from fustor.fusion.views.fs import suspect_update

router = APIRouter(prefix="/api/v1/views/{view_id}")
READ, CHANGE = requires("query"), requires("admin")


class SuspectUpdates(BaseModel):
    updates: list[dict]


def _ctx(request: Request, view_id: str):
    f = request.app.state.fusion
    return f, f.view(view_id)


def raw_query(request: Request, name: str, parsed: str | None) -> str | None:
    """A query parameter from the bytes the client percent-encoded.

    Paths are bytes: a name that is not UTF-8 is shown in JSON as ``\\udcXX`` (byte XX)
    and asked for as ``%XX`` (``urllib.parse.quote(os.fsencode(path))``). The parsed value
    has already turned such bytes into U+FFFD, so the raw query string is read again and
    decoded with ``surrogateescape``, the form the store keys use.
    """
    found = None
    for part in request.scope.get("query_string", b"").split(b"&"):
        k, _, v = part.partition(b"=")
        if unquote_to_bytes(k.replace(b"+", b" ")) == name.encode():
            found = v  # the last one wins, as for the parsed parameters
    if found is None:
        return parsed
    return unquote_to_bytes(found.replace(b"+", b" ")).decode("utf-8", "surrogateescape")


async def _answer(v, fn) -> object:
    """``fn(view)`` in a worker thread; a forest answers with ``fn`` of each member, by pipe id."""
    if isinstance(v, ForestView):
        return await run_in_threadpool(lambda: {p: fn(m) for p, m in sorted(v.members.items())})
    return await run_in_threadpool(fn, v)


BEST = Query(None, description="Forest views: pick the member with the largest "
             "file_count, total_size, latest_mtime or dir_count")


@router.get("/tree", **READ)
async def tree(
    view_id: str, request: Request,
    path: str = Query("/", description="Directory or file to return"),
    recursive: bool = Query(True, description="false lists only the direct children"),
    max_depth: int | None = Query(None, ge=0, description="Levels of children to include"),
    only_path: bool = Query(False, description="Only name, content_type and path per node"),
    dry_run: bool = False,
    on_demand_scan: bool = Query(False, description="Ask every agent of the view to re-scan path"),
    after: str | None = Query(None, description="Page on: the next_after value of the previous page"),
    limit: int = Query(10_000, ge=1, le=1_000_000, description="Children listed per directory"),
    best: str | None = BEST,
):
    """A directory (or file) and its children, sorted by name, paginated per directory.
    On a forest view: one tree per member, or only the best member's with ``best``."""
    f, v = _ctx(request, view_id)
    path = raw_query(request, "path", path)
    after = raw_query(request, "after", after)
    if isinstance(v, ForestView):
        return json_response(await run_in_threadpool(
            v.tree, path, best, recursive=recursive, max_depth=max_depth, only_path=only_path,
            after=after, limit=limit))
    f.check_ready(v)
    if dry_run:
        return json_response({"message": "dry-run", "view_id": view_id})
    job_id = None
    if on_demand_scan:  # it makes every agent of the view walk the path: an admin action
        check(principal(request), "admin")
        job_id = f.sessions.start_scan(view_id, view_id, path, recursive).job_id
        f.control.record(principal(request), "on-demand scan", view_id, f"{path} (job {job_id})")
    try:
        out = await run_in_threadpool(v.tree, path, recursive=recursive, max_depth=max_depth,
                                      only_path=only_path, after=after, limit=limit)
    except NotFoundError:
        pending = f.sessions.scan_pending(view_id, path)
        if pending is not None:
            return json_response({"job_id": pending or job_id, "job_pending": True,
                                  "message": "Path not found, but a find has been triggered and is pending."})
        raise
    pending = f.sessions.scan_pending(view_id, path)
    out["job_id"] = job_id or pending or None
    out["job_pending"] = pending is not None
    return json_response(out)


@router.get("/stats", **READ)
async def stats(view_id: str, request: Request,
                path: str = Query("/", description="Directory whose subtree is counted"),
                best: str | None = BEST):
    """Subtree counts of path in O(1) (file_count, dir_count, total_size, latest_mtime) and view
    health. On a forest view: one entry per member, and with ``best`` the winner."""
    f, v = _ctx(request, view_id)
    path = raw_query(request, "path", path)
    if isinstance(v, ForestView):
        return json_response(await run_in_threadpool(v.stats, path, best))
    f.check_ready(v)
    out = await run_in_threadpool(v.stats, path)
    out.update(f.freshness(v))
    return json_response(out)


SEARCH_DOC = ("A pattern with * ? or [ is a glob on the name (case-insensitive), or on the "
              "whole path if it holds /; other text is a case-insensitive part of the name")


@dataclass
class SearchParams:
    """The query parameters of search and locate, declared once. A route takes them as a
    dependency (``q: Annotated[SearchParams, Depends()]``); FastAPI solves it after the
    route's key check, so a caller without a key still gets 401 before any 422."""

    pattern: Annotated[str, Query(description=SEARCH_DOC)]
    path: Annotated[str, Query(description="Search under this directory")] = "/"
    limit: Annotated[int, Query(ge=1, le=1_000_000, description="Results per page")] = 1000
    after: Annotated[str | None, Query(
        description="Page on: the next_after value of the previous page")] = None
    match: Annotated[str, Query(
        description="auto (as above), exact (the name), substring or glob")] = "auto"
    type_: Annotated[str, Query(alias="type", description="f files, d directories, any both")] = "f"
    min_size: Annotated[int | None, Query(ge=0, description="Size at least (bytes)")] = None
    max_size: Annotated[int | None, Query(ge=0, description="Size at most (bytes)")] = None
    min_mtime: Annotated[float | None, Query(
        description="Modified at or after (seconds since 1970)")] = None
    max_mtime: Annotated[float | None, Query(
        description="Modified at or before (seconds since 1970)")] = None


async def _search(view_id: str, request: Request, q: SearchParams):
    f, v = _ctx(request, view_id)
    path = raw_query(request, "path", q.path)
    pattern = raw_query(request, "pattern", q.pattern)
    if not isinstance(v, ForestView):
        f.check_ready(v)
    kind = {"f": "f", "d": "d", "any": None}.get(q.type_, "?")
    return json_response(await run_in_threadpool(
        v.locate, pattern, path, q.limit, q.after, match=q.match, kind=kind,
        min_size=q.min_size, max_size=q.max_size, min_mtime=q.min_mtime, max_mtime=q.max_mtime))


@router.get("/search", **READ)
async def search(view_id: str, request: Request, q: Annotated[SearchParams, Depends()]):
    """Nodes under path matching pattern, ordered by name, paged: ``{"results": [...],
    "truncated", "next_after"}``. On a forest view: the members' matches merged, as locate."""
    return await _search(view_id, request, q)


@router.get("/locate", **READ)
async def locate(view_id: str, request: Request, q: Annotated[SearchParams, Depends()]):
    """Where is it: the paths under path matching pattern, each with the forest members
    holding it, whether their size and mtime agree, and which lack it; per member, how many
    matches it holds. On an fs view it is the search."""
    return await _search(view_id, request, q)


@router.get("/blind-spots", **READ)
async def blind_spots(view_id: str, request: Request):
    """Changes learned only from audits (no realtime confirmation)."""
    _f, v = _ctx(request, view_id)
    return json_response(await _answer(v, lambda m: m.blind_spots()))


@router.get("/suspect-list", **READ)
async def suspect_list(view_id: str, request: Request):
    """Files that may still be being written."""
    _f, v = _ctx(request, view_id)
    return json_response(await _answer(v, lambda m: m.suspect_list()))


@router.put("/suspect-list", **requires("admin", SuspectUpdates))
async def put_suspect_list(view_id: str, request: Request):
    """Re-stat results for suspects: {"updates": [{"path", "mtime"}]}."""
    _f, v = _ctx(request, view_id)
    body = await parse(request)
    updates = body.get("updates")
    if not isinstance(updates, list):
        raise BadPayloadError("updates: a list of {path, mtime} objects is required")
    for i, u in enumerate(updates):
        if suspect_update(u) is None:
            raise BadPayloadError(f"updates[{i}]: needs a path (an absolute path string) and "
                                  "an mtime (a number of seconds); nothing was changed")
    items = updates
    trees = list(v.members.values()) if isinstance(v, ForestView) else [v]
    n = 0
    for t in trees:
        n += await t.update_suspects(items)
    _f.control.record(principal(request), "suspect-list update", view_id, f"{n} update(s)")
    return json_response({"view_id": view_id, "updated_count": n, "status": "ok"})


@router.delete("/reset", **CHANGE)
async def reset(view_id: str, request: Request):
    """Empty the view (tree and all consistency state); agents re-fill it."""
    f, v = _ctx(request, view_id)
    for t in list(v.members.values()) if isinstance(v, ForestView) else [v]:
        await t.reset()
    f.control.record(principal(request), "reset view", view_id)
    return Response(status_code=204)


def _job_json(f, job) -> dict:
    alive = set(f.sessions.sessions)
    total = len(job.expected)
    done = len(job.done & job.expected)
    return {"job_id": job.job_id, "view_id": job.view_id, "path": job.path,
            "status": job.status(alive),
            "progress": {"completed_pipes": done, "total_pipes": total,
                         "percentage": 100.0 * done / total if total else 100.0},
            "created_at": job.created_at, "completed_at": job.completed_at}


@router.get("/jobs", **READ)
async def jobs(view_id: str, request: Request):
    f, _v = _ctx(request, view_id)
    return json_response({"jobs": [_job_json(f, j) for j in f.sessions.jobs.values()
                                   if j.view_id == view_id]})


@router.get("/jobs/{job_id}", **READ)
async def job(view_id: str, job_id: str, request: Request):
    f, _v = _ctx(request, view_id)
    j = f.sessions.jobs.get(job_id)
    if j is None or j.view_id != view_id:
        raise NotFoundError(f"job {job_id} not found in view {view_id}")
    return json_response(_job_json(f, j))


@router.get("/sessions", **READ)
async def sessions(view_id: str, request: Request):
    """Agent sessions feeding this view, with role and activity."""
    f, _v = _ctx(request, view_id)
    out = []
    forest = isinstance(_v, ForestView)
    for s in f.sessions.sessions.values():
        if not any(k == view_id or (forest and k.startswith(view_id + ":")) for k in s.keys):
            continue
        role = "leader" if any(f.sessions.leader.get(k) == s.session_id for k in s.keys
                               if k == view_id or k.startswith(view_id + ":")) else "follower"
        out.append({"session_id": s.session_id, "task_id": s.task_id, "agent_id": s.agent_id,
                    "client_ip": s.client_ip, "source_uri": s.source_uri,
                    "last_activity": s.last_activity, "created_at": s.created_at,
                    "allow_concurrent_push": s.allow_concurrent_push,
                    "session_timeout_seconds": s.timeout, "role": role,
                    "can_snapshot": role == "leader", "can_audit": role == "leader",
                    "can_realtime": s.can_realtime, "can_send": True,
                    "events_pushed": s.events_pushed, "agent_status": s.agent_status})
    return json_response({"view_id": view_id, "count": len(out), "active_sessions": out})


@router.get("/compare", **READ)
async def compare(
    view_id: str, request: Request,
    path: str = Query("/", description="Directory to compare across members"),
    members: str | None = Query(None, description="Comma-separated pipe ids (default: all)"),
    mtime: bool = Query(True, description="Also report files whose mtime differs"),
    recursive: bool = Query(True, description="Descend into subtrees whose aggregates differ"),
    limit: int = Query(1000, ge=1, le=100_000),
    after: str | None = Query(None, description="Page on: next_after of the previous page"),
    reference: str | None = Query(None, description="Member the others are counted against "
                                  "in summary (default: the one with the most files under path)"),
):
    """Forest views: what differs between members under path (missing, type, size, mtime,
    subtree), exact (subtree digests); ``summary`` counts per member what it lacks, has
    extra and has different compared with the reference member."""
    _f, v = _ctx(request, view_id)
    path = raw_query(request, "path", path)
    after = raw_query(request, "after", after)
    if not isinstance(v, ForestView):
        raise BadQueryError(f"view {view_id!r} is not a forest view; compare needs members")
    names = [m for m in (members or "").split(",") if m] or None
    return json_response(await run_in_threadpool(
        lambda: v.compare(path, members=names, mtime=mtime, recursive=recursive, limit=limit,
                          after=after, reference=reference)))
