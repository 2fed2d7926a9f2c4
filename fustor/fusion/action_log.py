"""The management audit log: every admin action, appended to ``DATA/management-audit.jsonl``.

One JSON object per line: ``seq`` (1, 2, …), ``at`` (epoch), ``key_id`` (which key,
never the key), ``action``, ``target``, ``outcome`` (``ok`` or the error code) and
``detail``. The file is created 0600 and only ever appended to. An entry is written
at once (readers see it) and fsynced by a small thread right after, so a slow disk
never holds up the event loop that serves heartbeats and pushes.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path

import orjson

FILE_NAME = "management-audit.jsonl"


class ActionLog:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._syncer: threading.Thread | None = None
        self._seq = 0
        for e in self._entries():
            self._seq = max(self._seq, e.get("seq", 0))
        self._torn = False
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                self._torn = fh.read(1) != b"\n"

    def _entries(self):
        for line in self._lines():
            try:
                e = orjson.loads(line)
            except orjson.JSONDecodeError:  # a torn last line after a crash: skip it
                continue
            if isinstance(e, dict):
                yield e

    def _lines(self):
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        yield line
        except FileNotFoundError:
            return

    def record(self, key_id: str, action: str, target: str | None, outcome: str = "ok",
               detail: str | None = None) -> dict:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "at": time.time(), "key_id": key_id, "action": action,
                     "target": target, "outcome": outcome, "detail": detail}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                # a line torn by a crash is ended first, so this entry stays readable
                os.write(fd, (b"\n" if self._torn else b"") + orjson.dumps(entry) + b"\n")
                self._torn = False
            finally:
                os.close(fd)
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_loop, daemon=True,
                                                name="audit-log-fsync")
                self._syncer.start()
        self._dirty.set()
        return entry

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            self.sync()

    def sync(self) -> None:
        """Make what was recorded durable (the thread does this after every record)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, limit: int = 100, after: int | None = None) -> dict:
        """Entries with ``seq > after`` (oldest first), or without ``after`` the newest
        ``limit``; ``next_after`` is the last seq returned (poll with it for new ones)."""
        out: deque[dict] = deque(maxlen=None if after is not None else limit)
        for e in self._entries():
            if after is None or e.get("seq", 0) > after:
                out.append(e)
                if after is not None and len(out) >= limit:
                    break
        nxt = out[-1]["seq"] if out else after
        return {"entries": list(out), "next_after": nxt, "total": self._seq}
