"""The machinery of bench/chaos.py: fusion and agent processes, configs, numbered-batch
pushers, file-system churn, and the checks every scenario shares (acknowledged batches
still whole, stores verified, the view equal to the file system).

Everything runs on 127.0.0.1 in a scenario's own temp dir; every process started here is
registered with its :class:`Site` and stopped by :meth:`Site.close`, and every loop is
bounded by a count and a deadline.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.e2e: the tree walkers
from common import Proc, free_port  # noqa: E402

from fustor.store import Store  # noqa: E402
from fustor.store.inspect import verify  # noqa: E402
from tests.e2e import tree_diff, walk_fs, walk_view  # noqa: E402

ADMIN_KEY = "chaos-admin-key"
OLD = 1_600_000_000.0  # mtime of pushed rows: in the past, so no row is a "hot" suspect
MTIME_TOL = 1e-3


def ingest_key(pipe: str) -> str:
    return f"chaos-ingest-{pipe}"


def query_key(view: str) -> str:
    return f"chaos-query-{view}"


class Broken(Exception):
    """A guarantee did not hold (or a scenario could not get to check it)."""


def wait_for(cond, timeout: float, what: str, interval: float = 0.02):
    """``cond()`` until truthy (its value) or Broken after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = cond()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise Broken(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- config ------------------------------------------------------------------------------


def fusion_config(port: int, rport: int, views: dict[str, dict], *, cleanup: float = 1.0,
                  session_timeout: int = 10) -> str:
    """One fs view per entry, fed by a pipe of the same name with its own ingest key and read
    with its own query key; an entry may set ``audit`` and ``sentinel`` intervals, or
    ``members`` (pipe names) to be a forest view fed by those pipes."""
    pipes = {}
    for v, o in views.items():
        for pipe in o.get("members", [v]):
            pipes[pipe] = {"receiver": "r", "views": [v], "session_timeout_seconds":
                           session_timeout, "audit_interval_sec": o.get("audit", 0),
                           "sentinel_interval_sec": o.get("sentinel", 0)}
    cfg = {
        "host": "127.0.0.1", "port": port, "logging": "WARNING",
        "session_cleanup_interval": cleanup,
        "admin_keys": [{"key": ADMIN_KEY, "name": "chaos"}],
        "receivers": {"r": {"driver": "http", "bind_host": "127.0.0.1", "port": rport,
                            "api_keys": [{"key": ingest_key(p), "pipe_id": p} for p in pipes]}},
        "views": {v: {"driver": "forest-fs" if "members" in o else "fs",
                      "api_keys": [query_key(v)], "driver_params": {"max_tree_items": 0}}
                  for v, o in views.items()},
        "pipes": pipes,
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def agent_config(tree: Path, rurl: str, pipe: str, agent_id: str, batch_size: int) -> str:
    return yaml.safe_dump({
        "agent_id": agent_id, "logging": "INFO", "console": {"enabled": False},
        "sources": {"tree": {"driver": "fs", "uri": str(tree)}},
        "senders": {"fusion": {"driver": "fusion", "uri": rurl, "batch_size": batch_size,
                               "credential": {"key": ingest_key(pipe)}}},
        "pipes": {"main": {"source": "tree", "sender": "fusion"}},
    }, sort_keys=False)


# -- processes ---------------------------------------------------------------------------


class Site:
    """One fusion (restartable on the same ports and data dir) and its agents."""

    def __init__(self, work: Path, views: dict[str, dict], *, data: Path | None = None,
                 **cfg) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.data = data or work / "data"
        self.port, self.rport = free_port(), free_port()
        self.url, self.rurl = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.rport}"
        self.cfg_path = work / "fusion.yaml"
        self.views = dict(views)
        self._cfg = cfg
        self.write_config(views)
        self.fusion: Proc | None = None
        self.starts = 0
        self.agents: dict[str, Proc] = {}
        self._procs: list[Proc] = []
        self._clients: list[httpx.Client] = []

    def write_config(self, views: dict[str, dict]) -> None:
        self.cfg_path.write_text(fusion_config(self.port, self.rport, views, **self._cfg))

    # -- fusion --
    def start(self, probe_view: str | None = None, launcher: str | None = None,
              timeout: float = 60.0) -> float:
        """Start fusion; returns the ms until it answered (a 200 on ``probe_view``'s stats if
        given, else any answer on both ports)."""
        self.starts += 1
        head = ["-c", launcher] if launcher else ["-m", "fustor.cli"]
        t0 = time.monotonic()
        self.fusion = p = Proc([*head, "fusion", "serve", "--data", str(self.data), "--config",
                                str(self.cfg_path)], self.work / "fusion-home",
                               self.work / f"fusion-{self.starts}.log")
        self._procs.append(p)

        def up() -> bool:
            if not p.alive():
                raise Broken(f"fusion exited with {p.p.returncode} at start: {p.tail()}")
            if probe_view:
                r = httpx.get(f"{self.url}/api/v1/views/{probe_view}/stats", timeout=2,
                              headers={"X-API-Key": query_key(probe_view)})
                return r.status_code == 200
            httpx.get(self.url + "/", timeout=2)
            httpx.get(self.rurl + "/", timeout=2)
            return True

        wait_for(up, timeout, "fusion to answer", interval=0.005)
        return (time.monotonic() - t0) * 1000

    def kill9(self) -> None:
        assert self.fusion is not None
        self.fusion.kill9()

    def stop_fusion(self) -> None:
        if self.fusion is not None:
            self.fusion.stop()

    def client(self, key: str, base: str | None = None, timeout: float = 30) -> httpx.Client:
        c = httpx.Client(base_url=base or self.url, headers={"X-API-Key": key}, timeout=timeout)
        self._clients.append(c)
        return c

    def query(self, view: str) -> httpx.Client:
        return self.client(query_key(view), f"{self.url}/api/v1/views/{view}")

    # -- agents --
    def start_agent(self, name: str, tree: Path, pipe: str, batch_size: int = 1000) -> Proc:
        cfg = self.work / f"{name}.yaml"
        cfg.write_text(agent_config(tree, self.rurl, pipe, name, batch_size))
        n = sum(1 for p in self._procs if p.log.name.startswith(f"agent-{name}-")) + 1
        p = Proc(["-m", "fustor.cli", "agent", "start", str(cfg)], self.work / f"{name}-home",
                 self.work / f"agent-{name}-{n}.log")
        self._procs.append(p)
        self.agents[name] = p
        return p

    # -- the end --
    def stores(self) -> list[Path]:
        return sorted((self.data / "views").rglob("*.lmdb")) if (self.data / "views").exists() else []

    def tracebacks(self) -> int:
        return sum(p.tracebacks() for p in self._procs if p is self.fusion or "fusion" in p.log.name)

    def close(self) -> None:
        for c in self._clients:
            c.close()
        for p in sorted(self._procs, key=lambda p: "fusion" in p.log.name):  # agents first
            try:
                p.stop()
            except Exception:  # teardown must reach every process
                if p.alive():
                    p.p.kill()
                    p.p.wait(timeout=30)


def verify_stores(paths: list[Path]) -> list[str]:
    """Open each store read-only and recount its aggregates; one line per problem."""
    out = []
    for path in paths:
        try:
            with Store(path, readonly=True) as s:
                problems = verify(s)
        except Exception as exc:  # a store that does not even open is the worst failure
            out.append(f"{path.name}: cannot open: {exc}")
            continue
        out += [f"{path.name}: {p}" for p in problems[:5]]
    return out


# -- numbered batches -----------------------------------------------------------------------


def batch_body(t: int, n: int, rows: int, pad: int = 0) -> bytes:
    """Batch ``n`` of thread ``t``: ``rows`` new files in its own directory ``/t{t}/b{n}``, so
    the directory's file count says whether the batch is whole (``pad`` lengthens names)."""
    x = "x" * pad
    part = [{"path": f"/t{t}/b{n:06d}/f{i:04d}{x}.dat", "file_name": f"f{i:04d}{x}.dat",
             "size": i + 1, "modified_time": OLD + n, "created_time": OLD,
             "is_directory": False} for i in range(rows)]
    return orjson.dumps({"events": [{"event_type": "update", "event_schema": "fs",
                                     "table": "files", "fields": list(part[0]), "rows": part,
                                     "index": n, "message_source": "realtime"}],
                         "source_type": "message"})


def complete_snapshot(rurl: str, pipe: str) -> None:
    """An empty snapshot with its end marker: the view answers queries from now on (and
    after every restart: the mark is kept in the store)."""
    with httpx.Client(base_url=rurl, headers={"X-API-Key": ingest_key(pipe)}, timeout=30) as c:
        r = c.post("/api/v1/pipe/session/", json={"task_id": f"chaos:{pipe}-snapshot"})
        r.raise_for_status()
        sid = r.json()["session_id"]
        c.post(f"/api/v1/pipe/ingest/{sid}/events", content=orjson.dumps(
            {"events": [], "source_type": "snapshot", "is_end": True})).raise_for_status()
        c.delete(f"/api/v1/pipe/session/{sid}")


class Pushers:
    """``threads`` clients pushing numbered batches into ``pipe`` as fast as fusion takes
    them, through kills and restarts: a connection error or a 503 retries the same batch, a
    419 opens a new session first. A batch counts as acknowledged only on a 200."""

    def __init__(self, rurl: str, pipe: str, threads: int, rows: int, *,
                 max_batches: int = 100_000, deadline_s: float = 900.0) -> None:
        self.rurl, self.pipe, self.rows = rurl, pipe, rows
        self.acked: list[set[int]] = [set() for _ in range(threads)]
        self.unexpected: list[str] = []
        self.status_503 = 0
        self.retry_after_missing = 0
        self._max, self._deadline = max_batches, time.monotonic() + deadline_s
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True,
                                          name=f"chaos-pusher-{t}") for t in range(threads)]
        for th in self._threads:
            th.start()

    def acked_count(self) -> int:
        return sum(len(a) for a in self.acked)

    def acked_rows(self) -> int:
        return self.acked_count() * self.rows

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=60)

    def _run(self, t: int) -> None:
        headers = {"X-API-Key": ingest_key(self.pipe), "content-type": "application/json"}
        sid = None
        n = 0
        with httpx.Client(base_url=self.rurl, headers=headers, timeout=30) as c:
            while not self._stop.is_set() and n < self._max and time.monotonic() < self._deadline:
                try:
                    if sid is None:
                        r = c.post("/api/v1/pipe/session/", content=orjson.dumps(
                            {"task_id": f"chaos:t{t}"}))
                        if r.status_code != 200:
                            self._note(t, "session", r)
                            continue
                        sid = r.json()["session_id"]
                    r = c.post(f"/api/v1/pipe/ingest/{sid}/events", content=batch_body(t, n, self.rows))
                except httpx.TransportError:  # fusion is down: the same batch again, later
                    self._stop.wait(0.02)
                    continue
                if r.status_code == 200:
                    self.acked[t].add(n)
                    n += 1
                elif r.status_code == 419:
                    sid = None
                else:
                    self._note(t, "push", r)

    def _note(self, t: int, what: str, r: httpx.Response) -> None:
        if r.status_code == 503:
            self.status_503 += 1
            if "retry-after" not in r.headers:
                self.retry_after_missing += 1
            self._stop.wait(0.05)
            return
        if len(self.unexpected) < 20:
            self.unexpected.append(f"t{t} {what}: {r.status_code} {r.text[:200]}")
        self._stop.wait(0.05)

    def wait_acked(self, more: int, timeout: float, alive=None) -> None:
        """Until ``more`` batches beyond the current count are acknowledged."""
        want = self.acked_count() + more

        def enough() -> bool:
            if alive is not None:
                alive()
            return self.acked_count() >= want

        wait_for(enough, timeout, f"{more} more acknowledged batches", interval=0.01)


def check_batches(q: httpx.Client, pushers: Pushers) -> dict:
    """Every acknowledged batch is in the view, and every batch in the view is whole.

    Per thread, one question a user could ask: the thread's directory two levels deep (one
    read transaction, so batches still being committed cannot make it look torn). A batch
    only ever writes its own directory, so each batch directory must hold exactly its rows."""
    lost, torn, present_total = 0, 0, 0
    for t, acked in enumerate(pushers.acked):
        r = q.get("/tree", params={"path": f"/t{t}", "max_depth": 2, "only_path": True,
                                   "limit": 1_000_000})
        if r.status_code == 404:
            present: dict[int, int] = {}
        else:
            r.raise_for_status()
            present = {int(c["name"][1:]): len(c.get("children", []))
                       for c in r.json().get("children", [])}
        lost += len(acked - set(present))
        present_total += len(present)
        torn += sum(1 for n in present.values() if n != pushers.rows)
    return {"acked_rows": pushers.acked_rows(), "acked_lost": lost * pushers.rows,
            "torn_batch_dirs": torn, "batches_present": present_total}


# -- a real tree and changes to it ---------------------------------------------------------------


def build_tree(root: Path, files: int, seed: int = 1) -> None:
    """``files`` files in two levels of directories, mtimes in the past."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    dirs = [root / f"d{i:02d}" / f"e{j:02d}" for i in range(10) for j in range(10)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    data = rng.randbytes(2048)
    for i in range(files):
        p = dirs[i % len(dirs)] / f"f{i:06d}.dat"
        p.write_bytes(data[: rng.randint(0, 2048)])
        m = OLD + rng.uniform(0, 1e7)
        os.utime(p, (m, m))


class Churn:
    """Creates, rewrites and deletes files (and makes directories) in ``root`` at ``rate``
    operations a second from a thread, at most ``max_ops`` of them."""

    def __init__(self, root: Path, rate: float, max_ops: int = 100_000, seed: int = 7) -> None:
        self.root, self.rate, self.max_ops = root, rate, max_ops
        self.ops = 0
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True, name="chaos-churn")
        self._th.start()

    def _run(self) -> None:
        dirs = [p for p in self.root.rglob("*") if p.is_dir()]
        files = [p for p in self.root.rglob("*.dat")]
        t0 = time.monotonic()
        while not self._stop.is_set() and self.ops < self.max_ops:
            self._stop.wait(max(0.0, t0 + self.ops / self.rate - time.monotonic()))
            roll = self.rng.random()
            try:
                if roll < 0.45 or not files:
                    p = self.rng.choice(dirs) / f"c{self.ops:06d}.dat"
                    p.write_bytes(b"x" * self.rng.randint(0, 4000))
                    files.append(p)
                elif roll < 0.7:
                    p = self.rng.choice(files)
                    with open(p, "ab") as f:
                        f.write(b"more")
                elif roll < 0.95:
                    p = files.pop(self.rng.randrange(len(files)))
                    p.unlink()
                else:
                    d = self.rng.choice(dirs) / f"n{self.ops:06d}"
                    d.mkdir()
                    dirs.append(d)
            except FileNotFoundError:
                pass
            self.ops += 1

    def stop(self) -> None:
        self._stop.set()
        self._th.join(timeout=30)


def divergence(want: tuple[dict, dict], got: tuple[dict, dict]) -> int:
    """How many paths differ: missing or extra files and dirs, files whose size or mtime
    differ, dirs whose mtime differs."""
    (wf, wd), (gf, gd) = want, got
    bad = (set(wf) ^ set(gf)) | (set(wd) ^ set(gd))
    bad |= {p for p in set(wf) & set(gf)
            if wf[p][0] != gf[p][0] or abs(wf[p][1] - gf[p][1]) > MTIME_TOL}
    bad |= {p for p in set(wd) & set(gd) if abs(wd[p] - gd[p]) > MTIME_TOL}
    return len(bad)


def converge(q: httpx.Client, tree: Path, timeout: float, alive=None) -> dict:
    """Poll until the view equals ``os.walk`` of ``tree``; the paths still differing at the
    deadline are ``diverged_paths`` (0 when it converged)."""
    t0 = time.monotonic()
    last: dict = {"diverged_paths": None, "difference": "the view never answered 200"}
    while True:
        if alive is not None:
            alive()
        r = q.get("/tree", params={"path": "/", "recursive": "true", "limit": 1_000_000})
        if r.status_code == 200:
            want, got = walk_fs(tree), walk_view(r.json())
            n = divergence(want, got)
            last = {"diverged_paths": n, "difference": tree_diff(want, got, show=5)}
            if n == 0:
                last["converge_s"] = round(time.monotonic() - t0, 2)
                return last
        if time.monotonic() - t0 > timeout:
            if last["diverged_paths"] is None:
                last["diverged_paths"] = -1
            return last
        time.sleep(0.3)


def summary_ms(samples: list[float]) -> dict:
    """p50 and max of a list of ms."""
    if not samples:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(samples), 1), "max": round(max(samples), 1)}
