"""Who may do what: three kinds of API key, each with a scope, checked in one place.

    kind     where it is configured                     what it may do
    ───────  ─────────────────────────────────────────  ───────────────────────────────────────
    ingest   receivers.<r>.api_keys[] {key, pipe_id}     its pipe's sessions, events, audit and
                                                         sentinel signals; nothing else
    query    views.<v>.api_keys[] (the same key under   the read routes of those views
             several views: one key for all of them)
    admin    admin_keys[] (zero-config: DATA/keys.yaml)  management routes, and every route that
                                                         changes or destroys view data, on any
                                                         view; also every read route

``GET /metrics`` has the scope ``metrics``: an admin key, because its figures span every
view, pipe and agent (as the management dashboard does) and a query key must not learn
of views it cannot read; with ``metrics: {public: true}`` in the config, scrapes from a
loopback address (a Prometheus or an exporter on the fusion host) need no key.

Every route declares the scope it needs with :func:`requires`, which adds a FastAPI
dependency (it runs before query parameters and bodies are validated, so a keyless caller
gets 401, never 422) and writes the scope into the OpenAPI document as
``x-fustor-scope``; the app refuses to build with an undeclared route. A key is looked
up by its SHA-256 digest, so lookups cost the same whatever the key's prefix, and only
the key's id (e.g. ``admin:ops``, ``query:research#0``) ever reaches a log or an answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fastapi import Depends, Request

from fustor.config import FusionConfig
from fustor.errors import AuthError, ForbiddenError

SCOPES = ("public", "any", "ingest", "query", "admin", "metrics")
LOOPBACK = ("127.0.0.1", "::1")
OPENAPI_FIELD = "x-fustor-scope"


@dataclass
class Principal:
    """What one key may do; several grants merge when a key is listed in several places."""

    key_id: str
    admin: bool = False
    pipe: str | None = None
    views: set[str] = field(default_factory=set)

    @property
    def kind(self) -> str:
        return "admin" if self.admin else "ingest" if self.pipe else "query"

    def may_read(self, view_id: str) -> bool:
        return self.admin or view_id in self.views


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyTable:
    """Every configured key, by digest → :class:`Principal`. Rebuilt on reload."""

    def __init__(self, cfg: FusionConfig) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for i, ak in enumerate(cfg.admin_keys):
            self._grant(ak.key, f"admin:{ak.name or f'#{i}'}").admin = True
        for vid, view in cfg.views.items():
            if view.disabled:
                continue
            for i, key in enumerate(view.api_keys):
                self._grant(key, f"query:{vid}#{i}").views.add(vid)
        for rec in cfg.receivers.values():
            if rec.disabled:
                continue
            for entry in rec.api_keys:
                p = self._grant(entry.key, f"ingest:{entry.pipe_id}")
                if p.pipe is None:  # a key opens sessions for one pipe: the first listed
                    p.pipe = entry.pipe_id

    def _grant(self, key: str, key_id: str) -> Principal:
        d = _digest(key)
        if d not in self._by_digest:
            self._by_digest[d] = Principal(key_id)
        return self._by_digest[d]

    def lookup(self, key: str | None) -> Principal:
        """The caller's grants; 401 for a missing or unknown key."""
        if not key:
            raise AuthError("X-API-Key header is missing")
        p = self._by_digest.get(_digest(key))
        if p is None:
            raise AuthError("Invalid or inactive X-API-Key")
        return p


def check(principal: Principal, scope: str, view_id: str | None = None) -> None:
    """Raise 403 unless ``principal`` may use a route of ``scope`` (on ``view_id``)."""
    if scope in ("public", "any"):
        return
    if scope in ("admin", "metrics"):
        if not principal.admin:
            raise ForbiddenError("this route needs an admin key (admin_keys in the fusion "
                                 f"config); the key {principal.key_id} is a {principal.kind} key")
    elif scope == "ingest":
        if principal.pipe is None:
            raise ForbiddenError("this route is for agents: it needs the pipe's ingest key "
                                 f"(receivers.<r>.api_keys); the key {principal.key_id} is a "
                                 f"{principal.kind} key")
    elif scope == "query":
        if view_id is None or not principal.may_read(view_id):
            raise ForbiddenError(f"API Key not authorized for this view: {view_id!r} is not "
                                 f"among the views of key {principal.key_id}")
    else:  # pragma: no cover - a programming error, caught by the route test
        raise ValueError(f"unknown scope {scope!r}")


def _dependency(scope: str):
    async def authorize(request: Request) -> Principal | None:
        if scope == "public":
            return None
        if scope == "metrics" and request.app.state.fusion.cfg.metrics_public and \
                request.client is not None and request.client.host in LOOPBACK:
            return None
        p = request.app.state.fusion.keys.lookup(request.headers.get("x-api-key"))
        check(p, scope, request.path_params.get("view_id"))
        request.state.principal = p
        return p

    authorize.__name__ = f"requires_{scope}"
    return authorize


_DEPENDENCIES = {s: _dependency(s) for s in SCOPES}


def requires(scope: str, body: type | None = None) -> dict:
    """Route keyword arguments declaring the scope a route needs (and, for the OpenAPI
    document only, the JSON body it reads: bodies are parsed after the key check)."""
    extra: dict = {OPENAPI_FIELD: scope}
    if body is not None:
        extra["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _inline(body.model_json_schema())}}}
    return {"dependencies": [Depends(_DEPENDENCIES[scope])], "openapi_extra": extra}


def _inline(schema: dict) -> dict:
    """A JSON schema with its ``$defs`` references replaced by the definitions (the
    OpenAPI document would resolve ``#/$defs/...`` against its own root)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def principal(request: Request) -> Principal:
    """The caller checked by the route's dependency."""
    return request.state.principal


def undeclared_routes(app) -> list[str]:
    """Routes of ``app`` that declare no scope (the app refuses to start with any)."""
    out = []
    for r in app.routes:
        methods = getattr(r, "methods", None)
        if methods is None or not getattr(r, "include_in_schema", False):
            continue
        if (getattr(r, "openapi_extra", None) or {}).get(OPENAPI_FIELD) not in SCOPES:
            out.append(f"{','.join(sorted(methods))} {r.path}")
    return out
