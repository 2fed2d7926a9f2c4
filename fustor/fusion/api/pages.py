"""What a browser loads: the web page (``/ui``) and its assets, the OpenAPI pages (``/docs``,
``/redoc``) with their assets served from here, and ``GET /api/v1/me``, which tells the
page what the caller's key may do so that it offers only that.

The page is a client of the public API (it reads nothing that a script could not): the
HTML, one ES module per panel and one CSS file, all inside the package. Assets are served
under a content hash (``/ui/assets/<hash>/app.js``), so they can be cached for a year and
an upgraded fusion still serves its own; the HTML itself is revalidated on every load.
The docs pages' JavaScript and CSS come from the ``fastapi-offline`` package, because
FastAPI's defaults load them from a CDN and render blank in an air-gapped data centre.
"""

from __future__ import annotations

import functools
import hashlib
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from fustor.errors import NotFoundError
from fustor.fusion.api.ingest import json_response
from fustor.fusion.auth import principal, requires

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".png": "image/png"}
# The page talks only to this fusion: no inline code, no other host, not framed.
UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Swagger UI starts from an inline script and ReDoc runs a worker from a blob: URL; both
# still reach only this host.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; "
            "connect-src 'self'; frame-ancestors 'none'")
IMMUTABLE = "public, max-age=31536000, immutable"
SAFETY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class _Assets:
    """Files of one directory, read once, served by name under one content hash; ``page``
    (if given) is the HTML that links them, with ``{{ASSETS}}`` replaced by their URL."""

    def __init__(self, directory: Path, prefix: str, names: list[str] | None = None,
                 page: str | None = None) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        digest = hashlib.sha256()
        for p in sorted(directory.iterdir()):
            if p.suffix in MEDIA_TYPES and p.name != page and (names is None or p.name in names):
                data = p.read_bytes()
                self.files[p.name] = (data, MEDIA_TYPES[p.suffix])
                digest.update(p.name.encode() + b"\0" + data)
        self.version = digest.hexdigest()[:16]
        self.url = f"{prefix}/{self.version}"
        self.page = (directory / page).read_bytes().replace(
            b"{{ASSETS}}", self.url.encode()) if page else b""

    def response(self, version: str, name: str, headers: dict[str, str]) -> Response:
        if name not in self.files:
            raise NotFoundError(f"no asset {name!r} here")
        data, media = self.files[name]
        # a page loaded before an upgrade may ask for its old hash: answer, but uncached
        cache = IMMUTABLE if version == self.version else "no-cache"
        return Response(data, media_type=media,
                        headers={"Cache-Control": cache, **SAFETY, **headers})


UI_ASSETS = "/ui/assets"
DOCS_ASSETS = "/docs/assets"


@functools.cache
def ui_assets() -> _Assets:
    return _Assets(UI_DIR, UI_ASSETS, page="index.html")


@functools.cache
def docs_assets() -> _Assets:
    static = Path(str(files("fastapi_offline") / "static"))
    return _Assets(static, DOCS_ASSETS, ["swagger-ui-bundle.js", "swagger-ui.css",
                                         "redoc.standalone.js", "favicon.png"])


# -- the page and who the caller is (main app) ------------------------------------------
router = APIRouter()


@router.get("/ui", **requires("public"), response_class=HTMLResponse,
            tags=["web page"])
async def ui_page():
    """The web page (no key needed to load it; it asks for one and keeps it in the
    browser tab's sessionStorage, never in a URL)."""
    return Response(ui_assets().page, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": UI_CSP,
        "X-Frame-Options": "DENY", **SAFETY})


@router.get(UI_ASSETS + "/{version}/{name}", **requires("public"), include_in_schema=False)
async def ui_asset(version: str, name: str):
    return ui_assets().response(version, name, {"Content-Security-Policy": UI_CSP})


@router.get("/api/v1/me", **requires("any"), tags=["web page"])
async def me(request: Request):
    """What the caller's key may do: its id (never the key), kind (admin, query or ingest),
    the pipe of an ingest key, and the views it may read with their driver (``fs`` or
    ``forest-fs``); an admin key may read every view."""
    p = principal(request)
    views = request.app.state.fusion.views
    readable = sorted(views) if p.admin else sorted(v for v in p.views if v in views)
    return json_response({"key_id": p.key_id, "kind": p.kind, "admin": p.admin,
                          "pipe": p.pipe,
                          "views": [{"view_id": v, "driver": views[v].driver} for v in readable]})


# -- the OpenAPI pages, with local assets (main and receiver apps) -----------------------
docs_router = APIRouter()


@docs_router.get("/docs", **requires("public"), include_in_schema=False)
async def swagger_page(request: Request):
    a = docs_assets().url
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title} - API",
        swagger_js_url=f"{a}/swagger-ui-bundle.js", swagger_css_url=f"{a}/swagger-ui.css",
        swagger_favicon_url=f"{a}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None})  # the validator badge calls out
    return Response(page.body, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": DOCS_CSP, **SAFETY})


@docs_router.get("/redoc", **requires("public"), include_in_schema=False)
async def redoc_page(request: Request):
    a = docs_assets().url
    page = get_redoc_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title} - API",
        redoc_js_url=f"{a}/redoc.standalone.js", redoc_favicon_url=f"{a}/favicon.png",
        with_google_fonts=False)
    return Response(page.body, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": DOCS_CSP, **SAFETY})


@docs_router.get(DOCS_ASSETS + "/{version}/{name}", **requires("public"), include_in_schema=False)
async def docs_asset(version: str, name: str):
    return docs_assets().response(version, name, {})
