"""GET /metrics on fusion and on the agent console: the Prometheus text format, read back
with prometheus-client's own parser, holding the figures an operator graphs."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fustor.fusion.app import create_app
from tests.e2e import KEY, QKEY, VIEW, build_tree, fusion_yaml
from tests.fusion.conftest import ADMIN, CONFIG, INGEST, QUERY, batch, event, make_fusion, row
from tests.procs import Proc, free_port, wait_http, wait_until


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}, parsed by prometheus-client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(got: dict, name: str, **labels) -> float | None:
    return got.get((name, tuple(sorted(labels.items()))))


async def test_fusion_metrics_count_what_happened(tmp_path):
    f = make_fusion(tmp_path)
    app = create_app(f)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f") as c:
        assert (await c.get("/api/v1/views/research/stats",
                            headers={"X-API-Key": QUERY})).status_code == 503  # no snapshot yet
        who = f.principal(INGEST)
        s = await f.create_session(who, {"task_id": "lab-1:research"})
        f.heartbeat(who, s["session_id"], {})
        rows = [row(f"/d/f{i}", size=10) for i in range(40)] + [row("/x/../bad")]
        await f.push(who, s["session_id"], batch([event(rows)], is_end=True))
        for _ in range(3):
            r = await c.get("/api/v1/views/research/stats", headers={"X-API-Key": QUERY})
            assert r.status_code == 200
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"X-API-Key": QUERY})).status_code == 403
        r = await c.get("/metrics", headers={"X-API-Key": ADMIN})
    await f.stop()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    tree = {"view": "research", "member": ""}
    assert value(got, "fustor_rows_total", outcome="applied", **tree) == 40
    assert value(got, "fustor_rows_total", outcome="rejected", **tree) == 1
    assert value(got, "fustor_batches_total", **tree) == 1
    assert value(got, "fustor_commit_seconds_count", **tree) == 1
    assert value(got, "fustor_http_unavailable_total", reason="view_not_ready") == 1
    assert value(got, "fustor_view_files", **tree) == 40
    assert value(got, "fustor_view_dirs", **tree) == 2
    assert value(got, "fustor_view_bytes", **tree) == 400
    assert value(got, "fustor_view_files", view="other", member="") == 0
    assert value(got, "fustor_store_file_bytes", **tree) > 0
    assert value(got, "fustor_store_map_bytes", **tree) >= value(got, "fustor_store_file_bytes", **tree)
    assert value(got, "fustor_writer_queue_depth", **tree) == 0
    assert value(got, "fustor_name_blocks_waiting", **tree) == 0  # 40 names fill no block
    assert value(got, "fustor_view_snapshot_complete", **tree) == 1
    assert value(got, "fustor_sessions", view="research", role="leader") == 1
    assert 0 <= value(got, "fustor_agent_heartbeat_age_seconds", agent="lab-1") < 60
    route = {"method": "GET", "route": "/api/v1/views/{view_id}/stats"}
    assert value(got, "fustor_http_request_seconds_count", **route) == 4
    assert value(got, "fustor_http_requests_total", status="503", **route) == 1
    assert value(got, "fustor_http_requests_total", status="200", **route) == 3


async def test_public_metrics_answer_loopback_callers_only(tmp_path):
    f = make_fusion(tmp_path, CONFIG + "metrics: {public: true}\n")
    app = create_app(f)
    for client, status in ((("127.0.0.1", 5000), 200), (("::1", 5000), 200),
                           (("192.0.2.7", 5000), 401)):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://f") as c:
            assert (await c.get("/metrics")).status_code == status, client
            assert (await c.get("/api/v1/management/config")).status_code == 401  # only /metrics
    await f.stop()


def test_fusion_and_agent_processes_are_scraped_while_indexing(tmp_path):
    """Real processes: an agent indexes a tree into fusion; both /metrics parse and agree."""
    port, rport, cport = free_port(), free_port(), free_port()
    (tmp_path / "fusion.yaml").write_text(fusion_yaml(port, rport) + "metrics: {public: true}\n")
    tree = tmp_path / "tree"
    build_tree(tree, 300)
    (tmp_path / "agent.yaml").write_text(f"""
agent_id: scraped
console: {{port: {cport}}}
sources: [{{id: t, type: fs, config: {{uri: "{tree}"}}}}]
senders: [{{id: f, type: fusion, config: {{endpoint: "http://127.0.0.1:{rport}", credential: {KEY}}}}}]
pipes: [{{id: {VIEW}, source_id: t, sender_id: f}}]
""")
    fusion = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config",
                   str(tmp_path / "fusion.yaml")], tmp_path / "fh", tmp_path / "fusion.log")
    agent = None
    try:
        wait_http(f"http://127.0.0.1:{port}/", fusion)
        agent = Proc(["agent", "start", str(tmp_path / "agent.yaml")], tmp_path / "ah",
                     tmp_path / "agent.log")

        def indexed():
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/views/{VIEW}/stats",
                          headers={"X-API-Key": QKEY}, timeout=5)
            return r.status_code == 200 and r.json()["file_count"] == 300

        wait_until(indexed, 60, what="the tree in the view")
        got = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        tree_labels = {"view": VIEW, "member": ""}
        assert value(got, "fustor_view_files", **tree_labels) == 300
        assert value(got, "fustor_rows_total", outcome="applied", **tree_labels) >= 300
        assert value(got, "fustor_sessions", view=VIEW, role="leader") == 1

        def agent_figures():
            text = httpx.get(f"http://127.0.0.1:{cport}/metrics", timeout=5).text
            a = samples(text)
            pushed = value(a, "fustor_agent_rows_pushed_total", pipe=VIEW) or 0
            return a if pushed >= 300 else None

        a = wait_until(agent_figures, 30, what="the agent's figures")
        assert value(a, "fustor_agent_push_seconds_count", pipe=VIEW) >= 1
        assert value(a, "fustor_agent_leader", pipe=VIEW) == 1
        assert value(a, "fustor_agent_fusion_reachable", pipe=VIEW) == 1
        assert value(a, "fustor_agent_watch_limit_reached", pipe=VIEW) == 0
        assert value(a, "fustor_agent_queue_overflowed", pipe=VIEW) == 0
        assert value(a, "fustor_agent_events_dropped_total", pipe=VIEW) == 0
        assert value(a, "fustor_agent_watched_dirs", pipe=VIEW) >= 1
    finally:
        if agent is not None:
            assert agent.stop() == 0
        assert fusion.stop() == 0
