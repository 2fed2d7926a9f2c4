"""A real `fustor fusion serve` on 127.0.0.1, driven over HTTP through whole sessions."""

import time

import httpx
import pytest

from tests.procs import Proc, free_port, wait_http, wait_until

KEY = "proc-ingest"
QKEY = "proc-query"
AKEY = "proc-admin"


def config(port, rport, timeout=30, cleanup=5.0):
    return f"""
host: 127.0.0.1
port: {port}
session_cleanup_interval: {cleanup}
admin_keys: [{AKEY}]
receivers:
  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {KEY}, pipe_id: v}}]}}
views:
  v: {{driver: fs, api_keys: [{QKEY}], driver_params: {{consistency: {{tombstone_ttl_seconds: 0.5}}}}}}
pipes:
  v: {{receiver: r, views: [v], session_timeout_seconds: {timeout}}}
"""


@pytest.fixture
def server(tmp_path):
    procs = []

    def start(**kw):
        port, rport = kw.pop("port", None) or free_port(), kw.pop("rport", None) or free_port()
        cfg = tmp_path / "fusion.yaml"
        cfg.write_text(config(port, rport, **kw))
        p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg)],
                 tmp_path / "home", tmp_path / f"fusion{len(procs)}.log")
        procs.append(p)
        wait_http(f"http://127.0.0.1:{port}/", p)
        wait_http(f"http://127.0.0.1:{rport}/", p)
        return p, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{rport}"

    yield start
    for p in procs:
        p.stop()


def rows_event(rows, source, etype="update"):
    return {"event_type": etype, "event_schema": "fs", "table": "files", "fields": ["path"],
            "rows": rows, "index": 1, "message_source": source}


def f(path, mtime, size=1, is_dir=False, **kw):
    return {"path": path, "size": size, "modified_time": mtime, "created_time": mtime,
            "is_directory": is_dir, **kw}


def test_full_session_snapshot_realtime_audit_sentinel_and_restart(server):
    proc, url, rurl = server()
    with httpx.Client(base_url=rurl, headers={"X-API-Key": KEY}, timeout=10) as a, \
            httpx.Client(base_url=url, headers={"X-API-Key": QKEY}, timeout=10) as q:
        _full_session(server, proc, url, rurl, a, q)


def _full_session(server, proc, url, rurl, a, q):
    s = a.post("/api/v1/pipe/session/", json={"task_id": "h1:v"}).json()
    assert s["role"] == "leader"
    sid = s["session_id"]
    push = lambda body: a.post(f"/api/v1/pipe/ingest/{sid}/events", json=body)  # noqa: E731
    old = time.time() - 3600
    snap = [f("/d", old, 4096, True), f("/d/keep.txt", old), f("/d/gone.txt", old), f("/d/sub", old, 0, True)]
    assert push({"events": [rows_event(snap, "snapshot")], "source_type": "snapshot"}).status_code == 200
    assert q.get("/api/v1/views/v/stats").status_code == 503
    push({"events": [], "source_type": "snapshot", "is_end": True})
    assert q.get("/api/v1/views/v/stats").json()["file_count"] == 2
    now = time.time()
    push({"events": [rows_event([f("/d/rt.txt", now, 5)], "realtime")], "source_type": "message"})
    assert q.get("/api/v1/views/v/stats", params={"path": "/d"}).json()["total_size"] == 7
    # audit: /d re-listed with a newer mtime, gone.txt missing -> deleted, a blind deletion
    audit = [f("/d", now, 4096, True), f("/d/keep.txt", old, parent_path="/d", parent_mtime=now),
             f("/d/rt.txt", now, 5, parent_path="/d", parent_mtime=now),
             f("/d/sub", old, 0, True, audit_skipped=True)]
    push({"events": [rows_event(audit, "audit")], "source_type": "audit"})
    push({"events": [], "source_type": "audit", "is_end": True})
    tree = q.get("/api/v1/views/v/tree", params={"path": "/d", "max_depth": 1}).json()
    assert [c["name"] for c in tree["children"]] == ["keep.txt", "rt.txt", "sub"]
    spots = q.get("/api/v1/views/v/blind-spots").json()
    assert spots["deletions"] == ["/d/gone.txt"]
    # /d was re-listed by the audit with a fresh mtime: hot, so the sentinel must re-check it
    assert a.get("/api/v1/pipe/consistency/sentinel/tasks").json()["paths"] == ["/d"]
    hb = a.post(f"/api/v1/pipe/session/{sid}/heartbeat", json={"can_realtime": True}).json()
    assert hb["status"] == "ok" and hb["role"] == "leader"
    # restart: the view answers at once from its store, sessions are gone (419 -> agents reconnect)
    assert proc.stop() == 0
    port, rport = url.rsplit(":", 1)[1], rurl.rsplit(":", 1)[1]
    _p2, url2, rurl2 = server(port=int(port), rport=int(rport))
    st = q.get("/api/v1/views/v/stats")
    assert st.status_code == 200 and st.json()["file_count"] == 2
    assert st.json()["leader_connected"] is False
    assert a.post(f"/api/v1/pipe/session/{sid}/heartbeat", json={}).status_code == 419


def test_leadership_fails_over_after_the_leader_times_out(server):
    _proc, _url, rurl = server(timeout=1, cleanup=0.2)
    with httpx.Client(base_url=rurl, headers={"X-API-Key": KEY}, timeout=10) as a:
        _failover(a)


def _failover(a):
    one = a.post("/api/v1/pipe/session/", json={"task_id": "h1:v"}).json()
    two = a.post("/api/v1/pipe/session/", json={"task_id": "h2:v"}).json()
    assert (one["role"], two["role"]) == ("leader", "follower")

    def promoted():
        return a.post(f"/api/v1/pipe/session/{two['session_id']}/heartbeat", json={}).json()["role"] == "leader"

    wait_until(promoted, timeout=10, interval=0.2, what="the follower to be promoted")
    assert a.post(f"/api/v1/pipe/session/{one['session_id']}/heartbeat", json={}).status_code == 419


def test_zero_config_serve_prints_keys_once_and_keeps_them(tmp_path):
    port = free_port()
    outputs = []
    for i in range(2):
        p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--host", "127.0.0.1",
                  "--port", str(port)], tmp_path / "home", tmp_path / f"z{i}.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/", p)
            wait_until(lambda p=p: "fusion listening" in p.output(), what="the start banner")
            wait_until(lambda p=p: p.output().rstrip().endswith(("stats", "shows them")),
                       what="the key lines")
            outputs.append(p.output())
        finally:
            assert p.stop() == 0
    keys = [[ln.split(":", 1)[1].strip() for ln in o.splitlines() if "key:" in ln] for o in outputs]
    assert len(keys[0]) == 3 and keys[1] == []  # printed by the run that made them, only
    assert "fustor agent start --watch" in outputs[0]
    assert "`fustor fusion keys` shows them" in outputs[1]
    shown = run_cli(["fusion", "keys", "--data", str(tmp_path / "data")], tmp_path / "home").stdout
    assert [ln.split(":", 1)[1].strip() for ln in shown.splitlines()] == keys[0]


def test_config_error_names_file_and_key_and_the_server_does_not_start(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("receivers: {r: {port: 8102}}\nviews: {v: {driver: fs}}\npipes: {v: {receiver: nope, views: [v]}}\n")
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "d"), "--config", str(cfg)], tmp_path / "h",
             tmp_path / "bad.log")
    code = p.p.wait(timeout=30)
    out = p.output()
    p.stop()
    assert code != 0
    assert "bad.yaml" in out and "pipes.v.receiver" in out and "Traceback" not in out


def run_cli(args, home):
    import os
    import subprocess
    import sys

    env = dict(os.environ, FUSTOR_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "fustor.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_daemon_start_status_reload_with_a_new_pipe_and_stop(tmp_path):
    home = tmp_path / "home"
    port, rport, rport2 = free_port(), free_port(), free_port()
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(config(port, rport))
    args = ["--data", str(tmp_path / "data"), "--config", str(cfg)]
    out = run_cli(["fusion", "start", "-D", *args], home)
    assert out.returncode == 0 and "PID" in out.stdout, out.stderr
    try:
        assert run_cli(["fusion", "status"], home).stdout.startswith("RUNNING")
        assert "already running" in run_cli(["fusion", "start", "-D", *args], home).stdout
        with httpx.Client(timeout=10) as c:
            wait_until(lambda: c.get(f"http://127.0.0.1:{rport}/").status_code == 200, what="receiver")
            s = c.post(f"http://127.0.0.1:{rport}/api/v1/pipe/session/", json={"task_id": "h:v"},
                       headers={"X-API-Key": KEY}).json()
            text = config(port, rport)
            text = text.replace("views:\n", f"""  r2: {{driver: http, bind_host: 127.0.0.1, port: {rport2}, api_keys: [{{key: key-w, pipe_id: w}}]}}
views:
  w: {{driver: fs, api_keys: [w-query]}}
""", 1).replace("pipes:\n", "pipes:\n  w: {receiver: r2, views: [w]}\n", 1)
            cfg.write_text("pipes: [broken\n")
            refused = run_cli(["fusion", "reload"], home)
            assert refused.returncode == 1 and "reload refused" in refused.stderr, refused
            cfg.write_text(text)
            done = run_cli(["fusion", "reload"], home)
            assert done.returncode == 0 and "Reloaded" in done.stdout, done
            assert "pipes_added: w" in done.stdout and f"receiver_ports_opened: {rport2}" in done.stdout
            wait_until(lambda: c.get(f"http://127.0.0.1:{rport2}/").status_code == 200, what="new receiver")
            w = c.post(f"http://127.0.0.1:{rport2}/api/v1/pipe/session/", json={"task_id": "h:w"},
                       headers={"X-API-Key": "key-w"})
            assert w.status_code == 200 and w.json()["role"] == "leader"
            hb = c.post(f"http://127.0.0.1:{rport}/api/v1/pipe/session/{s['session_id']}/heartbeat",
                        json={}, headers={"X-API-Key": KEY})
            assert hb.status_code == 200  # the old pipe's session survived the reload
    finally:
        stopped = run_cli(["fusion", "stop"], home)
    assert "stopped" in stopped.stdout
    assert run_cli(["fusion", "status"], home).stdout.strip() == "STOPPED"
    log = home / "logs" / "fusion.log"
    assert "fusion listening" in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"  # a log is no place for others to read
    for secret in (KEY, QKEY, AKEY, "key-w", "w-query"):
        assert secret not in log.read_text()


def test_bad_input_gets_clear_errors_and_leaves_no_traceback_or_dead_writer(server):
    proc, url, rurl = server()
    with httpx.Client(base_url=rurl, headers={"X-API-Key": KEY}, timeout=10) as a, \
            httpx.Client(base_url=url, headers={"X-API-Key": QKEY}, timeout=10) as q, \
            httpx.Client(base_url=url, headers={"X-API-Key": AKEY}, timeout=10) as adm:
        sid = a.post("/api/v1/pipe/session/", json={"task_id": "h:v"}).json()["session_id"]
        url_ev = f"/api/v1/pipe/ingest/{sid}/events"
        raw = {"content-type": "application/json"}
        answers = [
            a.post(url_ev, content=b"\xff\xfe not json", headers=raw).status_code,
            a.post(url_ev, content=b"[1, 2]", headers=raw).status_code,
            a.post(url_ev, json={"events": [{"event_type": "update"}]}).status_code,
            a.post(url_ev, json={"events": [rows_event([{"path": "/x", "size": "big"}], "snapshot")]}).status_code,
            a.post(url_ev, json={"events": [rows_event([{"path": "/a/../../etc"}, {"path": 7}], "snapshot")]}).status_code,
            a.post("/api/v1/pipe/session/", json={"task_id": ["not", "a", "string"]}).status_code,
            a.post("/api/v1/pipe/session/", json={"task_id": "x", "session_timeout_seconds": 1.5}).status_code,
            a.post("/api/v1/pipe/consistency/sentinel/feedback", json={"type": "suspect_update", "updates": 5}).status_code,
            a.post(f"/api/v1/pipe/session/{sid}/heartbeat", content=b"garbage", headers=raw).status_code,
            q.get("/api/v1/views/v/tree", params={"max_depth": -1}).status_code,
            q.get("/api/v1/views/nope/stats").status_code,  # not its view: 403, existing or not
            adm.get("/api/v1/views/nope/stats").status_code,
        ]
        assert answers == [400, 422, 422, 200, 200, 422, 422, 422, 200, 422, 403, 404]
        good = a.post(url_ev, json={"events": [rows_event([f("/ok", 1.0)], "snapshot")], "source_type": "snapshot",
                                    "is_end": True})
        assert good.status_code == 200  # the writer thread is alive and well
        assert q.get("/api/v1/views/v/stats").json()["file_count"] == 1
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


def test_serve_watch_indexes_a_directory_with_one_command(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    for i in range(30):
        (tree / "a" / f"f{i}.txt").write_text("x" * i)
    port = free_port()
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--host", "127.0.0.1", "--port", str(port),
              "--watch", str(tree)], tmp_path / "home", tmp_path / "watch.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/", p)
        key = wait_until(lambda: next((ln.split(":", 1)[1].strip() for ln in p.output().splitlines()
                                       if "query key:" in ln), None), what="the query key")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=10) as q:
            def stats():
                r = q.get("/api/v1/views/default/stats")
                return r.json() if r.status_code == 200 else None

            st = wait_until(lambda: (s := stats()) and s["file_count"] == 30 and s, timeout=30,
                            what="the snapshot of the watched tree")
            assert st["total_size"] == sum(range(30)) and st["dir_count"] == 3
            (tree / "a" / "b" / "new.bin").write_bytes(b"12345")
            wait_until(lambda: q.get("/api/v1/views/default/tree", params={"path": "/a/b/new.bin"}).status_code == 200,
                       timeout=10, what="a realtime create")
    finally:
        assert p.stop() == 0


def test_a_busy_port_is_one_clear_line_at_start_and_a_refused_reload_later(tmp_path):
    import socket

    home = tmp_path / "home"
    port, rport = free_port(), free_port()
    cfg = tmp_path / "fusion.yaml"
    cfg.write_text(config(port, rport))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", rport))
        busy.listen()
        out = run_cli(["fusion", "serve", "--data", str(tmp_path / "d0"), "--config", str(cfg)], home)
        assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout
        assert f"cannot listen on 127.0.0.1:{rport}" in out.stderr and "in use" in out.stderr
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg)], home,
             tmp_path / "fusion.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/", p)
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            text = config(port, rport).replace("views:\n", f"""  r2: {{bind_host: 127.0.0.1, port: {taken}, api_keys: [{{key: key-w, pipe_id: w}}]}}
views:
  w: {{api_keys: [w-query]}}
""", 1).replace("pipes:\n", "pipes:\n  w: {receiver: r2, views: [w]}\n", 1)
            cfg.write_text(text)
            r = httpx.post(f"http://127.0.0.1:{port}/api/v1/management/reload",
                           headers={"X-API-Key": AKEY}, timeout=10)
            assert r.status_code == 422 and f"cannot listen on 127.0.0.1:{taken}" in r.json()["detail"]
        assert p.alive()
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/views/w/stats", headers={"X-API-Key": AKEY})
        assert r.status_code == 404  # nothing of the refused config was applied
        migrate = run_cli(["migrate", str(tmp_path / "data")], home)
        assert migrate.returncode == 1 and "in use by another fusion" in migrate.stderr
        second = run_cli(["fusion", "serve", "--data", str(tmp_path / "data"), "--config", str(cfg),
                          "--port", str(free_port())], home)
        assert second.returncode == 1 and "in use by another fusion" in second.stderr
    finally:
        assert p.stop() == 0
    assert "Traceback" not in p.output()


def test_a_client_stalled_mid_request_cannot_hold_the_shutdown(server):
    """SIGTERM lets requests in flight finish, but only for a bounded time: a client that
    sent half a push and went quiet does not keep fusion (and its views) from stopping."""
    import socket

    from fustor.fusion.server import GRACEFUL_S

    proc, url, rurl = server()
    sid = httpx.post(f"{rurl}/api/v1/pipe/session/", json={"task_id": "h:v"},
                     headers={"X-API-Key": KEY}, timeout=10).json()["session_id"]
    port = int(rurl.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST /api/v1/pipe/ingest/{sid}/events HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"events\": [".encode())
        # a round trip on another connection: the server's loop has read the half request too
        assert httpx.get(f"{rurl}/", timeout=10).status_code < 500
        t = time.monotonic()
        proc.p.send_signal(15)
        code = proc.p.wait(timeout=GRACEFUL_S + 15)
        took = time.monotonic() - t
        s.settimeout(5)
        reply = s.recv(200)
        # the push was not committed, so it is never answered 200 (its agent sends it again)
        assert reply == b"" or reply.startswith((b"HTTP/1.1 5", b"HTTP/1.1 4")), reply
    assert code == 0, proc.output()[-2000:]
    assert took < GRACEFUL_S + 10, took
    assert "fusion stopped in" in proc.output()
