"""Management commands from fusion, agent-wide: each ``command_id`` runs once, results kept.

Fusion queues a management command on every session of an agent (one per pipe), so the
same command arrives once per pipe. Pipes hand every command except ``scan`` to their
agent's one :class:`Commands`:

    command ──► command_id seen before? ── yes ──► dropped
                    │ no (or no id at all: an older fusion; runs as it always did)
                    ▼
                runs in a task of its own (it may stop the very pipe that delivered it)
                    │
                    ▼
                result {command_id, type, state: done|failed, detail, at}, the last 20 kept
                    │
                    ▼
                every pipe's heartbeat is woken and carries the results to fusion

``reload_config`` re-reads the config like SIGHUP does (but here its outcome is known),
``stop_pipe`` stops only the named agent pipe, ``report_status`` logs the status,
``upgrade`` installs another fustor (one at a time per process). A ``scan`` is a job of
the session that received it; the pipe records its result here (with its ``pipe_id``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fustor.agent import upgrade as up

if TYPE_CHECKING:
    from fustor.agent.pipe import AgentPipe

log = logging.getLogger("fustor.agent")

RESULTS_KEPT = 20
IDS_KEPT = 1000  # enough to outlast the one-per-pipe copies of any command
DETAIL_MAX = 300
FLUSH_SEC = 3.0  # how long an upgrade waits for heartbeats to carry its result before re-exec
AGENT_COMMANDS = ("reload_config", "stop_pipe", "report_status", "upgrade")

_UPGRADING = asyncio.Lock()  # per process: every pipe's session may deliver the command


class CommandFailed(Exception):
    """The command ran and did not do what was asked; the message is the result's detail."""


def describe_diff(diff: dict[str, Any]) -> str:
    """A reload's diff in a few words, e.g. ``added: b; changed: a`` or ``no changes``."""
    parts = [f"{k}: {', '.join(diff[k])}" for k in ("added", "removed", "changed") if diff.get(k)]
    if diff.get("logging_changed"):
        parts.append("logging changed")
    if diff.get("console_changed"):
        parts.append("console changed")
    return "; ".join(parts) or "no changes"


class Commands:
    """The agent's command desk: dedup by id, run once, keep the last results, wake heartbeats.

    ``reload`` re-reads the config and returns the diff (raising on a broken config);
    ``status`` is the agent's status. A bare pipe (no agent) gets a desk without them.
    """

    def __init__(self, *, reload: Callable[[], Awaitable[dict]] | None = None,
                 status: Callable[[], dict] | None = None) -> None:
        self._reload = reload
        self._status = status
        self._results: deque[dict] = deque(maxlen=RESULTS_KEPT)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pipes: list[AgentPipe] = []
        self._tasks: set[asyncio.Task] = set()
        self.last_upgrade: str | None = None
        self.closed = False

    # -- pipes ------------------------------------------------------------------------
    def attach(self, pipe: AgentPipe) -> None:
        if pipe not in self._pipes:
            self._pipes.append(pipe)

    def detach(self, pipe: AgentPipe) -> None:
        if pipe in self._pipes:
            self._pipes.remove(pipe)

    def results(self) -> list[dict]:
        return [dict(r) for r in self._results]

    def record(self, command_id: str, kind: str, state: str, detail: str,
               pipe_id: str | None = None) -> None:
        """Keep a result (replacing an earlier one of the same command and pipe) and have
        every pipe heartbeat now, so fusion learns it within a moment."""
        entry = {"command_id": command_id, "type": kind, "state": state,
                 "detail": _short(detail), "at": round(time.time(), 3)}
        if pipe_id is not None:
            entry["pipe_id"] = pipe_id
        for old in [r for r in self._results
                    if r["command_id"] == command_id and r.get("pipe_id") == pipe_id]:
            self._results.remove(old)
        self._results.append(entry)
        for p in self._pipes:
            p.wake_heartbeat()

    def seen(self, command_id: str | None) -> bool:
        """True if ``command_id`` came before (another pipe's copy); remembers it if not."""
        if command_id is None:
            return False
        if command_id in self._seen:
            return True
        self._seen[command_id] = None
        while len(self._seen) > IDS_KEPT:
            self._seen.popitem(last=False)
        return False

    # -- running ----------------------------------------------------------------------
    def handle(self, pipe: AgentPipe, cmd: dict) -> None:
        """Start an agent-level command delivered by ``pipe`` (not ``scan``: pipes run those)."""
        kind = cmd.get("type")
        cid = command_id(cmd)
        if self.closed or self.seen(cid):
            return
        if kind not in AGENT_COMMANDS:
            log.info("pipe %s: ignoring unknown command %r", pipe.pipe_id, kind)
            if cid is not None:  # tell fusion, or it waits for a result forever
                self.record(cid, str(kind), "failed",
                            f"unknown command {kind!r}; this agent runs fustor {pipe.version}")
            return
        t = asyncio.create_task(self._run(pipe, str(kind), cmd, cid), name=f"command:{kind}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _run(self, pipe: AgentPipe, kind: str, cmd: dict, cid: str | None) -> None:
        try:
            detail = await getattr(self, f"_{kind}")(pipe, cmd, cid)
            state = "done"
        except CommandFailed as exc:
            state, detail = "failed", str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a command never takes the agent down
            log.exception("command %s failed", kind)
            state, detail = "failed", f"{type(exc).__name__}: {exc}"
        if detail is None:  # the command recorded its own result
            return
        log.info("command %s (%s): %s: %s", kind, cid or "no id", state, detail)
        if cid is not None:
            self.record(cid, kind, state, detail)

    async def aclose(self) -> None:
        """The agent stops: no new commands; running ones are cancelled."""
        self.closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # -- the commands ---------------------------------------------------------------------
    async def _reload_config(self, pipe: AgentPipe, cmd: dict, cid: str | None) -> str:
        if self._reload is None:
            raise CommandFailed("this pipe runs outside an agent; nothing to reload")
        try:
            diff = await self._reload()
        except CommandFailed:
            raise
        except Exception as exc:  # a broken config: the running one stays
            raise CommandFailed(f"reload refused, keeping the running config: {exc}") from None
        return f"reloaded: {describe_diff(diff)}"

    async def _stop_pipe(self, pipe: AgentPipe, cmd: dict, cid: str | None) -> str | None:
        target = str(cmd.get("agent_pipe_id", cmd.get("pipe_id")) or "")
        victim = next((p for p in self._pipes if p.pipe_id == target), None)
        if victim is None:
            running = ", ".join(sorted(p.pipe_id for p in self._pipes)) or "none"
            raise CommandFailed(f"no running pipe {target!r} on this agent (running: {running})")
        detail = f"pipe {target} stopped"
        if cid is not None:
            # recorded before the stop: the pipe's last heartbeat carries it to fusion,
            # even when it was the agent's only pipe
            self.record(cid, "stop_pipe", "done", detail)
        log.info("pipe %s: stopping at fusion's request", target)
        await victim.stop()
        return None if cid is not None else detail

    async def _report_status(self, pipe: AgentPipe, cmd: dict, cid: str | None) -> str:
        if self._status is not None:
            st = self._status()
            pipes = st.get("pipes", {})
        else:
            pipes = {pipe.pipe_id: pipe.agent_status()}
            st = pipes[pipe.pipe_id]
        log.info("status requested by fusion: %s", st)
        each = ", ".join(f"{pid} {p.get('state')} {p.get('role') or '-'} {p.get('phase')}"
                         for pid, p in pipes.items())
        return f"{len(pipes)} pipe(s): {each}"

    async def _upgrade(self, pipe: AgentPipe, cmd: dict, cid: str | None) -> str:
        if _UPGRADING.locked():
            raise CommandFailed("another upgrade is running in this agent")
        version = str(cmd.get("version") or "")
        loop = asyncio.get_running_loop()

        def reexec() -> None:  # runs in the upgrade's thread, after a verified install
            if cid is not None:
                loop.call_soon_threadsafe(self.record, cid, "upgrade", "done",
                                          f"installed and verified {version}; restarting")
                try:
                    asyncio.run_coroutine_threadsafe(self.flush(), loop).result(FLUSH_SEC + 1)
                except Exception:  # noqa: BLE001 - best effort: restart regardless
                    pass
            up.restart()

        async with _UPGRADING:
            try:
                said = await asyncio.to_thread(
                    up.upgrade, version, current=pipe.version, index_url=cmd.get("index_url"),
                    find_links=cmd.get("find_links"), reexec=reexec,
                    timeout=float(cmd.get("upgrade_timeout_sec") or 300))
            except up.UpgradeError as exc:
                self.last_upgrade = f"failed: {exc}"
                pipe.last_error = f"upgrade: {exc}"
                raise CommandFailed(f"upgrade to {version or '?'} failed: {exc}") from None
        self.last_upgrade = said
        return said

    async def flush(self, timeout: float = FLUSH_SEC) -> None:
        """Wake every pipe and wait (up to ``timeout``) until each with a session has
        heartbeated since: the results so far have reached fusion."""
        t0 = time.time()
        for p in self._pipes:
            p.wake_heartbeat()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(p.session_id is None or (p.last_heartbeat_at or 0) > t0 for p in self._pipes):
                return
            await asyncio.sleep(0.02)


def command_id(cmd: dict) -> str | None:
    cid = cmd.get("command_id")
    return str(cid) if cid not in (None, "") else None


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= DETAIL_MAX else text[:DETAIL_MAX - 1] + "…"
