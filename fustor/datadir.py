"""The data directory belongs to one fusion at a time: an exclusive lock on DATA/fusion.lock.

Two fusions on one data dir would both elect leaders and write the same stores; a
migration under a live fusion would lose the fusion's later writes. ``flock`` is
released by the kernel when the holder dies, so a killed fusion never leaves a stale
lock behind; the file holds the holder's PID only to say who it is.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fustor.errors import FustorError

LOCK_NAME = "fusion.lock"


class DataDirInUseError(FustorError):
    status = 409
    code = "data_dir_in_use"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "this fusion") -> None:
        """Take the lock or raise DataDirInUseError naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirInUseError(
                f"data dir {self.path.parent} is in use by another fusion (PID {holder}); "
                f"stop it before starting {what} on it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def refuse_if_in_use(path: Path, what: str) -> None:
    """Raise DataDirInUseError when a running fusion holds the data dir that ``path`` (a
    data dir, its views/ directory, a forest directory or a store file) belongs to."""
    p = Path(path).resolve()
    for d in [p if p.is_dir() else p.parent, *(p if p.is_dir() else p.parent).parents][:4]:
        if (d / LOCK_NAME).exists():
            lock = DataDirLock(d)
            lock.acquire(what)
            lock.release()
            return
