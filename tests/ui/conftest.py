"""A real browser for the web page's tests: the system's Chromium driven by Playwright.

Every page opened through ``open_page`` may reach 127.0.0.1 only: any other request is
aborted and recorded, and the test fails if there was one. A failing test leaves, per
page, a screenshot and the page's console log in its tmp dir; the report names them.
With FUSTOR_UI_SHOTS=DIR set, tests save the screenshots the closing note describes.
"""

from __future__ import annotations

import shutil
from urllib.parse import urlsplit

import pytest

from tests.ui.site import KEYS

# ReDoc always draws its maker's logo from their CDN; /redoc's Content-Security-Policy
# refuses it, so the browser never asks for it (it says so on the console)
REFUSED_BY_CSP = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("the browser tests need chromium on PATH; .ci/run installs it "
                    "(Debian: apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    # module scope: Playwright's sync API keeps an event loop of its own, which must be
    # gone before the next module's asyncio tests run theirs
    from playwright import sync_api
    exe = chromium()
    sync_api.expect.set_options(timeout=15_000)  # a deadline for a loaded CI machine
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        yield b
        b.close()


class Opened:
    def __init__(self, page, context) -> None:
        self.page, self.context = page, context
        self.console: list[str] = []
        self.blocked: list[str] = []
        self.urls: list[str] = []


@pytest.fixture
def open_page(browser, request, tmp_path):
    opened: list[Opened] = []
    request.node.ui_opened = opened
    request.node.ui_dir = tmp_path

    def open_(width: int = 1280, height: int = 800):
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        o = Opened(page, context)

        def guard(route):
            url = route.request.url
            o.urls.append(url)
            if urlsplit(url).hostname == "127.0.0.1":
                route.continue_()
            else:  # the page must work in an air-gapped data centre
                o.blocked.append(url)
                route.abort()

        context.route("**/*", guard)
        page.on("console", lambda m: o.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: o.console.append(f"pageerror: {e}"))
        page.set_default_timeout(15_000)
        opened.append(o)
        return page

    yield open_
    for o in opened:
        o.context.close()
    for o in opened:
        assert o.blocked == [], f"requests to other hosts: {o.blocked}"
        assert not [u for u in o.urls if any(k in u for k in KEYS)], "a key went into a URL"
        bad = [c for c in o.console if c.startswith("pageerror") or (
            "Content Security Policy" in c and not any(u in c for u in REFUSED_BY_CSP))]
        assert bad == [], bad


@pytest.fixture
def page(open_page):
    return open_page()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    opened = getattr(item, "ui_opened", None)
    if rep.when != "call" or not rep.failed or not opened:
        return
    lines = []
    for i, o in enumerate(opened):
        shot, log = item.ui_dir / f"page-{i}.png", item.ui_dir / f"page-{i}-console.log"
        try:
            o.page.screenshot(path=str(shot), full_page=True)
            lines.append(f"screenshot: {shot}")
        except Exception as e:  # a crashed page still has its console log
            lines.append(f"no screenshot ({e})")
        log.write_text("\n".join(o.console) + "\n")
        lines.append(f"console log: {log}")
    text = "\n".join(lines)
    rep.sections.append(("browser artifacts", text))
    print(f"\n{item.nodeid} browser artifacts:\n{text}")

