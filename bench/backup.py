"""Benchmark of `fustor backup` on a fusion that keeps ingesting.

    python bench/backup.py --files 1000000 [--window 5] [--json]

A real `fustor fusion serve` is filled with FILES files over HTTP; then a pusher keeps
sending new files while `fustor backup` (a real process, as an operator runs it) copies
the data dir. Prints the backup's speed and the ingest rate during the backup against
the rate in windows before and after it. Asserts nothing; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, start_fusion, wait_up  # noqa: E402
from ingest import INGEST_KEY, make_batch, push_all, write_config  # noqa: E402
from treegen import rows  # noqa: E402


class Pusher:
    """New files pushed without pause from a thread; ``done`` holds (time, rows) per batch."""

    def __init__(self, rurl: str, sid: str, concurrency: int = 2) -> None:
        self.rurl, self.sid, self.concurrency = rurl, sid, concurrency
        self.done: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    async def _run(self) -> None:
        source = (("upsert", "/live" + p, d, s, m, c) for _o, p, d, s, m, c in rows(5_000_000, seed=11)
                  if p != "/")
        lock = asyncio.Lock()
        headers = {"X-API-Key": INGEST_KEY, "content-type": "application/json"}
        async with httpx.AsyncClient(base_url=self.rurl, headers=headers, timeout=120) as c:
            async def worker() -> None:
                while not self._stop.is_set():
                    async with lock:
                        chunk = [ch for _, ch in zip(range(1000), source, strict=False)]
                    if not chunk:
                        return
                    r = await c.post(f"/api/v1/pipe/ingest/{self.sid}/events",
                                     content=make_batch(chunk))
                    if r.status_code in (429, 503):
                        await asyncio.sleep(0.05)
                        continue
                    r.raise_for_status()
                    self.done.append((time.monotonic(), len(chunk)))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def rate(self, t0: float, t1: float) -> float:
        n = sum(k for t, k in self.done if t0 <= t < t1)
        return n / (t1 - t0) if t1 > t0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--window", type=float, default=5.0,
                    help="seconds of ingest measured before and after the backup")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fustor-bench-backup-"))
    port, rport = free_port(), free_port()
    write_config(tmp / "fusion.yaml", port, rport)
    proc = start_fusion(tmp / "data", tmp / "fusion.yaml", tmp / "home", tmp / "fusion.log")
    out: dict = {"files": args.files}
    try:
        wait_up(f"http://127.0.0.1:{port}/", proc)
        rurl = f"http://127.0.0.1:{rport}"
        r = httpx.post(rurl + "/api/v1/pipe/session/", json={"task_id": "bench:bench"},
                       headers={"X-API-Key": INGEST_KEY}, timeout=30)
        sid = r.json()["session_id"]
        t = time.monotonic()
        asyncio.run(push_all(rurl, sid, args.files, 4))
        out["fill_s"] = round(time.monotonic() - t, 1)
        store = tmp / "data" / "views" / "bench.lmdb"
        pusher = Pusher(rurl, sid)
        pusher.start()
        time.sleep(1.0)  # let the pushers reach their pace before measuring
        before0 = time.monotonic()
        time.sleep(args.window)
        before1 = time.monotonic()
        out["store_mb_at_backup"] = round(store.stat().st_size / 1e6, 1)
        env = dict(os.environ, FUSTOR_HOME=str(tmp / "home"))
        done = subprocess.run([sys.executable, "-m", "fustor.cli", "backup", str(tmp / "data"),
                               str(tmp / "backup")], env=env, capture_output=True, text=True)
        during1 = time.monotonic()
        if done.returncode:
            raise SystemExit(f"backup failed: {done.stderr}")
        time.sleep(args.window)
        after1 = time.monotonic()
        pusher.stop()
        manifest = json.loads((tmp / "backup" / "manifest.json").read_text())
        entry = manifest["stores"][0]
        copy_s = entry["copy_seconds"]
        out.update(
            backup_command_s=round(during1 - before1, 2), backup_manifest_s=manifest["seconds"],
            backup_copy_s=copy_s, backup_mb=round(manifest["bytes"] / 1e6, 1),
            # LMDB's compacting copy: megabytes of the live store read per second
            backup_mb_per_s=round(entry["source_bytes"] / 1e6 / copy_s, 1) if copy_s else None,
            backup_files=manifest["stores"][0]["stats"]["file_count"],
            ingest_rows_per_s_without=round((pusher.rate(before0, before1)
                                             + pusher.rate(during1, after1)) / 2),
            # over the whole `fustor backup` command: process start, copy, checks, fsyncs
            ingest_rows_per_s_during=round(pusher.rate(before1, during1)),
        )
        out["ingest_during_vs_without"] = round(
            out["ingest_rows_per_s_during"] / max(1, out["ingest_rows_per_s_without"]), 2)
    finally:
        proc.stop(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:28} {v}")


if __name__ == "__main__":
    main()
