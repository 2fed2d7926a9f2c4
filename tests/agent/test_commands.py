"""Management commands through heartbeats: a real in-process Agent with two pipes on real
temp trees, fusion scripted by :class:`FakeFusion` (httpx.MockTransport).

Fusion queues a management command on every session of the agent, so each test hands the
same command to both pipes' sessions (``broadcast`` or ``for_new_sessions``) and checks what
fusion then sees: the results in the ``agent_status`` of later heartbeats, which pipes keep
their sessions, which close them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import textwrap
import time
from pathlib import Path

import pytest

from fustor.agent.config import load_agent_config
from fustor.agent.daemon import Agent
from tests.agent.test_pipe import FakeFusion, until

AGENT_YAML = """\
agent_id: agent-1
sources:
  a: {{driver: fs, uri: '{root}/a'}}
  b: {{driver: fs, uri: '{root}/b'}}
{extra_sources}
senders:
  f: {{driver: fusion, uri: 'http://fusion', credential: {{key: the-ingest-key}}}}
pipes:
  p1: {{source: a, sender: f}}
  p2: {{source: b, sender: f}}
{extra_pipes}
"""


def write_config(path: Path, root: Path, *, extra: bool = False) -> None:
    for d in ("a", "b", "c"):
        (root / d).mkdir(exist_ok=True)
    path.write_text(AGENT_YAML.format(
        root=root,
        extra_sources=f"  c: {{driver: fs, uri: '{root}/c'}}" if extra else "",
        extra_pipes="  p3: {source: c, sender: f}" if extra else ""))


@pytest.fixture
def setup(tmp_path):
    """(config file, loader calls, make_agent(fake))."""
    cfg_file = tmp_path / "agent.yaml"
    write_config(cfg_file, tmp_path)
    loads: list[float] = []

    def loader():
        loads.append(time.monotonic())
        return load_agent_config(cfg_file)

    return cfg_file, loads, lambda fake: Agent(load_agent_config(cfg_file), load_config=loader,
                                               transport=fake.transport())


@pytest.fixture
async def run_agent():
    started: list[Agent] = []

    async def run(agent: Agent) -> Agent:
        started.append(agent)
        await agent.start()
        return agent

    yield run
    for a in started:
        await asyncio.wait_for(a.stop(), 15)


def statuses(fake: FakeFusion, sid: str) -> list[dict]:
    """The agent_status of every answered heartbeat of session ``sid``, in order."""
    return [c.body["agent_status"] for c in fake.of("heartbeat", sid=sid)
            if c.body.get("agent_status") is not None]


def result_in(fake: FakeFusion, sid: str, command_id: str) -> dict | None:
    """The result of ``command_id`` as the latest heartbeat of ``sid`` reported it."""
    for st in reversed(statuses(fake, sid)):
        for r in st.get("commands") or []:
            if r["command_id"] == command_id:
                return r
        return None
    return None


async def both_sessions(fake: FakeFusion, agent: Agent) -> tuple[str, str]:
    await until(lambda: all(p.session_id for p in agent.pipes.values()) and len(agent.pipes) == 2,
                what="both pipes in session")
    return fake.session_of("p1"), fake.session_of("p2")


# -- agent-wide: once per command_id -------------------------------------------------------

async def test_a_command_queued_on_both_sessions_runs_once_and_both_report_it(setup, run_agent, caplog):
    caplog.set_level(logging.INFO, "fustor.agent")
    _, loads, make = setup
    # heartbeats every 10 s: only the wake-up on a new result explains a quick report
    fake = FakeFusion(role="follower", timeout=30.0)
    fake.for_new_sessions = [{"type": "report_status", "command_id": "c-status"},
                             {"type": "reload_config", "command_id": "c-reload"}]
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    t0 = time.monotonic()
    await until(lambda: all(result_in(fake, s, c) for s in (s1, s2) for c in ("c-status", "c-reload")),
                timeout=5, what="both results in both pipes' heartbeats")
    assert time.monotonic() - t0 < 3.0  # not the 10 s heartbeat interval

    for sid in (s1, s2):
        st = result_in(fake, sid, "c-status")
        assert (st["type"], st["state"]) == ("report_status", "done")
        # ran when p1 got it: p2 may or may not have been started by then
        assert re.match(r"[12] pipe\(s\): p1 running follower", st["detail"]), st["detail"]
        rl = result_in(fake, sid, "c-reload")
        assert (rl["type"], rl["state"], rl["detail"]) == ("reload_config", "done", "reloaded: no changes")
        assert isinstance(rl["at"], float)
    assert len(loads) == 1  # the config was read once, not once per pipe
    assert sum("status requested by fusion" in r.getMessage() for r in caplog.records) == 1
    ids = [r["command_id"] for r in agent.commands.results()]
    assert sorted(ids) == ["c-reload", "c-status"]
    assert fake.sessions == [s1, s2]  # no new sessions


async def test_stop_pipe_stops_only_that_pipe_and_its_last_heartbeat_says_so(setup, run_agent):
    _, _, make = setup
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    fake.broadcast({"type": "stop_pipe", "pipe_id": "p2", "agent_pipe_id": "p2", "command_id": "c-stop"})
    await until(lambda: agent.pipes["p2"].state == "stopped", what="p2 stopped")

    # p2's session: a last heartbeat carrying the result, then the close
    [close] = fake.of("close", sid=s2)
    last = [c for c in fake.of("heartbeat", sid=s2) if c.t < close.t][-1]
    assert last.body["agent_status"]["state"] == "stopping"  # sent by stop(), not the loop
    [r] = [r for r in last.body["agent_status"]["commands"] if r["command_id"] == "c-stop"]
    assert (r["type"], r["state"], r["detail"]) == ("stop_pipe", "done", "pipe p2 stopped")

    # p1 untouched: same session, still heartbeating, and it reports the result too
    hb = len(fake.of("heartbeat", sid=s1))
    await until(lambda: len(fake.of("heartbeat", sid=s1)) >= hb + 3, what="p1 heartbeats on")
    assert agent.pipes["p1"].state == "running" and agent.pipes["p1"].session_id == s1
    assert fake.of("close", sid=s1) == [] and len(fake.sessions) == 2
    assert result_in(fake, s1, "c-stop")["state"] == "done"
    assert len([x for x in agent.commands.results() if x["command_id"] == "c-stop"]) == 1


async def test_stop_pipe_of_the_only_pipe_still_reaches_fusion(tmp_path, run_agent):
    (tmp_path / "t").mkdir()
    cfg = tmp_path / "one.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        agent_id: solo
        sources: {{t: {{driver: fs, uri: '{tmp_path}/t'}}}}
        senders: {{f: {{driver: fusion, uri: 'http://fusion', credential: {{key: k}}}}}}
        pipes: {{only: {{source: t, sender: f}}}}
        """))
    # fusion answers heartbeats slowly: the one the result wakes is still in flight when the
    # pipe stops (and is abandoned); only the stopping pipe's own last heartbeat gets through
    fake = FakeFusion(role="follower", timeout=30.0, heartbeat_delay=0.3)
    fake.for_new_sessions = [{"type": "stop_pipe", "pipe_id": "only", "agent_pipe_id": "only",
                              "command_id": "c-only"}]
    agent = await run_agent(Agent(load_agent_config(cfg), transport=fake.transport()))
    await until(lambda: agent.pipes["only"].state == "stopped", what="the pipe stopped")
    [sid] = fake.sessions
    [close] = fake.of("close")
    answered = [c for c in fake.of("heartbeat", sid=sid) if c.ok and c.t < close.t]
    goodbye = answered[-1].body["agent_status"]
    assert goodbye["state"] == "stopping"
    assert [(r["command_id"], r["state"]) for r in goodbye["commands"]] == [("c-only", "done")]
    assert agent.pipes["only"].state == "stopped"


async def test_stop_pipe_of_an_unknown_pipe_fails_and_stops_nothing(setup, run_agent):
    _, _, make = setup
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    fake.broadcast({"type": "stop_pipe", "pipe_id": "nope", "agent_pipe_id": "nope", "command_id": "c-x"})
    r = await until(lambda: result_in(fake, s1, "c-x"), what="the result")
    assert r["state"] == "failed" and "no running pipe 'nope'" in r["detail"] and "p1, p2" in r["detail"]
    assert [p.state for p in agent.pipes.values()] == ["running", "running"]
    assert fake.of("close") == []


# -- reload_config ---------------------------------------------------------------------------

async def test_reload_config_result_summarises_the_diff(setup, run_agent, tmp_path):
    cfg_file, _, make = setup
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, _ = await both_sessions(fake, agent)
    write_config(cfg_file, tmp_path, extra=True)
    fake.broadcast({"type": "reload_config", "command_id": "c-add"})
    r = await until(lambda: result_in(fake, s1, "c-add"), what="the reload's result")
    assert (r["state"], r["detail"]) == ("done", "reloaded: added: p3")
    await until(lambda: agent.pipes.get("p3") and agent.pipes["p3"].session_id, what="p3 in session")
    assert agent.pipes["p1"].session_id == s1  # unchanged pipes keep their sessions
    # the new pipe's heartbeats carry the agent's results too
    r3 = await until(lambda: result_in(fake, fake.session_of("p3"), "c-add"), what="p3 reports it")
    assert r3["state"] == "done"


async def test_reload_config_with_a_broken_config_fails_and_keeps_the_pipes(setup, run_agent):
    cfg_file, _, make = setup
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    cfg_file.write_text("pipes: [this is: not valid\n")
    fake.broadcast({"type": "reload_config", "command_id": "c-bad"})
    r = await until(lambda: result_in(fake, s2, "c-bad"), what="the refusal")
    assert r["state"] == "failed"
    assert r["detail"].startswith("reload refused, keeping the running config: ")
    assert "agent.yaml: YAML syntax error" in r["detail"]
    assert sorted(agent.pipes) == ["p1", "p2"]
    assert [agent.pipes[p].session_id for p in ("p1", "p2")] == [s1, s2]
    assert fake.of("close") == []


async def test_reload_config_of_an_agent_without_a_config_directory_fails(tmp_path, run_agent):
    from fustor.agent.config import quick_config

    fake = FakeFusion(role="follower")
    fake.for_new_sessions = [{"type": "reload_config", "command_id": "c-none"}]
    agent = await run_agent(Agent(quick_config(tmp_path, "http://fusion", "k"), transport=fake.transport()))
    r = await until(lambda: fake.sessions and result_in(fake, fake.sessions[0], "c-none"),
                    what="the result")
    assert r["state"] == "failed" and "without a config directory" in r["detail"]
    assert agent.pipes["default"].state == "running"


# -- unknown commands, old fusions -------------------------------------------------------------

async def test_an_unknown_command_is_not_run_and_fusion_is_told(setup, run_agent):
    _, _, make = setup
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    fake.broadcast({"type": "self_destruct", "command_id": "c-?"})
    r = await until(lambda: result_in(fake, s1, "c-?"), what="the result")
    assert r["state"] == "failed" and "unknown command 'self_destruct'" in r["detail"]
    hb = len(fake.of("heartbeat", sid=s2))
    await until(lambda: len(fake.of("heartbeat", sid=s2)) >= hb + 3, what="more heartbeats")
    assert [p.state for p in agent.pipes.values()] == ["running", "running"]
    assert fake.of("close") == [] and len(fake.sessions) == 2
    assert [x["command_id"] for x in agent.commands.results()] == ["c-?"]


async def test_commands_without_an_id_work_as_before(setup, run_agent, tmp_path):
    cfg_file, loads, make = setup
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    write_config(cfg_file, tmp_path, extra=True)
    fake.broadcast({"type": "reload_config"})
    await until(lambda: agent.pipes.get("p3") and agent.pipes["p3"].session_id, what="p3 started")
    fake.broadcast({"type": "stop_pipe", "pipe_id": "p1", "agent_pipe_id": "p1"})
    await until(lambda: agent.pipes["p1"].state == "stopped", what="p1 stopped")
    hb = len(fake.of("heartbeat", sid=s2))
    await until(lambda: len(fake.of("heartbeat", sid=s2)) >= hb + 3, what="p2 heartbeats on")
    assert agent.pipes["p2"].state == "running"
    assert agent.commands.results() == []  # nothing to report without ids
    assert all(st["commands"] == [] for st in statuses(fake, s2))


# -- scan with a command_id: one result per pipe ---------------------------------------------

async def test_scan_with_a_command_id_reports_done_after_job_complete(setup, run_agent, tmp_path):
    _, _, make = setup
    for i in range(5):
        (tmp_path / "a" / f"f{i}").write_text("x")
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    fake.session_commands.setdefault(s1, []).append(
        {"type": "scan", "path": "/", "recursive": True, "job_id": "j1", "command_id": "c-scan"})
    r = await until(lambda: result_in(fake, s1, "c-scan"), what="the scan's result")
    assert (r["type"], r["state"], r["pipe_id"]) == ("scan", "done", "p1")
    assert "6 row(s)" in r["detail"]
    [done] = fake.pushes("job_complete", sid=s1)
    assert done.ok and done.t_done <= time.monotonic()
    assert result_in(fake, s2, "c-scan")["pipe_id"] == "p1"  # the other pipe reports it too
    assert agent.pipes["p1"].session_id == s1


async def test_scan_that_loses_its_session_reports_failed(setup, run_agent, tmp_path):
    _, _, make = setup
    (tmp_path / "a" / "f").write_text("x")

    def drop(call):
        fake.obsolete.add(call.sid)
        return 419

    fake = FakeFusion(role="follower", script={"push": [drop]})
    agent = await run_agent(make(fake))
    s1, _ = await both_sessions(fake, agent)
    fake.session_commands.setdefault(s1, []).append(
        {"type": "scan", "path": "/", "recursive": True, "job_id": "j2", "command_id": "c-lost"})
    await until(lambda: agent.pipes["p1"].session_id not in (None, s1), what="p1's new session")
    r = await until(lambda: result_in(fake, agent.pipes["p1"].session_id, "c-lost"),
                    what="the result on the new session")
    assert r["state"] == "failed" and r["detail"].startswith("session lost")


# -- upgrade -------------------------------------------------------------------------------------

async def test_a_failed_upgrade_is_reported_with_its_reason(setup, run_agent, tmp_path):
    _, _, make = setup
    empty = tmp_path / "empty-index"
    empty.mkdir()
    fake = FakeFusion(role="follower")
    agent = await run_agent(make(fake))
    s1, s2 = await both_sessions(fake, agent)
    fake.broadcast({"type": "upgrade", "version": "latest!", "command_id": "u-bad"})
    r = await until(lambda: result_in(fake, s2, "u-bad"), what="the refusal")
    assert r["state"] == "failed" and "not a version number: 'latest!'" in r["detail"]

    # pip itself fails (an empty index): failed, with pip's reason, and nothing re-executed
    fake.broadcast({"type": "upgrade", "version": "99.0.0", "index_url": empty.as_uri(),
                    "upgrade_timeout_sec": 120, "command_id": "u-pip"})
    r = await until(lambda: result_in(fake, s1, "u-pip"), timeout=120, what="pip's failure")
    assert r["state"] == "failed" and "pip install fustor==99.0.0 failed" in r["detail"]
    st = statuses(fake, s1)[-1]
    assert st["last_upgrade"].startswith("failed: pip install fustor==99.0.0 failed")
    assert [p.state for p in agent.pipes.values()] == ["running", "running"]


# -- what every heartbeat carries ------------------------------------------------------------------

async def test_agent_status_in_heartbeats_has_the_new_fields(setup, run_agent, tmp_path):
    import socket

    _, _, make = setup
    fake = FakeFusion(role="leader")
    agent = await run_agent(make(fake))
    s1, _ = await both_sessions(fake, agent)
    await until(lambda: fake.snapshot_ended(s1), what="p1's snapshot")
    (tmp_path / "a" / "new.txt").write_text("x")
    await until(lambda: (statuses(fake, s1) or [{}])[-1].get("lag_s") is not None, what="lag after a realtime push")
    st = statuses(fake, s1)[-1]
    assert st["host"] == socket.gethostname()
    assert st["fusion_url"] == "http://fusion"
    assert st["fusion_reachable"] is True
    assert st["rows_pushed"] >= 2 and st["rows_per_s"] > 0
    assert 0 <= st["lag_s"] < 5
    assert st["commands"] == []
    for old in ("agent_id", "pipe_id", "version", "uptime_seconds", "state", "phase", "role",
                "events_pushed", "last_error", "last_upgrade", "is_realtime_ready", "watch"):
        assert old in st
    assert "the-ingest-key" not in repr(statuses(fake, s1))


async def test_a_verified_upgrade_reports_done_before_the_restart(setup, run_agent, monkeypatch):
    """The restart replaces the process, so the result must reach fusion first. pip and the
    re-exec are stood in for here (test_upgrade.py runs the real install, verify, rollback):
    ``upgrade`` calls the restart hook at once, as after a verified install."""
    from fustor.agent import upgrade as up

    def installed(version, *, current, reexec, **_):
        reexec()
        return f"upgraded to {version}"

    restarts: list[float] = []
    monkeypatch.setattr(up, "upgrade", installed)
    monkeypatch.setattr(up, "restart", lambda: restarts.append(time.monotonic()))
    _, _, make = setup
    fake = FakeFusion(role="follower", timeout=30.0)  # heartbeats only every 10 s
    fake.for_new_sessions = [{"type": "upgrade", "version": "9.9.9", "command_id": "u-ok"}]
    await run_agent(make(fake))
    await until(lambda: restarts, what="the restart")
    before = [c for c in fake.of("heartbeat") if c.ok and c.t_done <= restarts[0]]
    told = [r for c in before for r in c.body["agent_status"]["commands"] if r["command_id"] == "u-ok"]
    assert told and (told[-1]["state"], told[-1]["detail"]) == (
        "done", "installed and verified 9.9.9; restarting")
    assert restarts[0] - before[0].t < 5  # the flush, not the 10 s heartbeat interval
