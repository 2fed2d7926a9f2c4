"""``GET /metrics``: fusion's figures in the Prometheus text format (fusion/metrics.py).

Its scope is ``metrics`` (fusion/auth.py): an admin key, or no key from a loopback
address when the config says ``metrics: {public: true}``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from fustor.fusion.auth import requires

router = APIRouter()


@router.get("/metrics", **requires("metrics"))
async def metrics(request: Request):
    """Rows applied and rejected, commit latency, writer queues, 503s by reason, sessions,
    heartbeat ages, view and store sizes, HTTP latency by route (Prometheus text format)."""
    text = await run_in_threadpool(request.app.state.fusion.metrics.text)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


class Timing:
    """ASGI middleware: each request's latency and status, by route template (never by
    the raw path, which would make a series per file asked for)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def sent(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            fusion = getattr(getattr(scope.get("app"), "state", None), "fusion", None)
            if fusion is not None:
                fusion.metrics.request(scope["method"], route, status[0],
                                       time.perf_counter() - t0)
