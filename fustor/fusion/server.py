"""Run fusion: the main listener and one listener per distinct receiver port, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import uvicorn

from fustor.config import FusionConfig, enabled_pipes
from fustor.errors import ReloadRefusedError
from fustor.fusion.admission import guard
from fustor.fusion.app import create_app, create_receiver_app
from fustor.fusion.core import Fusion

log = logging.getLogger("fustor.fusion")

# idle keep-alive connections stay open longer than any client keeps one idle (httpx: 5 s,
# the agent: 60 s), so a client never sends a request on a socket the server is closing
KEEP_ALIVE_S = 65
# on SIGTERM, requests in flight get this long to finish before they are cancelled (a
# cancelled push was not answered 200, so its agent sends it again to the next fusion)
GRACEFUL_S = 10


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


def _tls(cfg: FusionConfig) -> dict:
    """uvicorn's TLS options: every listener (main and receivers) serves HTTPS when set."""
    if not cfg.tls:
        return {}
    return {"ssl_certfile": cfg.tls_cert_file, "ssl_keyfile": cfg.tls_key_file}


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound here so that a busy port is an OSError we
    can report (uvicorn would log and exit the whole process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another "
                      "fusion (or another program) using that port?") from None
    sock.set_inheritable(True)
    # accepted connections inherit it: without, a reused connection's answers wait ~40 ms
    # for the client's delayed ACK (asyncio sets it only on sockets it made itself)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _receiver_server(fusion: Fusion, host: str, port: int, log_level: str) -> _Server:
    return _Server(uvicorn.Config(create_receiver_app(fusion), host=host, port=port,
                                  log_level=log_level, lifespan="off", access_log=False,
                                  timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACEFUL_S,
                                  **_tls(fusion.cfg)))


def write_reload_result(path: Path | None, result: dict) -> None:
    """What the last reload did, for `fustor fusion reload` to print (0600, atomic)."""
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(result))
    os.replace(tmp, path)


async def serve(fusion: Fusion, host: str, port: int, *, log_level: str = "warning",
                on_ready: Callable[[], None] | None = None,
                pid_file: Path | None = None,
                load_config: Callable[[], FusionConfig] | None = None,
                companion: Callable[[], Awaitable[None]] | None = None,
                reload_result: Path | None = None) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP (or ``POST /api/v1/management/reload``) re-reads
    the config through ``load_config``, and the outcome goes to ``reload_result``.

    ``companion`` (e.g. the embedded agent of ``serve --watch``) runs once the listeners
    are up and is cancelled at shutdown.
    """
    main = _Server(uvicorn.Config(create_app(fusion), host=host, port=port, log_level=log_level,
                                  lifespan="on", access_log=False,
                                  timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=GRACEFUL_S, **_tls(fusion.cfg)))
    servers = [main]
    receivers: dict[int, _Server] = {}
    sockets: dict[_Server, socket.socket] = {}
    try:
        sockets[main] = guard(listen(host, port), fusion.admission)
        for rhost, rport in receiver_ports(fusion.cfg):
            if rport != port:
                receivers[rport] = srv = _receiver_server(fusion, rhost, rport, log_level)
                servers.append(srv)
                sockets[srv] = guard(listen(rhost, rport), fusion.admission)
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task] = []
    stopping_at: list[float] = []

    def stop() -> None:
        if not stopping_at and any(s.started for s in servers):
            stopping_at.append(time.monotonic())
            log.info("fusion stopping: finishing requests in flight, then closing the views")
        for s in servers:
            s.should_exit = True

    def apply_reload() -> dict:
        """Re-read and apply the config; the diff, or ReloadRefusedError (old one kept)."""
        if load_config is None:
            raise ReloadRefusedError("this fusion runs on its built-in default config (no "
                                     "config files), so there is nothing to re-read")
        try:
            cfg = load_config()
        except Exception as exc:  # a bad edit must not take the server down
            msg = getattr(exc, "message", None) or str(exc)
            log.error("reload refused, keeping the running config: %s", msg)
            write_reload_result(reload_result, {"at": time.time(), "status": "refused",
                                                "detail": msg})
            raise ReloadRefusedError(f"reload refused, the running config is kept: {msg}") from None
        want = {p: h for h, p in receiver_ports(cfg) if p != port}
        opened: dict[int, socket.socket] = {}
        try:  # every new port first: a busy one refuses the reload before anything changes
            for rport in [p for p in want if p not in receivers]:
                opened[rport] = guard(listen(want[rport], rport), fusion.admission)
        except OSError as exc:
            for sock in opened.values():
                sock.close()
            write_reload_result(reload_result, {"at": time.time(), "status": "refused",
                                                "detail": str(exc)})
            raise ReloadRefusedError(f"reload refused, the running config is kept: {exc}") from None
        diff = fusion.reload(cfg)
        diff["receiver_ports_closed"] = [p for p in receivers if p not in want]
        for rport in diff["receiver_ports_closed"]:
            receivers.pop(rport).should_exit = True
        diff["receiver_ports_opened"] = list(opened)
        for rport, sock in opened.items():
            receivers[rport] = srv = _receiver_server(fusion, want[rport], rport, log_level)
            servers.append(srv)
            tasks.append(asyncio.create_task(srv.serve(sockets=[sock])))
        write_reload_result(reload_result, {"at": time.time(), "status": "reloaded",
                                            "diff": diff})
        return diff

    def reload() -> None:
        try:
            apply_reload()
        except ReloadRefusedError as exc:
            log.warning("SIGHUP: %s", exc.message)

    fusion.reloader = apply_reload

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload)
    tasks.extend(asyncio.create_task(s.serve(sockets=[sockets[s]])) for s in servers)
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
    side = asyncio.create_task(companion()) if companion and main.started else None
    try:
        while not all(t.done() for t in tasks):  # reload may add receiver tasks
            await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
    finally:
        if side is not None:
            side.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await side
        if pid_file is not None and pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()
        if stopping_at:
            log.info("fusion stopped in %.1f s", time.monotonic() - stopping_at[0])
    if not main.started:
        raise OSError(f"could not listen on {host}:{port} (or a receiver port); is it in use?")
