"""AgentPipe in-process: a real FsSource on a real temp tree, fusion behind an httpx transport.

Two seams (CONVENTIONS §4): :class:`FakeFusion` scripts fusion's answers through
``httpx.MockTransport`` (500s, 503 + Retry-After, 419, refused connections,
roles and commands) and records every call; the last tests drive the real fusion
app in-process through ``httpx.ASGITransport``.

Everything waits on conditions with deadlines (:func:`until`); absence ("no
snapshot push after the demotion") is checked over a bounded number of later
heartbeats, which the pipe sends every 0.1 s with the timeouts used here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fustor.agent.pipe import AgentPipe, PipeSettings
from fustor.agent.sender_http import FusionClient
from fustor.agent.source_fs import FsSource
from fustor.fusion.app import create_app
from fustor.fusion.core import Fusion
from tests.agent.conftest import INGEST_KEY, QUERY_KEY


async def until(cond, timeout: float = 10.0, what: str = "condition"):
    """Poll ``cond()`` on the event loop until it is truthy; fail at the deadline."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = cond()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def make_tree(root: Path, dirs: int = 3, files_per_dir: int = 80) -> set[str]:
    """A small tree; returns every view path a snapshot must report (``/`` included)."""
    paths = {"/"}
    for d in range(dirs):
        sub = root / f"d{d}"
        sub.mkdir()
        paths.add(f"/d{d}")
        for i in range(files_per_dir):
            (sub / f"f{i:03d}.txt").write_bytes(b"x" * (i % 7))
            paths.add(f"/d{d}/f{i:03d}.txt")
    return paths


# -- a scripted fusion ------------------------------------------------------------------

@dataclass
class Call:
    t: float
    kind: str  # create, heartbeat, close, push, audit_start, audit_end, sentinel_tasks, ...
    sid: str | None
    body: dict
    status: int | None = None  # None: in flight or abandoned; -1: the transport raised
    t_done: float | None = None  # when the answer left

    @property
    def source_type(self) -> str | None:
        return self.body.get("source_type")

    @property
    def is_end(self) -> bool:
        return bool(self.body.get("is_end"))

    @property
    def rows(self) -> list[dict]:
        return [r for e in self.body.get("events") or [] for r in e["rows"]]

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class FakeFusion:
    """Fusion's receiver as a script. ``script[kind]`` holds the answers of the next calls
    of that kind: an HTTP status, an ``httpx.Response``, an exception to raise, or a
    callable ``call -> one of those`` (for pushes it only applies to those with events)."""

    role: str = "leader"
    timeout: float = 0.3  # session timeout in the reply: heartbeats every 0.1 s
    audit_interval: float = 0.0  # 0 turns the pipe's audit loop off
    sentinel_interval: float = 0.0
    calls: list[Call] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    obsolete: set[str] = field(default_factory=set)
    script: dict[str, list] = field(default_factory=dict)
    commands: list[dict] = field(default_factory=list)  # delivered once, by the next heartbeat
    # what fusion's management plane does: a command queued on each session of the agent
    session_commands: dict[str, list[dict]] = field(default_factory=dict)
    for_new_sessions: list[dict] = field(default_factory=list)  # queued on each new session
    task_ids: dict[str, str] = field(default_factory=dict)  # session id -> "agent:pipe"
    gate: asyncio.Event | None = None  # set: snapshot pushes with events wait for it
    realtime_gate: asyncio.Event | None = None  # set: realtime pushes wait for it
    down: bool = False  # every call is refused
    heartbeat_delay: float = 0.0  # fusion takes this long to answer a heartbeat
    hook: Callable[[Call], None] | None = None  # sees each call first (may set ``down``)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- what tests read ------------------------------------------------------------
    def of(self, kind: str, **match) -> list[Call]:
        out = [c for c in self.calls if c.kind == kind]
        for k, v in match.items():
            out = [c for c in out if getattr(c, k) == v]
        return out

    def pushes(self, source_type: str | None = None, sid: str | None = None) -> list[Call]:
        return [c for c in self.of("push") if (source_type is None or c.source_type == source_type)
                and (sid is None or c.sid == sid)]

    def accepted_rows(self, source_type: str, sid: str | None = None) -> list[str]:
        return [r["path"] for c in self.pushes(source_type, sid) if c.ok for r in c.rows]

    def snapshot_ended(self, sid: str) -> bool:
        return any(c.ok and c.is_end for c in self.pushes("snapshot", sid))

    def session_of(self, pipe_id: str) -> str | None:
        """The latest session that the agent pipe ``pipe_id`` opened."""
        sids = [sid for sid, task in self.task_ids.items() if task.split(":", 1)[1] == pipe_id]
        return sids[-1] if sids else None

    def open_sessions(self) -> list[str]:
        closed = {c.sid for c in self.of("close")}
        return [s for s in self.sessions if s not in closed and s not in self.obsolete]

    def broadcast(self, cmd: dict) -> None:
        """Queue ``cmd`` on every open session, as fusion queues a management command."""
        for sid in self.open_sessions():
            self.session_commands.setdefault(sid, []).append(dict(cmd))

    # -- the handler ------------------------------------------------------------------
    async def handle(self, request: httpx.Request) -> httpx.Response:
        kind, sid = self._route(request)
        body = json.loads(request.content) if request.content else {}
        call = Call(time.monotonic(), kind, sid, body)
        self.calls.append(call)
        if self.hook is not None:
            self.hook(call)
        if self.down:
            call.status = -1
            raise httpx.ConnectError("[Errno 111] Connection refused")
        resp = self._scripted(call)
        if resp is None:
            if sid is not None and sid in self.obsolete:
                resp = httpx.Response(419, json={"detail": "session obsolete", "code": "session_obsolete"})
            else:
                if self.gate is not None and kind == "push" and call.source_type == "snapshot" \
                        and body.get("events"):
                    await self.gate.wait()
                if self.realtime_gate is not None and kind == "push" \
                        and call.source_type == "message" and body.get("events"):
                    await self.realtime_gate.wait()
                if kind == "heartbeat" and self.heartbeat_delay:
                    await asyncio.sleep(self.heartbeat_delay)
                resp = self._default(call)
        call.status, call.t_done = resp.status_code, time.monotonic()
        return resp

    @staticmethod
    def _route(request: httpx.Request) -> tuple[str, str | None]:
        p = request.url.path
        if m := re.fullmatch(r"/api/v1/pipe/session/([^/]+)/heartbeat", p):
            return "heartbeat", m[1]
        if m := re.fullmatch(r"/api/v1/pipe/ingest/([^/]+)/events", p):
            return "push", m[1]
        if p == "/api/v1/pipe/session/":
            return "create", None
        if m := re.fullmatch(r"/api/v1/pipe/session/([^/]+)", p):
            return "close", m[1]
        if m := re.fullmatch(r"/api/v1/pipe/consistency/(audit/start|audit/end|sentinel/tasks|"
                             r"sentinel/feedback)", p):
            return m[1].replace("/", "_"), None
        raise AssertionError(f"unexpected request {request.method} {p}")

    def _scripted(self, call: Call) -> httpx.Response | None:
        queue = self.script.get(call.kind)
        if not queue or (call.kind == "push" and not call.body.get("events")):
            return None
        answer = queue.pop(0)
        if callable(answer):
            answer = answer(call)
        if answer is None:
            return None
        if isinstance(answer, BaseException):
            call.status = -1
            raise answer
        if isinstance(answer, int):
            return httpx.Response(answer, json={"detail": f"scripted {answer}", "code": "scripted"})
        return answer

    def _default(self, call: Call) -> httpx.Response:
        if call.kind == "create":
            sid = f"s{len(self.sessions) + 1}"
            self.sessions.append(sid)
            self.session_commands[sid] = [dict(c) for c in self.for_new_sessions]
            self.task_ids[sid] = call.body["task_id"]
            return httpx.Response(200, json={
                "session_id": sid, "role": self.role, "is_leader": self.role == "leader",
                "session_timeout_seconds": self.timeout,
                "audit_interval_sec": self.audit_interval,
                "sentinel_interval_sec": self.sentinel_interval, "message": "ok"})
        if call.kind == "heartbeat":
            cmds, self.commands = self.commands, []
            cmds += self.session_commands.pop(call.sid, [])
            return httpx.Response(200, json={"status": "ok", "role": self.role, "commands": cmds})
        if call.kind == "push":
            return httpx.Response(200, json={"status": "ok", "count": len(call.body["events"])})
        if call.kind == "sentinel_tasks":
            return httpx.Response(200, json={})
        return httpx.Response(200, json={"status": "ok"})


# -- pipes --------------------------------------------------------------------------------

def make_pipe(root: Path, transport: httpx.AsyncBaseTransport, *, batch: int = 100,
              base_url: str = "http://fusion", api_key: str = INGEST_KEY, **settings) -> AgentPipe:
    source = FsSource(root, batch_rows=batch, scan_workers=2)
    client = FusionClient(base_url, api_key, timeout=10.0, transport=transport)
    kw = {"error_retry_interval": 0.05, "backoff_multiplier": 2.0, "max_backoff_seconds": 0.4,
          "audit_interval_sec": 0.0, "sentinel_interval_sec": 0.0, **settings}
    return AgentPipe("p1", "agent-1:p1", source, client, PipeSettings(batch_size=batch, **kw),
                     source_uri=str(root))



# -- pushes: retry, Retry-After, 419 ----------------------------------------------------------

async def test_push_500_twice_retries_the_same_batch_and_loses_nothing(root, run_pipe):
    tree = make_tree(root, dirs=3, files_per_dir=80)  # 244 rows: 3 batches of 100
    fake = FakeFusion(script={"push": [500, 500]})
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: fake.snapshot_ended("s1"), what="snapshot end")

    snaps = [c for c in fake.pushes("snapshot") if c.rows]
    failed = [c for c in snaps if c.status == 500]
    accepted = [c for c in snaps if c.ok]
    assert len(failed) == 2 and len(accepted) == 3 and len(snaps) == 5
    for f in failed:  # the same batch again, not a new scan
        assert any(a.rows == f.rows and a.t > f.t for a in accepted)
    received = fake.accepted_rows("snapshot")
    assert sorted(received) == sorted(tree)  # every path once: nothing lost, nothing doubled
    end = fake.pushes("snapshot")[-1]
    assert end.is_end and end.rows == [] and end.t >= max(a.t_done for a in accepted)
    assert fake.sessions == ["s1"]
    assert pipe.rows_pushed == len(tree)
    assert pipe.snapshot_done and pipe.session_id == "s1"


async def test_snapshot_keeps_three_pushes_in_flight(root, run_pipe):
    tree = make_tree(root, dirs=6, files_per_dir=80)  # 487 rows: 5 batches
    fake = FakeFusion(gate=asyncio.Event())
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    held = lambda: [c for c in fake.pushes("snapshot") if c.rows]  # noqa: E731
    await until(lambda: len(held()) >= 3, what="three pushes in flight")
    hb = len(fake.of("heartbeat"))
    await until(lambda: len(fake.of("heartbeat")) >= hb + 3, what="three more heartbeats")
    assert len(held()) == pipe.s.snapshot_in_flight == 3  # no fourth before an answer
    fake.gate.set()
    await until(lambda: fake.snapshot_ended("s1"), what="snapshot end")
    assert sorted(fake.accepted_rows("snapshot")) == sorted(tree)


async def test_realtime_pushes_at_once_when_idle_and_batches_behind_a_push_in_flight(
        tmp_path, root, run_pipe):
    """No batching delay on an idle pipe: the first change is pushed alone, at once. What
    changes while that push awaits fusion travels together in the very next push."""
    make_tree(root, dirs=1, files_per_dir=3)
    fake = FakeFusion()
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: pipe.snapshot_done and pipe.source.status["fully_armed"], what="snapshot")
    fake.realtime_gate = gate = asyncio.Event()  # fusion now holds every realtime push

    def move_in(name: str) -> None:  # one event per file: written elsewhere, moved in
        (tmp_path / name).write_bytes(b"x")
        os.rename(tmp_path / name, root / "d0" / name)

    move_in("first.txt")
    await until(lambda: fake.pushes("message"), what="the first change pushed")
    assert [r["path"] for r in fake.pushes("message")[0].rows] == ["/d0/first.txt"]
    for n, name in enumerate(("a.txt", "b.txt", "c.txt"), 1):
        move_in(name)

        def staged(n: int = n) -> bool:  # taken off the watcher's queue during the push
            return pipe.source.status["queued_events"] == 0 and len(pipe._staged) == n

        await until(staged, what=f"{name} staged")
    assert len(fake.pushes("message")) == 1  # one push at a time: realtime keeps its order
    gate.set()
    await until(lambda: len(fake.pushes("message")) >= 2 and all(c.ok for c in fake.pushes("message")),
                what="the second push")
    assert [r["path"] for r in fake.pushes("message")[1].rows] == ["/d0/a.txt", "/d0/b.txt", "/d0/c.txt"]
    assert len(fake.pushes("message")) == 2


async def test_503_retry_after_is_honoured(root, run_pipe):
    make_tree(root, dirs=1, files_per_dir=10)
    busy = httpx.Response(503, headers={"Retry-After": "1"},
                          json={"detail": "busy", "code": "store_busy"})
    fake = FakeFusion(script={"push": [busy]})
    await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: fake.snapshot_ended("s1"), what="snapshot end")

    first, second = [c for c in fake.pushes("snapshot") if c.rows][:2]
    assert (first.status, second.status) == (503, 200)
    assert first.rows == second.rows
    # error_retry_interval is 0.05 s: only Retry-After explains a wait of a second
    assert 0.95 <= second.t - first.t < 3.0


async def test_419_on_a_push_opens_a_new_session_and_restarts_the_snapshot(root, run_pipe):
    tree = make_tree(root, dirs=4, files_per_dir=80)  # 325 rows: 4 batches

    def drop_session(call: Call):
        fake.obsolete.add(call.sid)
        return 419

    # heartbeats only every 10 s (timeout 30): the push's 419 alone must trigger the new session
    fake = FakeFusion(timeout=30.0, script={"push": [None, drop_session]})
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: fake.snapshot_ended("s2"), timeout=5.0, what="snapshot end on session 2")

    s1 = fake.pushes("snapshot", "s1")
    assert [c.status for c in s1 if c.rows][:2] == [200, 419]
    assert not fake.snapshot_ended("s1")
    assert sorted(fake.accepted_rows("snapshot", "s2")) == sorted(tree)  # a whole new walk
    assert fake.sessions == ["s1", "s2"]
    assert pipe.session_id == "s2" and pipe.role == "leader"


# -- heartbeats: roles and commands -------------------------------------------------------

async def test_heartbeat_network_errors_do_not_demote_the_leader(root, run_pipe):
    make_tree(root, dirs=1, files_per_dir=5)
    down = [httpx.ConnectError("[Errno 111] Connection refused") for _ in range(8)]
    fake = FakeFusion(audit_interval=0.1, script={"heartbeat": [None, *down]})
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: fake.snapshot_ended("s1"), what="snapshot end")

    roles = set()

    def heartbeats_back():
        roles.add(pipe.role)
        return len(fake.of("heartbeat", status=200)) >= 3

    await until(heartbeats_back, what="heartbeats answering again")
    failed = fake.of("heartbeat", status=-1)
    assert len(failed) == 8
    assert roles == {"leader"}
    # leader duties went on while fusion did not answer heartbeats
    during = [c for c in fake.of("audit_start") if failed[0].t <= c.t <= failed[-1].t]
    assert during, "no audit ran while the heartbeats failed"
    assert fake.sessions == ["s1"] and pipe.role == "leader"


async def test_heartbeat_role_follower_cancels_leader_duties(root, run_pipe):
    make_tree(root, dirs=5, files_per_dir=80)  # 406 rows: 5 batches
    fake = FakeFusion(audit_interval=0.1, gate=asyncio.Event())
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    # the snapshot batches are held in fusion: the leader is mid-snapshot
    await until(lambda: [c for c in fake.pushes("snapshot") if c.rows], what="first snapshot push")
    fake.role = "follower"
    await until(lambda: pipe.role == "follower", what="demotion")
    demoted = time.monotonic()
    fake.gate.set()
    hb = len(fake.of("heartbeat"))
    await until(lambda: len(fake.of("heartbeat")) >= hb + 5, what="five more heartbeats")

    # followers still forward realtime changes
    (root / "d0" / "after-demotion.txt").write_text("x")
    await until(lambda: "/d0/after-demotion.txt" in fake.accepted_rows("message"),
                what="realtime push as follower")

    late = [c for c in fake.pushes() if c.t > demoted and c.source_type in ("snapshot", "audit")]
    assert late == []
    assert not fake.snapshot_ended("s1")
    assert fake.of("audit_start") == []
    assert {c.status for c in fake.pushes("snapshot")} <= {None, 200}  # abandoned or done
    assert fake.sessions == ["s1"] and not pipe.snapshot_done


async def test_scan_command_pushes_on_demand_rows_then_job_complete(root, run_pipe):
    make_tree(root, dirs=2, files_per_dir=150)
    fake = FakeFusion(role="follower")  # no snapshot: only the scan pushes
    fake.commands = [{"type": "frobnicate", "path": "/d0"},  # unknown: ignored, next one runs
                     {"type": "scan", "path": "/d1", "recursive": True, "job_id": "j1",
                      "created_at": time.time()}]
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: fake.pushes("job_complete"), what="job_complete")

    pushes = fake.pushes()
    assert [c.source_type for c in pushes] == ["on_demand_job", "on_demand_job", "job_complete"]
    assert all(c.ok for c in pushes)
    rows = fake.accepted_rows("on_demand_job")
    assert sorted(rows) == sorted(["/d1"] + [f"/d1/f{i:03d}.txt" for i in range(150)])
    done = pushes[-1]
    assert done.body["events"] == [] and done.body["metadata"] == {"scan_path": "/d1", "job_id": "j1"}
    assert all(e["message_source"] == "on_demand_job" for c in pushes[:-1] for e in c.body["events"])
    assert pipe.last_error is None and fake.sessions == ["s1"]


async def test_unknown_command_is_ignored(root, run_pipe):
    fake = FakeFusion(role="follower")
    fake.commands = [{"type": "self_destruct"}, {"no_type": True}]
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: len(fake.of("heartbeat", status=200)) >= 5, what="five heartbeats")
    assert fake.sessions == ["s1"] and pipe.session_id == "s1"
    assert pipe.errors == 0 and pipe.last_error is None
    assert fake.pushes() == []
    assert pipe.state == "running" and not pipe._main.done()


# -- session create failures: backoff and recovery --------------------------------------------

async def test_session_create_failures_back_off_and_recover(root, run_pipe):
    tree = make_tree(root, dirs=1, files_per_dir=20)
    refused = [httpx.ConnectError("[Errno 111] Connection refused") for _ in range(3)]
    fake = FakeFusion(script={"create": [*refused, 401, 401]})
    pipe = await run_pipe(make_pipe(root, fake.transport()))

    states, errors = set(), set()

    def recovered():
        states.add(pipe.state)
        errors.add(pipe.last_error)
        return fake.snapshot_ended("s1")

    await until(recovered, what="recovery")
    attempts = fake.of("create")
    assert [c.status for c in attempts] == [-1, -1, -1, 401, 401, 200]
    gaps = [b.t - a.t for a, b in zip(attempts, attempts[1:], strict=False)]
    expected = [0.05, 0.1, 0.2, 0.4, 0.4]  # error_retry_interval × 2^n, capped at 0.4
    for gap, want in zip(gaps, expected, strict=True):
        assert want - 0.01 <= gap < want + 0.5, (gaps, expected)
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3]
    assert "backing off" in states
    assert any(e and "ConnectError" in e for e in errors)
    assert any(e and "401" in e for e in errors)
    assert pipe.errors == 0 and pipe.last_error is None and pipe.state == "running"
    assert not pipe._main.done()
    assert sorted(fake.accepted_rows("snapshot")) == sorted(tree)


# -- audit ---------------------------------------------------------------------------------

async def test_audit_start_batches_and_exactly_one_end(root, run_pipe):
    make_tree(root, dirs=3, files_per_dir=80)
    fake = FakeFusion(audit_interval=0.2)
    await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: len([c for c in fake.pushes("audit") if c.is_end and c.ok]) >= 2,
                what="two audits")

    seen = list(fake.calls)
    letters = "".join({"audit_start": "S", "audit_end": "X"}.get(c.kind, "")
                      or ("E" if c.is_end else "a") for c in seen
                      if c.kind in ("audit_start", "audit_end") or c.source_type == "audit")
    first_two = letters[:letters.index("E", letters.index("E") + 1) + 1]
    assert re.fullmatch(r"(Sa+E){2}", first_two), letters
    assert "X" not in letters  # the end travels once, as the is_end batch

    audits = [c for c in seen if c.source_type == "audit" or c.kind == "audit_start"]
    starts = [i for i, c in enumerate(audits) if c.kind == "audit_start"]
    full = [r for c in audits[starts[0] + 1:starts[1]] for r in c.rows]
    files = [r for r in full if not r["is_directory"]]
    assert len(files) == 240 and all(r["parent_path"] for r in files)  # the first audit is full
    ends = [c for c in audits if c.is_end]
    assert all(c.body["events"] == [] for c in ends)
    second = [r for c in audits[starts[1] + 1:] if not c.is_end for r in c.rows]
    assert second and all(r.get("audit_skipped") for r in second)  # nothing changed: silent


async def test_stop_mid_audit_with_fusion_down_returns_promptly(root, run_pipe):
    make_tree(root, dirs=3, files_per_dir=80)

    def fail_from_the_first_audit_batch(call: Call) -> None:
        if call.source_type == "audit" and call.rows:
            fake.down = True

    fake = FakeFusion(audit_interval=0.1, hook=fail_from_the_first_audit_batch)
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: len(fake.of("push", status=-1)) >= 3, what="an audit batch refused, retried")
    t = time.monotonic()
    await asyncio.wait_for(pipe.stop(), 10)
    assert time.monotonic() - t < 3.0
    assert pipe.state == "stopped"


# -- the real fusion app, in-process ----------------------------------------------------------

def tree_stats(root: Path) -> dict:
    """What the view's stats of ``/`` must say (its dir_count counts the root itself)."""
    files, dirs, size = 0, 1, 0
    for _top, dnames, fnames in os.walk(root):
        dirs += len(dnames)
        for n in fnames:
            files += 1
            size += os.lstat(os.path.join(_top, n)).st_size
    return {"file_count": files, "dir_count": dirs, "total_size": size}


def view_stats(fusion: Fusion) -> dict:
    st = fusion.views["v1"].stats("/")
    return {k: st[k] for k in ("file_count", "dir_count", "total_size")}


def in_view(fusion: Fusion, path: str) -> bool:
    from fustor.store import keys

    with fusion.views["v1"].store.read() as r:
        return r.get(keys.normalise(path)) is not None


async def test_snapshot_into_the_real_fusion_app_matches_the_tree(root, fusion, run_pipe):
    make_tree(root, dirs=6, files_per_dir=60)
    (root / "d0" / "deep" / "deeper").mkdir(parents=True)
    (root / "d0" / "deep" / "deeper" / "leaf.bin").write_bytes(b"\0" * 4096)
    want = tree_stats(root)
    assert want["file_count"] == 361
    transport = httpx.ASGITransport(app=create_app(fusion))
    pipe = await run_pipe(make_pipe(root, transport))

    # fusion records the end before its answer reaches the pipe: wait for both
    await until(lambda: fusion.sessions.snapshot_complete("v1") and pipe.snapshot_done,
                what="snapshot complete")
    assert view_stats(fusion) == want
    assert pipe.role == "leader" and pipe.rows_pushed == 361 + 8 + 1

    # the query API agrees
    async with httpx.AsyncClient(transport=transport, base_url="http://fusion",
                                 headers={"X-API-Key": QUERY_KEY}) as q:
        r = await q.get("/api/v1/views/v1/stats")
        assert r.status_code == 200
        assert {k: r.json()[k] for k in want} == want


async def test_realtime_changes_reach_the_real_fusion_view(root, fusion, run_pipe):
    make_tree(root, dirs=2, files_per_dir=50)
    transport = httpx.ASGITransport(app=create_app(fusion))
    await run_pipe(make_pipe(root, transport))
    await until(lambda: fusion.sessions.snapshot_complete("v1"), what="snapshot complete")

    (root / "d1" / "new.txt").write_bytes(b"hello")
    (root / "fresh").mkdir()
    (root / "fresh" / "inner.txt").write_bytes(b"abc")
    await until(lambda: in_view(fusion, "/d1/new.txt") and in_view(fusion, "/fresh/inner.txt"),
                what="created files in the view")
    await until(lambda: view_stats(fusion) == tree_stats(root), what="stats after creations")

    (root / "d0" / "f000.txt").unlink()
    (root / "d1" / "new.txt").unlink()
    await until(lambda: not in_view(fusion, "/d0/f000.txt") and not in_view(fusion, "/d1/new.txt"),
                what="deleted files gone from the view")
    await until(lambda: view_stats(fusion) == tree_stats(root), what="stats after deletions")
    assert view_stats(fusion)["file_count"] == 100
