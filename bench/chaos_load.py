"""Resource scenarios of bench/chaos.py: a full disk, overload, and hot backups taken while
pushes run."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from chaos_procs import (
    Broken,
    Pushers,
    Site,
    batch_body,
    check_batches,
    complete_snapshot,
    ingest_key,
    query_key,
    summary_ms,
    verify_stores,
    wait_for,
)
from common import memory, pct

from fustor.store import Store
from fustor.store.inspect import verify

# -- disk full ------------------------------------------------------------------------------

AFTER_FREE = 5  # batches pushed once the ballast is gone


def disk_full(work: Path, size_mb: int = 16, rows: int = 500, pad: int = 150) -> dict:
    """The data dir on a small tmpfs, pushed until it is full; then space is freed."""
    mnt = work / "tmpfs"
    mnt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                        str(mnt)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return {"skipped": "cannot mount a tmpfs here (" + (r.stderr.strip() or "mount failed")
                + "); run as root to test a full disk"}
    out: dict = {"tmpfs_mb": size_mb}
    site = Site(work / "site", {"full": {}, "other": {}}, data=mnt / "data")
    try:
        ballast = mnt / "ballast"
        ballast.write_bytes(b"\0" * (size_mb << 18))  # a quarter of the disk, freed later
        site.start()
        complete_snapshot(site.rurl, "full")
        complete_snapshot(site.rurl, "other")
        q, other = site.query("full"), site.query("other")
        headers = {"X-API-Key": ingest_key("full"), "content-type": "application/json"}
        push = site.client(ingest_key("full"), site.rurl)
        sid = push.post("/api/v1/pipe/session/", json={"task_id": "chaos:full"}).json()["session_id"]
        acked: set[int] = set()
        full_answer = None
        n = 0
        t0 = time.monotonic()
        while n < 5000 and time.monotonic() - t0 < 120:
            r = push.post(f"/api/v1/pipe/ingest/{sid}/events", content=batch_body(0, n, rows, pad),
                          headers=headers)
            if r.status_code == 200:
                acked.add(n)
                n += 1
                continue
            full_answer = r
            break
        if full_answer is None:
            raise Broken(f"the disk never filled ({n} batches of {rows} rows)")
        body = _json(full_answer)
        out["acked_batches_before_full"] = len(acked)
        out["full_status"] = full_answer.status_code
        out["full_code"] = body.get("code") if isinstance(body, dict) else None
        out["full_retry_after"] = full_answer.headers.get("retry-after")
        out["full_detail"] = (body.get("detail") if isinstance(body, dict) else full_answer.text)[:200]
        # while full: a retry is refused the same way, queries answer, the stores verify
        again = push.post(f"/api/v1/pipe/ingest/{sid}/events", content=batch_body(0, n, rows, pad),
                          headers=headers)
        out["retry_while_full_status"] = again.status_code
        answers = [q.get("/stats").status_code, q.get("/tree", params={"max_depth": 1}).status_code,
                   q.get("/search", params={"pattern": "*.dat", "limit": 10}).status_code,
                   other.get("/stats").status_code]
        out["query_errors_while_full"] = sum(s != 200 for s in answers)
        failing_batch = q.get("/stats", params={"path": f"/t0/b{n:06d}"})
        out["failed_batch_files_visible"] = (failing_batch.json()["file_count"]
                                             if failing_batch.status_code == 200 else 0)
        problems = verify_stores(site.stores())
        out["verify_failures_while_full"] = len(problems)
        fake = _Acked([acked], rows)
        out.update({f"{k}_while_full": v for k, v in check_batches(q, fake).items()
                    if k in ("acked_lost", "torn_batch_dirs")})
        # the operator frees space: the same session's retry of the failed batch succeeds
        ballast.unlink()
        ok_after = 0
        for k in range(n, n + AFTER_FREE):  # well within the space freed (~17 batches)
            r = push.post(f"/api/v1/pipe/ingest/{sid}/events", content=batch_body(0, k, rows, pad),
                          headers=headers)
            if r.status_code == 200:
                acked.add(k)
                ok_after += 1
            elif len(out.setdefault("errors_after_free", [])) < 3:
                out["errors_after_free"].append(f"{r.status_code} {r.text[:200]}")
        out["pushes_ok_after_free"] = f"{ok_after}/{AFTER_FREE}"
        out["push_failures_after_free"] = AFTER_FREE - ok_after
        fake = _Acked([acked], rows)
        res = check_batches(q, fake)
        out["acked_lost"], out["torn_batch_dirs"] = res["acked_lost"], res["torn_batch_dirs"]
        out["fusion_alive"] = site.fusion.alive()
        site.stop_fusion()
        problems += verify_stores(site.stores())
        out["verify_failures"] = len(problems)
        if problems:
            out["verify_problems"] = problems[:5]
        out["fusion_tracebacks"] = site.tracebacks()
    finally:
        site.close()
        u = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)
        if u.returncode != 0:  # something still holds it: detach now, freed when released
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)
    return out


class _Acked:
    """The shape check_batches reads: acknowledged batch numbers per thread, rows a batch."""

    def __init__(self, acked: list[set[int]], rows: int) -> None:
        self.acked, self.rows = acked, rows

    def acked_rows(self) -> int:
        return sum(len(a) for a in self.acked) * self.rows


def _json(r: httpx.Response):
    try:
        return r.json()
    except ValueError:
        return None


# -- overload -------------------------------------------------------------------------------


def overload(work: Path, seconds: float, clients: int = 96, rows: int = 500) -> dict:
    """Far more concurrent pushes into one view than its writer applies, while a reader
    queries another view: pushes beyond the queue get 503 + Retry-After, memory stays put,
    the other view keeps answering."""
    site = Site(work, {"hot": {}, "cold": {}}, session_timeout=60)
    try:
        site.start()
        complete_snapshot(site.rurl, "hot")
        complete_snapshot(site.rurl, "cold")
        cold = Pushers(site.rurl, "cold", threads=1, rows=1000, max_batches=5)
        wait_for(lambda: cold.acked_count() >= 5, 60, "5 batches in the cold view")
        cold.stop()
        out = asyncio.run(_overload(site, seconds, clients, rows))
        fake = _Acked(out.pop("_acked"), rows)
        res = check_batches(site.query("hot"), fake)
        out["acked_rows"], out["acked_lost"] = res["acked_rows"], res["acked_lost"]
        out["torn_batch_dirs"] = res["torn_batch_dirs"]
        out["fusion_tracebacks"] = site.tracebacks()
        site.stop_fusion()
        problems = verify_stores(site.stores())
        out["verify_failures"] = len(problems)
        return out
    finally:
        site.close()


async def _overload(site: Site, seconds: float, clients: int, rows: int) -> dict:
    pid = site.fusion.pid
    acked: list[set[int]] = [set() for _ in range(clients)]
    stats = {"ok": 0, "503": 0, "retry_after_missing": 0, "other": [], "codes": {}}
    lat_ok: list[float] = []
    qlat: list[float] = []
    qerr: list[str] = []
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    until = t0 + seconds
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=site.rurl, timeout=60, limits=limits) as c:
        rss.append((0.0, memory(pid)["RssAnon"]))
        headers = {"X-API-Key": ingest_key("hot"), "content-type": "application/json"}

        async def pusher(t: int) -> None:
            for _ in range(100):  # a session start is a write too: it may be told to wait
                r = await c.post("/api/v1/pipe/session/", headers=headers,
                                 content=orjson.dumps({"task_id": f"chaos:o{t}"}))
                if r.status_code != 503:
                    break
                await asyncio.sleep(random.random())
            if r.status_code != 200:
                stats["other"].append(f"session: {r.status_code} {r.text[:200]}")
                return
            sid = r.json()["session_id"]
            n = 0
            while time.monotonic() < until and n < 100_000:
                t1 = time.perf_counter()
                r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", headers=headers,
                                 content=batch_body(t, n, rows))
                if r.status_code == 200:
                    lat_ok.append(time.perf_counter() - t1)
                    stats["ok"] += 1
                    acked[t].add(n)
                    n += 1
                elif r.status_code == 503:
                    stats["503"] += 1
                    code = (_json(r) or {}).get("code")
                    stats["codes"][code] = stats["codes"].get(code, 0) + 1
                    ra = r.headers.get("retry-after")
                    if ra is None:
                        stats["retry_after_missing"] += 1
                    # impatient clients: back off less than asked, to keep the pressure on
                    await asyncio.sleep(min(float(ra or 1), 0.25) * random.random())
                else:
                    if len(stats["other"]) < 5:
                        stats["other"].append(f"{r.status_code} {r.text[:200]}")
                    await asyncio.sleep(0.1)

        async def query() -> None:
            # in a process of its own: this one's loop is busy building pushes, and its delays
            # must not pass for fusion's
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", READER, f"{site.url}/api/v1/views/cold", query_key("cold"),
                str(until - time.monotonic()), stdout=asyncio.subprocess.PIPE)
            got = orjson.loads((await proc.communicate())[0])
            qlat.extend(got["lat"])
            qerr.extend(got["errors"])

        async def sample() -> None:
            while time.monotonic() < until:
                await asyncio.sleep(0.5)
                rss.append((time.monotonic() - t0, memory(pid)["RssAnon"]))

        pushers = [asyncio.create_task(pusher(t)) for t in range(clients)]
        await asyncio.gather(query(), sample())
        # pushes still waiting at the end are dropped unanswered (the client gave up): they
        # count as not acknowledged, like a timed-out push of an agent
        for task in pushers:
            task.cancel()
        await asyncio.gather(*pushers, return_exceptions=True)
        rss.append((time.monotonic() - t0, memory(pid)["RssAnon"]))
    return {
        "window_s": seconds, "clients": clients, "rows_per_push": rows,
        "pushes_ok": stats["ok"], "pushes_503": stats["503"], "codes_503": stats["codes"],
        "retry_after_missing": stats["retry_after_missing"],
        "push_errors": len(stats["other"]), "first_push_errors": stats["other"][:3],
        "accepted_push_p99_ms": pct(lat_ok, 0.99, 1), "accepted_push_max_ms": pct(lat_ok, 1.0, 1),
        "rss_anon_mb_before": rss[0][1], "rss_anon_mb_peak": max(m for _, m in rss),
        "rss_anon_mb_end": rss[-1][1],
        "queries": len(qlat), "query_errors": len(qerr), "first_query_errors": qerr[:3],
        "query_p50_ms_under_overload": pct(qlat, 0.5, 1),
        "query_p99_ms_under_overload": pct(qlat, 0.99, 1),
        "_acked": acked,
    }


READER = """
import sys, time, httpx, orjson
url, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
lat, errors = [], []
until = time.monotonic() + seconds
with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as c:
    k = 0
    while time.monotonic() < until and k < 100_000:
        k += 1
        t = time.perf_counter()
        r = c.get("/stats") if k % 2 else c.get("/tree", params={"max_depth": 1})
        lat.append(time.perf_counter() - t)
        if r.status_code != 200 and len(errors) < 5:
            errors.append(f"{r.status_code} {r.text[:200]}")
        time.sleep(0.02)
sys.stdout.buffer.write(orjson.dumps({"lat": lat, "errors": errors}))
"""


# -- backup under writes ---------------------------------------------------------------------


def backup(work: Path, count: int, seed: int) -> dict:
    """Consistent copies of a live store taken while numbered batches are pushed into it;
    then each copy must open, verify, hold every batch acknowledged before it began, and no
    torn one. (The copies are checked once the pushes stop: checking one while they run
    would only slow the pushes down.)"""
    rng = random.Random(seed)
    site = Site(work, {"b": {}}, session_timeout=30)
    dest = work / "backups"
    dest.mkdir(parents=True)
    out: dict = {"backups": 0, "backup_verify_failures": 0, "backup_missing_acked": 0,
                 "backup_torn_batch_dirs": 0}
    times: list[float] = []
    taken: list[tuple[Path, list[set[int]]]] = []
    pushers = None
    try:
        site.start()
        complete_snapshot(site.rurl, "b")
        pushers = Pushers(site.rurl, "b", threads=2, rows=200, max_batches=5000)
        live = site.data / "views" / "b.lmdb"
        for i in range(count):
            pushers.wait_acked(rng.randint(5, 40), 60)
            before = [set(a) for a in pushers.acked]
            copy = dest / f"b-{i:03d}.lmdb"
            t1 = time.perf_counter()
            with Store(live, readonly=True) as s:
                s.copy_to(copy)
            times.append((time.perf_counter() - t1) * 1000)
            out["backups"] += 1
            taken.append((copy, before))
        pushers.stop()
        out["acked_rows_during_backups"] = pushers.acked_rows()
        problems: list[str] = []
        for copy, before in taken:
            with Store(copy, readonly=True) as s:
                bad = verify(s)
                missing, torn = _batches_in(s, before, pushers.rows)
            out["backup_verify_failures"] += len(bad)
            out["backup_missing_acked"] += missing
            out["backup_torn_batch_dirs"] += torn
            problems += [f"{copy.name}: {b}" for b in bad[:3]]
        # the same check through the command an operator runs on a backup file
        r = subprocess.run([sys.executable, "-m", "fustor.cli", "inspect", str(taken[-1][0]),
                            "--verify"], capture_output=True, text=True, timeout=300)
        out["inspect_verify_exit"] = r.returncode
        out["backup_ms"] = summary_ms(times)
        out["backup_mb_last"] = round(taken[-1][0].stat().st_size / 2**20, 1)
        if problems:
            out["verify_problems"] = problems[:5]
    finally:
        if pushers is not None:
            pushers.stop()
        site.close()
    return out


def _batches_in(store: Store, acked_before: list[set[int]], rows: int) -> tuple[int, int]:
    """(acknowledged batches missing from the copy, torn batch dirs in it)."""
    from fustor.store import keys

    missing = torn = 0
    with store.read() as r:
        for t, acked in enumerate(acked_before):
            top = keys.normalise(f"/t{t}")
            present: set[int] = set()
            if r.get(top) is not None:
                after = None
                while True:
                    kids, after = r.children(top, after=after, limit=10_000)
                    present |= {int(k.name[1:]) for k in kids}
                    if after is None:
                        break
                if r.stats(top).file_count != rows * len(present):
                    torn += 1
            missing += len(acked - present)
    return missing, torn
