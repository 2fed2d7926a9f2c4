"""Benchmark of many views in one fusion under an open-files limit.

    python bench/views.py --views 300 [--agents 200] [--soft 1024] [--hard N] [--json]

Starts a real `fustor fusion serve` with V fs views (one pipe and ingest key each) as a
child whose RLIMIT_NOFILE is set before exec (soft ``--soft``; hard ``--hard``, default
unchanged), then opens ``--agents`` agent connections at once, each creating a session
and pushing one 100-row batch over its own kept-alive connection. Prints the startup time
(spawn → first answer), RSS, descriptors (all, and those the stores hold, as fusion
reports them), the soft limit fusion runs with, and how the connections fared: served,
refused with a JSON 503 (retryable), or failed otherwise. Asserts nothing. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Proc, free_port, memory, start_fusion, wait_up  # noqa: E402

ADMIN = "views-bench-admin"


def write_config(path: Path, views: int, port: int, rport: int) -> None:
    keys = ", ".join(f"{{key: k{i}, pipe_id: p{i}}}" for i in range(views))
    lines = [f"host: 127.0.0.1\nport: {port}\nadmin_keys: [{ADMIN}]\nreceivers:",
             f"  r: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{keys}]}}",
             "views:"]
    lines += [f"  v{i}: {{driver: fs}}" for i in range(views)]
    lines.append("pipes:")
    lines += [f"  p{i}: {{receiver: r, views: [v{i}]}}" for i in range(views)]
    path.write_text("\n".join(lines) + "\n")


def start(data: Path, cfg: Path, home: Path, log: Path, soft: int, hard: int | None) -> Proc:
    def limit() -> None:  # in the child, before exec
        h = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if hard is None else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, h), h))

    log.unlink(missing_ok=True)  # the log's figures are those of the last start
    return start_fusion(data, cfg, home, log, env={"FUSTOR_PID_FILE": "0"}, preexec_fn=limit)


def row(i: int, j: int) -> dict:
    return {"path": f"/a{i}/f{j}", "size": j, "modified_time": 1000.0 + j,
            "created_time": 1000.0, "is_directory": False}


async def agent(rurl: str, i: int, views: int, gate: asyncio.Event, done: asyncio.Event,
                answered: list) -> str:
    """One agent on its own connection: session, one batch; keeps the connection open
    until every agent has its answer. Its outcome: ok, json503, or the error."""
    key = f"k{i % views}"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=rurl, headers={"X-API-Key": key}, timeout=30,
                                 limits=limits) as c:
        await gate.wait()
        try:
            r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h{i}:p{i % views}"})
            if r.status_code == 200:
                sid = r.json()["session_id"]
                rows = [row(i, j) for j in range(100)]
                r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json={
                    "source_type": "snapshot", "events": [{
                        "event_type": "update", "event_schema": "fs", "table": "files",
                        "fields": list(rows[0]), "rows": rows, "message_source": "snapshot"}]})
            if r.status_code == 200:
                outcome = "ok"
            elif r.status_code == 503 and r.headers.get("content-type", "").startswith(
                    "application/json") and "code" in r.json():
                outcome = "json503"
            else:
                outcome = f"http{r.status_code}"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        answered.append(outcome)
        await done.wait()
        return outcome


async def connections(rurl: str, n: int, views: int) -> dict:
    gate, done, answered = asyncio.Event(), asyncio.Event(), []
    tasks = [asyncio.create_task(agent(rurl, i, views, gate, done, answered)) for i in range(n)]
    await asyncio.sleep(0.1)
    t0 = time.perf_counter()
    gate.set()
    while len(answered) < n and time.perf_counter() - t0 < 60:
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - t0
    done.set()
    outcomes: dict[str, int] = {}
    for r in await asyncio.gather(*tasks):
        outcomes[r] = outcomes.get(r, 0) + 1
    return {"outcomes": outcomes, "seconds": round(elapsed, 2)}


def fd_metrics(url: str) -> dict:
    text = httpx.get(url + "/metrics", headers={"X-API-Key": ADMIN}, timeout=30).text
    out = {}
    for line in text.splitlines():
        if line.startswith("fustor_open_files") or line.startswith("fustor_store_open_files"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=300)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--soft", type=int, default=1024, help="soft RLIMIT_NOFILE of the server")
    ap.add_argument("--hard", type=int, default=None, help="hard RLIMIT_NOFILE (default: as is)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fustor-views-"))
    port, rport = free_port(), free_port()
    cfg, log = work / "fusion.yaml", work / "fusion.log"
    write_config(cfg, args.views, port, rport)
    out: dict = {"views": args.views, "agents": args.agents, "soft_limit_given": args.soft,
                 "hard_limit_given": args.hard}
    proc = None
    try:
        for attempt in ("first_start_s", "restart_s"):  # stores created, then reopened
            t0 = time.perf_counter()
            proc = start(work / "data", cfg, work / "home", log, args.soft, args.hard)
            wait_up(f"http://127.0.0.1:{port}/", proc)
            out[attempt] = round(time.perf_counter() - t0, 3)
            if attempt == "first_start_s":
                proc.stop(timeout=30)
        wait_up(f"http://127.0.0.1:{rport}/", proc)
        pid = proc.pid
        out["soft_limit_running"] = int(next(
            ln.split()[3] for ln in Path(f"/proc/{pid}/limits").read_text().splitlines()
            if ln.startswith("Max open files")))
        mem = memory(pid)
        out["rss_mib"], out["rss_anon_mib"] = mem["VmRSS"], mem["RssAnon"]
        out["fds_at_start"] = len(os.listdir(f"/proc/{pid}/fd"))
        out["reported"] = fd_metrics(f"http://127.0.0.1:{port}")
        res = asyncio.run(connections(f"http://127.0.0.1:{rport}", args.agents, args.views))
        out["connections"] = res["outcomes"]
        out["connections_seconds"] = res["seconds"]
        out["all_served"] = res["outcomes"].get("ok", 0) == args.agents
        out["all_answered_cleanly"] = sum(v for k, v in res["outcomes"].items()
                                          if k in ("ok", "json503")) == args.agents
        out["fds_after"] = len(os.listdir(f"/proc/{pid}/fd"))
        out["server_alive"] = proc.alive()
        text = log.read_text(errors="replace")
        out["too_many_open_files_log_lines"] = text.count("Too many open files")
    finally:
        if proc is not None:
            proc.stop(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
