"""What fusion serves to a browser, in process: the page and its assets (strict CSP, cache
headers, nothing from another host), GET /api/v1/me for each kind of key, and the OpenAPI
pages with their assets served locally."""

from __future__ import annotations

import re

import httpx
import pytest

from fustor.fusion.api.pages import UI_DIR
from fustor.fusion.app import create_app, create_receiver_app
from tests.fusion.conftest import ADMIN, INGEST, QUERY, make_fusion


@pytest.fixture
async def client(tmp_path):
    f = make_fusion(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)),
                                 base_url="http://fusion") as c:
        yield c
    await f.stop()


def assets_of(html: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/ui/assets/[^"]+)"', html)


async def test_the_page_is_public_and_locked_to_this_host(client):
    r = await client.get("/ui")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "connect-src 'self'" in csp and "unsafe" not in csp
    assert r.headers["cache-control"] == "no-cache"  # an upgraded fusion's page is seen at once
    urls = assets_of(r.text)
    names = {u.rsplit("/", 1)[1] for u in urls}
    on_disk = {p.name for p in UI_DIR.iterdir() if p.suffix in (".js", ".css")}
    assert names == on_disk  # every module is preloaded, none is left out
    for u in urls:
        a = await client.get(u)
        assert a.status_code == 200, u
        assert a.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert a.headers["x-content-type-options"] == "nosniff"
        kind = "text/css" if u.endswith(".css") else "text/javascript"
        assert a.headers["content-type"].startswith(kind)


def test_the_page_names_no_other_host_and_imports_only_what_is_served():
    served = {p.name for p in UI_DIR.iterdir()}
    for p in UI_DIR.iterdir():
        text = p.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), p.name
        for target in re.findall(r'from "\./([^"]+)"', text):
            assert target in served, f"{p.name} imports {target}"


async def test_an_asset_of_an_older_page_is_served_uncached_and_unknown_ones_are_404(client):
    r = await client.get("/ui/assets/0123456789abcdef/app.js")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    for name in ("keys.yaml", "index.html"):  # the page itself is only at /ui
        r = await client.get(f"/ui/assets/0123456789abcdef/{name}")
        assert r.status_code == 404 and r.json()["code"] == "not_found"


async def test_me_tells_each_key_what_it_may_do(client):
    async def me(key):
        return await client.get("/api/v1/me", headers={"X-API-Key": key} if key else {})

    admin = (await me(ADMIN)).json()
    assert admin == {"key_id": "admin:ops", "kind": "admin", "admin": True, "pipe": None,
                     "views": [{"view_id": "other", "driver": "fs"},
                               {"view_id": "research", "driver": "fs"}]}
    query = (await me(QUERY)).json()
    assert (query["kind"], query["admin"], query["views"]) == \
        ("query", False, [{"view_id": "research", "driver": "fs"}])
    ingest = (await me(INGEST)).json()
    assert (ingest["kind"], ingest["pipe"], ingest["views"]) == ("ingest", "research", [])
    for key in (None, "not-a-key"):
        r = await me(key)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    for answer in (admin, query, ingest):  # ids, never keys
        assert not any(k in str(answer) for k in (ADMIN, QUERY, INGEST))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_openapi_pages_load_their_assets_from_fusion(tmp_path, page):
    f = make_fusion(tmp_path)
    try:
        for app in (create_app(f), create_receiver_app(f)):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://fusion") as c:
                r = await c.get(page)
                assert r.status_code == 200
                refs = re.findall(r'(?:href|src)="([^"]+)"', r.text)
                assert refs and all(u.startswith("/docs/assets/") for u in refs), refs
                assert "http" not in r.text.replace("http-equiv", "")
                for u in refs:
                    a = await c.get(u)
                    assert a.status_code == 200 and len(a.content) > 1000, u
                    assert "max-age" in a.headers["cache-control"]
                assert (await c.get("/openapi.json")).status_code == 200
    finally:
        await f.stop()
