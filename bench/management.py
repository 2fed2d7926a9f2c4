"""Benchmark of the management dashboard under a live fleet: a real `fustor fusion serve`,
N simulated agents heartbeating once a second with a full ``agent_status``, and an operator
polling ``GET /api/v1/management/dashboard``.

    python bench/management.py --agents 50 --views 50 [--seconds 20] [--json]

Fusion gets one admin key, one receiver whose api_keys hold one ingest key per pipe, ``--views``
fs views and one pipe per view (pipe i feeds view i). Agent j opens a session on pipe
``j % views``, pushes one small snapshot (``--rows`` files, ``is_end``), then heartbeats once a
second with the status a current agent sends (watch state, last command results). Each agent
gets two ``report_status`` commands: one before the measurement, one during it (as an operator
clicking while the page polls); the simulated agent reports them done on its next heartbeat.

Measured over ``--seconds`` while heartbeats run: the dashboard's latency (``--rate`` calls a
second, each checked to answer 200 and list every agent and view), its size, heartbeat
latency and errors, and fusion's RssAnon at the end. The fleet runs in child processes (one
per 100 agents, each agent with its own connection) so that the client's own load does not
pass for dashboard latency; CPU of fusion, fleet and reader over the window is printed so a
client-bound run is recognisable. Prints figures; asserts nothing. Traffic goes to 127.0.0.1
only; fusion and the fleet processes are stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Proc, cpu_seconds, free_port, memory, pct, start_fusion, wait_up  # noqa: E402

ADMIN_KEY = "bench-admin-key"
TARGET_P99_MS = 50.0
HEARTBEAT_S = 1.0


def ingest_key(i: int) -> str:
    return f"bench-ingest-{i}"


def write_config(path: Path, views: int, rport: int) -> None:
    cfg = {
        "admin_keys": [{"key": ADMIN_KEY, "name": "bench"}],
        "receivers": {"r": {"driver": "http", "bind_host": "127.0.0.1", "port": rport,
                            "api_keys": [{"key": ingest_key(i), "pipe_id": f"p{i}"}
                                         for i in range(views)]}},
        "views": {f"v{i}": {"driver": "fs", "api_keys": [f"bench-query-{i}"]}
                  for i in range(views)},
        "pipes": {f"p{i}": {"receiver": "r", "views": [f"v{i}"], "session_timeout_seconds": 60}
                  for i in range(views)},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def fusion(work: Path, cfg: Path, port: int) -> Proc:
    """Fusion on ``port``, its home, data and log (``fusion.log``) in ``work``."""
    return start_fusion(work / "data", cfg, work / "home", work / "fusion.log",
                        "--host", "127.0.0.1", "--port", str(port),
                        env={"FUSTOR_PID_FILE": "0"})


def log_errors(work: Path) -> tuple[int, str | None]:
    """Tracebacks in fusion's log, and the last exception line (what a bad answer hid)."""
    try:
        lines = (work / "fusion.log").read_text(errors="replace").splitlines()
    except OSError:
        return 0, None
    tb = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    last = next((line for line in reversed(lines) if line and not line[0].isspace()
                 and "Error" in line.split(":", 1)[0]), None) if tb else None
    return len(tb), last


class SimAgent:
    """One agent with one pipe: its session, counters and the last command results it reports."""

    def __init__(self, j: int, views: int, client: httpx.AsyncClient) -> None:
        self.agent_id = f"bench-agent-{j}"
        self.client = client  # its own connection, as a real agent has (one shared pool of
        # hundreds of connections costs httpcore O(connections) per request)
        self.pipe = f"p{j % views}"
        self.key = ingest_key(j % views)
        self.sid = ""
        self.role = "follower"
        self.started = time.time()
        self.rows_pushed = 0
        now = round(time.time(), 3)
        # older results fusion no longer knows (it ignores them), as a long-running agent has
        self.results: deque[dict] = deque(
            ({"command_id": f"old{j}x{k}", "type": "report_status", "state": "done",
              "detail": "status reported", "at": now - 600 + k} for k in range(5)), maxlen=5)

    def status(self) -> dict:
        return {"agent_id": self.agent_id, "pipe_id": self.pipe, "host": f"host-{self.agent_id}",
                "version": "0.2.0", "uptime_seconds": round(time.time() - self.started, 1),
                "state": "RUNNING", "phase": "realtime", "role": self.role,
                "events_pushed": 1, "rows_pushed": self.rows_pushed, "rows_per_s": 0,
                "lag_s": 0.4, "last_error": None, "last_upgrade": None, "is_realtime_ready": True,
                "watch": {"watching": True, "watched_dirs": 12, "watch_limit_reached": False,
                          "overflowed": False, "unreadable": 0, "scan_errors": 0,
                          "events_dropped": 0},
                "commands": list(self.results), "fusion_url": "http://127.0.0.1",
                "fusion_reachable": True}

    def snapshot(self, rows: int) -> bytes:
        base = f"/{self.agent_id}"
        part = [{"path": base, "size": 4096, "modified_time": 1.0, "created_time": 1.0,
                 "is_directory": True}]
        part += [{"path": f"{base}/f{i}", "size": 10, "modified_time": 1.0, "created_time": 1.0,
                  "is_directory": False} for i in range(rows)]
        self.rows_pushed = len(part)
        return orjson.dumps({"events": [{"event_type": "update", "event_schema": "fs",
                                         "table": "files", "fields": list(part[0]), "rows": part,
                                         "index": 1, "message_source": "snapshot"}],
                             "source_type": "snapshot", "is_end": True})


async def post_retrying(c: httpx.AsyncClient, url: str, tries: int = 50, **kw) -> httpx.Response:
    """POST, waiting out 429/503 (fusion's backpressure) a bounded number of times."""
    for _ in range(tries):
        r = await c.post(url, **kw)
        if r.status_code not in (429, 503):
            r.raise_for_status()
            return r
        await asyncio.sleep(min(2.0, float(r.headers.get("retry-after", "0.2"))))
    raise SystemExit(f"{url}: still {r.status_code} after {tries} tries")


async def setup(fleet: list[SimAgent], rows: int) -> None:
    sem = asyncio.Semaphore(16)

    async def one(a: SimAgent) -> None:
        async with sem:
            r = await post_retrying(a.client, "/api/v1/pipe/session/",
                                    headers={"X-API-Key": a.key},
                                    json={"task_id": f"{a.agent_id}:{a.pipe}"})
            a.sid, a.role = r.json()["session_id"], r.json()["role"]
            await post_retrying(a.client, f"/api/v1/pipe/ingest/{a.sid}/events",
                                content=a.snapshot(rows),
                                headers={"X-API-Key": a.key, "content-type": "application/json"})

    await asyncio.gather(*(one(a) for a in fleet))


async def heartbeat(a: SimAgent, lat: list[float], errors: list[str]) -> None:
    t = time.perf_counter()
    try:
        r = await a.client.post(
            f"/api/v1/pipe/session/{a.sid}/heartbeat", headers={"X-API-Key": a.key},
            content=orjson.dumps({"can_realtime": True, "agent_status": a.status()}))
    except httpx.HTTPError as exc:
        errors.append(f"{a.agent_id}: {exc!r}")
        return
    lat.append(time.perf_counter() - t)
    if r.status_code != 200:
        errors.append(f"{a.agent_id}: {r.status_code} {r.text[:200]}")
        return
    body = r.json()
    a.role = body.get("role", a.role)
    for cmd in body.get("commands") or []:  # done at once; reported on the next heartbeat
        a.results.append({"command_id": cmd.get("command_id"), "type": cmd.get("type"),
                          "state": "done", "detail": "status reported",
                          "at": round(time.time(), 3)})


async def heartbeats(a: SimAgent, offset: float, until: float, lat, errors) -> None:
    """Once a second, staggered by ``offset``; a late beat is skipped, never made up in a burst."""
    start = time.monotonic() + offset
    for k in range(int((until - start) / HEARTBEAT_S) + 2):
        at = start + k * HEARTBEAT_S
        if at >= until:
            return
        now = time.monotonic()
        if at < now - HEARTBEAT_S / 2:
            continue
        await asyncio.sleep(max(0.0, at - now))
        await heartbeat(a, lat, errors)


async def command(ac: httpx.AsyncClient, agent_id: str, errors: list[str],
                  lat: list[float] | None = None) -> None:
    t = time.perf_counter()
    r = await ac.post(f"/api/v1/management/agents/{agent_id}/command", json={"type": "report_status"})
    if lat is not None:
        lat.append(time.perf_counter() - t)
    if r.status_code != 200:
        errors.append(f"command {agent_id}: {r.status_code} {r.text[:200]}")


async def commands_during(ac, agent_ids: list[str], seconds: float, errors: list[str],
                          lat: list[float]) -> None:
    """One per agent, spread over the first half of the window on a fixed schedule (not one
    after the other, so slow answers do not push the last ones past the heartbeats that would
    deliver them)."""
    gap = seconds / 2 / max(1, len(agent_ids))
    t0 = time.monotonic()
    sent = []
    for i, agent_id in enumerate(agent_ids):
        await asyncio.sleep(max(0.0, t0 + i * gap - time.monotonic()))
        sent.append(asyncio.create_task(command(ac, agent_id, errors, lat)))
    await asyncio.gather(*sent)


async def read_dashboard(ac: httpx.AsyncClient, calls: int, rate: float, agents: set[str],
                         views: set[str], out: dict) -> None:
    lat: list[float] = []
    bad: list[str] = []
    t0 = time.monotonic()
    last = None
    for n in range(calls):
        await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        t = time.perf_counter()
        try:
            r = await ac.get("/api/v1/management/dashboard")
        except httpx.HTTPError as exc:
            bad.append(repr(exc))
            continue
        lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            bad.append(f"{r.status_code} {r.text[:200]}")
            continue
        last = r
        d = orjson.loads(r.content)
        seen_a = {x["agent_id"] for x in d["agents"]}
        seen_v = {x["view_id"] for x in d["views"]}
        if not (agents <= seen_a and views <= seen_v):
            bad.append(f"incomplete: {len(agents & seen_a)}/{len(agents)} agents, "
                       f"{len(views & seen_v)}/{len(views)} views")
    out["dashboard_calls"] = len(lat)
    out["dashboard_p50_ms"] = pct(lat, 0.50, 2)
    out["dashboard_p99_ms"] = pct(lat, 0.99, 2)
    out["dashboard_max_ms"] = round(max(lat) * 1000, 2) if lat else None
    out["dashboard_errors"] = len(bad)
    out["dashboard_first_errors"] = bad[:3]
    if last is not None:
        d = orjson.loads(last.content)
        out["dashboard_bytes"] = len(last.content)
        out["agents_listed"] = len(d["agents"])
        out["views_listed"] = len(d["views"])
        out["files_listed"] = sum(v.get("file_count", 0) for v in d["views"])


def fleet_proc(conn, agents: list[int], views: int, rows: int, rurl: str) -> None:
    """A child process running ``agents``: setup and one heartbeat each, "ready", then
    heartbeats until the deadline main sends, then its figures. The fleet runs apart from
    the dashboard reader so that a busy client loop does not show up as dashboard latency."""
    asyncio.run(_fleet(conn, agents, views, rows, rurl))


async def _fleet(conn, agents: list[int], views: int, rows: int, rurl: str) -> None:
    lat: list[float] = []
    errors: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        fleet = [SimAgent(j, views, await stack.enter_async_context(
            httpx.AsyncClient(base_url=rurl, timeout=30))) for j in agents]
        t = time.perf_counter()
        await setup(fleet, rows)
        await asyncio.gather(*(heartbeat(a, [], errors) for a in fleet))  # statuses in
        conn.send(("ready", time.perf_counter() - t))
        try:
            if not await asyncio.to_thread(conn.poll, 120):
                return
            until = conn.recv()  # CLOCK_MONOTONIC: the same clock in every process
        except EOFError:  # main gave up (its error is what to read)
            return
        cpu = time.process_time()
        step = HEARTBEAT_S / len(agents)
        await asyncio.gather(*(heartbeats(a, step * i, until, lat, errors)
                               for i, a in enumerate(fleet)))
        conn.send(("done", lat, errors, time.process_time() - cpu))


def start_fleet(args, rurl: str) -> list[tuple]:
    ctx = mp.get_context("spawn")
    procs = []
    for k in range(args.agent_procs):
        mine = list(range(k, args.agents, args.agent_procs))
        if not mine:
            continue
        parent, child = ctx.Pipe()
        p = ctx.Process(target=fleet_proc, args=(child, mine, args.views, args.rows, rurl),
                        daemon=True)
        p.start()
        procs.append((p, parent))
    return procs


def stop_fleet(fleet: list[tuple]) -> None:
    for p, conn in fleet:
        conn.close()  # a child still waiting for its deadline sees EOF and ends
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=10)


def recv(conn, timeout: float, what: str):
    try:
        if conn.poll(timeout):
            return conn.recv()
    except EOFError:
        raise SystemExit(f"a fleet process ended before sending its {what} (its error is "
                         "above)") from None
    raise SystemExit(f"a fleet process sent no {what} within {timeout:.0f} s")


async def measure(args, url: str, fusion_pid: int, fleet: list[tuple]) -> dict:
    out: dict = {"agents": args.agents, "views": args.views, "seconds": args.seconds}
    agent_ids = [f"bench-agent-{j}" for j in range(args.agents)]
    admin = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as ac, \
            httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as reader:
        ready = [await asyncio.to_thread(recv, c, 300, "ready") for _, c in fleet]
        out["setup_s"] = round(max(r[1] for r in ready), 2)
        cmd_err: list[str] = []
        await asyncio.gather(*(command(ac, a, cmd_err) for a in agent_ids))
        (await reader.get("/api/v1/management/dashboard")).raise_for_status()  # warm, unmeasured
        until = time.monotonic() + args.seconds
        cpu0, cpu_self0, t0 = cpu_seconds(fusion_pid), time.process_time(), time.monotonic()
        for _, c in fleet:
            c.send(until)
        cmd_lat: list[float] = []
        queue = asyncio.create_task(commands_during(ac, agent_ids, args.seconds, cmd_err, cmd_lat))
        await read_dashboard(reader, int(args.seconds * args.rate), args.rate, set(agent_ids),
                             {f"v{i}" for i in range(args.views)}, out)
        await asyncio.wait_for(queue, timeout=args.seconds + 60)
        done = [await asyncio.to_thread(recv, c, args.seconds + 60, "figures") for _, c in fleet]
        wall = time.monotonic() - t0
        out["fusion_cpu_pct"] = round(100 * (cpu_seconds(fusion_pid) - cpu0) / wall)
        out["reader_cpu_pct"] = round(100 * (time.process_time() - cpu_self0) / wall)
        out["fleet_cpu_pct"] = round(100 * sum(d[3] for d in done) / wall)
        hb_lat = [x for d in done for x in d[1]]
        hb_err = [x for d in done for x in d[2]]
        out["heartbeats"] = len(hb_lat)
        out["heartbeats_expected"] = int(args.agents * args.seconds / HEARTBEAT_S)
        out["heartbeat_p50_ms"] = pct(hb_lat, 0.50, 2)
        out["heartbeat_p99_ms"] = pct(hb_lat, 0.99, 2)
        out["heartbeat_errors"] = len(hb_err)
        out["heartbeat_first_errors"] = hb_err[:3]
        out["command_p99_ms"] = pct(cmd_lat, 0.99, 2)
        out["command_errors"] = len(cmd_err)
        out["command_first_errors"] = cmd_err[:3]
        d = (await reader.get("/api/v1/management/dashboard")).json()
        ours = [c for a in d["agents"] for c in a["commands"] if c["type"] == "report_status"]
        out["commands_queued"] = len(ours)
        out["commands_done"] = sum(c["state"] == "done" for c in ours)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--views", type=int, default=50, help="fs views, one pipe each")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window")
    ap.add_argument("--rate", type=float, default=10.0, help="dashboard calls a second")
    ap.add_argument("--rows", type=int, default=200, help="snapshot files per agent")
    ap.add_argument("--agent-procs", type=int, default=0,
                    help="processes simulating the fleet (default: one per 100 agents)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.agent_procs = args.agent_procs or -(-args.agents // 100)
    if args.agents < 1 or args.views < 1 or args.seconds <= 0 or args.rate <= 0:
        ap.error("--agents, --views, --seconds and --rate must be positive")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    work = Path(tempfile.mkdtemp(prefix="fustor-management-"))
    port, rport = free_port(), free_port()
    cfg = work / "fusion.yaml"
    write_config(cfg, args.views, rport)
    url, rurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{rport}"
    proc = fusion(work, cfg, port)
    fleet: list[tuple] = []
    try:
        wait_up(url + "/", proc)
        wait_up(rurl + "/", proc)
        say(f"{args.agents} agents on {args.views} views: sessions and snapshots of {args.rows} "
            f"files each, then heartbeats 1/s and {args.rate:g} dashboard calls/s for "
            f"{args.seconds:g} s ...")
        fleet = start_fleet(args, rurl)
        out = asyncio.run(measure(args, url, proc.pid, fleet))
        proc.check()
        out["rss_anon_mb"] = memory(proc.pid)["RssAnon"]
        out["fusion_tracebacks"], out["fusion_last_exception"] = log_errors(work)
        ok = out["dashboard_p99_ms"] is not None and out["dashboard_p99_ms"] < TARGET_P99_MS
        out["dashboard_p99_target_met"] = ok
        say(f"dashboard ({out.get('dashboard_bytes', 0):,} bytes, {out.get('agents_listed')} agents, "
            f"{out.get('views_listed')} views): p50 {out['dashboard_p50_ms']} ms, "
            f"p99 {out['dashboard_p99_ms']} ms (target < {TARGET_P99_MS:g} ms: "
            f"{'met' if ok else 'MISSED'}), max {out['dashboard_max_ms']} ms, "
            f"{out['dashboard_errors']} bad answers of {out['dashboard_calls']}")
        say(f"heartbeats: {out['heartbeats']} of {out['heartbeats_expected']}, p50 "
            f"{out['heartbeat_p50_ms']} ms, p99 {out['heartbeat_p99_ms']} ms, "
            f"{out['heartbeat_errors']} errors; commands done {out['commands_done']} of "
            f"{out['commands_queued']}; fusion RssAnon {out['rss_anon_mb']} MiB")
        if out["fusion_tracebacks"]:
            say(f"fusion logged {out['fusion_tracebacks']} tracebacks, the last: "
                f"{out['fusion_last_exception']}")
        say(f"CPU over the window: fusion {out['fusion_cpu_pct']} %, simulated fleet "
            f"{out['fleet_cpu_pct']} % ({args.agent_procs} process(es)), dashboard reader "
            f"{out['reader_cpu_pct']} % (of one core; {os.cpu_count()} cores)")
        if out["heartbeats"] < 0.95 * out["heartbeats_expected"]:
            say("NOTE: fewer heartbeats than planned: the simulated fleet (or the machine) did "
                "not keep up, so the figures above are not fusion's alone")
    finally:
        stop_fleet(fleet)
        proc.stop(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
