"""docs/ for operators holds together: the systemd units pass `systemd-analyze verify`,
the Grafana dashboard and the scrape config parse and graph only figures fustor serves,
and every page the docs link to exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fustor.agent.metrics import AgentMetrics
from fustor.fusion.app import create_app
from tests.fusion.conftest import ADMIN, make_fusion

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("unit", ["fustor-fusion.service", "fustor-agent.service"])
def test_systemd_units_verify(tmp_path, unit):
    assert shutil.which("systemd-analyze"), "systemd-analyze is not on PATH; .ci/run installs it (apt-get install systemd)"
    fustor = Path(sys.executable).with_name("fustor")
    text = (DOCS / "systemd" / unit).read_text()
    assert "/opt/fustor/venv/bin/fustor " in text
    (tmp_path / unit).write_text(text.replace("/opt/fustor/venv/bin/fustor", str(fustor)))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                         capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if unit in ln]
    assert out.returncode == 0 and problems == [], out.stdout + out.stderr


def _names(text: str) -> set[str]:
    out = set()
    for fam in text_string_to_metric_families(text):
        out.update(s.name for s in fam.samples)
        out.add(fam.name)
    return out


async def test_the_dashboard_graphs_only_what_fustor_serves(tmp_path):
    f = make_fusion(tmp_path)
    await f.create_session(f.principal("ingest-key-a"), {"task_id": "a:research"})
    f.metrics.batch("research", 1, 1, 0.01)
    f.metrics.unavailable.labels("store_full").inc()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(f)),
                                 base_url="http://f") as c:
        await c.get("/")
        served = _names((await c.get("/metrics", headers={"X-API-Key": ADMIN})).text)
    await f.stop()
    pipe = {"rows_pushed": 1, "rows_rejected": 0, "rows_dropped": 0, "lag_s": 1.0, "role": "leader",
            "fusion_reachable": True, "watch": {"events_dropped": 0, "queued_events": 0,
                                                "overflowed": False, "watch_limit_reached": False,
                                                "watched_dirs": 3}}
    agent = AgentMetrics(lambda: {"pipes": {"p": pipe}})
    agent.push_seconds.labels("p").observe(0.1)
    served |= _names(agent.text().decode())
    dash = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bfustor_[a-z_]+", e)}
    assert len(dash["panels"]) >= 12 and sorted(used - served) == []
    documented = (DOCS / "metrics.md").read_text()
    base = {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in served if n.startswith("fustor_")}
    assert sorted(n for n in base if n not in documented and n.removesuffix("_total")
                  not in documented) == []


def test_the_scrape_config_and_the_links():
    scrape = yaml.safe_load((DOCS / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    assert set(jobs) == {"fustor-fusion", "fustor-agent"}
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (DOCS / link).exists(), f"{page.name} links to {link}"
    for name in ("install.md", "config.md", "consistency.md", "backup.md", "metrics.md",
                 "upgrade.md"):
        assert (DOCS / name).exists()
