"""Benchmark of fusion over HTTP: a real `fustor fusion serve`, snapshot pushes as an agent makes them.

    python bench/ingest.py --files 1000000 [--json] [--concurrency 4] [--original VENV]

Prints figures; asserts nothing. Traffic goes to 127.0.0.1 only.

``--original VENV`` first pushes the same batches into the original fustor-fusion 0.8.17
(installed into VENV with pip if it is not there: that needs the package index), so the
two figures and their ratio come from one run on one machine: ``original_applied_rows_per_s``
counts until its stats show every file, as ours does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Proc, free_port, memory, pct, start_fusion, timed_gets, wait_up  # noqa: E402
from treegen import rows  # noqa: E402

INGEST_KEY = "bench-ingest-key"
QUERY_KEY = "bench-query-key"


def write_config(path: Path, port: int, rport: int) -> None:
    path.write_text(f"""
host: 127.0.0.1
port: {port}
receivers:
  bench: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {INGEST_KEY}, pipe_id: bench}}]}}
views:
  bench: {{driver: fs, api_keys: [{QUERY_KEY}], driver_params: {{max_tree_items: 0}}}}
pipes:
  bench: {{receiver: bench, views: [bench], session_timeout_seconds: 60}}
""")


def event_rows(ch) -> dict:
    _op, path, is_dir, size, mtime, ctime = ch
    return {"path": path, "file_name": path.rsplit("/", 1)[-1], "size": size, "modified_time": mtime,
            "created_time": ctime, "is_directory": is_dir}


def make_batch(chunk: list) -> bytes:
    events = []
    for i in range(0, len(chunk), 100):
        part = [event_rows(c) for c in chunk[i:i + 100]]
        events.append({"event_type": "update", "event_schema": "fs", "table": "files",
                       "fields": list(part[0]), "rows": part, "index": 1,
                       "message_source": "snapshot"})
    return orjson.dumps({"events": events, "source_type": "snapshot", "is_end": False})


async def push_all(rurl: str, sid: str, files: int, concurrency: int) -> int:
    headers = {"X-API-Key": INGEST_KEY, "content-type": "application/json"}
    sent = 0
    async with httpx.AsyncClient(base_url=rurl, headers=headers, timeout=120) as c:
        q: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)

        async def worker():
            while True:
                body = await q.get()
                if body is None:
                    return
                for _ in range(100):
                    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", content=body)
                    if r.status_code in (429, 503):
                        await asyncio.sleep(float(r.headers.get("retry-after", "0.2")))
                        continue
                    r.raise_for_status()
                    break

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        chunk = []
        for ch in rows(files):
            chunk.append(ch)
            if len(chunk) == 1000:
                await q.put(make_batch(chunk))
                sent += len(chunk)
                chunk = []
        if chunk:
            await q.put(make_batch(chunk))
            sent += len(chunk)
        for _ in workers:
            await q.put(None)
        await asyncio.gather(*workers)
        r = await c.post(f"/api/v1/pipe/ingest/{sid}/events",
                         content=orjson.dumps({"events": [], "source_type": "snapshot", "is_end": True}))
        r.raise_for_status()
    return sent


def original_rows_per_s(venv: Path, files: int, concurrency: int, say) -> float:
    """The same pushes into fustor-fusion 0.8.17 from ``venv``: rows per second until its
    ``/stats`` counts every file."""
    exe = venv / "bin" / "fustor-fusion"
    if not exe.exists():
        say(f"installing fustor-fusion==0.8.17 into {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "fustor-fusion==0.8.17"], check=True)
    work = Path(tempfile.mkdtemp(prefix="fustor-ingest-0817-"))
    port, rport = free_port(), free_port()
    home = work / "home"
    (home / "fusion-config").mkdir(parents=True)
    # its config form (spec/fusion-protocol.md §8.3): the pipe named like its view
    (home / "fusion-config" / "default.yaml").write_text(f"""
host: 127.0.0.1
port: {port}
receivers:
  http-main: {{driver: http, bind_host: 127.0.0.1, port: {rport}, api_keys: [{{key: {INGEST_KEY}, pipe_id: bench}}]}}
views:
  bench: {{driver: fs, api_keys: [{QUERY_KEY}]}}
pipes:
  bench: {{receiver: http-main, views: [bench], session_timeout_seconds: 60}}
""")
    proc = Proc(["start"], home, work / "fusion.log", exe=str(exe), cwd=work)
    try:
        wait_up(f"http://127.0.0.1:{port}/", proc)
        wait_up(f"http://127.0.0.1:{rport}/", proc)
        rurl = f"http://127.0.0.1:{rport}"
        r = httpx.post(rurl + "/api/v1/pipe/session/", json={"task_id": "bench:bench"},
                       headers={"X-API-Key": INGEST_KEY})
        r.raise_for_status()
        say(f"fustor-fusion 0.8.17: pushing ~{files:,} files ...")
        t0 = time.perf_counter()
        sent = asyncio.run(push_all(rurl, r.json()["session_id"], files, concurrency))
        q = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": QUERY_KEY},
                         timeout=60)
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            st = q.get("/api/v1/views/bench/stats")
            if st.status_code == 200 and (st.json().get("total_files") or 0) >= files:
                break
            proc.check()
            time.sleep(0.05)
        return sent / (time.perf_counter() - t0)
    finally:
        proc.stop(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=4, help="pushes in flight")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--original", type=Path, metavar="VENV",
                    help="also measure fustor-fusion 0.8.17 from this venv (made if missing)")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    original = None
    if args.original:
        original = original_rows_per_s(args.original.resolve(), args.files, args.concurrency, say)
        say(f"fustor-fusion 0.8.17 applied {original:,.0f} rows/s")
    work = Path(tempfile.mkdtemp(prefix="fustor-ingest-"))
    port, rport = free_port(), free_port()
    cfg = work / "fusion.yaml"
    write_config(cfg, port, rport)
    url, rurl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{rport}"
    proc = start_fusion(work / "data", cfg, work / "home", work / "fusion.log")
    out: dict = {}
    try:
        wait_up(url + "/", proc)
        wait_up(rurl + "/", proc)
        r = httpx.post(rurl + "/api/v1/pipe/session/", json={"task_id": "bench:bench"},
                       headers={"X-API-Key": INGEST_KEY})
        r.raise_for_status()
        sid = r.json()["session_id"]
        say(f"pushing ~{args.files:,} files as snapshot batches of 1,000 rows, {args.concurrency} in flight ...")
        t0 = time.perf_counter()
        sent = asyncio.run(push_all(rurl, sid, args.files, args.concurrency))
        q = httpx.Client(base_url=url, headers={"X-API-Key": QUERY_KEY}, timeout=60)
        while True:
            st = q.get("/api/v1/views/bench/stats")
            if st.status_code == 200 and st.json()["file_count"] >= args.files:
                break
            time.sleep(0.01)
        secs = time.perf_counter() - t0
        files = st.json()["file_count"]
        out["files"] = files
        out["applied_rows_per_s"] = round(sent / secs)
        if original:
            out["original_applied_rows_per_s"] = round(original)
            out["ratio_to_original"] = round(sent / secs / original, 2)
        say(f"applied {sent:,} rows in {secs:.1f} s = {sent / secs:,.0f} rows/s (acknowledged = committed)")

        tree = q.get("/api/v1/views/bench/tree", params={"max_depth": 6, "only_path": True}).json()
        dirs, leaves = [], []

        def collect(n, depth):
            for c in n.get("children", []):
                if c["content_type"] == "directory":
                    dirs.append(c["path"])
                    if depth >= 1 and "children" in c:
                        leaves.append(c["path"])
                    collect(c, depth + 1)

        collect(tree, 0)
        rng = random.Random(3)
        n = args.queries
        out["stats_root_p99_ms"] = pct(timed_gets(q, ["/api/v1/views/bench/stats"] * n), 0.99, 3)
        out["stats_subtree_p99_ms"] = pct(timed_gets(q, [
            f"/api/v1/views/bench/stats?path={rng.choice(dirs)}" for _ in range(n)]), 0.99, 3)
        out["tree_depth1_p99_ms"] = pct(timed_gets(q, [
            f"/api/v1/views/bench/tree?max_depth=1&path={rng.choice(dirs)}" for _ in range(n)]),
            0.99, 3)
        tops = [d for d in dirs if d.count("/") == 1]
        out["search_p99_ms"] = pct(timed_gets(q, [
            f"/api/v1/views/bench/search?pattern=*.bam&limit=1000&path={rng.choice(tops)}"
            for _ in range(200)]), 0.99, 3)
        mem = memory(proc.pid)
        out["rss_mb"], out["rss_anon_mb"] = mem["VmRSS"], mem["RssAnon"]
        say(f"stats / p99 {out['stats_root_p99_ms']} ms, subtree {out['stats_subtree_p99_ms']} ms, "
            f"tree depth 1 {out['tree_depth1_p99_ms']} ms, search {out['search_p99_ms']} ms; "
            f"server RSS {out['rss_mb']} MiB (anon {out['rss_anon_mb']} MiB)")

        proc.stop(timeout=60)
        t = time.perf_counter()
        proc = start_fusion(work / "data", cfg, work / "home", work / "fusion.log")
        while True:
            try:
                r = q.get("/api/v1/views/bench/stats", timeout=1)
                if r.status_code == 200 and r.json()["file_count"] == files:
                    break
            except httpx.HTTPError:
                pass
            proc.check()
            time.sleep(0.005)
        out["restart_to_first_200_ms"] = round((time.perf_counter() - t) * 1000, 1)
        say(f"restart (SIGTERM, start, first full answer): {out['restart_to_first_200_ms']} ms")
    finally:
        proc.stop(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
