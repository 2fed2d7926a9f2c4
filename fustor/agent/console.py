"""The agent console: a read-only status page and its JSON, on 127.0.0.1:8100 by default.

    GET /        one self-contained HTML page, rendered here (no script, no external asset),
                 refreshing itself every few seconds; every value HTML-escaped; a strict
                 Content-Security-Policy that allows only its one inline style (by hash)
    GET /status  the agent's status as JSON: what `fustor agent status --json` shows
    GET /metrics the same figures in the Prometheus text format (fustor/agent/metrics.py)

It runs in the agent's event loop (uvicorn, signal handling left to the agent) and only
reads the status, so nothing here can touch a pipe. A port in use is a warning and the
agent runs on without its console. Bound to a loopback address, it answers only requests
whose Host names the loopback, so a web page cannot read it through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import ipaddress
import logging
import socket
import time
from collections.abc import Callable

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("fustor.agent")

REFRESH_SEC = 5
STOP_WAIT_SEC = 5.0
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
p.meta { color: #555; margin: 0 0 1em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00020; font-weight: 600; }
.ok { color: #1b6e20; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
           "X-Frame-Options": "DENY"}


def _e(value) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def _bad(flag) -> str:
    return ' class="bad"' if flag else ""


def _reachable(p: dict) -> str:
    r = p.get("fusion_reachable")
    if r is None:
        return '<span>not asked yet</span>'
    return '<span class="ok">yes</span>' if r else '<span class="bad">no</span>'


def _watch(p: dict) -> str:
    w = p.get("watch") or {}
    if w.get("watch_limit_reached"):
        return '<span class="bad">watch limit reached (audits cover the rest)</span>'
    if w.get("overflowed"):
        return '<span class="bad">event queue overflowed</span>'
    return '<span class="ok">watching</span>' if w.get("watching") else "not watching"


def render_page(st: dict) -> str:
    """The status page; every value from ``st`` is escaped."""
    rows = []
    for pid, p in sorted((st.get("pipes") or {}).items()):
        err = p.get("last_error")
        rows.append(
            "<tr>"
            f"<td>{_e(pid)}</td><td>{_e(p.get('fusion_url'))}</td><td>{_reachable(p)}</td>"
            f"<td>{_e(p.get('state'))}</td><td>{_e(p.get('role'))}</td><td>{_e(p.get('phase'))}</td>"
            f"<td class=\"num\">{_e(p.get('rows_pushed'))}</td>"
            f"<td class=\"num\">{_e(p.get('rows_per_s'))}</td>"
            f"<td class=\"num\">{_e(p.get('lag_s'))}</td>"
            f"<td{_bad(err)}>{_e(err)}</td><td>{_watch(p)}</td>"
            "</tr>")
    pipes = ("<table><tr><th>pipe</th><th>fusion</th><th>reachable</th><th>state</th>"
             "<th>role</th><th>phase</th><th>rows pushed</th><th>rows/s</th><th>lag (s)</th>"
             "<th>last error</th><th>watch</th></tr>" + "".join(rows) + "</table>"
             if rows else "<p>No pipes running.</p>")
    cmds = [f"<tr><td>{_e(c.get('command_id'))}</td><td>{_e(c.get('type'))}</td>"
            f"<td{_bad(c.get('state') == 'failed')}>{_e(c.get('state'))}</td>"
            f"<td>{_e(c.get('detail'))}</td>"
            f"<td>{_e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.get('at') or 0)))}</td></tr>"
            for c in reversed(st.get("commands") or [])]
    commands = ("<h2>Commands from fusion</h2><table><tr><th>id</th><th>type</th><th>state</th>"
                "<th>detail</th><th>at</th></tr>" + "".join(cmds) + "</table>") if cmds else ""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"refresh\" content=\"{REFRESH_SEC}\">"
        f"<title>fustor agent {_e(st.get('agent_id'))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>fustor agent {_e(st.get('agent_id'))}</h1>"
        f"<p class=\"meta\">host {_e(st.get('host'))} · version {_e(st.get('version'))} · "
        f"pid {_e(st.get('pid'))} · up {_e(st.get('uptime_seconds'))} s · "
        f"refreshes every {REFRESH_SEC} s · <a href=\"/status\">JSON</a></p>"
        f"{pipes}{commands}</body></html>")


def _host_allowed(request: Request, loopback_only: bool) -> bool:
    if not loopback_only:
        return True
    host = request.headers.get("host", "")
    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name.lower() in LOOPBACK_NAMES


def create_console_app(status: Callable[[], dict], *, loopback_only: bool = True,
                       metrics: Callable[[], bytes] | None = None) -> Starlette:
    """The console's routes over ``status`` (the agent's :meth:`Agent.status`) and
    ``metrics`` (the exposition text of :class:`~fustor.agent.metrics.AgentMetrics`)."""

    def guarded(make: Callable[[], Response]):
        async def endpoint(request: Request) -> Response:
            if not _host_allowed(request, loopback_only):
                return PlainTextResponse("this console answers only on the loopback address",
                                         421, headers=HEADERS)
            return make()
        return endpoint

    def page() -> Response:
        return Response(render_page(status()), media_type="text/html; charset=utf-8",
                        headers=HEADERS)

    def status_json() -> Response:
        return Response(orjson.dumps({"running": True, **status()}, default=str),
                        media_type="application/json", headers=HEADERS)

    def metrics_text() -> Response:
        return Response(metrics() if metrics else b"", headers=HEADERS,
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/", guarded(page), methods=["GET"]),
                             Route("/status", guarded(status_json), methods=["GET"]),
                             Route("/metrics", guarded(metrics_text), methods=["GET"])])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the agent owns SIGTERM/SIGINT/SIGHUP."""

    def capture_signals(self):
        return contextlib.nullcontext()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    """The console's listener in the running event loop: :meth:`start`, :meth:`stop`."""

    def __init__(self, status: Callable[[], dict], host: str = "127.0.0.1", port: int = 8100,
                 metrics: Callable[[], bytes] | None = None) -> None:
        self.host, self.port = host, port
        self._app = create_console_app(status, loopback_only=is_loopback(host), metrics=metrics)
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> bool:
        """Listen; False (and a warning) when the address cannot be had."""
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            log.warning("agent console: cannot listen on %s:%s (%s); the agent runs without it "
                        "(choose another console port: --console-port N or console.port in the "
                        "config; --no-console or console.enabled: false turns it off)",
                        self.host, self.port, exc.strerror or exc)
            return False
        self.port = sock.getsockname()[1]  # port 0: the one the system chose
        cfg = uvicorn.Config(self._app, log_level="warning", log_config=None, lifespan="off",
                             access_log=False, timeout_graceful_shutdown=2)
        self._server = _Server(cfg)
        self._task = asyncio.create_task(self._serve(sock), name="agent console")
        end = time.monotonic() + STOP_WAIT_SEC
        while not self._server.started and not self._task.done() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if not self._server.started:
            await self.stop()
            log.warning("agent console: could not start on %s; the agent runs without it", self.url)
            return False
        log.info("agent console on %s", self.url)
        return True

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._server.serve(sockets=[sock])
        except asyncio.CancelledError:
            raise
        except (Exception, SystemExit) as exc:  # uvicorn may sys.exit(); never let that out
            log.warning("agent console stopped: %s: %s", type(exc).__name__, exc)
        finally:
            sock.close()

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        done, _ = await asyncio.wait([self._task], timeout=STOP_WAIT_SEC)
        if not done:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._server = self._task = None


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket of our own, so a busy port is an OSError here, not uvicorn's exit."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart past TIME_WAIT
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
