"""The agent console on 127.0.0.1: a real Agent (in-process, fusion scripted by FakeFusion)
and real `fustor agent start` processes; every request goes over TCP to the console's port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import socket
import textwrap
from pathlib import Path

import httpx
import pytest

from fustor.agent.config import load_agent_config
from fustor.agent.daemon import Agent
from tests.agent.test_pipe import FakeFusion, until
from tests.e2e import run_cli
from tests.procs import Proc, free_port, wait_until

KEY = "console-test-secret-key"


def agent_config(tmp_path: Path, port: int, *, enabled: bool = True):
    (tmp_path / "tree").mkdir(exist_ok=True)
    f = tmp_path / "agent.yaml"
    f.write_text(textwrap.dedent(f"""\
        agent_id: lab-1
        console: {{port: {port}, enabled: {str(enabled).lower()}}}
        sources: {{t: {{driver: fs, uri: '{tmp_path}/tree'}}}}
        senders: {{f: {{driver: fusion, uri: 'http://fusion', credential: {{key: {KEY}}}}}}}
        pipes: {{p1: {{source: t, sender: f, error_retry_interval: 0.05, max_backoff_seconds: 0.2}}}}
        """))
    return load_agent_config(f)


@pytest.fixture
async def run_agent():
    """Agent.run() in a task, as `agent start` runs it; stopped at teardown."""
    runs: list[tuple[Agent, asyncio.Task]] = []

    async def run(agent: Agent) -> Agent:
        runs.append((agent, asyncio.create_task(agent.run(interval=0.1))))
        return agent

    yield run
    for agent, task in runs:
        agent.request_stop()
        await asyncio.wait_for(task, 15)


async def poll(get, timeout: float = 10.0, what: str = "condition"):
    """Await ``get()`` until it returns something truthy; fail at the deadline."""
    end = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < end:
        try:
            last = await get()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def test_console_serves_status_json_and_an_escaped_page(tmp_path, run_agent):
    port = free_port()
    hostile = '<script>alert("x")</script>'
    refuse = [True]

    def create(call):  # fusion refuses the key, with a hostile message, until told otherwise
        return httpx.Response(401, json={"detail": hostile, "code": "x"}) if refuse[0] else None

    fake = FakeFusion(role="follower", script={"create": [create] * 10_000})
    agent = await run_agent(Agent(agent_config(tmp_path, port), transport=fake.transport()))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        async def pipe_status(want):
            st = (await http.get("/status")).json()
            return st if want(st["pipes"].get("p1") or {}) else None

        st = await poll(lambda: pipe_status(lambda p: "401" in (p.get("last_error") or "")),
                        what="the console to show the 401")
        assert hostile in st["pipes"]["p1"]["last_error"]  # JSON carries the text as it is
        r = await http.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        page = r.text
        assert hostile not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        assert "<script" not in page and "lab-1" in page and "p1" in page
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in csp  # the one inline style, and nothing else
        assert r.headers["x-content-type-options"] == "nosniff"

        refuse[0] = False
        st = await poll(lambda: pipe_status(lambda p: p.get("state") == "running"),
                        what="the pipe in session")
        assert (st["running"], st["agent_id"], st["host"]) == (True, "lab-1", socket.gethostname())
        assert st["version"] and st["uptime_seconds"] >= 0 and st["console"] == f"{base}/"
        p = st["pipes"]["p1"]
        assert p["fusion_url"] == "http://fusion" and p["fusion_reachable"] is True
        assert (p["role"], p["phase"], p["rows_pushed"]) == ("follower", "idle", 0)
        assert p["rows_per_s"] == 0 and p["lag_s"] is None and p["last_error"] is None
        assert p["watch"]["watch_limit_reached"] is False
        assert KEY not in json.dumps(st) and KEY not in (await http.get("/")).text

        # read-only, and only for pages on this machine (no DNS rebinding)
        assert (await http.post("/status")).status_code == 405
        assert (await http.get("/status", headers={"host": f"evil.example:{port}"})).status_code == 421
        assert (await http.get("/", headers={"host": f"localhost:{port}"})).status_code == 200
    agent.request_stop()
    await until(lambda: agent.console is None and not agent.pipes, what="agent stopped")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/status", timeout=2)


async def test_a_busy_console_port_is_a_warning_and_the_agent_runs_on(tmp_path, run_agent, caplog):
    caplog.set_level(logging.INFO, "fustor.agent")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        fake = FakeFusion(role="follower")
        agent = await run_agent(Agent(agent_config(tmp_path, port), transport=fake.transport()))
        await until(lambda: "p1" in agent.pipes and agent.pipes["p1"].session_id,
                    what="the pipe in session")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                    and f"agent console: cannot listen on 127.0.0.1:{port}" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "the agent runs without it" in warnings[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        hb = len(fake.of("heartbeat"))
        await until(lambda: len(fake.of("heartbeat")) >= hb + 3, what="heartbeats go on")
        assert agent.console is None and agent.status()["console"] is None


async def test_reload_moves_the_console_to_its_new_port(tmp_path, run_agent):
    first, second = free_port(), free_port()
    agent_config(tmp_path, first)
    cfg_file = tmp_path / "agent.yaml"
    fake = FakeFusion(role="follower")
    agent = await run_agent(Agent(load_agent_config(cfg_file), transport=fake.transport(),
                                  load_config=lambda: load_agent_config(cfg_file)))
    async with httpx.AsyncClient(timeout=5) as http:
        await poll(lambda: http.get(f"http://127.0.0.1:{first}/status"), what="the console")
        agent_config(tmp_path, second)
        diff = await agent.reload()
        assert diff["console_changed"] is True and diff["changed"] == []
        r = await http.get(f"http://127.0.0.1:{second}/status")
        assert r.json()["console"] == f"http://127.0.0.1:{second}/"
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{first}/status")
    assert agent.pipes["p1"].state == "running"


# -- real processes --------------------------------------------------------------------------


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` listens on (its socket inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def start_agent(tmp_path: Path, procs: list, *extra: str) -> tuple[Proc, Path]:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    home = tmp_path / "home"
    dead = free_port()  # no fusion there: the agent backs off and says why
    p = Proc(["agent", "start", "--watch", str(tree), "--fusion", f"http://127.0.0.1:{dead}",
              "--key", KEY, *extra], home, tmp_path / "agent.log")
    procs.append(p)
    return p, home


def test_agent_process_console_shows_an_unreachable_fusion(tmp_path, procs):
    port = free_port()
    p, home = start_agent(tmp_path, procs, "--console-port", str(port))
    url = f"http://127.0.0.1:{port}"

    def failing_pipe():
        assert p.alive(), p.output()
        st = httpx.get(f"{url}/status", timeout=2).json()
        pipe = st["pipes"].get("default") or {}
        return st if pipe.get("last_error") else None

    st = wait_until(failing_pipe, 30, interval=0.1, what="the console to show the pipe's error")
    pipe = st["pipes"]["default"]
    assert pipe["fusion_reachable"] is False and "ConnectError" in pipe["last_error"]
    assert pipe["fusion_url"].startswith("http://127.0.0.1:")
    assert st["pid"] == p.p.pid and st["console"] == f"{url}/"
    page = httpx.get(url, timeout=2)
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "ConnectError" in page.text and KEY not in page.text
    assert listening_ports(p.p.pid) == {port}
    # `fustor agent status` names the console
    wait_until(lambda: "console: " in run_cli(["agent", "status"], home).stdout, 15, 0.2,
               what="the status file to mention the console")
    assert f"console: {url}/" in run_cli(["agent", "status"], home).stdout
    assert p.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/status", timeout=2)
    assert KEY not in p.output()


def test_no_console_binds_nothing(tmp_path, procs):
    port = free_port()
    p, home = start_agent(tmp_path, procs, "--no-console", "--console-port", str(port))

    def running_with_error():
        assert p.alive(), p.output()
        st = json.loads((home / "agent-status.json").read_text())
        return (st.get("pipes", {}).get("default") or {}).get("last_error") and st

    st = wait_until(running_with_error, 30, interval=0.1, what="the agent to run its pipe")
    assert st["console"] is None
    assert listening_ports(p.p.pid) == set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/status", timeout=2)
    assert p.stop() == 0
