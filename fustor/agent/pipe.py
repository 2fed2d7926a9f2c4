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

Commands in heartbeat replies: ``scan`` is this session's job; the others go to the
agent's :class:`~fustor.agent.commands.Commands` (run once agent-wide). Every heartbeat
carries ``agent_status`` with the last command results; a new result wakes the heartbeat
at once, and ``stop()`` sends one last short heartbeat before closing the session, so
fusion learns of a ``stop_pipe`` even from an agent's only pipe.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fustor.agent.commands import Commands, command_id
from fustor.agent.sender_http import (
    FusionClient,
    FusionRejectedError,
    FusionUnavailableError,
    SenderError,
    SessionObsoleteError,
    make_event,
)
from fustor.agent.thread_iter import ThreadIter
from fustor.protocol import MOVE_EXTENSION

log = logging.getLogger("fustor.agent")
PERMANENT = (400, 413, 422)  # fusion will refuse the same batch again: split it


def realtime_events(drained: list[dict]) -> list[dict]:
    """Wire events for drained realtime events: consecutive ones of the same type whose
    rows have the same fields travel as one event (the walk of a moved directory is
    thousands of rows; one event each would cost fusion a rule setup per row)."""
    out: list[dict] = []
    keys = None
    for e in drained:
        rows = e["rows"]
        k = (e["event_type"], tuple(rows[0]) if rows else ())
        if out and k == keys:
            out[-1]["rows"].extend(rows)
            out[-1]["index"] = e.get("seq", -1)
            continue
        out.append(make_event(list(rows), "realtime", e["event_type"], e.get("seq", -1)))
        keys = k
    return out


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
    max_consecutive_errors: int = 5  # errors in a row before the pipe says so loudly
    full_audit_every: int = 6  # every Nth audit re-reads silent directories too (0: never)
    # snapshot batches awaiting fusion at once: the walk and fusion's commits overlap
    # (batches carry no order: each is a set of independent rows of one snapshot)
    snapshot_in_flight: int = 3

    def backoff(self, errors: int) -> float:
        if errors <= 0:
            return 0.0
        return min(self.error_retry_interval * self.backoff_multiplier ** (errors - 1),
                   self.max_backoff_seconds)


STOP_WAIT_SEC = 2.0  # how long stop() waits for cancelled tasks (agent.md §6.5)
GOODBYE_SEC = 2.0  # the last heartbeat of a stopping pipe: best effort, never a hang
RATE_WINDOW_SEC = 10.0


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass. Not wait_for: on Python 3.11 it
    swallows a cancellation that arrives just as the event is set, and the task would then
    outlive stop()."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter], timeout=seconds)
    finally:
        waiter.cancel()


class _Rate:
    """Rows per second over the last ``window`` seconds (what `status` calls rows/s)."""

    def __init__(self, window: float = RATE_WINDOW_SEC) -> None:
        self.window = window
        self.since = time.monotonic()
        self._marks: deque[tuple[float, int]] = deque()

    def add(self, n: int) -> None:
        self._marks.append((time.monotonic(), n))

    def per_s(self) -> float:
        now = time.monotonic()
        while self._marks and self._marks[0][0] < now - self.window:
            self._marks.popleft()
        span = min(self.window, max(now - self.since, 1.0))  # no spike in the first second
        return round(sum(n for _, n in self._marks) / span, 1)


class AgentPipe:
    def __init__(self, pipe_id: str, task_id: str, source, client: FusionClient,
                 settings: PipeSettings, *, source_uri: str | None = None,
                 version: str = "0", commands: Commands | None = None) -> None:
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
        self._phase = "idle"
        self.last_error: str | None = None
        self.errors = 0
        self.events_pushed = 0
        self.rows_pushed = 0
        self.snapshot_done = False
        self._fusion_moves = False  # fusion's session reply lists the move extension
        self.snapshot_progress: dict = {}
        self.started_at = time.time()
        self.last_realtime_push: float | None = None  # when fusion acknowledged it
        self.last_heartbeat_at: float | None = None  # when fusion last answered one
        self.commands = commands if commands is not None else Commands()
        self.host = socket.gethostname()
        self._rate = _Rate()
        self._wake = asyncio.Event()
        self._heartbeat_interval = 3.0
        self._audit_cache: dict[str, float] = {}
        self._audits = 0
        self._repair = False  # realtime events were lost: the next leader duty is a repair
        self._arming: asyncio.Task | None = None  # a walk arming watches (no snapshot to do it)
        self._coverage: tuple | None = None  # the watch figures fusion last heard of
        self._pending_rt: list[dict] = []
        # realtime events drained by a worker thread wait here until pushed: a session that
        # ends while the thread drains must not take them with it
        self._staged: list[dict] = []
        self._staged_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._rt_in_flight = False  # a realtime push awaits fusion: the drain keeps staging
        self.rows_rejected = 0  # rows fusion named as invalid (it applied the rest)
        self.rows_dropped = 0  # rows fusion refused for good even alone: given up on
        self.last_rejected: str | None = None
        self._main: asyncio.Task | None = None
        self._leader: asyncio.Task | None = None
        self._jobs: set[asyncio.Task] = set()
        self._role_changed = asyncio.Event()
        self._lost: asyncio.Future | None = None  # set by a task that saw the session die
        self._stopping: asyncio.Future | None = None

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        """A new phase reaches fusion with the next heartbeat, sent now (not in up to
        timeout/3 s): dashboards show what the agent does, not what it did."""
        if value != self._phase:
            self._phase = value
            self._wake.set()

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        self.state = "starting"
        await asyncio.to_thread(self.source.start_watch)
        self._main = asyncio.create_task(self._run(), name=f"pipe:{self.pipe_id}")
        self.commands.attach(self)

    async def stop(self) -> None:
        """Stop once; a second caller (a stop_pipe command, then the agent's stop) waits for
        the same stop, which goes on even if the first caller is cancelled."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        self.state = "stopping"
        tasks = [t for t in (self._main, self._leader, self._arming, *self._jobs) if t is not None]
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
        self.commands.detach(self)
        if self.session_id:
            await self._goodbye()
            try:
                await asyncio.wait_for(self.client.close_session(self.session_id), 5.0)
            except (TimeoutError, SenderError):
                pass
            self.session_id = None
        await asyncio.to_thread(self.source.stop_watch)
        await self.client.aclose()
        self.state = "stopped"

    async def _goodbye(self) -> None:
        """One last heartbeat with the status (and the command results), best effort."""
        try:
            reply = await asyncio.wait_for(
                self.client.heartbeat(self.session_id, False, self.agent_status()), GOODBYE_SEC)
        except (TimeoutError, SenderError):
            return
        self.last_heartbeat_at = time.time()
        for cmd in reply.get("commands") or []:  # other pipes may still run these
            if isinstance(cmd, dict) and cmd.get("type") != "scan":
                self.commands.handle(self, cmd)

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
        if self.errors >= self.s.max_consecutive_errors:
            self.state = "error"  # still retrying, but an operator should look
            if self.errors == self.s.max_consecutive_errors:
                log.critical("pipe %s: %d errors in a row (max_consecutive_errors); still "
                             "retrying every %.0f s at most: %s", self.pipe_id, self.errors,
                             self.s.max_backoff_seconds, self.last_error)
        log.warning("pipe %s: %s (retry %d in %.0f s)", self.pipe_id, self.last_error, self.errors, wait)
        await asyncio.sleep(wait)

    def _use_moves(self) -> None:
        """Moves go as one row only to a fusion that takes them and, once this session's
        snapshot reached it, holds the tree they move (not with ``message-only``)."""
        use = getattr(self.source, "use_moves", None)
        if use is not None:
            use(bool(self.session_id and self._fusion_moves and self.snapshot_done
                     and self.s.startup_mode != "message-only"))

    def _rewalk(self, path) -> None:
        """Send the directory at ``path`` as the rows of a walk (a move fusion did not take)."""
        rewalk = getattr(self.source, "rewalk", None)
        if rewalk is not None and isinstance(path, str):
            rewalk(path)

    def _drop_session(self) -> None:
        self.session_id = None
        self.role = None
        self._use_moves()
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
        self._fusion_moves = MOVE_EXTENSION in (reply.get("extensions") or ())
        self._use_moves()
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
            return
        if self._leader is not None:
            self._leader.cancel()
            self._leader = None
        self._arm()  # a follower pushes realtime too: its watches must cover the tree

    def _arm(self) -> None:
        """Arm every watch by a walk of directories, unless a walk of the whole tree
        already did (a snapshot arms as it goes, so a leader never needs this)."""
        arm = getattr(self.source, "arm", None)
        if arm is None or getattr(self.source, "fully_armed", True):
            return
        if self._arming is None or self._arming.done():
            self._arming = asyncio.create_task(asyncio.to_thread(arm))

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

    @property
    def realtime_backlog(self) -> int:
        """Realtime events taken off the watcher and not yet acknowledged by fusion
        (staged for the next push, or in the push in flight)."""
        return len(self._staged) + len(self._pending_rt)

    # -- heartbeat and commands -----------------------------------------------------
    @property
    def lag_s(self) -> float | None:
        """Seconds since fusion last acknowledged a realtime push (None: not yet)."""
        return round(time.time() - self.last_realtime_push, 1) if self.last_realtime_push else None

    def agent_status(self) -> dict:
        return {"agent_id": self.task_id.split(":", 1)[0], "pipe_id": self.pipe_id,
                "host": self.host, "version": self.version,
                "uptime_seconds": round(time.time() - self.started_at, 1),
                "state": self.state, "phase": self.phase, "role": self.role,
                "events_pushed": self.events_pushed, "rows_pushed": self.rows_pushed,
                "rows_per_s": self._rate.per_s(), "lag_s": self.lag_s,
                "last_error": self.last_error, "last_upgrade": self.commands.last_upgrade,
                "is_realtime_ready": self.source.status.get("watching", False),
                "watch": self.source.status, "fusion_url": self.client.url,
                "fusion_reachable": self.client.reachable,
                "rows_rejected": self.rows_rejected, "rows_dropped": self.rows_dropped,
                "last_rejected": self.last_rejected,
                "commands": self.commands.results()}

    def wake_heartbeat(self) -> None:
        """Heartbeat now rather than at the next interval (a command result to report)."""
        self._wake.set()

    async def _heartbeats(self) -> None:
        while True:
            sid = self.session_id
            self._wake.clear()  # a result recorded from here on wakes the next pause
            try:
                reply = await self.client.heartbeat(sid, bool(self.source.status.get("watching")),
                                                    self.agent_status())
            except FusionUnavailableError as exc:  # keep the role; the lease may still hold
                self.last_error = f"heartbeat: {exc}"
                await self._pause(min(self._heartbeat_interval, 1.0))
                continue
            self.last_heartbeat_at = time.time()
            self._set_role(reply.get("role") or self.role or "follower")
            for cmd in reply.get("commands") or []:
                if isinstance(cmd, dict):
                    self._command(cmd)
            await self._pause(self._heartbeat_interval)

    async def _pause(self, seconds: float) -> None:
        await wait_event(self._wake, seconds)

    def _command(self, cmd: dict) -> None:
        if cmd.get("type") != "scan":
            self.commands.handle(self, cmd)  # agent-wide, once per command_id
            return
        t = asyncio.create_task(self._scan(cmd.get("path") or "/", bool(cmd.get("recursive", True)),
                                           cmd.get("job_id"), command_id(cmd)))
        self._jobs.add(t)
        t.add_done_callback(self._jobs.discard)

    # -- pushing ----------------------------------------------------------------------
    async def _push(self, events: list[dict], phase: str, *, is_end: bool = False,
                    metadata: dict | None = None) -> None:
        """Push until fusion accepts it; only a lost session ends the attempt.

        A batch fusion refuses as such (400/413/422: it will refuse it again) is split in
        halves and pushed piece by piece, so one bad row costs only itself: a single row
        refused alone is dropped and counted (``rows_dropped``) instead of blocking every
        event behind it. Rows fusion names as invalid in a 200 are counted too."""
        tries = 0
        while True:
            try:
                reply = await self.client.push(self.session_id, events, phase, is_end=is_end,
                                               metadata=metadata)
                break
            except FusionRejectedError as exc:
                if exc.status in PERMANENT and events and not is_end:
                    await self._push_split(events, phase, exc)
                    return
                tries += 1
                self.last_error = f"push {phase}: {exc}"
                wait = exc.retry_after or self.s.backoff(tries)
                log.warning("pipe %s: %s (retry in %.1f s)", self.pipe_id, self.last_error, wait)
                await asyncio.sleep(wait)
            except FusionUnavailableError as exc:
                tries += 1
                self.last_error = f"push {phase}: {exc}"
                wait = exc.retry_after or self.s.backoff(tries)
                log.warning("pipe %s: %s (retry in %.1f s)", self.pipe_id, self.last_error, wait)
                await asyncio.sleep(wait)
        unresolved = reply.get("moves_unresolved") if isinstance(reply, dict) else None
        if unresolved:  # fusion did not hold those trees: send their rows after all
            log.info("pipe %s: fusion could not move %d directory(ies) (%s): walking them",
                     self.pipe_id, len(unresolved), unresolved[0])
            for path in unresolved:
                self._rewalk(path)
        rejected = reply.get("rejected") if isinstance(reply, dict) else None
        if rejected:
            self.rows_rejected += len(rejected)
            first = rejected[0] if isinstance(rejected[0], dict) else {}
            self.last_rejected = f"{first.get('path')}: {first.get('reason')}"
        rows = sum(len(e["rows"]) for e in events)
        self.events_pushed += len(events)
        self.rows_pushed += rows
        self._rate.add(rows)

    async def _push_split(self, events: list[dict], phase: str, exc: FusionRejectedError) -> None:
        if len(events) > 1:
            half = len(events) // 2
            await self._push(events[:half], phase)
            await self._push(events[half:], phase)
            return
        rows = events[0]["rows"]
        if len(rows) > 1:
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                await self._push([{**events[0], "rows": part}], phase)
            return
        if events[0].get("event_type") == "move" and rows and isinstance(rows[0], dict):
            # refused as a move: the per-file form (delete the old place, walk the new)
            log.warning("pipe %s: fusion refused the move of %r (%s); sending it as rows",
                        self.pipe_id, rows[0].get("moved_from"), exc)
            await self._push([make_event([{"path": rows[0].get("moved_from")}], "realtime",
                                         "delete")], phase)
            self._rewalk(rows[0].get("path"))
            return
        self.rows_dropped += len(rows)
        path = rows[0].get("path") if rows and isinstance(rows[0], dict) else None
        self.last_rejected = f"{path}: {exc}"
        self.last_error = f"push {phase}: fusion refused {path!r} for good, dropped: {exc}"
        log.error("pipe %s: %s", self.pipe_id, self.last_error)

    def _drain_to_stage(self) -> None:
        """In a worker thread: move what the watcher has into the stage, waiting up to
        0.2 s for the first event. While a realtime push is in flight it keeps moving
        what arrives (up to a batch), so the next push carries everything that came
        during this one; with no push in flight it returns with the first events, which
        are pushed at once: an idle pipe adds no batching delay, a busy one batches.
        One drain at a time, so events keep their order even when a cancelled drain is
        still running."""
        with self._drain_lock:
            while True:
                with self._staged_lock:
                    room = self.s.batch_size - len(self._staged)
                if room <= 0:
                    return
                got = self.source.drain(room, 0.2)
                if got:
                    with self._staged_lock:
                        self._staged.extend(got)
                if not self._rt_in_flight:
                    return

    def _take_staged(self) -> list[dict]:
        with self._staged_lock:
            out, self._staged = self._staged[:self.s.batch_size], self._staged[self.s.batch_size:]
        return out

    async def _realtime(self) -> None:
        drain: asyncio.Future | None = None  # the drain running in a worker thread
        try:
            while True:
                self._watch_health()
                if not self._pending_rt:
                    if not self._staged:
                        if drain is None or drain.done():
                            drain = asyncio.ensure_future(asyncio.to_thread(self._drain_to_stage))
                        await drain
                    self._pending_rt = self._take_staged()
                if not self._pending_rt:
                    continue
                self._rt_in_flight = True
                if drain is None or drain.done():
                    # what arrives during the push (a moved tree's walk included) is staged
                    # meanwhile, behind the events being pushed
                    drain = asyncio.ensure_future(asyncio.to_thread(self._drain_to_stage))
                await self._push(realtime_events(self._pending_rt), "realtime")
                self._rt_in_flight = False
                self._pending_rt = []
                self.last_realtime_push = time.time()
        finally:
            self._rt_in_flight = False

    def _watch_health(self) -> None:
        """Events lost → the leader repairs (an audit, which can delete; a snapshot never
        does); followers keep the loss until they lead. A change in realtime coverage is
        told to fusion at once."""
        st = self.source.status
        if st.get("overflowed") and self.role == "leader" and not self._repair:
            self._repair = True
            self._role_changed.set()
        coverage = (st.get("watching"), st.get("watch_limit_reached"), st.get("unwatched_dirs"),
                    st.get("last_overflow_at"), st.get("fully_armed"))
        if coverage != self._coverage:
            if self._coverage is not None:
                self._wake.set()
            self._coverage = coverage

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
            if self._repair:
                self._repair = False
                await self._repair_lost()
                next_audit = time.monotonic() + self.s.audit_interval_sec
            elif self.s.audit_interval_sec > 0 and now >= next_audit:
                await self._audit()
                next_audit = time.monotonic() + self.s.audit_interval_sec
            if self.s.sentinel_interval_sec > 0 and now >= next_sentinel:
                await self._sentinel()
                next_sentinel = time.monotonic() + self.s.sentinel_interval_sec
            self._role_changed.clear()
            due = [t for t, on in ((next_audit, self.s.audit_interval_sec > 0),
                                   (next_sentinel, self.s.sentinel_interval_sec > 0)) if on]
            wait = min([1.0, *(t - time.monotonic() for t in due)])
            await wait_event(self._role_changed, max(0.01, wait))

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
            async for item in ThreadIter(make):
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
        else:
            self._arm()  # no snapshot to arm the watches as it goes
        await self._push([], "snapshot", is_end=True)
        self.snapshot_done = True
        self._use_moves()
        self.phase = "realtime"
        log.info("pipe %s: snapshot complete, %d rows", self.pipe_id, n)

    async def _repair_lost(self) -> None:
        """Re-audit where realtime events were lost: the directories concerned when the
        watcher knows them (a full queue), the whole tree when it does not (the kernel's
        queue overflowed). Taken before the walk, so a loss during it shows again."""
        take = getattr(self.source, "take_lost", None)
        scope = take() if take is not None else "all"
        if scope is None:
            return
        try:
            if scope == "all":
                log.warning("pipe %s: realtime events were lost somewhere; a full audit "
                            "repairs the view (additions and deletions)", self.pipe_id)
                await self._audit(full=True)
                return
            log.warning("pipe %s: realtime events were lost in %d place(s) (%s%s); an audit "
                        "of those repairs the view", self.pipe_id, len(scope),
                        ", ".join(p for p, _ in scope[:3]), ", ..." if len(scope) > 3 else "")
            await self._audit(scope=scope)
        except BaseException:
            # not repaired (stopped, demoted, session lost): the next leader's repair does it
            keep = getattr(self.source, "keep_lost", None)
            if keep is not None:
                keep(scope)
            raise

    async def _audit(self, full: bool = False, scope: list[tuple[str, bool]] | None = None) -> None:
        """One audit cycle. Directories whose mtime is unchanged since the last audit are
        "silent" (their files are not re-read); every ``full_audit_every``-th audit, and a
        repair, re-reads everything, so an in-place edit made through another NFS client
        (which changes no directory mtime) reaches the view too. A ``scope`` (a repair
        of lost events) audits only those directories, all of them re-read."""
        if scope is None:
            self._audits += 1
            every = self.s.full_audit_every
            if full or (every and self._audits % every == 0):
                self._audit_cache.clear()
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
            if scope is None:
                def walk():
                    return self.source.audit(dict(self._audit_cache))
            else:
                def walk():
                    return self.source.audit({}, scope)
            await self._walk_and_push(walk, "audit", take)
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

    async def _scan(self, path: str, recursive: bool, job_id: str | None,
                    cid: str | None = None) -> None:
        failed: str | None = "interrupted"
        rows = 0
        try:
            rows = await self._scan_once(path, recursive, job_id)
            failed = None
        except asyncio.CancelledError:
            failed = "the pipe stopped (or lost its session) before the scan finished"
            raise
        except SessionObsoleteError as exc:
            failed = f"session lost: {exc}"
            self._session_lost(exc)
        except SenderError as exc:
            failed = f"{exc}"
            self.last_error = f"scan {path}: {exc}"
        except Exception as exc:
            failed = f"{type(exc).__name__}: {exc}"
            log.exception("pipe %s: on-demand scan of %s failed", self.pipe_id, path)
        finally:
            if cid is not None:
                self.commands.record(
                    cid, "scan", "failed" if failed else "done",
                    failed or f"scanned {path}: {rows} row(s), job_complete sent", self.pipe_id)

    async def _scan_once(self, path: str, recursive: bool, job_id: str | None) -> int:
        rows = await self._walk_and_push(lambda: self.source.scan_path(path, recursive),
                                         "on_demand_job")
        meta = {"scan_path": path}
        if job_id:
            meta["job_id"] = job_id
        await self._push([], "job_complete", metadata=meta)
        return rows
