"""Operating a fleet from fusion, with real processes: a fusion and two agents on temp dirs.

The dashboard lists both agents with their versions and roles; reload_config, stop_pipe and
scan reach the agent over its heartbeats and end "done"; an upgrade to a locally built
release ends "succeeded" with the new version on the dashboard, and a broken release ends
"failed" with the agent still running the old one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from fustor.agent.upgrade import installed_version
from tests.agent.test_upgrade import build_wheel
from tests.procs import Proc, free_port, wait_http, wait_until

ADMIN = "fleet-admin"


def fusion_yaml(port: int, rport: int) -> str:
    return f"""
host: 127.0.0.1
port: {port}
session_cleanup_interval: 0.5
admin_keys: [{{key: {ADMIN}, name: ops}}]
receivers:
  r: {{bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: k-one, pipe_id: one}}, {{key: k-two, pipe_id: two}}]}}
views:
  one: {{api_keys: [q-one]}}
  two: {{api_keys: [q-two]}}
pipes:
  one: {{receiver: r, views: [one], session_timeout_seconds: 3}}
  two: {{receiver: r, views: [two], session_timeout_seconds: 3}}
"""


def agent_yaml(agent_id: str, rurl: str, pipes: dict[str, tuple[Path, str]]) -> str:
    out = [f"agent_id: {agent_id}", "logging: INFO", "sources:"]
    for name, (tree, _key) in pipes.items():
        out += [f"  src-{name}: {{driver: fs, uri: \"{tree}\"}}"]
    out.append("senders:")
    for name, (_tree, key) in pipes.items():
        out += [f"  snd-{name}: {{driver: fusion, uri: \"{rurl}\", credential: {{key: {key}}}}}"]
    out.append("pipes:")
    for name in pipes:
        out += [f"  {name}: {{source: src-{name}, sender: snd-{name}}}"]
    return "\n".join(out) + "\n"


def tree(root: Path, n: int) -> Path:
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        (root / "sub" / f"f{i}.dat").write_bytes(b"x" * i)
    return root


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port, self.rport = free_port(), free_port()
        self.rurl = f"http://127.0.0.1:{self.rport}"
        self.procs: list[Proc] = []
        cfg = tmp / "fusion.yaml"
        cfg.write_text(fusion_yaml(self.port, self.rport))
        self.fusion = self.start(["fusion", "serve", "--data", str(tmp / "data"), "--config",
                                  str(cfg)], tmp / "fusion-home", "fusion")
        wait_http(f"http://127.0.0.1:{self.port}/", self.fusion)
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/api/v1/management",
                                headers={"X-API-Key": ADMIN}, timeout=10)

    def start(self, args: list[str], home: Path, name: str, python: str = sys.executable) -> Proc:
        p = Proc(args, home, self.tmp / f"{name}.log", env={"FUSTOR_PID_FILE": "0"})
        if python != sys.executable:  # an agent installed in a venv of its own
            p.p.kill()
            p.p.wait()
            env = dict(os.environ, FUSTOR_HOME=str(home), PYTHONUNBUFFERED="1", PYTHONPATH="")
            p.p = subprocess.Popen([python, "-m", "fustor.cli", *args], env=env, stdout=p._log,
                                   stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs.append(p)
        return p

    def agent(self, agent_id: str, pipes: dict[str, tuple[Path, str]], python: str = sys.executable) -> Proc:
        cfg = self.tmp / f"{agent_id}.yaml"
        cfg.write_text(agent_yaml(agent_id, self.rurl, pipes))
        return self.start(["agent", "start", str(cfg), "--no-console"], self.tmp / f"{agent_id}-home",
                          agent_id, python)

    def agent_json(self, agent_id: str) -> dict | None:
        r = self.api.get(f"/agents/{agent_id}")
        return r.json() if r.status_code == 200 else None

    def command(self, agent_id: str, body: dict) -> str:
        r = self.api.post(f"/agents/{agent_id}/command", json=body)
        assert r.status_code == 200, r.text
        return r.json()["command_id"]

    def command_state(self, agent_id: str, cid: str) -> str | None:
        a = self.agent_json(agent_id) or {}
        return next((c["state"] for c in a.get("commands", []) if c["command_id"] == cid), None)

    def close(self) -> None:
        self.api.close()
        for p in [*self.procs[1:], self.procs[0]]:  # agents first, fusion last
            p.stop()

    def logs(self) -> str:
        return "".join(f"\n--- {p.log_path.name} ---\n{p.output()[-3000:]}" for p in self.procs)


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def test_dashboard_commands_and_stop_pipe_reach_real_agents(site, tmp_path):
    a1, a2, b = tree(tmp_path / "a1", 30), tree(tmp_path / "a2", 10), tree(tmp_path / "b", 5)
    site.agent("alpha", {"pa1": (a1, "k-one"), "pa2": (a2, "k-two")})
    wait_until(lambda: (site.agent_json("alpha") or {}).get("pipes", []) and
               all(p["phase"] == "realtime" for p in site.agent_json("alpha")["pipes"]) and
               len(site.agent_json("alpha")["pipes"]) == 2, 60, what="alpha's two pipes")
    site.agent("beta", {"pb": (b, "k-one")})
    version = installed_version()
    try:
        wait_until(lambda: len(site.api.get("/dashboard").json()["agents"]) == 2 and all(
            a["version"] == version and a["pipes"] for a in site.api.get("/dashboard").json()["agents"]),
            60, what="both agents on the dashboard")
        d = site.api.get("/dashboard").json()
        roles = {(a["agent_id"], p["pipe_id"]): p["role"] for a in d["agents"] for p in a["pipes"]}
        assert roles == {("alpha", "pa1"): "leader", ("alpha", "pa2"): "leader",
                         ("beta", "pb"): "follower"}  # alpha came first on view one
        assert {a["host"] for a in d["agents"]} == {os.uname().nodename}
        views = {v["view_id"]: v for v in d["views"]}
        assert views["one"]["file_count"] == 30 and views["two"]["file_count"] == 10

        cid = site.command("alpha", {"type": "reload_config"})
        wait_until(lambda: site.command_state("alpha", cid) == "done", 30, what="reload done")
        assert "reload" in site.procs[1].output().lower()

        cid = site.command("alpha", {"type": "stop_pipe", "pipe_id": "pa2"})
        wait_until(lambda: site.command_state("alpha", cid) == "done", 30, what="stop_pipe done")
        wait_until(lambda: [p["pipe_id"] for p in site.agent_json("alpha")["pipes"]] == ["pa1"],
                   30, what="only pa2 gone")
        (a1 / "after-stop.txt").write_text("still watched")
        q = httpx.Client(base_url=f"http://127.0.0.1:{site.port}/api/v1/views", timeout=10)
        wait_until(lambda: q.get("/one/stats", headers={"X-API-Key": "q-one"}).json()["file_count"] == 31,
                   30, what="pa1 still pushing after pa2 stopped")
        assert site.agent_json("alpha")["last_heartbeat_age_s"] < 5

        (b / "sub" / "late.dat").write_bytes(b"late")
        cid = site.command("beta", {"type": "scan", "path": "/sub"})
        wait_until(lambda: site.command_state("beta", cid) == "done", 30, what="scan done")
        q.close()
    except AssertionError as e:
        raise AssertionError(f"{e}\n{site.logs()}") from None




@pytest.mark.network
@pytest.mark.slow
def test_upgrade_from_the_dashboard_succeeds_and_a_broken_release_fails(site, tmp_path):
    for v, broken in (("0.1.0", False), ("0.2.0", False), ("0.3.0", True)):
        build_wheel(tmp_path, v, broken)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    wheels = tmp_path / "wheels"
    subprocess.run([py, "-m", "pip", "install", "-q", "--find-links", str(wheels), "fustor==0.1.0"],
                   check=True, timeout=900)
    empty = tmp_path / "no-index"
    empty.mkdir()
    src = tree(tmp_path / "t", 5)
    gamma = site.agent("gamma", {"pg": (src, "k-one")}, python=py)

    def agent_alive() -> bool:
        if not gamma.alive():
            raise AssertionError(f"the agent exited with {gamma.p.returncode}")
        return True

    try:
        wait_until(lambda: (site.agent_json("gamma") or {}).get("version") == "0.1.0", 60,
                   what="gamma on the dashboard at 0.1.0")
        body = {"version": "0.2.0", "index_url": empty.as_uri(), "find_links": str(wheels),
                "timeout_s": 300}
        r = site.api.post("/agents/gamma/upgrade", json=body)
        assert r.status_code == 200, r.text
        assert site.api.post("/agents/gamma/upgrade", json=body).status_code == 409
        wait_until(lambda: agent_alive() and site.agent_json("gamma")["upgrade"]["state"] != "pending",
                   300, interval=0.5, what="the upgrade to 0.2.0 to end")
        a = site.agent_json("gamma")
        assert (a["upgrade"]["state"], a["version"]) == ("succeeded", "0.2.0"), a
        dash = site.api.get("/dashboard").json()
        assert [x["version"] for x in dash["agents"] if x["agent_id"] == "gamma"] == ["0.2.0"]

        r = site.api.post("/agents/gamma/upgrade", json={**body, "version": "0.3.0"})
        assert r.status_code == 200, r.text
        wait_until(lambda: agent_alive() and site.agent_json("gamma")["upgrade"]["state"] != "pending",
                   300, interval=0.5, what="the upgrade to 0.3.0 to end")
        a = site.agent_json("gamma")
        assert a["upgrade"]["state"] == "failed" and a["version"] == "0.2.0", a
        assert gamma.alive() and installed_version(py) == "0.2.0"
        wait_until(lambda: site.agent_json("gamma")["last_heartbeat_age_s"] < 5, 30,
                   what="gamma still heartbeating on 0.2.0")
        log = site.api.get("/audit-log").json()["entries"]
        assert [(e["action"], e["outcome"]) for e in log] == \
            [("upgrade", "ok"), ("upgrade", "conflict"), ("upgrade", "ok")]
    except AssertionError as e:
        raise AssertionError(f"{e}\n{site.logs()}") from None
