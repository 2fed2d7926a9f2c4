"""Run fusion: the main listener and one listener per distinct receiver port, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import uvicorn

from fustor.config import FusionConfig, enabled_pipes
from fustor.fusion.app import create_app, create_receiver_app
from fustor.fusion.core import Fusion

log = logging.getLogger("fustor.fusion")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us (several share one process)."""

    def capture_signals(self):
        return contextlib.nullcontext()


def receiver_ports(cfg: FusionConfig) -> list[tuple[str, int]]:
    used = {p.receiver for p in enabled_pipes(cfg).values()}
    out: dict[int, str] = {}
    for rid, rc in cfg.receivers.items():
        if rid in used and not rc.disabled:
            out.setdefault(rc.port, rc.bind_host)
    return [(h, p) for p, h in out.items()]


async def serve(fusion: Fusion, host: str, port: int, *, log_level: str = "warning",
                on_ready: Callable[[], None] | None = None,
                pid_file: Path | None = None) -> None:
    main = _Server(uvicorn.Config(create_app(fusion), host=host, port=port, log_level=log_level,
                                  lifespan="on", access_log=False))
    servers = [main]
    for rhost, rport in receiver_ports(fusion.cfg):
        if rport != port:
            servers.append(_Server(uvicorn.Config(
                create_receiver_app(fusion), host=rhost, port=rport, log_level=log_level,
                lifespan="off", access_log=False)))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):  # e.g. a port in use
            stop()
            break
        await asyncio.sleep(0.05)
    else:
        if pid_file is not None:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(os.getpid()))
        if on_ready:
            on_ready()
    try:
        await asyncio.gather(*tasks)
    finally:
        if pid_file is not None and pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
    if not main.started:
        raise OSError(f"could not listen on {host}:{port} (or a receiver port); is it in use?")
