"""The fusion runtime without HTTP: config, views, sessions, and what each agent call does.

The API modules translate HTTP into calls on :class:`Fusion`; tests can call it
directly. The agent-facing methods take the caller's :class:`~fustor.fusion.auth.Principal`
(which routes resolve and scope-check before anything else, see ``auth.py``) and check
that sessions and views belong to the key's pipe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from fustor.config import FusionConfig, enabled_pipes
from fustor.datadir import DataDirLock
from fustor.errors import (
    BadPayloadError,
    ConfigError,
    ForbiddenError,
    NotFoundError,
    NotReadyError,
)
from fustor.fusion.action_log import ActionLog
from fustor.fusion.admission import Admission
from fustor.fusion.auth import KeyTable, Principal, check
from fustor.fusion.control import ControlPlane
from fustor.fusion.fleet import Fleet, realtime_coverage
from fustor.fusion.metrics import FusionMetrics
from fustor.fusion.sessions import Session, SessionManager
from fustor.fusion.views.forest import ForestView
from fustor.fusion.views.fs import FsView
from fustor.protocol import EXTENSIONS

log = logging.getLogger("fustor.fusion")
MAX_SESSION_TIMEOUT_S = 3600


class Fusion:
    def __init__(self, cfg: FusionConfig, data_dir: Path) -> None:
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.sessions = SessionManager()
        self.keys = KeyTable(cfg)
        self.fleet = Fleet()
        self.sessions.on_close = self.fleet.session_closed
        self.actions = ActionLog(self.data_dir)
        self._lock = DataDirLock(self.data_dir)
        self.control = ControlPlane(self)
        # re-reads the config and applies it (set by the server, which also binds and
        # unbinds receiver ports); returns the diff or raises ReloadRefusedError
        self.reloader: Callable[[], dict] | None = None
        self.views: dict[str, FsView | ForestView] = {}
        self.pipes = enabled_pipes(cfg)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self.counters = {"events_received": 0, "events_processed": 0, "errors": 0}
        self.metrics = FusionMetrics(self)
        # descriptors left for connections (read the limit after raising it)
        self.admission = Admission()

    # -- lifecycle ----------------------------------------------------------------
    def open(self) -> None:
        """Lock the data dir (one fusion per data dir) and open every enabled view."""
        self._lock.acquire()
        for vid, vc in self.cfg.views.items():
            if not vc.disabled:
                self.views[vid] = self._open_view(vid, vc)

    def _open_view(self, vid: str, vc) -> FsView | ForestView:
        params = dict(hot_file_threshold=vc.hot_file_threshold,
                      tombstone_ttl_seconds=vc.tombstone_ttl_seconds,
                      max_nodes=vc.max_nodes, max_tree_items=vc.max_tree_items,
                      settle_s=vc.settle_s)
        if vc.driver == "forest-fs":
            return ForestView(vid, self.data_dir / "views" / vid, self._forest_members(vid), **params)
        return FsView(vid, self.data_dir / "views" / f"{vid}.lmdb", **params)

    def _forest_members(self, vid: str, pipes=None) -> list[str]:
        return [p for p, pc in (pipes or self.pipes).items() if vid in pc.views]

    def fs_views(self) -> list[FsView]:
        """Every tree: fs views and the members of forest views."""
        out: list[FsView] = []
        for v in self.views.values():
            out.extend(v.members.values() if isinstance(v, ForestView) else [v])
        return out

    def keys_of_pipe(self, pipe_id: str) -> list[str]:
        """Election keys of a pipe: the fs view id, or ``<forest>:<pipe>`` for a forest."""
        return [self.views[v].member_key(pipe_id) if isinstance(self.views[v], ForestView) else v
                for v in self.pipes[pipe_id].views if v in self.views]

    def targets(self, pipe_id: str) -> list[FsView]:
        """The trees a pipe's events go to (a forest member is created on first sight)."""
        out = []
        for v in self.pipes[pipe_id].views:
            view = self.views.get(v)
            if isinstance(view, ForestView):
                out.append(view.member(pipe_id))
            elif view is not None:
                out.append(view)
        return out

    def reload(self, cfg: FusionConfig) -> dict:
        """Apply a new config: open added views, close removed ones, end the sessions of
        removed pipes, adopt changed settings. Sessions of kept pipes and all view data stay."""
        old_pipes = self.pipes
        new_pipes = enabled_pipes(cfg)
        wanted = {vid: vc for vid, vc in cfg.views.items() if not vc.disabled}
        added_views = [v for v in wanted if v not in self.views]
        removed_views = [v for v in self.views if v not in wanted]
        for vid in added_views:
            self.views[vid] = self._open_view(vid, wanted[vid])
        closing: list = []
        for vid, view in self.views.items():
            if isinstance(view, ForestView) and vid in wanted:
                closing.extend(view.set_members(self._forest_members(vid, new_pipes)))
                continue
            if vid in wanted:
                vc = wanted[vid]
                view.max_tree_items = vc.max_tree_items
                view.settle_s = vc.settle_s
                view.state.hot_file_threshold = vc.hot_file_threshold
                view.state.tombstone_ttl_seconds = vc.tombstone_ttl_seconds
                view.state.max_nodes = vc.max_nodes
        removed_pipes = [p for p in old_pipes if p not in new_pipes]
        changed = [p for p in new_pipes if p in old_pipes and new_pipes[p] != old_pipes[p]]
        self.cfg = cfg
        self.keys = KeyTable(cfg)
        self.pipes = new_pipes
        for s in list(self.sessions.sessions.values()):
            # a session stays when its pipe still elects on the same keys (for a forest
            # member the key is "<view>:<pipe>", not the view id)
            if s.pipe_id not in new_pipes or self.keys_of_pipe(s.pipe_id) != s.keys:
                self.sessions.close(s.session_id)  # the agent gets 419 and reconnects
        closing.extend(self.views.pop(vid) for vid in removed_views)
        _close_off_loop(closing)
        diff = {"views_added": added_views, "views_removed": removed_views,
                "pipes_added": [p for p in new_pipes if p not in old_pipes],
                "pipes_removed": removed_pipes, "pipes_changed": changed}
        log.info("config reloaded: %s", diff)
        return diff

    async def start_loops(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self.cfg.session_cleanup_interval, self._cleanup)),
            asyncio.create_task(self._every(0.5, self._sweep)),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        for v in self.views.values():
            v.close()
        self.views.clear()
        self.admission.close()
        self.actions.sync()
        self._lock.release()

    async def _every(self, interval: float, fn) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:  # a loop must never die
                log.exception("background task %s failed", fn.__name__)

    async def _cleanup(self) -> None:
        for s in self.sessions.expire():
            log.info("session %s (%s) expired", s.session_id, s.task_id)
        self.fleet.tick()
        self.sessions.purge_jobs()

    async def _sweep(self) -> None:
        for v in self.fs_views():
            if v.store.queued == 0 and await asyncio.to_thread(v.suspects_due, time.time()):
                await v.sweep_suspects()
            if v.store.queued == 0 and await asyncio.to_thread(v.tombstones_due):
                await v.purge_tombstones()
            if v.store.queued == 0 and await asyncio.to_thread(v.name_blocks_waiting):
                await v.write_name_filters()

    # -- keys ---------------------------------------------------------------------
    def principal(self, key: str | None) -> Principal:
        """The grants of an ``X-API-Key`` (401 if missing or unknown)."""
        return self.keys.lookup(key)

    def pipe_scope(self, who: Principal) -> str:
        check(who, "ingest")
        if who.pipe not in self.pipes:
            raise ConfigError(f"Pipe {who.pipe} not found or not enabled; check its receiver and views")
        return who.pipe

    def session_of(self, who: Principal, sid: str) -> Session:
        pipe = self.pipe_scope(who)
        s = self.sessions.get(sid)
        if s.pipe_id != pipe:
            raise ForbiddenError(f"session {sid} belongs to another pipe than this key's")
        return s

    def view(self, view_id: str) -> FsView | ForestView:
        v = self.views.get(view_id)
        if v is None:
            raise NotFoundError(f"view {view_id!r} is not configured")
        return v

    # -- sessions -----------------------------------------------------------------
    async def create_session(self, who: Principal, body: dict, client_ip: str | None = None) -> dict:
        pipe_id = self.pipe_scope(who)
        pc = self.pipes[pipe_id]
        hint = body.get("session_timeout_seconds")
        if hint and not 1 <= hint <= MAX_SESSION_TIMEOUT_S:
            raise BadPayloadError(f"session_timeout_seconds: {hint} is out of range; give 1 to "
                                  f"{MAX_SESSION_TIMEOUT_S} seconds (or leave it out for the "
                                  f"pipe's {pc.session_timeout_seconds})")
        info = body.get("client_info") or {}
        if not isinstance(info, dict):
            info = {}
        task_id = str(body["task_id"])
        source_uri = info.get("source_uri")
        for old in [o for o in self.sessions.for_pipe(pipe_id) if o.task_id == task_id]:
            if old.client_ip != client_ip or old.source_uri != source_uri:
                # another agent using the same agent_id: replacing it would make the two
                # evict each other forever (each eviction clears blind spots); keep both
                log.warning("two agents use the task id %s (%s and %s); give each agent its "
                            "own agent_id", task_id, old.client_ip, client_ip)
                continue
            # the same agent pipe reconnecting (e.g. restarted after a crash): its old
            # session is dead, so it must not keep the leadership until it times out
            log.info("session %s replaced by a new session of %s", old.session_id, task_id)
            self.sessions.close(old.session_id)
        s = self.sessions.create(
            pipe_id, self.keys_of_pipe(pipe_id), task_id, hint or pc.session_timeout_seconds,
            pc.allow_concurrent_push, source_uri, client_ip,
        )
        self.fleet.session_opened(s)
        for v in self.targets(pipe_id):
            await v.session_start()
        role = self.sessions.role(s)
        log.info("session %s created for %s (pipe %s): %s", s.session_id, s.task_id, pipe_id, role)
        return {
            "session_id": s.session_id, "role": role, "is_leader": role == "leader",
            "session_timeout_seconds": int(s.timeout) if s.timeout == int(s.timeout) else s.timeout,
            "audit_interval_sec": pc.audit_interval_sec,
            "sentinel_interval_sec": pc.sentinel_interval_sec,
            # what this fusion takes beyond the 0.8.17 protocol (0.8.17 agents ignore it)
            "extensions": list(EXTENSIONS),
            "message": "Session created successfully",
        }

    def heartbeat(self, who: Principal, sid: str, body: dict) -> dict:
        s = self.session_of(who, sid)
        status = body.get("agent_status")
        s, cmds = self.sessions.heartbeat(sid, body.get("can_realtime"),
                                          status if isinstance(status, dict) else None)
        self.fleet.heartbeat(s, status, cmds)
        role = self.sessions.role(s)
        return {"status": "ok", "role": role, "is_leader": role == "leader", "message": None,
                "can_realtime": None, "commands": cmds}

    def close_session(self, who: Principal, sid: str) -> dict:
        pipe = self.pipe_scope(who)
        s = self.sessions.sessions.get(sid)
        if s is not None and s.pipe_id != pipe:
            raise ForbiddenError(f"session {sid} belongs to another pipe than this key's")
        self.sessions.close(sid)
        return {"status": "terminated", "session_id": sid}

    # -- events -------------------------------------------------------------------
    async def push(self, who: Principal, sid: str, batch: dict) -> dict:
        s = self.session_of(who, sid)
        source_type = batch.get("source_type") or "message"
        meta = batch.get("metadata") or {}
        if source_type in ("job_complete", "find_complete", "scan_complete") or (
            source_type == "on_demand_job" and meta
        ):
            job = self.sessions.finish_scan(s, meta.get("scan_path"), meta.get("job_id"))
            if job is not None:
                self.fleet.job_finished(job.job_id)
            return {"status": "ok", "phase": "job_complete"}
        self.sessions.touch(sid)
        events = batch.get("events") or []
        views = self.targets(s.pipe_id)
        applied, rejected, unresolved = 0, [], set()
        if events:
            self.counters["events_received"] += len(events)
            results = await asyncio.gather(*(self._apply(v, events) for v in views))
            for res in results:
                applied = max(applied, res["applied"])
                rejected = rejected or res["rejected"]
                unresolved.update(res.get("unresolved") or ())
            self.counters["events_processed"] += len(events)
            s.events_pushed += len(events)
        out = {"status": "ok", "count": len(events), "applied_rows": applied}
        if rejected:
            out["rejected"] = rejected
        if unresolved:  # moves of directories a view did not hold: the agent walks them
            out["moves_unresolved"] = sorted(unresolved)
        if batch.get("is_end"):
            if source_type == "snapshot":
                if self.sessions.is_leader(s):
                    led = set(self.sessions.mark_snapshot_complete(s))
                    for v in views:
                        if v.id in led:
                            await v.mark_snapshot_complete()
                    out["phase"] = "snapshot_complete"
                else:
                    log.info("snapshot end from follower session %s ignored", sid)
            elif source_type == "audit":
                for v in views:
                    await v.audit_end()
                out["phase"] = "audit_end"
        return out

    async def _apply(self, view: FsView, events: list[dict]) -> dict:
        t0 = time.perf_counter()
        res = await view.apply_events(events)
        self.metrics.batch(view.id, res["applied"], len(res["rejected"]), time.perf_counter() - t0)
        return res

    # -- consistency signals (no session: the key names the pipe) ---------------------
    def _views_for_key(self, who: Principal) -> list[FsView]:
        """The trees of the key's pipe (the safe reading of spec §3.7)."""
        check(who, "ingest")
        return self.targets(who.pipe) if who.pipe in self.pipes else []

    async def audit_start(self, who: Principal) -> dict:
        views = self._views_for_key(who)
        for v in views:
            await v.audit_start()
        return {"status": "audit_started", "drivers_handled": len(views)}

    async def audit_end(self, who: Principal) -> dict:
        views = self._views_for_key(who)
        for v in views:
            await v.audit_end()
        return {"status": "audit_ended", "drivers_handled": len(views)}

    async def sentinel_tasks(self, who: Principal) -> dict:
        views = self._views_for_key(who)
        paths = await asyncio.to_thread(lambda: [p for v in views for p in v.suspect_paths()])
        if not paths:
            return {}
        return {"type": "suspect_check", "paths": sorted(set(paths)), "view_id": who.pipe}

    async def sentinel_feedback(self, who: Principal, body: dict) -> dict:
        views = self._views_for_key(who)
        if body.get("type") != "suspect_update":
            return {"status": "ignored", "reason": "unknown_type"}
        updates = body.get("updates") or []
        if not isinstance(updates, list):
            raise BadPayloadError("updates: must be a list of {path, mtime, size?, status?}")
        updates = [u for u in updates if isinstance(u, dict)]
        for v in views:
            await v.update_suspects(updates)
        return {"status": "processed", "drivers_updated": len(views)}

    # -- readiness ----------------------------------------------------------------
    def check_ready(self, view: FsView) -> None:
        if view.snapshot_completed_at is not None or self.sessions.snapshot_complete(view.id):
            return
        if not self.sessions.leader_connected(view.id):
            raise NotReadyError(
                f"View '{view.id}': No active leader session. Ensure at least one agent is running.",
                retry_after=10,
            )
        raise NotReadyError(
            f"View '{view.id}': Initial snapshot sync phase in progress (Leader is scanning storage)",
            retry_after=5,
        )

    def freshness(self, view: FsView) -> dict:
        leader = self.sessions.leader.get(view.id)
        return {
            "leader_connected": self.sessions.leader_connected(view.id),
            "snapshot_complete": self.sessions.snapshot_complete(view.id),
            "snapshot_completed_at": view.snapshot_completed_at,
            **realtime_coverage(self.sessions.sessions.get(leader) if leader else None),
        }


def _close_off_loop(things: list) -> None:
    """Close views (their writers finish queued jobs first) without holding the event loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        for t in things:
            t.close()
        return
    for t in things:
        loop.run_in_executor(None, t.close)
