"""The logical clock of a view: a watermark in the time domain of file mtimes.

A view compares file mtimes (set by the file server's clock) with "now". The two
clocks disagree, and the pipeline adds latency, so "now" is estimated as

    watermark = wall() - skew

where ``skew`` is the most frequent whole number of seconds between Fusion's wall
clock and the mtime of a freshly written file. Only realtime rows are samples
(they are fresh by construction); snapshot, audit, on-demand and sentinel mtimes
can be arbitrarily old and never vote. The mode, not the mean, is used so one file
touched with an absurd mtime cannot move the watermark.

    update(mtime, can_sample) ─► sample d = int(wall - mtime) ─► ring buffer (last 10000)
                                                                 └► histogram d -> count
    skew()      = most frequent d, ties -> smallest d; None before the first sample
    watermark() = wall() - skew()   (cold start: wall())

Thread-safe: one lock guards the buffer, histogram and cached mode.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

CAPACITY = 10_000
# orjson (used to persist samples) only encodes 64-bit integers; a sample this large
# is an absurd mtime anyway and can never win the vote alone.
SAMPLE_LIMIT = 2**62


class LogicalClock:
    """Watermark = wall clock minus the modal skew of the last ``capacity`` realtime samples."""

    def __init__(self, now: Callable[[], float] = time.time, capacity: int = CAPACITY) -> None:
        self._now = now
        self._capacity = capacity
        self._buf: deque[int] = deque()
        self._hist: dict[int, int] = {}
        # The mode is kept incrementally on append; only evicting the current mode
        # forces a recount (lazily, on the next read).
        self._mode: int | None = None
        self._mode_count = 0
        self._stale = False
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change; lets callers persist only when needed

    # -- feeding ------------------------------------------------------------------
    def update(self, mtime: float | None, can_sample: bool) -> float:
        """Record a skew sample when ``can_sample`` (realtime rows only); return the watermark."""
        if mtime is None:
            return self.watermark()
        with self._lock:
            wall = self._now()
            if can_sample:
                d = int(wall - mtime)  # truncation toward zero: whole seconds, as upstream
                if d > SAMPLE_LIMIT:
                    d = SAMPLE_LIMIT
                elif d < -SAMPLE_LIMIT:
                    d = -SAMPLE_LIMIT
                self._add(d)
            skew = self._skew_locked()
        return wall if skew is None else wall - skew

    def _add(self, d: int) -> None:
        if len(self._buf) >= self._capacity:
            old = self._buf.popleft()
            c = self._hist[old] - 1
            if c:
                self._hist[old] = c
            else:
                del self._hist[old]
            if old == self._mode:
                self._stale = True
        self._buf.append(d)
        c = self._hist.get(d, 0) + 1
        self._hist[d] = c
        if not self._stale and (
            self._mode is None or c > self._mode_count or (c == self._mode_count and d < self._mode)
        ):
            self._mode, self._mode_count = d, c
        self.version += 1

    # -- reading ------------------------------------------------------------------
    def _skew_locked(self) -> int | None:
        if self._stale:
            if self._hist:
                # highest count first, then smallest skew
                self._mode, self._mode_count = min(self._hist.items(), key=lambda kv: (-kv[1], kv[0]))
            else:
                self._mode, self._mode_count = None, 0
            self._stale = False
        return self._mode

    def skew(self) -> int | None:
        """The modal skew in whole seconds, or ``None`` before any realtime sample."""
        with self._lock:
            return self._skew_locked()

    def get_skew(self) -> float:
        s = self.skew()
        return 0.0 if s is None else float(s)

    def watermark(self) -> float:
        """Fusion's estimate of "now" in the mtime domain; advances with the wall clock."""
        with self._lock:
            wall = self._now()
            skew = self._skew_locked()
        return wall if skew is None else wall - skew

    def sample_count(self) -> int:
        return len(self._buf)

    # -- lifecycle ----------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._buf.clear()
            self._hist.clear()
            self._mode, self._mode_count, self._stale = None, 0, False
            self.version += 1

    def dump(self) -> list[int]:
        """The samples, oldest first (what :meth:`load` takes back)."""
        with self._lock:
            return list(self._buf)

    def load(self, samples: Iterable[int]) -> None:
        """Replace the state with ``samples`` (oldest first; only the last ``capacity`` kept)."""
        with self._lock:
            self._buf.clear()
            self._hist.clear()
            self._mode, self._mode_count, self._stale = None, 0, False
            for d in list(samples)[-self._capacity :]:
                self._add(int(d))
            self.version += 1
