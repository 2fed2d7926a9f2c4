"""Open files: the limit raised at start, the descriptors counted, connections admitted
within what is left.

Every store holds ~3 descriptors (its file, its lock file, and LMDB's own), every
connection one. Under a soft ``RLIMIT_NOFILE`` of 1,024, 300 views leave room for ~120
connections; past that, ``accept()`` fails with EMFILE, and asyncio's accept loop logs
the error for every pending connection while none of them is answered. So:

    start ──► soft limit raised to the hard limit (logged)
    accept ──► descriptors in use < limit − reserve ──► served as usual
           └─► otherwise ──► accepted, answered 503 {"detail", "code": "too_many_connections"}
                              (Retry-After: 1, Connection: close) by :class:`RefuseMiddleware`
           └─► EMFILE (the reserve was not enough) ──► a spare descriptor is given up to
                              accept it, and it is refused the same way; without a spare, one
                              error goes to asyncio, which stops accepting for a second

A refused connection is answered as soon as its request arrives; its fd lives for that
request only. The check counts ``/proc/self/fd`` at most once a second while well under
the limit, and at every accept near it.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import threading
import time
from pathlib import Path

import orjson

log = logging.getLogger("fustor.fusion")

_FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
REFUSED_CODE = "too_many_connections"
_REFUSED_TTL_S = 120.0  # a refused connection that never sends a request is forgotten


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit before.
    (:meth:`Admission.log_start` says what happened, once fusion listens.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files: could not raise the soft limit %d to %d: %s", soft, want, exc)
    return soft


def open_fds() -> int:
    """Descriptors this process holds now."""
    try:
        return len(os.listdir(_FD_DIR)) - 1  # the listing's own descriptor
    except OSError:
        return 0


def store_fds(data_dir: Path) -> int:
    """Descriptors held on store files (``*.lmdb`` and their ``-lock`` files) under ``data_dir``."""
    root = str(Path(data_dir).resolve()) + os.sep
    n = 0
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return 0
    for name in names:
        try:
            target = os.readlink(os.path.join(_FD_DIR, name))
        except OSError:
            continue
        if target.startswith(root) and (target.endswith(".lmdb") or target.endswith(".lmdb-lock")):
            n += 1
    return n


class Admission:
    """How many descriptors are left for connections, and which connections are refused."""

    def __init__(self, reserve: int | None = None) -> None:
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._reserve = reserve
        self._lock = threading.Lock()
        self._count = 0
        self._at = float("-inf")
        self._since = 0
        self._paused_until = 0.0
        self._refused: dict[tuple, float] = {}
        self.refused_total = 0
        self._spare: int | None = None  # taken when a listener is guarded

    def log_start(self, data_dir: Path, soft_before: int | None = None) -> None:
        """One line: the limit (and whether it was raised), what the stores hold."""
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._at = float("-inf")
        raised = (f" (raised from {soft_before})" if soft_before is not None
                  and soft_before != self.soft else "")
        log.info("open files: soft limit %s%s, hard %s; %d in use, %d held by stores; "
                 "connections past %d descriptors are refused with 503", self.soft, raised,
                 self.hard, open_fds(), store_fds(data_dir), self.budget)

    @property
    def reserve(self) -> int:
        """Descriptors kept free for refusals, store opens and the odd log file."""
        if self._reserve is not None:
            return self._reserve
        return max(8, min(64, self.soft // 16))

    @property
    def budget(self) -> int:
        return self.soft - self.reserve

    # -- the accept side -------------------------------------------------------------
    def _take_spare(self) -> None:
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._spare = None

    def close(self) -> None:
        """Give the spare descriptor back (fusion stops)."""
        self._give_spare()

    def _give_spare(self) -> bool:
        if self._spare is None:
            return False
        os.close(self._spare)
        self._spare = None
        return True

    def over_budget(self) -> bool:
        """Whether the connection just accepted leaves too few descriptors (counted at most
        once a second while far from the limit; every time near it)."""
        now = time.monotonic()
        if self._count + self._since < self.budget - 1 and now - self._at < 1.0:
            self._since += 1
            return False
        self._count, self._at, self._since = open_fds(), now, 0
        return self._count >= self.budget

    def refuse(self, addr) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._refused) > 1024:
                self._refused = {a: t for a, t in self._refused.items() if now - t < _REFUSED_TTL_S}
            self._refused[_peer(addr)] = now
            self.refused_total += 1

    def take_refused(self, client) -> bool:
        """Whether the connection of ``client`` (the ASGI scope's) was refused; forgets it."""
        if not self._refused or client is None:
            return False
        with self._lock:
            return self._refused.pop(_peer(client), None) is not None

    def accept(self, sock: socket.socket) -> tuple[socket.socket, object]:
        """``sock.accept()`` within the budget (see the module docstring)."""
        if time.monotonic() < self._paused_until:
            raise BlockingIOError(errno.EAGAIN, "accepting paused: out of descriptors")
        try:
            conn, addr = socket.socket.accept(sock)
        except OSError as exc:
            if exc.errno not in _OUT_OF_FDS:
                raise
            self._at = float("-inf")
            if not self._give_spare():
                # asyncio stops accepting for a second on this error; until then, nothing
                self._paused_until = time.monotonic() + 1.0
                raise
            conn, addr = socket.socket.accept(sock)  # BlockingIOError: nothing was pending
            self.refuse(addr)
            return conn, addr
        if self.over_budget():
            self.refuse(addr)
        elif self._spare is None:
            self._take_spare()
        return conn, addr

    def figures(self, data_dir: Path | None = None) -> dict:
        out = {"soft_limit": self.soft, "hard_limit": self.hard, "in_use": open_fds(),
               "reserve": self.reserve, "connections_refused": self.refused_total}
        if data_dir is not None:
            out["held_by_stores"] = store_fds(data_dir)
        return out


def _peer(addr) -> tuple:
    return (addr[0], addr[1]) if isinstance(addr, (tuple, list)) and len(addr) >= 2 else (addr,)


class GuardedSocket(socket.socket):
    """A listening socket whose ``accept()`` goes through :class:`Admission` (asyncio's
    accept loop calls it)."""

    admission: Admission

    def accept(self):
        return self.admission.accept(self)


def guard(sock: socket.socket, admission: Admission) -> GuardedSocket:
    """The same listening socket (the descriptor moves over), accepting within the budget."""
    g = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    g.admission = admission
    g.set_inheritable(True)
    admission._take_spare()
    return g


class RefuseMiddleware:
    """ASGI: a refused connection's request is answered with a retryable JSON 503, and the
    connection closed, before anything else runs."""

    def __init__(self, app, admission: Admission, on_refuse=None, drain_limit: int = 1 << 24) -> None:
        self.app = app
        self.admission = admission
        self.on_refuse = on_refuse
        self.drain_limit = drain_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.admission.take_refused(scope.get("client")):
            return await self.app(scope, receive, send)
        seen, more = 0, True
        while more and seen < self.drain_limit:  # read the body: closing on unread data resets
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        if self.on_refuse is not None:
            self.on_refuse()
        body = orjson.dumps({
            "detail": "fusion has no file descriptors left for another connection (open-files "
                      "limit reached); retry shortly, or raise the limit (ulimit -n / LimitNOFILE)",
            "code": REFUSED_CODE})
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"retry-after", b"1"),
            (b"connection", b"close"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
