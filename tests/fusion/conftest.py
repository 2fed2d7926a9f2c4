import httpx
import pytest

from fustor.config import load_fusion_config
from fustor.fusion.app import create_app
from fustor.fusion.core import Fusion

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
