"""FastAPI apps: the main app (query API + receiver routes) and a receiver-only app."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fustor.errors import FustorError, NotReadyError, StoreBusyError, StoreFullError
from fustor.fusion.admission import REFUSED_CODE, RefuseMiddleware
from fustor.fusion.api import ingest, management, metrics, pages, views
from fustor.fusion.api.ingest import json_response
from fustor.fusion.auth import requires, undeclared_routes
from fustor.fusion.core import Fusion

log = logging.getLogger("fustor.fusion")
STORE_FULL_RETRY_AFTER_S = 30


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before reading them whole."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = (f'{{"detail": "request body over the limit of {self.limit} bytes; '
                f'send smaller batches", "code": "body_too_large"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(FustorError)
    async def fustor_error(request: Request, exc: FustorError) -> Response:
        resp = json_response(exc.to_body(), exc.status)
        if exc.status == 503:
            request.app.state.fusion.metrics.unavailable.labels(exc.code).inc()
        if isinstance(exc, NotReadyError):
            resp.headers["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, StoreFullError):  # space comes back in minutes, not seconds
            resp.headers["Retry-After"] = str(STORE_FULL_RETRY_AFTER_S)
        elif isinstance(exc, StoreBusyError) or exc.status == 503:
            resp.headers["Retry-After"] = "1"
        return resp

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # routing's own answers (no such route, wrong method) in our error shape too
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        resp = json_response({"detail": detail, "code": code}, exc.status_code)
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_response({"detail": "internal error; the fusion log has the details",
                              "code": "internal_error"}, 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        return json_response({"detail": "; ".join(parts), "code": "invalid_request"}, 422)


def _app(fusion: Fusion, title: str, routers: list, lifespan=None) -> FastAPI:
    # /docs and /redoc come from api/pages.py: FastAPI's own load their assets from a CDN
    app = FastAPI(title=title, version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Query API of fustor views and the agent ingest protocol.")
    app.state.fusion = fusion
    _install_errors(app)
    for r in [*routers, pages.docs_router]:
        app.include_router(r)

    @app.get("/", **requires("public"))
    async def root():
        """A greeting (no key needed), as the original answered."""
        return {"message": "Welcome to Fusion Storage Engine Ingest API"}

    missing = undeclared_routes(app)
    if missing:  # every route must say who may call it (fusion/auth.py)
        raise RuntimeError(f"routes without a declared scope: {', '.join(missing)}")
    app.add_middleware(BodyLimit, limit=fusion.cfg.max_body_bytes)
    app.add_middleware(metrics.Timing)
    app.add_middleware(RefuseMiddleware, admission=fusion.admission,  # outermost: runs first
                       on_refuse=lambda: fusion.metrics.unavailable.labels(REFUSED_CODE).inc())
    return app


def create_app(fusion: Fusion, *, receiver_routes: bool = True) -> FastAPI:
    """The main app: query API, and (by default) the receiver routes on the same port."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await fusion.start_loops()
        try:
            yield
        finally:
            await fusion.stop()

    routers = [views.router, management.router, pages.router, metrics.router]
    if receiver_routes:
        routers.append(ingest.router)
    return _app(fusion, "fustor fusion", routers, lifespan)


def create_receiver_app(fusion: Fusion) -> FastAPI:
    """A receiver listener: only the agent routes (its lifecycle is the main app's)."""
    return _app(fusion, "fustor receiver", [ingest.router])
