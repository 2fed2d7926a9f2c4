"""The agent process: builds pipes from config, runs them, reloads on SIGHUP, reports status.

Status for `fustor agent status` is written every ``status_interval_sec`` to
``$FUSTOR_HOME/agent-status.json`` (pid, host, uptime, the console's address, the last
command results; per pipe: fusion URL and whether it answers, state, role, phase, rows
pushed, rows/s, realtime lag, last error, snapshot progress, watch health); the console
(fustor/agent/console.py) serves the same status on 127.0.0.1:8100.

Fusion's management commands go to one :class:`Commands` shared by every pipe, so a
command that arrives on each pipe's session runs once; ``reload_config`` runs
:meth:`Agent.apply_reload` (what SIGHUP does) directly, so its result is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from fustor.agent.commands import CommandFailed, Commands, describe_diff
from fustor.agent.config import AgentConfig, config_diff, enabled_pipes, resolve_agent_id
from fustor.agent.console import Console
from fustor.agent.metrics import AgentMetrics
from fustor.agent.pipe import AgentPipe, PipeSettings
from fustor.agent.sender_http import FusionClient
from fustor.agent.source_fs import FsSource
from fustor.cli_util import setup_logging

log = logging.getLogger("fustor.agent")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v("fustor")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def build_pipe(cfg: AgentConfig, pipe_id: str, agent_id: str, transport=None,
               commands: Commands | None = None) -> AgentPipe:
    pc = cfg.pipes[pipe_id]
    src = cfg.sources[pc.source]
    snd = cfg.senders[pc.sender]
    source = FsSource(src.uri, file_pattern=src.file_pattern, scan_workers=src.max_scan_workers,
                      throttle_interval_sec=src.throttle_interval_sec, batch_rows=snd.batch_size,
                      max_pending_events=src.queue_bound)
    client = FusionClient(snd.uri, snd.api_key, timeout=snd.timeout, transport=transport,
                          ca_file=snd.ca_file)
    settings = PipeSettings(
        batch_size=snd.batch_size, audit_interval_sec=pc.audit_interval_sec,
        sentinel_interval_sec=pc.sentinel_interval_sec,
        session_timeout_seconds=pc.session_timeout_seconds,
        error_retry_interval=pc.error_retry_interval, backoff_multiplier=pc.backoff_multiplier,
        max_backoff_seconds=pc.max_backoff_seconds, startup_mode=src.startup_mode,
        max_consecutive_errors=pc.max_consecutive_errors, full_audit_every=pc.full_audit_every,
    )
    return AgentPipe(pipe_id, f"{agent_id}:{pipe_id}", source, client, settings,
                     source_uri=str(src.uri), version=version(), commands=commands)


class Agent:
    def __init__(self, cfg: AgentConfig, *, status_file: Path | None = None,
                 load_config: Callable[[], AgentConfig] | None = None, transport=None) -> None:
        self.cfg = cfg
        self.agent_id = resolve_agent_id(cfg)
        self.pipes: dict[str, AgentPipe] = {}
        self.status_file = status_file
        self._load_config = load_config
        self._transport = transport
        self.started_at = time.time()
        self.host = socket.gethostname()
        self.commands = Commands(reload=self.apply_reload, status=self.status)
        self.console: Console | None = None
        self.metrics = AgentMetrics(self.status)
        self._console_wanted = False  # run() serves it; an embedded agent (fusion --watch) not
        self._reloading = asyncio.Lock()
        self._stop = asyncio.Event()

    async def start(self) -> None:
        async with self._reloading:  # a SIGHUP meanwhile waits: it must see every pipe
            await self._start_pipes()

    async def _start_pipes(self) -> None:
        for pid in enabled_pipes(self.cfg):
            await self._start_pipe(pid)

    async def _start_pipe(self, pid: str) -> None:
        try:
            pipe = build_pipe(self.cfg, pid, self.agent_id, self._transport, self.commands)
            pipe.client.observe_push = self.metrics.push_seconds.labels(pid).observe
            await pipe.start()
            self.pipes[pid] = pipe
            log.info("pipe %s started (%s)", pid, pipe.task_id)
        except Exception as exc:  # one bad pipe does not stop the others
            log.error("pipe %s could not start: %s", pid, exc)

    async def stop(self) -> None:
        await self.commands.aclose()  # first: a running reload must not start pipes anew
        await self._stop_console()
        await asyncio.gather(*(p.stop() for p in self.pipes.values()), return_exceptions=True)
        self.pipes.clear()
        self.write_status()

    # -- the console ------------------------------------------------------------------
    async def _start_console(self) -> None:
        c = self.cfg.console
        if not c.enabled:
            log.info("agent console off")
            return
        # ours from the first moment: it may answer (and a reload move it) before start returns
        self.console = console = Console(self.status, c.host, c.port, metrics=self.metrics.text)
        if not await console.start() and self.console is console:
            self.console = None

    async def _stop_console(self) -> None:
        if self.console is not None:
            console, self.console = self.console, None
            await console.stop()

    # -- reload -------------------------------------------------------------------------
    async def apply_reload(self) -> dict:
        """Re-read the config and apply the difference; returns the diff. A config that
        does not load raises (ConfigError) and the running one stays."""
        if self._load_config is None:
            raise CommandFailed("this agent runs without a config directory (started with "
                                "--watch); there is nothing to reload")
        async with self._reloading:  # one at a time: each pipe's session may ask for one
            new = self._load_config()
            diff = config_diff(self.cfg, new)
            diff["console_changed"] = new.console != self.cfg.console
            self.cfg = new
            if diff.get("logging_changed"):
                setup_logging(new.logging, fmt=new.log_format, log_dir=new.log_dir, name="agent")
            for pid in [*diff.get("removed", []), *diff.get("changed", [])]:
                pipe = self.pipes.pop(pid, None)
                if pipe is not None:
                    await pipe.stop()
            for pid in [*diff.get("changed", []), *diff.get("added", [])]:
                if pid in enabled_pipes(new):
                    await self._start_pipe(pid)
            if diff["console_changed"] and self._console_wanted:
                await self._stop_console()
                await self._start_console()
        log.info("config reloaded: %s", describe_diff(diff))
        return diff

    async def reload(self) -> dict:
        """SIGHUP: :meth:`apply_reload`, with a refusal logged instead of raised."""
        try:
            return await self.apply_reload()
        except CommandFailed as exc:
            log.warning("reload ignored: %s", exc)
        except Exception as exc:
            log.error("reload refused, keeping the running config: %s", exc)
        return {}

    def status(self) -> dict:
        pipes = {}
        for pid, p in self.pipes.items():
            st = p.agent_status()
            del st["commands"]  # once, at the top
            st["snapshot"] = p.snapshot_progress
            st["realtime_lag_s"] = st["lag_s"]  # the name `agent status --json` had first
            pipes[pid] = st
        return {"pid": os.getpid(), "agent_id": self.agent_id, "host": self.host,
                "version": version(), "uptime_seconds": round(time.time() - self.started_at, 1),
                "updated_at": time.time(), "console": self.console.url if self.console else None,
                "commands": self.commands.results(), "pipes": pipes}

    def write_status(self) -> None:
        if self.status_file is None:
            return
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.status(), default=str, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.status_file)

    async def run(self, *, on_tick: Callable[[dict], None] | None = None,
                  interval: float = 2.0) -> None:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        self._console_wanted = True
        try:
            async with self._reloading:
                # side by side: the console answers while the pipes start, and the pipes do
                # not wait for the console's server to come up (their first rows go sooner)
                await asyncio.gather(self._start_console(), self._start_pipes())
            while not self._stop.is_set():
                self.write_status()
                if on_tick:
                    on_tick(self.status())
                try:
                    await asyncio.wait_for(self._stop.wait(), interval)
                except TimeoutError:
                    pass
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stop.set()
