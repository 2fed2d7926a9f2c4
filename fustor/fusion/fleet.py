"""The agents fusion knows, and the commands and upgrades sent to them (in memory).

An agent is known by the ``agent_id`` in its sessions' task ids (``"<agent_id>:<pipe>"``).
What fusion knows of it comes from its sessions and from the ``agent_status`` its
heartbeats carry (agents of the original 0.8.17 send none: they are shown with what
their sessions tell). Commands travel on the heartbeat channel (spec §3.4)::

    queued ──(a heartbeat reply carries it)──► delivered ──(the agent's status reports it,
      │                                            │        or the effect is seen)──► done | failed
      └──(every session it was queued on ended)──► lost

An upgrade is a command that fusion also follows::

    pending ──(a heartbeat reports the new version)──────────────────────────► succeeded
       └────(the agent reports the upgrade failed/rolled back, or timeout)───► failed

Nothing here survives a restart: agents reconnect and report again; what was done is
in the management audit log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fustor.fusion.sessions import Session

COMMAND_TYPES = ("reload_config", "stop_pipe", "report_status", "scan")
FINAL = ("done", "failed", "lost")
MAX_COMMANDS = 1000  # finished commands kept for the dashboard, oldest dropped first
FORGET_AGENT_AFTER = 24 * 3600.0  # an agent gone this long leaves the dashboard
UPGRADE_GRACE_S = 60.0  # on top of the pip timeout: the restart and first heartbeat


@dataclass
class Command:
    command_id: str
    agent_id: str
    type: str
    args: dict
    by: str  # key id of the caller
    sessions: set[str]
    created_at: float = field(default_factory=time.time)
    state: str = "queued"
    delivered_at: float | None = None
    finished_at: float | None = None
    detail: str | None = None
    job_id: str | None = None

    def finish(self, state: str, detail: str | None = None) -> None:
        if self.state not in FINAL:
            self.state, self.detail, self.finished_at = state, detail, time.time()

    def as_dict(self) -> dict:
        return {"command_id": self.command_id, "agent_id": self.agent_id, "type": self.type,
                "args": self.args, "state": self.state, "created_at": self.created_at,
                "delivered_at": self.delivered_at, "finished_at": self.finished_at,
                "detail": self.detail, "by": self.by, "job_id": self.job_id}


@dataclass
class Upgrade:
    agent_id: str
    version: str
    from_version: str | None
    command_id: str
    timeout_s: float
    by: str
    started_at: float = field(default_factory=time.time)
    state: str = "pending"
    finished_at: float | None = None
    detail: str | None = None

    def finish(self, state: str, detail: str) -> None:
        if self.state == "pending":
            self.state, self.detail, self.finished_at = state, detail, time.time()

    def as_dict(self) -> dict:
        return {"agent_id": self.agent_id, "target_version": self.version,
                "from_version": self.from_version, "state": self.state,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "timeout_s": self.timeout_s, "detail": self.detail, "command_id": self.command_id,
                "by": self.by}


@dataclass
class AgentRecord:
    agent_id: str
    first_seen: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    last_heartbeat: float | None = None
    host: str | None = None
    client_ip: str | None = None
    version: str | None = None
    uptime_at: tuple[float, float] | None = None  # (uptime_seconds, when reported)
    pipes: dict[str, dict] = field(default_factory=dict)  # agent pipe id -> last status
    upgrade: Upgrade | None = None


def agent_pipe_of(s: Session) -> str:
    return s.task_id.split(":", 1)[1] if ":" in s.task_id else s.pipe_id


class Fleet:
    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.agents: dict[str, AgentRecord] = {}
        self.commands: dict[str, Command] = {}

    # -- what sessions tell -----------------------------------------------------------
    def _record(self, s: Session) -> AgentRecord:
        a = self.agents.get(s.agent_id)
        if a is None:
            a = self.agents[s.agent_id] = AgentRecord(s.agent_id)
        a.last_seen = self._now()
        a.client_ip = s.client_ip or a.client_ip
        return a

    def session_opened(self, s: Session) -> None:
        self._record(s)

    def heartbeat(self, s: Session, status: dict | None, delivered: list[dict]) -> None:
        """A heartbeat of ``s`` carried ``status`` and was answered with ``delivered``."""
        a = self._record(s)
        now = a.last_heartbeat = self._now()
        for cmd in delivered:
            c = self.commands.get(str(cmd.get("command_id")))
            if c is not None and c.state == "queued":
                c.state, c.delivered_at = "delivered", now
        if not isinstance(status, dict):
            return
        a.host = _text(status.get("host")) or a.host
        version = _text(status.get("version"))
        if version:
            a.version = version
        if isinstance(status.get("uptime_seconds"), (int, float)):
            a.uptime_at = (float(status["uptime_seconds"]), now)
        a.pipes[agent_pipe_of(s)] = {k: status.get(k) for k in _PIPE_FIELDS if k in status}
        for r in status.get("commands") or []:
            if isinstance(r, dict):
                self._result(a, r)
        self._follow_upgrade(a, status)

    def _result(self, a: AgentRecord, r: dict) -> None:
        c = self.commands.get(str(r.get("command_id")))
        if c is None or c.agent_id != a.agent_id or c.state in FINAL:
            return
        state = r.get("state")
        if state in ("done", "failed"):
            c.delivered_at = c.delivered_at or self._now()
            c.finish(state, _text(r.get("detail")))
            if c.type == "upgrade" and state == "failed" and a.upgrade is not None \
                    and a.upgrade.command_id == c.command_id:
                a.upgrade.finish("failed", c.detail or "the agent reported a failed upgrade")

    def _follow_upgrade(self, a: AgentRecord, status: dict) -> None:
        up = a.upgrade
        if up is None or up.state != "pending":
            return
        if a.version == up.version:
            up.finish("succeeded", f"the agent runs {up.version}")
            self._finish_command(up.command_id, "done", f"running {up.version}")
            return
        last = _text(status.get("last_upgrade")) or ""
        if last.startswith("failed"):
            up.finish("failed", last)
            self._finish_command(up.command_id, "failed", last)

    def session_closed(self, s: Session) -> None:
        """``s`` ended: a stop_pipe for it is done; commands with no session left are lost."""
        a = self.agents.get(s.agent_id)
        if a is not None:
            a.last_seen = self._now()
            a.pipes.pop(agent_pipe_of(s), None)
        for c in self.commands.values():
            if s.session_id not in c.sessions or c.state in FINAL:
                continue
            if c.type == "stop_pipe" and c.state == "delivered" \
                    and c.args.get("pipe_id") == agent_pipe_of(s):
                c.finish("done", "the pipe closed its session")
            c.sessions.discard(s.session_id)
            if not c.sessions and c.state == "queued":
                c.finish("lost", "the agent's sessions ended before the command was delivered")

    # -- commands and upgrades --------------------------------------------------------
    def new_command(self, agent_id: str, kind: str, args: dict, by: str,
                    sessions: list[Session]) -> Command:
        # agents run each command_id once: an id must never come back (128 random bits)
        c = Command(uuid.uuid4().hex, agent_id, kind, dict(args), by,
                    {s.session_id for s in sessions})
        self.commands[c.command_id] = c
        self._trim()
        return c

    def start_upgrade(self, agent_id: str, version: str, timeout_s: float, command: Command,
                      by: str) -> Upgrade:
        a = self.agents[agent_id]
        a.upgrade = Upgrade(agent_id, version, a.version, command.command_id, timeout_s, by)
        return a.upgrade

    def job_finished(self, job_id: str) -> None:
        for c in self.commands.values():
            if c.job_id == job_id:
                c.finish("done", "scan complete")

    def _finish_command(self, command_id: str, state: str, detail: str) -> None:
        c = self.commands.get(command_id)
        if c is not None:
            c.finish(state, detail)

    def tick(self) -> None:
        """Time out upgrades, forget agents long gone, keep the command list bounded."""
        now = self._now()
        for a in list(self.agents.values()):
            up = a.upgrade
            if up is not None and up.state == "pending" \
                    and now - up.started_at > up.timeout_s + UPGRADE_GRACE_S:
                up.finish("failed", f"no heartbeat reported version {up.version} within "
                          f"{up.timeout_s + UPGRADE_GRACE_S:.0f} s")
                self._finish_command(up.command_id, "failed", up.detail or "timed out")
            if now - a.last_seen > FORGET_AGENT_AFTER:
                del self.agents[a.agent_id]
        self._trim()

    def _trim(self) -> None:
        if len(self.commands) <= MAX_COMMANDS:
            return
        for cid in [c.command_id for c in self.commands.values() if c.state in FINAL]:
            if len(self.commands) <= MAX_COMMANDS:
                break
            del self.commands[cid]

    # -- answers ----------------------------------------------------------------------
    def commands_by_agent(self) -> dict[str, list[Command]]:
        out: dict[str, list[Command]] = {}
        for c in self.commands.values():
            out.setdefault(c.agent_id, []).append(c)
        return out

    def agent_json(self, a: AgentRecord, sessions: list[Session], role_of,
                   commands: list[Command]) -> dict:
        now = self._now()
        uptime = None
        if a.uptime_at is not None:
            uptime = round(a.uptime_at[0] + (now - a.uptime_at[1]), 1)
        pipes = []
        for s in sessions:
            st = a.pipes.get(agent_pipe_of(s), {})
            pipes.append({
                "pipe_id": agent_pipe_of(s), "fusion_pipe_id": s.pipe_id,
                "session_id": s.session_id, "role": role_of(s),
                "state": st.get("state"), "phase": st.get("phase"),
                "rows_pushed": st.get("rows_pushed"),  # None: an agent that reports no status
                "events_pushed": s.events_pushed, "rows_per_s": st.get("rows_per_s"),
                "lag_s": st.get("lag_s", st.get("realtime_lag_s")),
                "last_error": st.get("last_error"), "is_realtime_ready": s.can_realtime,
                "watch_limit_reached": (st.get("watch") or {}).get("watch_limit_reached"),
                "reports_status": bool(st),
            })
        return {
            "agent_id": a.agent_id, "host": a.host or a.client_ip, "client_ip": a.client_ip,
            "version": a.version, "uptime_seconds": uptime,
            "connected": bool(sessions), "first_seen": a.first_seen, "last_seen": a.last_seen,
            "last_heartbeat_age_s": round(now - a.last_heartbeat, 1) if a.last_heartbeat else None,
            "pipes": pipes, "upgrade": a.upgrade.as_dict() if a.upgrade else None,
            "commands": [c.as_dict() for c in commands[-20:]],
        }


_PIPE_FIELDS = ("state", "phase", "role", "rows_pushed", "events_pushed", "rows_per_s", "lag_s",
                "realtime_lag_s", "last_error", "last_upgrade", "is_realtime_ready", "watch",
                "fusion_url")


def _text(v) -> str | None:
    return v[:500] if isinstance(v, str) and v else None


def _num(v) -> float | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def realtime_coverage(s: Session | None) -> dict:
    """How much of a tree realtime covers, as its leader's agent last told (heartbeats
    carry it, and the agent sends one at once when it changes). ``realtime_coverage``:
    ``full``, ``partial`` (the watch limit was hit or some directories are not watched:
    changes there show only after an audit), ``arming`` (the first walk is still arming
    watches), ``off`` (nothing is watched), or ``unknown`` (no leader, or an agent that
    reports no status, such as 0.8.17's)."""
    w = (s.agent_status or {}).get("watch") if s is not None else None
    if not isinstance(w, dict):
        return {"realtime_coverage": "unknown", "watch_limit_reached": None,
                "watched_dirs": None, "unwatched_dirs": None, "last_overflow_at": None}
    limit = w.get("watch_limit_reached") is True
    unwatched = _num(w.get("unwatched_dirs"))
    if w.get("watching") is not True:
        coverage = "off"
    elif limit or (unwatched or 0) > 0:
        coverage = "partial"
    elif w.get("fully_armed") is False:
        coverage = "arming"
    else:
        coverage = "full"
    return {"realtime_coverage": coverage, "watch_limit_reached": limit,
            "watched_dirs": _num(w.get("watched_dirs")), "unwatched_dirs": unwatched,
            "last_overflow_at": _num(w.get("last_overflow_at"))}
