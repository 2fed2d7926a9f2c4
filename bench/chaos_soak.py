"""Soak scenario of bench/chaos.py: 20 simulated agents, each with its own pipe and view,
push realtime batches and heartbeat once a second while readers query, for --minutes;
errors, latency, fusion's RssAnon trend and open file descriptors over the window."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from pathlib import Path

import httpx
import orjson
from chaos_procs import OLD, Site, ingest_key, open_fds, query_key, verify_stores
from common import memory, pct


def soak(work: Path, minutes: float, agents: int = 20, readers: int = 2,
         push_every: float = 1.0, rows: int = 50) -> dict:
    """``agents`` simulated agents, each with its own pipe and view, push realtime batches and
    heartbeat once a second while readers query; memory, fds and latency over the window."""
    views = {f"s{i:02d}": {} for i in range(agents)}
    site = Site(work, views, session_timeout=30)
    try:
        site.start()
        disk = _FsyncProbe(site.data)
        try:
            out = asyncio.run(_soak(site, views, minutes * 60, readers, push_every, rows))
        finally:
            disk.stop()
        out["disk_fsync_p99_ms"], out["disk_fsync_max_ms"] = disk.p99_max_ms()
        out["idle_push_p50_ms"] = _idle_push_p50(site, next(iter(views)))
        out["fusion_tracebacks"] = site.tracebacks()
        site.stop_fusion()
        problems = verify_stores(site.stores())
        out["verify_failures"] = len(problems)
        return out
    finally:
        site.close()


class _FsyncProbe:
    """A 4 KiB write and fsync next to the stores every 0.2 s while the soak runs: every push
    waits for an fsync, so a slow moment of a shared disk shows in push_p99_ms and here too."""

    def __init__(self, where: Path) -> None:
        self.lat: list[float] = []
        self._stop = threading.Event()
        self._path = where / "chaos-fsync-probe"
        self._th = threading.Thread(target=self._run, daemon=True, name="chaos-fsync-probe")
        self._th.start()

    def _run(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for k in range(1_000_000):
                if self._stop.wait(0.2):
                    return
                os.pwrite(fd, os.urandom(4096), (k % 16) * 4096)
                t = time.perf_counter()
                os.fsync(fd)
                self.lat.append(time.perf_counter() - t)
        finally:
            os.close(fd)
            self._path.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        self._th.join(timeout=30)

    def p99_max_ms(self) -> tuple[float | None, float | None]:
        return pct(self.lat, 0.99, 1), pct(self.lat, 1.0, 1)


def _idle_push_p50(site: Site, view: str, n: int = 50) -> float | None:
    """Pushes one after the other with nothing else running: the floor every agent push pays
    (a fixed delay per answer, e.g. Nagle's algorithm meeting delayed ACKs, shows here)."""
    with httpx.Client(base_url=site.rurl, headers={"X-API-Key": ingest_key(view)}, timeout=30) as c:
        r = c.post("/api/v1/pipe/session/", json={"task_id": "soak-idle:main"})
        r.raise_for_status()
        sid = r.json()["session_id"]
        lat = []
        for k in range(n):
            body = orjson.dumps({"events": [_rows_event([_row(f"/idle/f{k:03d}", k, OLD)],
                                                        "realtime")], "source_type": "message"})
            t1 = time.perf_counter()
            c.post(f"/api/v1/pipe/ingest/{sid}/events", content=body).raise_for_status()
            lat.append(time.perf_counter() - t1)
    return pct(lat, 0.5, 1)


def _slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope in MiB per minute (samples: seconds, MiB)."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mx = sum(s for s, _ in samples) / n
    my = sum(m for _, m in samples) / n
    var = sum((s - mx) ** 2 for s, _ in samples)
    if var == 0:
        return None
    return round(60 * sum((s - mx) * (m - my) for s, m in samples) / var, 2)


async def _soak(site: Site, views: dict, seconds: float, readers: int, push_every: float,
                rows: int) -> dict:
    pid = site.fusion.pid
    names = list(views)
    lat: dict[str, list[float]] = {"push": [], "heartbeat": [], "read": []}
    errors: dict[str, list[str]] = {"push": [], "heartbeat": [], "read": []}
    samples: list[tuple[float, float, int]] = []

    def err(kind: str, msg: str) -> None:
        errors[kind].append(msg[:200])

    async def timed(kind: str, call) -> httpx.Response | None:
        t1 = time.perf_counter()
        try:
            r = await call
        except httpx.HTTPError as exc:
            err(kind, repr(exc))
            return None
        lat[kind].append(time.perf_counter() - t1)
        if r.status_code != 200:
            err(kind, f"{r.status_code} {r.text}")
            return None
        return r

    async with contextlib.AsyncExitStack() as stack:
        rc = await stack.enter_async_context(httpx.AsyncClient(base_url=site.url, timeout=30))
        # a client (connection) per agent, as real agents have; one pool shared by all would
        # leave some connections idle for just the server's keep-alive timeout, and a push
        # on one of those can meet the server closing it (a race of the HTTP stack)
        cs = [await stack.enter_async_context(httpx.AsyncClient(base_url=site.rurl, timeout=30))
              for _ in names]

        async def setup(i: int, v: str) -> str:
            h = {"X-API-Key": ingest_key(v)}
            c = cs[i]
            r = await c.post("/api/v1/pipe/session/", headers=h, json={"task_id": f"soak-{i}:main"})
            r.raise_for_status()
            sid = r.json()["session_id"]
            snap = _rows_event([_row(f"/d{j % 10}/f{j:04d}.dat", j, OLD) for j in range(200)],
                               "snapshot")
            (await c.post(f"/api/v1/pipe/ingest/{sid}/events", headers=h, content=orjson.dumps(
                {"events": [snap], "source_type": "snapshot", "is_end": True}))).raise_for_status()
            return sid

        sids = await asyncio.gather(*(setup(i, v) for i, v in enumerate(names)))
        t0 = time.monotonic()
        until = t0 + seconds
        samples.append((0.0, memory(pid)["RssAnon"], open_fds(pid)))

        async def agent(i: int, v: str, sid: str) -> None:
            h = {"X-API-Key": ingest_key(v), "content-type": "application/json"}
            c = cs[i]
            rng = random.Random(i)
            start = t0 + push_every * i / len(names)  # staggered, as real agents are
            for k in range(int(seconds / push_every) + 1):
                at = start + k * push_every
                if at >= until:
                    return
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                # a bounded namespace: creations, modifications and deletions of 1,000 paths
                ups, dels = [], []
                for _ in range(rows):
                    j = rng.randrange(1000)
                    p = f"/d{j % 10}/f{j:04d}.dat"
                    if rng.random() < 0.1:
                        dels.append({"path": p})
                    else:  # modified in the last two minutes, as a live file system's are
                        ups.append(_row(p, rng.randrange(1 << 20), time.time() - rng.uniform(0, 120)))
                events = [_rows_event(ups, "realtime")]
                if dels:
                    events.append(_rows_event(dels, "realtime", "delete"))
                body = {"events": events, "source_type": "message"}
                await timed("push", c.post(f"/api/v1/pipe/ingest/{sid}/events", headers=h,
                                           content=orjson.dumps(body)))
                await timed("heartbeat", c.post(
                    f"/api/v1/pipe/session/{sid}/heartbeat", headers=h,
                    content=orjson.dumps({"can_realtime": True, "agent_status": {"k": k}})))

        async def reader(j: int) -> None:
            rng = random.Random(1000 + j)
            k = 0
            while time.monotonic() < until and k < 10_000_000:
                k += 1
                v = rng.choice(names)
                kind = k % 3
                params = ({"path": f"/d{rng.randrange(10)}"} if kind == 0 else
                          {"path": "/", "max_depth": 1} if kind == 1 else
                          {"pattern": f"f0{rng.randrange(10)}*", "limit": 100})
                route = ("stats", "tree", "search")[kind]
                await timed("read", rc.get(f"/api/v1/views/{v}/{route}", params=params,
                                           headers={"X-API-Key": query_key(v)}))
                await asyncio.sleep(0.05)

        async def sampler() -> None:
            step = max(1.0, seconds / 60)
            while time.monotonic() + step <= until:
                await asyncio.sleep(step)
                samples.append((time.monotonic() - t0, memory(pid)["RssAnon"], open_fds(pid)))

        await asyncio.gather(*(agent(i, v, s) for i, (v, s) in enumerate(zip(names, sids, strict=True))),
                             *(reader(j) for j in range(readers)), sampler())
        samples.append((time.monotonic() - t0, memory(pid)["RssAnon"], open_fds(pid)))
    warm = [(s, m) for s, m, _ in samples if s >= seconds * 0.2]  # after the first fifth
    return {
        "minutes": round(seconds / 60, 2), "agents": len(names), "readers": readers,
        "pushes": len(lat["push"]), "push_errors": len(errors["push"]),
        "first_push_errors": errors["push"][:3],
        "push_p50_ms": pct(lat["push"], 0.5, 1), "push_p99_ms": pct(lat["push"], 0.99, 1),
        "heartbeats": len(lat["heartbeat"]), "heartbeat_errors": len(errors["heartbeat"]),
        "heartbeat_p99_ms": pct(lat["heartbeat"], 0.99, 1),
        "reads": len(lat["read"]), "read_errors": len(errors["read"]),
        "first_read_errors": errors["read"][:3], "read_p99_ms": pct(lat["read"], 0.99, 1),
        "rss_anon_mb_start": samples[0][1], "rss_anon_mb_end": samples[-1][1],
        "rss_anon_mb_max": max(m for _, m, _ in samples),
        "rss_anon_slope_mb_per_min": _slope_per_min(warm),
        "open_fds_start": samples[0][2], "open_fds_end": samples[-1][2],
        "rss_anon_mb_samples": [m for _, m, _ in samples],
    }


def _row(path: str, size: int, mtime: float) -> dict:
    return {"path": path, "file_name": path.rsplit("/", 1)[1], "size": size,
            "modified_time": mtime, "created_time": OLD, "is_directory": False}


def _rows_event(rows: list[dict], source: str, etype: str = "update") -> dict:
    fields = list(rows[0]) if rows else ["path"]
    return {"event_type": etype, "event_schema": "fs", "table": "files", "fields": fields,
            "rows": rows, "index": 1, "message_source": source}
