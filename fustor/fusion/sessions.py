"""Agent sessions, leases, leader election, readiness and command queues (in memory).

Sessions are kept in memory only: agents re-create them after a fusion restart
(a heartbeat for an unknown session answers 419). Everything a view knows is in
its store, so nothing here needs to survive a restart.

Election, per election key (an fs view id, or ``"<forest>:<pipe>"`` for a forest
member)::

    session created ──► key has no leader? ──yes──► leader (+ authoritative)
                              │ no
                              ▼
                allow_concurrent_push? ──no──► 409 (view locked)
                              │ yes
                              ▼
                          follower ──(leader closes / times out)──► oldest follower promoted

A push or a heartbeat refreshes a session's lease (unlike the original, where
only heartbeats did, so a snapshot longer than the timeout expired its own
session). Leadership moves only when the leader's session ends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fustor.errors import SessionConflictError, SessionObsoleteError

JOB_DONE_KEEP_S = 3600.0
JOB_MAX_AGE_S = 24 * 3600.0


@dataclass
class Session:
    session_id: str
    pipe_id: str
    keys: list[str]  # election keys, the first is the primary one
    task_id: str
    source_uri: str | None
    client_ip: str | None
    timeout: float
    allow_concurrent_push: bool
    created_at: float = field(default_factory=time.time)
    last_activity: float = 0.0
    can_realtime: bool = False
    commands: list[dict] = field(default_factory=list)
    pending_scans: set[str] = field(default_factory=set)
    agent_status: dict | None = None
    events_pushed: int = 0

    @property
    def agent_id(self) -> str:
        return self.task_id.split(":", 1)[0]


@dataclass
class Job:
    job_id: str
    view_id: str
    path: str
    recursive: bool
    expected: set[str]
    created_at: float = field(default_factory=time.time)
    done: set[str] = field(default_factory=set)
    completed_at: float | None = None

    def status(self, alive: set[str]) -> str:
        waiting = (self.expected & alive) - self.done
        return "COMPLETED" if not waiting else "RUNNING"


class SessionManager:
    def __init__(self, mono: Callable[[], float] = time.monotonic) -> None:
        self._mono = mono
        self.sessions: dict[str, Session] = {}
        self.leader: dict[str, str] = {}
        self.authoritative: dict[str, str] = {}
        self.completed: dict[str, str] = {}
        self.jobs: dict[str, Job] = {}
        self.on_close: Callable[[Session], None] | None = None  # e.g. the fleet's bookkeeping

    # -- lifecycle ----------------------------------------------------------------
    def create(
        self, pipe_id: str, keys: list[str], task_id: str, timeout: float,
        allow_concurrent_push: bool = True, source_uri: str | None = None,
        client_ip: str | None = None,
    ) -> Session:
        primary = keys[0]
        if not allow_concurrent_push and primary in self.leader:
            raise SessionConflictError(
                f"View {primary} is currently locked by session {self.leader[primary]}. "
                "Concurrent push is disabled."
            )
        s = Session(str(uuid.uuid4()), pipe_id, list(keys), task_id, source_uri, client_ip,
                    float(timeout), allow_concurrent_push)
        s.last_activity = self._mono()
        self.sessions[s.session_id] = s
        for k in keys:
            self._elect(k, s.session_id)
        return s

    def _elect(self, key: str, sid: str) -> bool:
        if key in self.leader:
            return self.leader[key] == sid
        self.leader[key] = sid
        self.authoritative[key] = sid
        return True

    def get(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None or self._expired(s):
            raise SessionObsoleteError(f"Session {sid} is unknown or expired; create a new session")
        return s

    def touch(self, sid: str) -> Session:
        s = self.get(sid)
        s.last_activity = self._mono()
        return s

    def heartbeat(self, sid: str, can_realtime: bool | None = None,
                  agent_status: dict | None = None) -> tuple[Session, list[dict]]:
        s = self.touch(sid)
        if can_realtime is not None:
            s.can_realtime = bool(can_realtime)
        if agent_status is not None:
            s.agent_status = agent_status
        for k in s.keys:
            self._elect(k, sid)
        cmds, s.commands = s.commands, []
        return s, cmds

    def close(self, sid: str) -> Session | None:
        s = self.sessions.pop(sid, None)
        if s is None:
            return None
        if self.on_close is not None:
            self.on_close(s)
        for k in s.keys:
            if self.leader.get(k) == sid:
                del self.leader[k]
                nxt = next((o for o in self.sessions.values() if k in o.keys), None)
                if nxt is not None:
                    self._elect(k, nxt.session_id)
        return s

    def expire(self) -> list[Session]:
        gone = [s for s in self.sessions.values() if self._expired(s)]
        for s in gone:
            self.close(s.session_id)
        return gone

    def _expired(self, s: Session) -> bool:
        return self._mono() - s.last_activity >= s.timeout

    # -- roles and readiness ------------------------------------------------------
    def role(self, s: Session) -> str:
        return "leader" if self.leader.get(s.keys[0]) == s.session_id else "follower"

    def is_leader(self, s: Session, key: str | None = None) -> bool:
        return self.leader.get(key or s.keys[0]) == s.session_id

    def mark_snapshot_complete(self, s: Session) -> list[str]:
        """Record a finished snapshot for every key the session leads; returns those keys."""
        done = [k for k in s.keys if self.leader.get(k) == s.session_id]
        for k in done:
            self.completed[k] = s.session_id
        return done

    def snapshot_complete(self, key: str) -> bool:
        a = self.authoritative.get(key)
        return a is not None and a in self.sessions and self.completed.get(key) == a

    def leader_connected(self, key: str) -> bool:
        sid = self.leader.get(key)
        return sid is not None and sid in self.sessions

    def for_key(self, key: str) -> list[Session]:
        return [s for s in self.sessions.values() if key in s.keys]

    def for_pipe(self, pipe_id: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.pipe_id == pipe_id]

    # -- commands and on-demand jobs ----------------------------------------------
    def queue(self, s: Session, command: dict) -> None:
        s.commands.append(command)

    def start_scan(self, view_id: str, key: str | None, path: str, recursive: bool, *,
                   targets: list[Session] | None = None, extra: dict | None = None) -> Job:
        """Queue a scan of ``path`` on every session of election ``key`` (or on ``targets``)."""
        targets = self.for_key(key) if targets is None else targets
        # 128 random bits: ids never repeat however many jobs a fusion starts (8 hex
        # digits collided within ~100k jobs)
        job = Job(uuid.uuid4().hex, view_id, path, recursive, {s.session_id for s in targets})
        self.jobs[job.job_id] = job
        for s in targets:
            s.pending_scans.add(path)
            self.queue(s, {"type": "scan", "path": path, "recursive": recursive,
                           "job_id": job.job_id, "created_at": job.created_at, **(extra or {})})
        return job

    def finish_scan(self, s: Session, path: str | None, job_id: str | None) -> Job | None:
        """The session finished its part of a scan; returns the job if that completed it."""
        if path:
            s.pending_scans.discard(path)
        job = self.jobs.get(job_id or "")
        if job is not None:
            job.done.add(s.session_id)
            if job.status(set(self.sessions)) == "COMPLETED" and job.completed_at is None:
                job.completed_at = time.time()
                return job
        return None

    def purge_jobs(self, now: float | None = None) -> int:
        """Forget jobs finished over an hour ago and any job over a day old."""
        now = time.time() if now is None else now
        old = [j.job_id for j in self.jobs.values()
               if (j.completed_at is not None and now - j.completed_at > JOB_DONE_KEEP_S)
               or now - j.created_at > JOB_MAX_AGE_S]
        for job_id in old:
            del self.jobs[job_id]
        return len(old)

    def scan_pending(self, key: str, path: str) -> str | None:
        for s in self.for_key(key):
            if path in s.pending_scans:
                for job in self.jobs.values():
                    if job.path == path and s.session_id in job.expected - job.done:
                        return job.job_id
                return ""
        return None
