import asyncio
import contextlib
import time

import httpx
import pytest
import uvicorn

from fustor.config import load_fusion_config
from fustor.fusion.app import create_app
from fustor.fusion.core import Fusion
from tests.procs import free_port

INGEST = "ingest-key-a"
INGEST_B = "ingest-key-b"
QUERY = "query-key"
ADMIN = "admin-key"

CONFIG = """
admin_keys: [{key: admin-key, name: ops}]
receivers:
  main: {driver: http, port: 18888, api_keys: [{key: ingest-key-a, pipe_id: research}, {key: ingest-key-b, pipe_id: other}]}
views:
  research: {driver: fs, api_keys: [query-key], driver_params: {hot_file_threshold: 30.0}}
  other: {driver: fs, api_keys: [other-query]}
pipes:
  research: {receiver: main, views: [research], session_timeout_seconds: 30}
  other: {receiver: main, views: [other], allow_concurrent_push: false}
"""


def make_fusion(tmp_path, text=CONFIG):
    cfg_file = tmp_path / "fusion.yaml"
    cfg_file.write_text(text)
    f = Fusion(load_fusion_config(cfg_file), tmp_path / "data")
    f.open()
    return f


@pytest.fixture
async def fusion_app(tmp_path):
    f = make_fusion(tmp_path)
    app = create_app(f)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fusion") as client:
        yield f, client
    await f.stop()


def row(path, mtime=1000.0, size=10, is_dir=False, **extra):
    return {"path": path, "file_name": path.rsplit("/", 1)[-1], "size": size, "modified_time": mtime,
            "created_time": mtime, "is_directory": is_dir, **extra}


def event(rows, source="snapshot", etype="update"):
    return {"event_type": etype, "event_schema": "fs", "table": "files",
            "fields": list(rows[0]) if rows else [], "rows": rows, "index": 1, "message_source": source}


def batch(events, source_type="snapshot", is_end=False, metadata=None):
    b = {"events": events, "source_type": source_type, "is_end": is_end}
    if metadata is not None:
        b["metadata"] = metadata
    return b


class _Server(uvicorn.Server):
    def capture_signals(self):  # pytest owns the signals
        return contextlib.nullcontext()


async def until(cond, timeout: float = 30.0, what: str = "condition"):
    """Wait (without blocking the event loop) until ``cond()`` is true, or fail at the deadline."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        last = cond()
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def live_server(fusion: Fusion, **config):
    """The real app (background loops included) behind uvicorn on 127.0.0.1, in this event
    loop; yields its base URL and stops the server and the fusion on exit."""
    port = free_port()
    server = _Server(uvicorn.Config(create_app(fusion), host="127.0.0.1", port=port,
                                    lifespan="on", log_level="warning", log_config=None,
                                    **config))
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), what="the server")
        assert server.started, task.exception()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await fusion.stop()
