"""A pipe into the real fusion app (in-process, ASGI) at the seams this issue changed:
lost realtime events repaired by an audit of only the directories concerned (the whole
tree when the kernel cannot say where), and realtime coverage and phase changes
reaching fusion's view stats within seconds rather than at the next heartbeat."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from fustor.agent.pipe import AgentPipe, PipeSettings
from fustor.agent.sender_http import FusionClient
from fustor.agent.source_fs import FsSource
from fustor.config import load_fusion_config
from fustor.fusion.app import create_app
from fustor.fusion.core import Fusion
from tests.agent.conftest import FUSION_YAML, INGEST_KEY, QUERY_KEY
from tests.agent.test_pipe import in_view, make_tree, tree_stats, until, view_stats


class CountingFusion(httpx.AsyncBaseTransport):
    """The real fusion app; counts the audit rows pushed, and holds realtime pushes while
    ``gate`` is clear (a slow fusion: events pile up in the agent's bounded queue)."""

    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0
        self.audit_rows = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content.replace(b" ", b"")
        if "/ingest/" in request.url.path:
            if b'"source_type":"message"' in body:
                self.held += not self.gate.is_set()
                await self.gate.wait()
            elif b'"source_type":"audit"' in body:
                self.audit_rows += body.count(b'"path":')
        return await self.inner.handle_async_request(request)


def pipe_for(root: Path, transport, **source_kw) -> AgentPipe:
    source = FsSource(root, batch_rows=100, scan_workers=2, backend="inotify", **source_kw)
    client = FusionClient("http://fusion", INGEST_KEY, timeout=30.0, transport=transport)
    return AgentPipe("p1", "agent-1:p1", source, client,
                     PipeSettings(batch_size=100, audit_interval_sec=0.0, sentinel_interval_sec=0.0,
                                  error_retry_interval=0.05, max_backoff_seconds=0.4),
                     source_uri=str(root))


async def test_lost_events_are_repaired_by_an_audit_of_their_directory(root, fusion, run_pipe):
    make_tree(root, dirs=20, files_per_dir=50)  # 1,000 files; the repair must read ~50
    for i in range(150):
        (root / "d7" / f"g{i:03d}.txt").write_bytes(b"g")
    slow = CountingFusion(create_app(fusion))
    pipe = await run_pipe(pipe_for(root, slow, max_pending_events=5))
    await until(lambda: fusion.sessions.snapshot_complete("v1") and pipe.snapshot_done,
                what="snapshot complete")
    assert slow.audit_rows == 0
    slow.gate.clear()
    (root / "d0" / "first.txt").write_text("x")  # its push waits at the gate
    await until(lambda: slow.held, what="a realtime push held by the slow fusion")
    # far more events than the queue (5) and the next push (100) hold, all in one directory
    for i in range(150):
        (root / "d7" / f"g{i:03d}.txt").unlink()
    await until(lambda: pipe.source.status["overflowed"], what="the queue overflowing")
    slow.gate.set()
    await until(lambda: view_stats(fusion) == tree_stats(root), timeout=30,
                what="the view to lose the deleted files")
    assert not in_view(fusion, "/d7/g149.txt") and in_view(fusion, "/d7/f049.txt")
    assert fusion.views["v1"].stats("/")["blind_spot_deletions"] >= 30  # the audit's work
    assert 0 < slow.audit_rows <= 51 + 20, slow.audit_rows  # /d7 listed, not 1,170 rows


async def test_a_kernel_queue_overflow_is_repaired_by_a_full_audit(root, fusion, run_pipe):
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    if not os.access(knob, os.W_OK):
        pytest.fail("needs root (to make a small kernel queue): run the tests as root, as CI does")
    make_tree(root, dirs=4, files_per_dir=25)
    counting = CountingFusion(create_app(fusion))
    pipe = pipe_for(root, counting)
    old = knob.read_text()
    knob.write_text("4")
    try:  # the size is taken when the pipe's watcher creates its instance; restored at once
        await run_pipe(pipe)
    finally:
        knob.write_text(old)
    await until(lambda: fusion.sessions.snapshot_complete("v1") and pipe.snapshot_done,
                what="snapshot complete")
    n = 0
    deadline = time.monotonic() + 10
    while not pipe.source.status["last_overflow_at"] and time.monotonic() < deadline:
        for _ in range(200):
            (root / "d1" / f"burst{n:05d}").write_bytes(b"y")
            n += 1
        await asyncio.sleep(0)
    assert pipe.source.status["last_overflow_at"], "the kernel queue never overflowed"
    await until(lambda: counting.audit_rows >= 100 + 5, timeout=30,
                what="an audit of the whole tree (where the kernel lost events is unknown)")
    await until(lambda: view_stats(fusion) == tree_stats(root), timeout=30, what="the view repaired")


ADMIN_KEY = "pipe-test-admin"
FUSION_SLOW_HEARTBEATS = f"admin_keys: [{ADMIN_KEY}]\n" + FUSION_YAML.replace(
    "session_timeout_seconds: 3", "session_timeout_seconds: 30")


@pytest.fixture
async def fusion_30s(tmp_path):
    """A fusion whose sessions last 30 s: the agent heartbeats every 10 s on its own."""
    cfg = tmp_path / "fusion-30s.yaml"
    cfg.write_text(FUSION_SLOW_HEARTBEATS)
    f = Fusion(load_fusion_config(cfg), tmp_path / "data-30s")
    f.open()
    try:
        yield f
    finally:
        await f.stop()


async def test_phase_and_realtime_coverage_reach_the_view_stats_within_seconds(
        root, fusion_30s, run_pipe):
    fusion = fusion_30s
    make_tree(root, dirs=12, files_per_dir=5)
    app = create_app(fusion)
    pipe = await run_pipe(pipe_for(root, httpx.ASGITransport(app=app), max_pending_events=3))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f",
                                 headers={"X-API-Key": QUERY_KEY}) as q:
        async def stats() -> dict:
            r = await q.get("/api/v1/views/v1/stats")
            return r.json() if r.status_code == 200 else {}

        await until(lambda: pipe.snapshot_done, what="snapshot done")
        t_done = time.monotonic()

        def status_of_session() -> dict:
            [s] = fusion.sessions.sessions.values()
            return s.agent_status or {}

        await until(lambda: status_of_session().get("phase") == "realtime", timeout=3,
                    what="fusion to hear that the snapshot is over (not in 10 s)")
        got = {}
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got = await stats()
            if got.get("realtime_coverage") == "full":
                break
            await asyncio.sleep(0.02)
        assert got.get("realtime_coverage") == "full", got
        assert got["watched_dirs"] == 13 and got["unwatched_dirs"] == 0
        assert got["watch_limit_reached"] is False and got["last_overflow_at"] is None
        assert time.monotonic() - t_done < 3

        for i in range(10):  # more events than the agent's queue of 3 holds
            (root / "d3" / f"new{i}").write_bytes(b"z")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got = await stats()
            if got.get("last_overflow_at"):
                break
            await asyncio.sleep(0.02)
        assert got.get("last_overflow_at"), got
        board = await q.get("/api/v1/management/dashboard", headers={"X-API-Key": ADMIN_KEY})
        assert board.status_code == 200, board.text
        [view] = board.json()["views"]
        assert view["realtime_coverage"] == "full" and view["last_overflow_at"]
        assert view["watched_dirs"] == 13
