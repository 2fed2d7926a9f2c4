"""The control plane: what the management API does (dashboard, commands, upgrades,
config, reload), without HTTP. Every action is written to the management audit log.

The dashboard costs O(views + sessions + agents + commands): each view answers from its
root aggregate and table counts (O(1) each), never by walking files.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from packaging.version import InvalidVersion, Version

from fustor.errors import (
    BadPayloadError,
    ConflictError,
    FustorError,
    NotFoundError,
    PathError,
    ReloadRefusedError,
)
from fustor.fusion.auth import Principal
from fustor.fusion.fleet import COMMAND_TYPES, agent_pipe_of, realtime_coverage
from fustor.fusion.views.forest import ForestView
from fustor.store import keys

if TYPE_CHECKING:
    from fustor.fusion.core import Fusion
    from fustor.fusion.views.fs import FsView

REDACTED = "<redacted>"
DEFAULT_UPGRADE_TIMEOUT_S = 300.0


class ControlPlane:
    def __init__(self, fusion: Fusion) -> None:
        self.f = fusion

    # -- reading ------------------------------------------------------------------------
    def _role(self, s) -> str:
        return self.f.sessions.role(s)

    def _sessions_by_agent(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for s in self.f.sessions.sessions.values():
            out.setdefault(s.agent_id, []).append(s)
        return out

    def agents(self) -> list[dict]:
        fleet = self.f.fleet
        fleet.tick()
        by_agent = self._sessions_by_agent()
        cmds = fleet.commands_by_agent()
        for agent_id, sessions in by_agent.items():  # sessions opened before a restart of
            if agent_id not in fleet.agents:           # the fleet record, e.g. after reload
                fleet.session_opened(sessions[0])
        return [fleet.agent_json(a, by_agent.get(a.agent_id, []), self._role,
                                 cmds.get(a.agent_id, []))
                for a in sorted(fleet.agents.values(), key=lambda a: a.agent_id)]

    def agent(self, agent_id: str) -> dict:
        for a in self.agents():
            if a["agent_id"] == agent_id:
                return a
        raise NotFoundError(f"agent {agent_id!r} is not known to this fusion (it has never "
                            "opened a session, or has been gone for a day)")

    @staticmethod
    def _tree_figures(v: FsView) -> dict:
        """What a tree's store says (one read transaction; O(1)); runs in a worker thread."""
        try:
            st = v.stats("/")
        except NotFoundError:  # an empty store: not even "/" yet
            st = {"file_count": 0, "dir_count": 0, "total_size": 0, "latest_mtime": 0.0,
                  "has_blind_spot": False, "suspect_file_count": 0,
                  "blind_spot_additions": 0, "blind_spot_deletions": 0}
        last = st.get("last_event_at")
        return {
            "file_count": st["file_count"], "dir_count": st["dir_count"],
            "total_size": st["total_size"], "latest_mtime": st["latest_mtime"],
            "snapshot_completed_at": v.snapshot_completed_at,
            "last_event_at": last,
            "seconds_since_last_event": round(time.time() - last, 1) if last else None,
            "is_auditing": st.get("is_auditing", False),
            "last_audit_finished_at": st.get("last_audit_finished_at"),
            "audit_cycle_count": st.get("audit_cycle_count"),
            "has_blind_spot": st["has_blind_spot"],
            "blind_spot_additions": st["blind_spot_additions"],
            "blind_spot_deletions": st["blind_spot_deletions"],
            "suspect_count": st["suspect_file_count"],
        }

    def _tree_sessions(self, key: str, by_key: dict[str, list]) -> dict:
        """What the sessions say of one election key (in memory; on the event loop)."""
        sm = self.f.sessions
        leader = sm.leader.get(key)
        ls = sm.sessions.get(leader) if leader else None
        return {"snapshot_complete": sm.snapshot_complete(key),
                "leader_connected": sm.leader_connected(key),
                "leader_session": leader, "leader_agent": ls.agent_id if ls else None,
                "sessions": len(by_key.get(key, [])), **realtime_coverage(ls)}

    def dashboard_plan(self) -> tuple[dict, list]:
        """Everything in memory, copied on the event loop (where sessions and the fleet
        change), plus the trees whose stores :meth:`dashboard_finish` must read."""
        f = self.f
        sm = f.sessions
        by_key: dict[str, list] = {}
        by_pipe: dict[str, list] = {}
        for s in sm.sessions.values():
            by_pipe.setdefault(s.pipe_id, []).append(s)
            for k in s.keys:
                by_key.setdefault(k, []).append(s)
        trees: list[tuple[dict, FsView]] = []
        views = []
        for vid, v in sorted(f.views.items()):
            if isinstance(v, ForestView):
                members = {}
                for p, m in sorted(v.members.items()):
                    members[p] = self._tree_sessions(v.member_key(p), by_key)
                    trees.append((members[p], m))
                views.append({"view_id": vid, "kind": v.driver, "members": members})
            else:
                views.append({"view_id": vid, "kind": v.driver, **self._tree_sessions(vid, by_key)})
                trees.append((views[-1], v))
        pipes = []
        for pid, pc in sorted(f.pipes.items()):
            pipes.append({"pipe_id": pid, "receiver": pc.receiver, "views": list(pc.views),
                          "sessions": len(by_pipe.get(pid, [])),
                          "leaders": {k: (sm.sessions[sm.leader[k]].agent_id
                                          if sm.leader.get(k) in sm.sessions else None)
                                      for k in f.keys_of_pipe(pid)},
                          "allow_concurrent_push": pc.allow_concurrent_push,
                          "session_timeout_seconds": pc.session_timeout_seconds})
        receivers = [{"receiver_id": rid, "driver": rc.driver, "bind_host": rc.bind_host,
                      "port": rc.port, "disabled": rc.disabled, "tls": f.cfg.tls,
                      "pipes": sorted({k.pipe_id for k in rc.api_keys})}
                     for rid, rc in sorted(f.cfg.receivers.items())]
        out = {"generated_at": time.time(), "fusion": {
                   "started_at": f.started_at, "uptime_seconds": round(time.time() - f.started_at, 1),
                   "version": _version(), "views": len(f.views), "sessions": len(sm.sessions),
                   "tls": f.cfg.tls, "config_files": list(f.cfg.files),
                   "open_files": f.admission.figures(f.data_dir)},
               "views": views, "agents": self.agents(), "pipes": pipes, "receivers": receivers}
        return out, trees

    @classmethod
    def dashboard_finish(cls, out: dict, trees: list) -> dict:
        """Add each tree's store figures (call from a worker thread; touches no shared state)."""
        for entry, tree in trees:
            entry.update(cls._tree_figures(tree))
            entry["ready"] = entry["snapshot_completed_at"] is not None or entry["snapshot_complete"]
        for v in out["views"]:
            if "members" in v:
                for k in ("file_count", "dir_count", "total_size"):
                    v[k] = sum(m[k] for m in v["members"].values())
        return out

    def dashboard(self) -> dict:
        """One answer for the whole site, O(views + sessions + agents + commands); the
        HTTP route runs the two halves on the loop and in a worker thread."""
        return self.dashboard_finish(*self.dashboard_plan())

    def config_json(self) -> dict:
        """fusion's effective config with every key replaced by its id."""
        cfg = self.f.cfg
        out = {k: v for k, v in dataclasses.asdict(cfg).items()
               if k not in ("generated_keys", "keys_created", "admin_keys", "receivers", "views")}
        out["admin_keys"] = [{"name": k.name or f"#{i}", "key": REDACTED}
                             for i, k in enumerate(cfg.admin_keys)]
        out["receivers"] = {rid: {**dataclasses.asdict(rc), "api_keys": [
            {"pipe_id": k.pipe_id, "key": REDACTED} for k in rc.api_keys]}
            for rid, rc in cfg.receivers.items()}
        out["views"] = {vid: {**dataclasses.asdict(vc), "api_keys": [REDACTED] * len(vc.api_keys)}
                        for vid, vc in cfg.views.items()}
        out["enabled_pipes"] = sorted(self.f.pipes)
        return out

    # -- acting -------------------------------------------------------------------------
    def _logged(self, who: Principal, action: str, target: str | None, fn, detail=None):
        """Run ``fn()``; record the action and its outcome (also when it fails)."""
        try:
            out = fn()
        except FustorError as exc:
            self.f.actions.record(who.key_id, action, target, exc.code, exc.message[:500])
            raise
        self.f.actions.record(who.key_id, action, target, "ok",
                              detail(out) if callable(detail) else detail)
        return out

    def _live_sessions(self, agent_id: str) -> list:
        sessions = [s for s in self.f.sessions.sessions.values() if s.agent_id == agent_id]
        if not sessions:
            if agent_id in self.f.fleet.agents:
                raise ConflictError(f"agent {agent_id!r} has no live session; commands reach "
                                    "an agent through its heartbeats, so start it first")
            raise NotFoundError(f"agent {agent_id!r} is not known to this fusion")
        return sessions

    def command(self, who: Principal, agent_id: str, body: dict) -> dict:
        kind = body.get("type")
        return self._logged(who, f"command {kind}", agent_id,
                            lambda: self._command(who, agent_id, kind, body),
                            lambda out: f"queued on {out['sessions_queued']} session(s)")

    def _command(self, who: Principal, agent_id: str, kind, body: dict) -> dict:
        if kind == "upgrade":
            raise BadPayloadError("type: use POST /api/v1/management/agents/{agent_id}/upgrade "
                                  "for upgrades (fusion follows them to the end)")
        if kind not in COMMAND_TYPES:
            raise BadPayloadError(f"type: unknown command {kind!r} (use one of: "
                                  f"{', '.join(COMMAND_TYPES)})")
        sessions = self._live_sessions(agent_id)
        args: dict = {}
        if kind == "stop_pipe":
            pipe = body.get("pipe_id")
            if not isinstance(pipe, str) or not pipe:
                raise BadPayloadError("pipe_id: required for stop_pipe (the agent's pipe id)")
            known = sorted({agent_pipe_of(s) for s in sessions})
            if pipe not in known:
                raise NotFoundError(f"agent {agent_id!r} runs no pipe {pipe!r} (its pipes: "
                                    f"{', '.join(known)})")
            args = {"pipe_id": pipe, "agent_pipe_id": pipe}
        elif kind == "scan":
            path = body.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise BadPayloadError("path: required for scan, an absolute path in the view "
                                      "(e.g. /projects/x)")
            try:
                path = keys.display(keys.normalise(path))
            except PathError as exc:
                raise BadPayloadError(f"path: {exc.message}") from None
            args = {"path": path, "recursive": bool(body.get("recursive", True))}
        c = self.f.fleet.new_command(agent_id, kind, args, who.key_id, sessions)
        if kind == "scan":
            view = self.f.pipes[sessions[0].pipe_id].views[0]
            job = self.f.sessions.start_scan(view, None, args["path"], args["recursive"],
                                             targets=sessions, extra={"command_id": c.command_id})
            c.job_id = job.job_id
        else:
            for s in sessions:
                self.f.sessions.queue(s, {"type": kind, "command_id": c.command_id, **args})
        return {"status": "queued", "agent_id": agent_id, "command_id": c.command_id,
                "type": kind, "sessions_queued": len(sessions), "job_id": c.job_id}

    def upgrade(self, who: Principal, agent_id: str, body: dict) -> dict:
        return self._logged(who, "upgrade", agent_id,
                            lambda: self._upgrade(who, agent_id, body),
                            lambda out: f"to {out['target_version']} via "
                                        f"{_safe_url(body.get('index_url') or body.get('find_links'))}")

    def _upgrade(self, who: Principal, agent_id: str, body: dict) -> dict:
        version = _pep440(body.get("version"))
        # upgrade_timeout_sec: the name in the original's management-plane design
        timeout = body.get("timeout_s", body.get("upgrade_timeout_sec", DEFAULT_UPGRADE_TIMEOUT_S))
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 3600:
            raise BadPayloadError("timeout_s: seconds the agent's pip install may take, 1 to 3600")
        sources = {}
        for name in ("index_url", "find_links"):
            v = body.get(name)
            if v is not None and (not isinstance(v, str) or not v):
                raise BadPayloadError(f"{name}: a URL (or path) string")
            if v:
                sources[name] = v
        sessions = self._live_sessions(agent_id)
        rec = self.f.fleet.agents.get(agent_id)
        if rec is None:
            self.f.fleet.session_opened(sessions[0])
            rec = self.f.fleet.agents[agent_id]
        if rec.upgrade is not None and rec.upgrade.state == "pending":
            raise ConflictError(f"agent {agent_id!r} already has an upgrade to "
                                f"{rec.upgrade.version} pending; wait for it to succeed or fail")
        c = self.f.fleet.new_command(agent_id, "upgrade", {"version": version, **{
            k: _safe_url(v) for k, v in sources.items()}}, who.key_id, sessions)
        up = self.f.fleet.start_upgrade(agent_id, version, float(timeout), c, who.key_id)
        for s in sessions:
            self.f.sessions.queue(s, {"type": "upgrade", "command_id": c.command_id,
                                      "version": version, "upgrade_timeout_sec": float(timeout),
                                      **sources})
        return {"status": "queued", "agent_id": agent_id, "target_version": version,
                "from_version": up.from_version, "command_id": c.command_id,
                "sessions_queued": len(sessions)}

    def reload(self, who: Principal) -> dict:
        def run():
            if self.f.reloader is None:
                raise ReloadRefusedError("this fusion runs on its built-in default config "
                                         "(no config files), so there is nothing to re-read")
            return self.f.reloader()

        diff = self._logged(who, "reload", None, run, lambda d: diff_text(d))
        return {"status": "reloaded", "diff": diff}

    def reset(self, who: Principal, view_id: str, fn):
        return self._logged(who, "reset view", view_id, fn)

    def record(self, who: Principal, action: str, target: str, detail: str | None = None) -> None:
        self.f.actions.record(who.key_id, action, target, "ok", detail)


def _pep440(v) -> str:
    if not isinstance(v, str) or not v.strip():
        raise BadPayloadError("version: required, a release number such as 0.2.0")
    try:
        parsed = Version(v.strip())
    except InvalidVersion:
        raise BadPayloadError(f"version: {v!r} is not a PEP 440 version (e.g. 1.2.0, "
                              "1.3.0rc1)") from None
    if parsed.local or parsed.epoch:
        raise BadPayloadError(f"version: {v!r}: local versions (+...) and epochs (N!) cannot "
                              "be installed by the agent's upgrade")
    return str(parsed)


def _safe_url(url: str | None) -> str | None:
    """``url`` without any user:password part (it lands in logs and answers)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password or parts.username:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
    return url


def diff_text(diff: dict) -> str:
    parts = [f"{k}: {', '.join(map(str, v))}" for k, v in diff.items() if v]
    return "; ".join(parts) or "no change"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fustor")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"
