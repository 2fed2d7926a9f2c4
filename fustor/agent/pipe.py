"""One pipe = one fs source + one fusion sender, run as a small state machine.

    ┌─────────────► no session ── create fails ──► back off (5, 10, 20 … 60 s), retry forever
    │                   │ created (role from the reply)
    │                   ▼
    │   session: heartbeat task (every timeout/3 s: role, commands)
    │            realtime task  (watcher events → "message" batches, in order, never dropped)
    │            leader task    (only while leader: snapshot once per session, 3 pushes in
    │                            flight; then audit every audit_interval, sentinel every
    │                            sentinel_interval)
    │                   │
    └── 419 on any call (new session at once) ── network or 5xx: the same data is retried

Fixes over the original agent: a failed push is retried (not a whole new scan), a
heartbeat failure never demotes the leader, audit start is signalled before the
walk and the end sent once, events carry a sequence number (none share a
millisecond), and walks run in threads so heartbeats are never starved. A 419 seen
by the leader task or an on-demand scan ends the session at once (not at the next
heartbeat), and ``stop()`` never waits on a fusion that is down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fustor.agent.sender_http import (
    FusionClient,
    FusionRejectedError,
    FusionUnavailableError,
    SenderError,
    SessionObsoleteError,
    make_event,
)

log = logging.getLogger("fustor.agent")


@dataclass
class PipeSettings:
    batch_size: int = 1000
    audit_interval_sec: float = 600.0
    sentinel_interval_sec: float = 120.0
    session_timeout_seconds: int | None = None
    error_retry_interval: float = 5.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 60.0
    startup_mode: str | None = None  # "message-only": no snapshot
    # snapshot batches awaiting fusion at once: the walk and fusion's commits overlap
    # (batches carry no order: each is a set of independent rows of one snapshot)
    snapshot_in_flight: int = 3

    def backoff(self, errors: int) -> float:
        if errors <= 0:
            return 0.0
        return min(self.error_retry_interval * self.backoff_multiplier ** (errors - 1),
                   self.max_backoff_seconds)


_END = object()
_UPGRADING = asyncio.Lock()
STOP_WAIT_SEC = 2.0  # how long stop() waits for cancelled tasks (agent.md §6.5)


class _ThreadIter:
    """Run a blocking generator in a thread; hand its items over through a small queue."""

    def __init__(self, make: Callable[[], Iterator], depth: int = 4) -> None:
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(make,), daemon=True)
        self._thread.start()

    def _produce(self, make) -> None:
        try:
            for item in make():
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put_final(_END)
        except BaseException as exc:  # hand the error to the consumer
            self._put_final(exc)

    def _put_final(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    async def __aiter__(self):
        try:
            while True:
                item = await asyncio.to_thread(self._q.get)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            # A cancelled consumer may leave an executor thread blocked in _q.get(); the
            # producer puts nothing more once stopped, so wake that thread here (it would
            # otherwise hold a default-executor worker forever and hang asyncio.run's exit).
            try:
                self._q.put_nowait(_END)
            except queue.Full:
                pass  # not empty: a blocked get() returns anyway


class AgentPipe:
    def __init__(self, pipe_id: str, task_id: str, source, client: FusionClient,
                 settings: PipeSettings, *, source_uri: str | None = None,
                 version: str = "0") -> None:
        self.pipe_id = pipe_id
        self.task_id = task_id
        self.source = source
        self.client = client
        self.s = settings
        self.source_uri = source_uri
        self.version = version
        self.session_id: str | None = None
        self.role: str | None = None
        self.state = "stopped"
        self.phase = "idle"
        self.last_error: str | None = None
        self.errors = 0
        self.events_pushed = 0
        self.rows_pushed = 0
        self.snapshot_done = False
        self.snapshot_progress: dict = {}
        self.started_at = time.time()
        self.last_realtime_push: float | None = None
        self.last_upgrade: str | None = None
        self._heartbeat_interval = 3.0
        self._audit_cache: dict[str, float] = {}
        self._pending_rt: list[dict] = []
        self._main: asyncio.Task | None = None
        self._leader: asyncio.Task | None = None
        self._jobs: set[asyncio.Task] = set()
        self._role_changed = asyncio.Event()
        self._lost: asyncio.Future | None = None  # set by a task that saw the session die

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        self.state = "starting"
        await asyncio.to_thread(self.source.start_watch)
        self._main = asyncio.create_task(self._run(), name=f"pipe:{self.pipe_id}")

    async def stop(self) -> None:
        self.state = "stopping"
        tasks = [t for t in (self._main, self._leader, *self._jobs) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_SEC)
            for t in done:
                if not t.cancelled():
                    t.exception()  # retrieved: a task that failed while stopping is not news
            if pending:
                log.warning("pipe %s: %d task(s) did not stop within %.0f s", self.pipe_id,
                            len(pending), STOP_WAIT_SEC)
        if self.session_id:
            try:
                await asyncio.wait_for(self.client.close_session(self.session_id), 5.0)
            except (TimeoutError, SenderError):
                pass
            self.session_id = None
        await asyncio.to_thread(self.source.stop_watch)
        await self.client.aclose()
        self.state = "stopped"

    async def _run(self) -> None:
        while True:
            try:
                await self._open_session()
                await self._session()
            except asyncio.CancelledError:
                raise
            except SessionObsoleteError as exc:
                log.info("pipe %s: %s; opening a new session", self.pipe_id, exc)
                self._drop_session()
                await asyncio.sleep(0.1)
            except (FusionUnavailableError, FusionRejectedError, OSError) as exc:
                self._drop_session()
                await self._failed(exc)
            except Exception as exc:  # a pipe never dies of a data-plane error
                log.exception("pipe %s: unexpected error", self.pipe_id)
                self._drop_session()
                await self._failed(exc)

    async def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.state = "backing off"
        wait = self.s.backoff(self.errors)
        log.warning("pipe %s: %s (retry %d in %.0f s)", self.pipe_id, self.last_error, self.errors, wait)
        await asyncio.sleep(wait)

    def _drop_session(self) -> None:
        self.session_id = None
        self.role = None
        if self._leader is not None:
            self._leader.cancel()
            self._leader = None

    async def _open_session(self) -> None:
        self.state = "connecting"
        reply = await self.client.create_session(self.task_id, self.source_uri,
                                                 self.s.session_timeout_seconds)
        self.session_id = reply["session_id"]
        self._lost = asyncio.get_running_loop().create_future()
        timeout = float(reply.get("session_timeout_seconds") or 30)
        self._heartbeat_interval = max(0.1, timeout / 3)
        if reply.get("audit_interval_sec") is not None:
            self.s.audit_interval_sec = float(reply["audit_interval_sec"])
        if reply.get("sentinel_interval_sec") is not None:
            self.s.sentinel_interval_sec = float(reply["sentinel_interval_sec"])
        self.snapshot_done = False
        self._audit_cache.clear()
        if self.errors:
            log.info("pipe %s: recovered after %d error(s)", self.pipe_id, self.errors)
        self.errors = 0
        self.last_error = None
        self.state = "running"
        self._set_role(reply.get("role") or "follower")
        log.info("pipe %s: session %s, role %s", self.pipe_id, self.session_id, self.role)

    def _set_role(self, role: str) -> None:
        if role == self.role:
            return
        self.role = role
        if role == "leader":
            self._audit_cache.clear()  # the first audit of a leadership is a full one
            if self._leader is None or self._leader.done():
                self._leader = asyncio.create_task(self._leader_duties())
        elif self._leader is not None:
            self._leader.cancel()
            self._leader = None

    def _session_lost(self, exc: SessionObsoleteError) -> None:
        """A leader duty or a job saw a 419: end the session now, not at the next heartbeat."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(exc)

    async def _session(self) -> None:
        tasks = [asyncio.create_task(self._heartbeats()), asyncio.create_task(self._realtime())]
        lost = self._lost
        try:
            done, _ = await asyncio.wait([*tasks, lost], return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            if not lost.done():
                lost.cancel()
            for t in tasks:
                t.cancel()
            for t in tasks:
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass

    # -- heartbeat and commands -----------------------------------------------------
    def agent_status(self) -> dict:
        return {"agent_id": self.task_id.split(":", 1)[0], "pipe_id": self.pipe_id,
                "version": self.version, "uptime_seconds": round(time.time() - self.started_at, 1),
                "state": self.state, "phase": self.phase, "role": self.role,
                "events_pushed": self.events_pushed, "rows_pushed": self.rows_pushed,
                "last_error": self.last_error, "last_upgrade": self.last_upgrade,
                "is_realtime_ready": self.source.status.get("watching", False),
                "watch": self.source.status}

    async def _heartbeats(self) -> None:
        while True:
            sid = self.session_id
            try:
                reply = await self.client.heartbeat(sid, bool(self.source.status.get("watching")),
                                                    self.agent_status())
            except FusionUnavailableError as exc:  # keep the role; the lease may still hold
                self.last_error = f"heartbeat: {exc}"
                await asyncio.sleep(min(self._heartbeat_interval, 1.0))
                continue
            self._set_role(reply.get("role") or self.role or "follower")
            for cmd in reply.get("commands") or []:
                self._command(cmd)
            await asyncio.sleep(self._heartbeat_interval)

    def _command(self, cmd: dict) -> None:
        kind = cmd.get("type")
        if kind == "scan":
            t = asyncio.create_task(self._scan(cmd.get("path") or "/", bool(cmd.get("recursive", True)),
                                               cmd.get("job_id")))
            self._jobs.add(t)
            t.add_done_callback(self._jobs.discard)
        elif kind == "reload_config":
            os.kill(os.getpid(), signal.SIGHUP)
        elif kind == "stop_pipe":
            if cmd.get("agent_pipe_id", cmd.get("pipe_id")) == self.pipe_id:
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.stop()))
        elif kind == "report_status":
            log.info("pipe %s status: %s", self.pipe_id, self.agent_status())
        elif kind == "upgrade":
            t = asyncio.create_task(self._upgrade(cmd))
            self._jobs.add(t)
            t.add_done_callback(self._jobs.discard)
        else:
            log.info("pipe %s: ignoring unknown command %r", self.pipe_id, kind)

    async def _upgrade(self, cmd: dict) -> None:
        """One upgrade per process at a time (every pipe's session may carry the command)."""
        from fustor.agent import upgrade as up

        if _UPGRADING.locked():
            return
        async with _UPGRADING:
            try:
                self.last_upgrade = await asyncio.to_thread(
                    up.upgrade, str(cmd.get("version") or ""), current=self.version,
                    index_url=cmd.get("index_url"), find_links=cmd.get("find_links"),
                    timeout=float(cmd.get("upgrade_timeout_sec") or 300))
            except up.UpgradeError as exc:
                self.last_upgrade = f"failed: {exc}"
                self.last_error = f"upgrade: {exc}"
            log.info("pipe %s: upgrade %s", self.pipe_id, self.last_upgrade)

    # -- pushing ----------------------------------------------------------------------
    async def _push(self, events: list[dict], phase: str, *, is_end: bool = False,
                    metadata: dict | None = None) -> None:
        """Push until fusion accepts it; only a lost session ends the attempt."""
        tries = 0
        while True:
            try:
                await self.client.push(self.session_id, events, phase, is_end=is_end, metadata=metadata)
                break
            except (FusionUnavailableError, FusionRejectedError) as exc:
                tries += 1
                self.last_error = f"push {phase}: {exc}"
                wait = exc.retry_after or self.s.backoff(tries)
                log.warning("pipe %s: %s (retry in %.1f s)", self.pipe_id, self.last_error, wait)
                await asyncio.sleep(wait)
        self.events_pushed += len(events)
        self.rows_pushed += sum(len(e["rows"]) for e in events)

    async def _realtime(self) -> None:
        while True:
            if not self._pending_rt:
                self._pending_rt = await asyncio.to_thread(self.source.drain, self.s.batch_size, 0.2)
            if not self._pending_rt:
                continue
            events = [make_event(e["rows"], "realtime", e["event_type"], e.get("seq", -1))
                      for e in self._pending_rt]
            await self._push(events, "realtime")
            self._pending_rt = []
            self.last_realtime_push = time.time()
            if self.source.status.get("overflowed") and self.role == "leader":
                self.source.clear_overflow()
                self.snapshot_done = False  # events were lost to overflow: walk again
                self._role_changed.set()

    # -- leader duties ----------------------------------------------------------------
    async def _leader_duties(self) -> None:
        """Snapshot, audits and sentinel sweeps; a lost session is noticed by the other tasks."""
        while True:
            try:
                await self._leader_loop()
            except SessionObsoleteError as exc:
                self._session_lost(exc)
                return
            except SenderError as exc:  # fusion unreachable or refusing: try again later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("pipe %s: leader duty: %s", self.pipe_id, exc)
                await asyncio.sleep(self.s.backoff(1))
            except Exception as exc:  # never die: report and try again later
                log.exception("pipe %s: leader duty failed", self.pipe_id)
                self.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(self.s.backoff(1))

    async def _leader_loop(self) -> None:
        next_audit = time.monotonic() + self.s.audit_interval_sec
        next_sentinel = time.monotonic() + self.s.sentinel_interval_sec
        while True:
            if not self.snapshot_done:
                await self._snapshot()
            now = time.monotonic()
            if self.s.audit_interval_sec > 0 and now >= next_audit:
                await self._audit()
                next_audit = time.monotonic() + self.s.audit_interval_sec
            if self.s.sentinel_interval_sec > 0 and now >= next_sentinel:
                await self._sentinel()
                next_sentinel = time.monotonic() + self.s.sentinel_interval_sec
            self._role_changed.clear()
            due = [t for t, on in ((next_audit, self.s.audit_interval_sec > 0),
                                   (next_sentinel, self.s.sentinel_interval_sec > 0)) if on]
            wait = min([1.0, *(t - time.monotonic() for t in due)])
            try:
                await asyncio.wait_for(self._role_changed.wait(), max(0.01, wait))
            except TimeoutError:
                pass

    async def _walk_and_push(self, make: Callable[[], Iterator], phase: str,
                             on_item: Callable | None = None, in_flight: int = 1) -> int:
        """Push a walk's batches, up to ``in_flight`` of them awaiting fusion at once, so
        the walk and fusion's commits overlap. Returns once every batch is acknowledged;
        a push that fails for good (a lost session) cancels the others and raises."""
        acked = 0
        t0 = time.monotonic()
        pending: set[asyncio.Task] = set()

        async def push(rows: list[dict]) -> None:
            nonlocal acked
            await self._push([make_event(rows, phase)], phase)
            acked += len(rows)
            el = time.monotonic() - t0
            self.snapshot_progress = {"phase": phase, "rows": acked, "elapsed_s": round(el, 1),
                                      "rows_per_s": round(acked / el) if el > 0 else 0}

        async def settle(at_most: int) -> None:
            while len(pending) > at_most:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.difference_update(done)
                for t in done:
                    t.result()

        try:
            async for item in _ThreadIter(make):
                rows = item if on_item is None else on_item(item)
                if rows:
                    await settle(max(1, in_flight) - 1)
                    pending.add(asyncio.create_task(push(rows)))
            await settle(0)
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return acked

    async def _snapshot(self) -> None:
        self.phase = "snapshot"
        n = 0
        if self.s.startup_mode != "message-only":
            n = await self._walk_and_push(self.source.snapshot, "snapshot",
                                          in_flight=self.s.snapshot_in_flight)
        await self._push([], "snapshot", is_end=True)
        self.snapshot_done = True
        self.phase = "realtime"
        log.info("pipe %s: snapshot complete, %d rows", self.pipe_id, n)

    async def _audit(self) -> None:
        self.phase = "audit"
        try:
            await self.client.audit_start()
        except FusionRejectedError:
            pass  # a fusion without the explicit start infers it from the first audit row
        cache_updates: dict[str, float] = {}

        def take(item):
            rows, upd = item
            cache_updates.update(upd)
            return rows

        cancelled = False
        try:
            await self._walk_and_push(lambda: self.source.audit(dict(self._audit_cache)), "audit", take)
        except asyncio.CancelledError:
            # stopping or demoted: no end marker, which could wait forever on a fusion that is
            # down; the next leader's audit starts over with its own start signal
            cancelled = True
            raise
        finally:
            if not cancelled:
                await self._push([], "audit", is_end=True)
            self._audit_cache.update(cache_updates)
            self.phase = "realtime"

    async def _sentinel(self) -> None:
        try:
            tasks = await self.client.sentinel_tasks()
        except (FusionUnavailableError, FusionRejectedError):
            return
        paths = tasks.get("paths") or []
        if not paths:
            return
        updates = await asyncio.to_thread(self.source.stat_paths, paths)
        if updates:
            try:
                await self.client.sentinel_feedback(updates)
            except (FusionUnavailableError, FusionRejectedError) as exc:
                self.last_error = f"sentinel: {exc}"

    async def _scan(self, path: str, recursive: bool, job_id: str | None) -> None:
        try:
            await self._scan_once(path, recursive, job_id)
        except SessionObsoleteError as exc:
            self._session_lost(exc)
        except SenderError as exc:
            self.last_error = f"scan {path}: {exc}"
        except Exception:
            log.exception("pipe %s: on-demand scan of %s failed", self.pipe_id, path)

    async def _scan_once(self, path: str, recursive: bool, job_id: str | None) -> None:
        await self._walk_and_push(lambda: self.source.scan_path(path, recursive), "on_demand_job")
        meta = {"scan_path": path}
        if job_id:
            meta["job_id"] = job_id
        await self._push([], "job_complete", metadata=meta)
