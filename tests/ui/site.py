"""A site for the web page's tests: a real fusion (admin key, query keys, two fs views and a
forest view of two members) and real agents on temp dirs, built on the fleet tests' Site.

    view      pipe(s)      agent   tree
    lab       lab          alpha   120 small files in /sub, a few more, one large file, and
                                   /docs/hot.txt, written just before the agent starts
    scratch   scratch      beta    a handful of files
    copies    full, part   alpha,  full: two runs; part: a partial copy of it (fewer files,
    (forest)               beta    one truncated, no /run2)

Keys: ADMIN; ui-query-lab reads lab; ui-query-scratch reads scratch and copies; one
ingest key per pipe.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from tests.procs import free_port, wait_http, wait_until
from tests.test_fleet_e2e import Site

ADMIN = "ui-admin-key"
QUERY_LAB = "ui-query-lab"
WRONG_KEY = "not-a-key-at-all"
KEYS = (ADMIN, QUERY_LAB, "ui-query-scratch", "ui-ingest-lab", "ui-ingest-scratch",
        "ui-ingest-full", "ui-ingest-part", WRONG_KEY)  # none may ever be in a URL
LACKS = ["/run1/logs/l2.log", "/run1/x4.dat", "/run1/x5.dat", "/run2"]  # part lacks, next to full


def fusion_yaml(port: int, rport: int) -> str:
    return f"""
host: 127.0.0.1
port: {port}
session_cleanup_interval: 0.5
admin_keys: [{{key: {ADMIN}, name: ops}}]
receivers:
  r:
    bind_host: 127.0.0.1
    port: {rport}
    api_keys: [{{key: ui-ingest-lab, pipe_id: lab}}, {{key: ui-ingest-scratch, pipe_id: scratch}},
               {{key: ui-ingest-full, pipe_id: full}}, {{key: ui-ingest-part, pipe_id: part}}]
views:
  lab: {{api_keys: [{QUERY_LAB}], driver_params: {{hot_file_threshold: 600}}}}
  scratch: {{api_keys: [ui-query-scratch]}}
  copies: {{driver: forest-fs, api_keys: [ui-query-scratch]}}
pipes:  # agents heartbeat every timeout/3 s: commands from the page reach them that fast
  lab: {{receiver: r, views: [lab], session_timeout_seconds: 6}}
  scratch: {{receiver: r, views: [scratch], session_timeout_seconds: 6}}
  full: {{receiver: r, views: [copies], session_timeout_seconds: 6}}
  part: {{receiver: r, views: [copies], session_timeout_seconds: 6}}
"""


def _files(root: Path, files: dict[str, int], hot: tuple[str, ...] = ()) -> Path:
    """Files of the given sizes. Files and directories get mtimes an hour old, so that a
    snapshot does not find them "suspect" (changed within the view's hot_file_threshold),
    except the ``hot`` files, which keep theirs."""
    old = time.time() - 3600
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        if rel not in hot:
            os.utime(p, (old, old))
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(d, (old, old))
    return root


def make_trees(tmp: Path) -> dict[str, Path]:
    lab = {f"sub/f{i:03d}.dat": 10 for i in range(120)}
    lab.update({"docs/readme.txt": 100, "docs/hot.txt": 7, "deep/a/b/c.txt": 5,
                "zz-big.bin": 50_000})
    (tmp / "lab" / "empty").mkdir(parents=True)
    full = {f"run1/x{i}.dat": 1000 for i in range(1, 6)}
    full.update({"run1/logs/l1.log": 10, "run1/logs/l2.log": 20, "run2/r.dat": 30})
    part = {f"run1/x{i}.dat": 1000 for i in range(1, 4)}
    part.update({"run1/x3.dat": 400, "run1/logs/l1.log": 10})  # x3: a copy cut short
    return {"lab": _files(tmp / "lab", lab, hot=("docs/hot.txt",)), "scratch": _files(tmp / "scratch", {"a.txt": 1, "b.txt": 2}),
            "full": _files(tmp / "full", full), "part": _files(tmp / "part", part)}


class UiSite(Site):
    """The fleet tests' Site with this module's config (it writes its own in __init__)."""

    def __init__(self, tmp: Path) -> None:  # the steps of Site.__init__, with this config
        self.tmp = tmp
        self.port, self.rport = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rurl = f"http://127.0.0.1:{self.rport}"
        self.procs = []
        self.cfg = tmp / "fusion.yaml"
        self.cfg.write_text(fusion_yaml(self.port, self.rport))
        self.fusion = self.start_fusion()
        self.api = httpx.Client(base_url=f"{self.url}/api/v1/management",
                                headers={"X-API-Key": ADMIN}, timeout=10)

    def start_fusion(self):
        p = self.start(["fusion", "serve", "--data", str(self.tmp / "data"), "--config",
                        str(self.cfg)], self.tmp / "fusion-home", f"fusion-{len(self.procs)}")
        wait_http(f"{self.url}/", p)
        return p

    def close(self) -> None:
        self.api.close()
        fusions = [p for p in self.procs if p.log_path.name.startswith("fusion")]
        for p in [*[p for p in self.procs if p not in fusions], *fusions]:  # agents first
            p.stop()

    def stats(self, view: str, path: str = "/", key: str = ADMIN) -> dict | None:
        r = httpx.get(f"{self.url}/api/v1/views/{view}/stats", params={"path": path},
                      headers={"X-API-Key": key}, timeout=10)
        return r.json() if r.status_code == 200 else None

    def wait_ready(self, agents: list[str], timeout: float = 60) -> None:
        """Every agent on the dashboard with a version and every view's snapshot done."""
        def ready():
            d = self.api.get("/dashboard").json()
            seen = {a["agent_id"]: a for a in d["agents"]}
            if not all(seen.get(a, {}).get("version") and seen[a]["pipes"] for a in agents):
                return False
            trees = [m for v in d["views"] for m in (v.get("members") or {"": v}).values()]
            return all(t["ready"] and t["file_count"] for t in trees)

        wait_until(ready, timeout, interval=0.2, what="agents and views ready")


def start_site(tmp: Path) -> UiSite:
    trees = make_trees(tmp / "trees")
    site = UiSite(tmp)
    site.trees = trees
    try:
        site.agent("alpha", {"lab": (trees["lab"], "ui-ingest-lab"), "full": (trees["full"], "ui-ingest-full")})
        site.agent("beta", {"scratch": (trees["scratch"], "ui-ingest-scratch"),
                            "part": (trees["part"], "ui-ingest-part")})
        site.wait_ready(["alpha", "beta"])
    except BaseException as e:
        logs = site.logs()
        site.close()
        raise AssertionError(f"the site did not come up: {e}\n{logs}") from None
    return site


def save_shot(page, name: str) -> None:
    """The screenshots of the closing note, when FUSTOR_UI_SHOTS names a directory."""
    out = os.environ.get("FUSTOR_UI_SHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"ui-{name}.png"), full_page=True)
