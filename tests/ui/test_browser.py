"""The web page in a real browser against a real fusion and two real agents on temp dirs:
what an operator and a scientist see and can do, checked the way they would notice it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from fustor.agent.upgrade import installed_version
from tests.ui.site import ADMIN, LACKS, QUERY_LAB, WRONG_KEY, UiSite, save_shot, start_site

ACTIONS = re.compile("Reload|Upgrade|Scan|Stop|Report")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = start_site(tmp_path_factory.mktemp("ui-site"))
    yield s
    s.close()


def sign_in(page, site, key: str) -> None:
    page.goto(f"{site.url}/ui")
    page.fill("#key", key)
    page.click("form.signin button[type=submit]")


def go(page, route: str) -> None:
    page.evaluate("r => { location.hash = r; }", route)


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_admin_sees_both_agents_and_a_new_file_counted_without_a_reload(site, page):
    sign_in(page, site, ADMIN)
    expect(page.locator("#who")).to_contain_text("admin:ops")
    version = installed_version()
    for agent in ("alpha", "beta"):
        expect(page.locator(f"tr[data-agent={agent}] .version")).to_have_text(version)
    expect(page.locator("tr[data-agent=alpha] .pipe")).to_have_count(2)
    files = page.locator("tr[data-view=lab] td.files")
    before = site.stats("lab")["file_count"]
    expect(files).to_have_text(str(before))
    page.evaluate("window.sameDocument = true")  # gone if the page reloaded
    (site.trees["lab"] / "docs" / "new.txt").write_text("just written")
    expect(files).to_have_text(str(before + 1), timeout=10_000)
    assert page.evaluate("window.sameDocument") is True
    expect(page.locator(".status")).to_contain_text("updated")


def test_browse_sort_page_search_and_come_back(site, page):
    sign_in(page, site, QUERY_LAB)
    page.click("tr[data-view=lab] a")
    rows = page.locator("table.entries tbody tr")
    sub = page.locator("tr[data-name=sub] td")
    expect(sub.nth(1)).to_have_text("120")  # the directory's own file count and size
    expect(sub.nth(2)).to_have_text("1.2 KiB")
    expect(sub.nth(2).locator("span")).to_have_attribute("title", "1,200 bytes")
    # /docs/hot.txt was written just before the snapshot: "suspect" (may still be written)
    expect(page.locator("tr[data-name=docs] .marks")).to_have_text("1 suspect below")
    expect(page.locator("tr[data-name=sub] .marks")).to_have_text("")
    page.select_option("select[name=sort]", "size")
    expect(rows.first).to_have_attribute("data-name", "zz-big.bin")
    save_shot(page, "browse")
    page.select_option("select[name=sort]", "name")
    expect(rows.first).to_have_attribute("data-name", "deep")

    page.click("tr[data-name=docs] a")
    expect(page.locator("tr[data-name='hot.txt'] .marks")).to_have_text("suspect")
    expect(page.locator("tr[data-name='readme.txt'] .marks")).to_have_text("")
    page.click(".crumbs a:text-is('lab')")
    page.click("tr[data-name=sub] a")
    expect(page.locator(".crumbs [aria-current=page]")).to_have_text("sub")
    page.select_option("select[name=limit]", "50")
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-name", "f000.dat")
    page.click("a[rel=next]")
    expect(rows.first).to_have_attribute("data-name", "f050.dat")
    page.click("a[rel=next]")
    expect(rows.first).to_have_attribute("data-name", "f100.dat")
    expect(rows).to_have_count(20)
    expect(page.locator("a[rel=next]")).to_have_count(0)

    page.click(".crumbs a:text-is('lab')")  # back by the breadcrumb ...
    expect(page.locator("tr[data-name=sub]")).to_be_visible()
    page.go_back()  # ... and by the browser's back button
    expect(rows.first).to_have_attribute("data-name", "f100.dat")

    page.fill("input[name=q]", "f077")
    page.click("form.search button")
    results = page.locator("table.results tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_have_attribute("data-path", "/sub/f077.dat")
    page.fill("input[name=q]", "*.dat")
    page.click("form.search button")
    expect(results).to_have_count(50)
    page.click("a[rel=next]")
    expect(page.locator(".pager")).to_contain_text("results 51–100")
    page.click("a[rel=next]")
    expect(results).to_have_count(20)
    expect(results.last).to_have_attribute("data-path", "/sub/f119.dat")


def test_a_query_key_sees_its_view_and_no_action(site, page):
    sign_in(page, site, QUERY_LAB)
    expect(page.locator("#who")).to_contain_text("query:lab#0")
    expect(page.locator("table.view-list tbody tr")).to_have_count(1)
    expect(page.locator("tr[data-view=lab] td").nth(2)).to_have_text(
        str(site.stats("lab")["file_count"]))
    expect(page.locator("#nav")).not_to_contain_text("Overview")
    assert page.get_by_role("button", name=ACTIONS).count() == 0
    page.click("tr[data-view=lab] a")
    expect(page.locator("tr[data-name=sub]")).to_be_visible()
    assert page.get_by_role("button", name=ACTIONS).count() == 0
    go(page, "#/view/scratch")  # not its view: the API says no, and the page says why
    expect(page.locator(".listing .error")).to_contain_text("API Key not authorized for this view")
    go(page, "#/")
    expect(page.locator("table.view-list")).to_be_visible()
    assert page.locator("table.agents").count() == 0


def test_a_wrong_key_shows_the_apis_error_and_nothing_else(site, page):
    page.goto(f"{site.url}/ui#/view/lab")
    expect(page.locator("form.signin")).to_be_visible()  # nothing without a key
    page.fill("#key", WRONG_KEY)
    page.click("form.signin button[type=submit]")
    expect(page.locator("form.signin .error")).to_have_text("Invalid or inactive X-API-Key")
    assert page.locator("table").count() == 0
    assert page.evaluate("sessionStorage.length") == 0


def test_an_ingest_key_is_told_what_it_is(site, page):
    sign_in(page, site, "ui-ingest-lab")
    expect(page.locator("main")).to_contain_text("an agent's key for pipe lab")
    assert page.locator("table").count() == 0


def test_a_forest_view_marks_the_complete_member_and_lists_what_the_other_lacks(site, page):
    sign_in(page, site, "ui-query-scratch")  # a query key of the forest view
    go(page, "#/view/copies")
    expect(page.locator("table.members tr.best")).to_have_attribute("data-member", "full")
    expect(page.locator("tr[data-member=full] .badge")).to_have_text("complete")
    expect(page.locator("tr[data-member=part] .badge")).to_have_text("partial")
    expect(page.locator("tr[data-member=full] td.files")).to_have_text("8")
    expect(page.locator("tr[data-member=part] td.files")).to_have_text("4")
    lacks = page.locator("table.lacks tbody tr")
    expect(lacks).to_have_count(len(LACKS))
    assert lacks.evaluate_all("rows => rows.map(r => r.dataset.path)") == LACKS
    expect(page.locator("table.lacks tr[data-path='/run2'] td").nth(2)).to_have_text("1 file, 30 B")
    expect(page.locator("table.entries tr[data-name=run1] td").nth(1)).to_have_text("full 7 · part 4")
    save_shot(page, "forest")
    page.check(".compare input[type=checkbox]")
    expect(page.locator("table.lacks tr[data-path='/run1/x3.dat']")).to_contain_text("size differs")
    page.click("table.entries tr[data-name=run1] a")  # deeper: the same questions for /run1
    expect(page.locator("table.members tr[data-member=part] td.files")).to_have_text("4")
    expect(page.locator("table.lacks tr[data-path='/run1/x4.dat']")).to_be_visible()
    expect(page.locator("table.lacks tr[data-path='/run2']")).to_have_count(0)


def test_at_phone_width_nothing_spills_sideways(site, open_page):
    page = open_page(390, 844)
    sign_in(page, site, ADMIN)
    expect(page.locator("tr[data-agent=alpha]")).to_be_visible()
    assert no_sideways_scroll(page)
    for route, ready in (("#/view/lab", "tr[data-name=sub]"), ("#/view/copies", "table.lacks")):
        go(page, route)
        expect(page.locator(ready)).to_be_visible()
        assert no_sideways_scroll(page), route
    save_shot(page, "phone")


def test_reload_config_and_fusion_reload_show_their_outcome(site, page):
    sign_in(page, site, ADMIN)
    row = page.locator("tr[data-agent=alpha]")
    row.get_by_role("button", name="Report status").click()
    page.locator("dialog[open]").get_by_role("button", name="Cancel").click()
    expect(page.locator("dialog[open]")).to_have_count(0)
    row.get_by_role("button", name="Reload config").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Reload config: alpha")
    dialog.get_by_role("button", name="Reload config").click()
    notice = page.locator(".notice", has_text="Reload config (alpha)")
    expect(notice).to_have_attribute("data-state", "done", timeout=20_000)
    expect(row.locator("td").nth(6)).to_contain_text("reload_config: done")
    assert page.locator(".notice", has_text="Report status").count() == 0  # the cancelled one

    page.get_by_role("button", name="Reload fusion config").click()
    page.locator("dialog[open]").get_by_role("button", name="Reload").click()
    notice = page.locator(".notice", has_text="Reload fusion config")
    expect(notice).to_have_attribute("data-state", "reloaded")
    expect(notice).to_contain_text("no change")
    log = page.locator("table.log tbody")
    expect(log).to_contain_text("command reload_config")
    expect(log.locator("tr").first).to_contain_text("reload")

    page.locator("tr[data-view=lab]").get_by_role("button", name="Scan path…").click()
    page.locator("dialog[open] input[name=path]").fill("/docs")
    page.locator("dialog[open]").get_by_role("button", name="Scan").click()
    notice = page.locator(".notice", has_text="Scan /docs (lab)")
    expect(notice).to_have_attribute("data-state", "completed", timeout=20_000)
    expect(log.locator("tr").first).to_contain_text("on-demand scan")
    save_shot(page, "overview")


def test_the_api_docs_render_with_no_network(site, page):
    page.goto(f"{site.url}/docs")
    ops = page.locator(".swagger-ui .opblock")
    expect(ops.first).to_be_visible()
    assert ops.count() >= 20
    expect(page.locator(".swagger-ui .title")).to_contain_text("fustor fusion")
    page.goto(f"{site.url}/redoc")
    expect(page.get_by_role("heading", name=re.compile("fustor fusion")).first).to_be_visible()
    # (the fixture fails the test if either page asked for anything from another host)


def test_a_stale_marker_while_fusion_does_not_answer(tmp_path, page):
    site = UiSite(tmp_path)  # a fusion of its own: this test stops it
    try:
        sign_in(page, site, ADMIN)
        status = page.locator(".overview .status")
        expect(status).to_contain_text("updated")
        site.fusion.stop()
        expect(status).to_have_class(re.compile("stale"), timeout=10_000)
        expect(status).to_contain_text("Stale")
        expect(page.locator("table.views tr[data-view=lab]")).to_be_visible()  # kept, dimmed
        site.fusion = site.start_fusion()
        expect(status).not_to_have_class(re.compile("stale"), timeout=10_000)
    finally:
        site.close()
