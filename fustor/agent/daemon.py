"""The agent process: builds pipes from config, runs them, reloads on SIGHUP, reports status.

Status for `fustor agent status` is written every ``status_interval_sec`` to
``$FUSTOR_HOME/agent-status.json`` (pid, uptime, per pipe: state, role, phase,
rows pushed, last error, realtime lag, snapshot progress, watch health).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from fustor.agent.config import AgentConfig, config_diff, enabled_pipes, resolve_agent_id
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


def build_pipe(cfg: AgentConfig, pipe_id: str, agent_id: str, transport=None) -> AgentPipe:
    pc = cfg.pipes[pipe_id]
    src = cfg.sources[pc.source]
    snd = cfg.senders[pc.sender]
    source = FsSource(src.uri, file_pattern=src.file_pattern, scan_workers=src.max_scan_workers,
                      throttle_interval_sec=src.throttle_interval_sec, batch_rows=snd.batch_size,
                      max_pending_events=src.queue_bound)
    client = FusionClient(snd.uri, snd.api_key, timeout=snd.timeout, transport=transport)
    settings = PipeSettings(
        batch_size=snd.batch_size, audit_interval_sec=pc.audit_interval_sec,
        sentinel_interval_sec=pc.sentinel_interval_sec,
        session_timeout_seconds=pc.session_timeout_seconds,
        error_retry_interval=pc.error_retry_interval, backoff_multiplier=pc.backoff_multiplier,
        max_backoff_seconds=pc.max_backoff_seconds, startup_mode=src.startup_mode,
    )
    return AgentPipe(pipe_id, f"{agent_id}:{pipe_id}", source, client, settings,
                     source_uri=str(src.uri), version=version())


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
        self._stop = asyncio.Event()

    async def start(self) -> None:
        for pid in enabled_pipes(self.cfg):
            await self._start_pipe(pid)

    async def _start_pipe(self, pid: str) -> None:
        try:
            pipe = build_pipe(self.cfg, pid, self.agent_id, self._transport)
            await pipe.start()
            self.pipes[pid] = pipe
            log.info("pipe %s started (%s)", pid, pipe.task_id)
        except Exception as exc:  # one bad pipe does not stop the others
            log.error("pipe %s could not start: %s", pid, exc)

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.pipes.values()), return_exceptions=True)
        self.pipes.clear()
        self.write_status()

    async def reload(self) -> dict:
        if self._load_config is None:
            log.warning("reload ignored: this agent runs without a config directory")
            return {}
        try:
            new = self._load_config()
        except Exception as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return {}
        diff = config_diff(self.cfg, new)
        self.cfg = new
        if diff.get("logging_changed"):
            setup_logging(new.logging)
        for pid in [*diff.get("removed", []), *diff.get("changed", [])]:
            pipe = self.pipes.pop(pid, None)
            if pipe is not None:
                await pipe.stop()
        for pid in [*diff.get("changed", []), *diff.get("added", [])]:
            if pid in enabled_pipes(new):
                await self._start_pipe(pid)
        log.info("config reloaded: %s", diff)
        return diff

    def status(self) -> dict:
        pipes = {}
        for pid, p in self.pipes.items():
            st = p.agent_status()
            st["snapshot"] = p.snapshot_progress
            st["realtime_lag_s"] = (round(time.time() - p.last_realtime_push, 1)
                                    if p.last_realtime_push else None)
            pipes[pid] = st
        return {"pid": os.getpid(), "agent_id": self.agent_id, "version": version(),
                "uptime_seconds": round(time.time() - self.started_at, 1),
                "updated_at": time.time(), "pipes": pipes}

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
        await self.start()
        try:
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
