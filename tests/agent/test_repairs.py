"""The agent never loses or blocks events, and repairs what it missed: staged drains survive
a lost session, lost events are repaired by a full audit (which can delete), a batch fusion
refuses for good costs only its bad row, unreadable directories are "unknown" rather than
gone, silent directories are re-read every Nth audit, and settings it does not use are said."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import httpx

from fustor.agent.pipe import AgentPipe, PipeSettings
from fustor.agent.sender_http import FusionClient
from fustor.agent.source_fs import FsSource
from fustor.fusion.app import create_app
from tests.agent.conftest import INGEST_KEY
from tests.agent.test_pipe import (
    FakeFusion,
    in_view,
    make_pipe,
    make_tree,
    tree_stats,
    until,
    view_stats,
)


class SlowFusion(httpx.AsyncBaseTransport):
    """The real fusion app, whose realtime pushes wait while ``gate`` is clear: a fusion that
    is slow to answer, so events pile up in the agent's bounded queue."""

    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/ingest/" in request.url.path and b'"source_type":"message"' in request.content.replace(b" ", b""):
            self.held += not self.gate.is_set()
            await self.gate.wait()
        return await self.inner.handle_async_request(request)


async def test_events_lost_to_overflow_are_repaired_by_a_full_audit_that_deletes(root, fusion, run_pipe):
    make_tree(root, dirs=2, files_per_dir=150)
    slow = SlowFusion(create_app(fusion))
    source = FsSource(root, batch_rows=100, scan_workers=2, max_pending_events=5)
    client = FusionClient("http://fusion", INGEST_KEY, timeout=30.0, transport=slow)
    pipe = AgentPipe("p1", "agent-1:p1", source, client,
                     PipeSettings(batch_size=100, audit_interval_sec=0.0, sentinel_interval_sec=0.0,
                                  error_retry_interval=0.05, max_backoff_seconds=0.4),
                     source_uri=str(root))
    await run_pipe(pipe)
    await until(lambda: fusion.sessions.snapshot_complete("v1"), what="snapshot complete")
    assert view_stats(fusion)["file_count"] == 300
    slow.gate.clear()
    (root / "d0" / "first.txt").write_text("x")  # its push waits at the gate
    await until(lambda: slow.held, what="a realtime push held by the slow fusion")
    # meanwhile: far more events than the queue (5) and the next push (100) hold together
    for i in range(150):
        (root / "d1" / f"f{i:03d}.txt").unlink()
    await until(lambda: source.status.get("overflowed"), what="the queue overflowing")
    slow.gate.set()
    await until(lambda: view_stats(fusion) == tree_stats(root), timeout=30,
                what="the view to lose the deleted files")
    assert not in_view(fusion, "/d1/f149.txt") and in_view(fusion, "/d0/first.txt")
    # what the overflow lost, the audit found (the few events queued before it came by realtime)
    assert fusion.views["v1"].stats("/")["blind_spot_deletions"] >= 30


async def test_a_batch_refused_for_good_costs_only_its_bad_row(root, run_pipe):
    def refuse_bad(call):
        rows = [r for e in call.body.get("events", []) for r in e.get("rows", [])]
        if any(r.get("path") == "/bad" for r in rows):
            return httpx.Response(422, json={"detail": "events.0.rows: nope", "code": "invalid_payload"})
        return None

    fake = FakeFusion(script={"push": [refuse_bad] * 200})
    pipe = await run_pipe(make_pipe(root, fake.transport()))
    await until(lambda: fake.snapshot_ended("s1"), what="snapshot end")
    for name in ("a", "bad", "c"):
        (root / name).write_text(name)
    await until(lambda: {"/a", "/c"} <= set(fake.accepted_rows("message")), what="a and c pushed")
    assert "/bad" not in fake.accepted_rows("message")
    await until(lambda: pipe.rows_dropped >= 1, what="the bad row dropped")
    (root / "later").write_text("z")  # nothing is stuck behind it
    await until(lambda: "/later" in fake.accepted_rows("message"), what="a later event")
    st = pipe.agent_status()
    assert st["rows_dropped"] >= 1 and "/bad" in st["last_rejected"]


async def test_a_drain_cut_off_by_a_lost_session_keeps_its_events(root):
    class SlowSource:
        status: dict = {}

        def __init__(self) -> None:
            self.release = threading.Event()

        def drain(self, n, timeout):
            self.release.wait(5)  # still draining when the session ends
            return [{"event_type": "update", "rows": [{"path": "/x"}], "seq": 1}]

    src = SlowSource()
    pipe = AgentPipe("p", "a:p", src, FusionClient("http://f", "k", transport=httpx.MockTransport(
        lambda r: httpx.Response(500))), PipeSettings())
    waiting = asyncio.create_task(asyncio.to_thread(pipe._drain_to_stage))
    await asyncio.sleep(0.05)
    waiting.cancel()  # the realtime task of the ended session is cancelled mid-drain
    src.release.set()
    await until(lambda: pipe._staged, what="the drained events staged")
    assert [e["rows"][0]["path"] for e in pipe._take_staged()] == ["/x"]  # the next session has them
    await pipe.client.aclose()


async def test_an_unreadable_directory_is_unknown_to_an_audit_not_gone(root, fusion, run_pipe, monkeypatch):
    make_tree(root, dirs=3, files_per_dir=10)
    transport = httpx.ASGITransport(app=create_app(fusion))
    pipe = await run_pipe(make_pipe(root, transport))
    await until(lambda: fusion.sessions.snapshot_complete("v1") and pipe.snapshot_done, what="snapshot")
    import fustor.agent.scanner as scanner

    real_lstat = os.lstat
    flaky = str(root / "d1")

    def lstat(path, *a, **kw):  # root can read anything: the EACCES of an NFS hiccup is simulated
        if os.fspath(path) == flaky:
            raise PermissionError(13, "Permission denied", flaky)
        return real_lstat(path, *a, **kw)

    monkeypatch.setattr(scanner.os, "lstat", lstat)
    import shutil

    shutil.rmtree(root / "d2")  # really gone: the audit must still delete this one
    pipe.snapshot_done = True
    await pipe._audit(full=True)
    await until(lambda: not in_view(fusion, "/d2"), what="the deleted directory gone")
    assert in_view(fusion, "/d1") and in_view(fusion, "/d1/f009.txt")  # unknown: kept
    assert view_stats(fusion)["file_count"] == 20


async def test_every_nth_audit_re_reads_silent_directories(root, run_pipe):
    make_tree(root, dirs=1, files_per_dir=3)
    fake = FakeFusion()
    pipe = await run_pipe(make_pipe(root, fake.transport(), full_audit_every=3))
    await until(lambda: fake.snapshot_ended("s1"), what="snapshot end")
    rows_per_audit = []
    for _ in range(3):
        before = len(fake.pushes("audit"))
        await pipe._audit()
        rows_per_audit.append({r for c in fake.pushes("audit")[before:] for r in
                               (row["path"] for e in c.body["events"] for row in e["rows"])})
    first, incremental, full = rows_per_audit
    assert "/d0/f000.txt" in first and "/d0/f000.txt" not in incremental  # d0 silent: files skipped
    assert "/d0/f000.txt" in full  # the 3rd audit re-reads everything


async def test_errors_in_a_row_are_said_loudly_and_unused_settings_are_listed(root, run_pipe, caplog, tmp_path):
    fake = FakeFusion(script={"create": [500] * 50})
    caplog.set_level(logging.CRITICAL, logger="fustor.agent")
    pipe = await run_pipe(make_pipe(root, fake.transport(), max_consecutive_errors=3,
                                    max_backoff_seconds=0.05))
    await until(lambda: pipe.errors >= 4, what="four failed session attempts")
    assert pipe.state == "error"
    crit = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(crit) == 1 and "3 errors in a row" in crit[0].getMessage()
    from click.testing import CliRunner

    from fustor.cli import main

    cfg = tmp_path / "a.yaml"
    cfg.write_text(f"""
sources: {{s: {{driver: fs, uri: "{root}"}}}}
senders: {{f: {{driver: fusion, uri: "http://127.0.0.1:1", credential: {{key: k}}, max_retries: 3}}}}
pipes: {{p: {{source: s, sender: f, fields_mapping: [{{to: path, source: [path]}}]}}}}
logging: {{level: INFO, format: "%(levelname)s|%(message)s", dir: {tmp_path / "logs"}}}
""")
    out = CliRunner().invoke(main, ["agent", "validate", str(cfg)])
    assert out.exit_code == 0
    assert "ignored (accepted, not used by this agent)" in out.output
    assert "pipes.p.fields_mapping" in out.output and "senders.f.max_retries" in out.output
