"""Fixtures for the fs source: real temp trees, real watchdog, every observer stopped."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import pytest

from fustor.agent.pipe import AgentPipe
from fustor.agent.source_fs import FsSource
from fustor.config import load_fusion_config
from fustor.fusion.core import Fusion
from tests.e2e import Cluster

# these modules drive the Linux inotify backend; other platforms run the agent on watchdog
# and are covered by the rest of the suite
if sys.platform != "linux":
    collect_ignore = ["test_deep_tree.py", "test_moves.py", "test_repair_scope.py",
                      "test_watch_scale.py"]

INGEST_KEY = "pipe-test-ingest"
QUERY_KEY = "pipe-test-query"


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def cluster(tmp_path):
    """A fusion and agents as real processes (tests/e2e.py), all stopped afterwards."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def make_source():
    made: list[FsSource] = []

    def make(root, **kw) -> FsSource:
        src = FsSource(root, **kw)
        made.append(src)
        return src

    yield make
    for src in made:
        src.stop_watch()


def collect(src: FsSource, done: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
    """Drain realtime events until ``done(events so far)`` holds, or fail at the deadline."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.extend(src.drain(max_events=1000, timeout=0.05))
        if done(got):
            return got
    raise AssertionError(f"condition not met in {timeout}s; events: {got[-20:]!r}")


def rows_of(events: list[dict], event_type: str | None = None) -> list[dict]:
    return [e["rows"][0] for e in events if event_type in (None, e["event_type"])]


def has_update(path: str, **fields) -> Callable[[list[dict]], bool]:
    def check(events):
        return any(
            r["path"] == path and all(r.get(k) == v for k, v in fields.items())
            for r in rows_of(events, "update")
        )
    return check


@pytest.fixture
async def run_pipe():
    """Start pipes (in-process AgentPipe objects); every one is stopped at teardown, whatever the test did."""
    started: list[AgentPipe] = []

    async def run(pipe: AgentPipe) -> AgentPipe:
        started.append(pipe)
        await pipe.start()
        return pipe

    yield run
    for p in started:
        await asyncio.wait_for(p.stop(), 15)



FUSION_YAML = f"""
receivers:
  main: {{driver: http, port: 18999, api_keys: [{{key: {INGEST_KEY}, pipe_id: p1}}]}}
views:
  v1: {{driver: fs, api_keys: [{QUERY_KEY}], driver_params: {{max_tree_items: 0}}}}
pipes:
  p1: {{receiver: main, views: [v1], session_timeout_seconds: 3, audit_interval_sec: 0,
        sentinel_interval_sec: 0}}
"""


@pytest.fixture
async def fusion(tmp_path):
    """A real fusion (no HTTP) with view v1 fed by pipe p1; pair it with ASGITransport."""
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(FUSION_YAML)
    f = Fusion(load_fusion_config(cfg), tmp_path / "data")
    f.open()
    try:
        yield f
    finally:
        await f.stop()
