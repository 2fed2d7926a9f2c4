"""Upgrading an agent from the web page: a real agent installed in a venv of its own from a
locally built 0.1.0 wheel is upgraded to a locally built 0.2.0 by filling in the page's
upgrade dialog; the page follows it to "succeeded" and lists the agent at 0.2.0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.agent.test_upgrade import build_wheel
from tests.ui.site import ADMIN, UiSite, make_trees


@pytest.mark.network
@pytest.mark.slow
def test_upgrade_from_the_page_ends_succeeded_with_the_new_version_listed(tmp_path, page):
    for v in ("0.1.0", "0.2.0"):
        build_wheel(tmp_path, v)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    wheels = tmp_path / "wheels"
    subprocess.run([py, "-m", "pip", "install", "-q", "--find-links", str(wheels), "fustor==0.1.0"],
                   check=True, timeout=900)
    no_index = tmp_path / "no-index"  # the new version must come from the built wheels
    no_index.mkdir()
    site = UiSite(tmp_path)
    try:
        tree = make_trees(tmp_path / "trees")["scratch"]
        site.agent("gamma", {"scratch": (tree, "ui-ingest-scratch")}, python=py)
        page.goto(f"{site.url}/ui")
        page.fill("#key", ADMIN)
        page.click("form.signin button[type=submit]")
        row = page.locator("tr[data-agent=gamma]")
        expect(row.locator(".version")).to_have_text("0.1.0", timeout=60_000)
        row.get_by_role("button", name="Upgrade…").click()
        dialog = page.locator("dialog[open]")
        dialog.locator("input[name=version]").fill("0.2.0")
        dialog.locator("input[name=index_url]").fill(no_index.as_uri())
        dialog.locator("input[name=find_links]").fill(str(wheels))
        dialog.get_by_role("button", name="Upgrade").click()
        notice = page.locator(".notice", has_text="Upgrade gamma to 0.2.0")
        expect(notice).to_have_attribute("data-state", "pending")
        expect(notice).to_have_attribute("data-state", re.compile("succeeded|failed"),
                                         timeout=300_000)
        expect(notice).to_have_attribute("data-state", "succeeded")
        expect(row.locator(".version")).to_have_text("0.2.0")
        expect(row.locator(".badge.ok")).to_have_text("upgraded")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{site.logs()}") from None
    finally:
        site.close()
