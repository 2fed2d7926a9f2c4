"""The view-level scalars of one fs view, kept in memory and saved into the store's ``meta``.

Everything per path (nodes, tombstones, suspects, blind spots, audit marks) lives
in the store's tables; this object holds the few per-view values beside them.
They are written by the same write transaction that changed them, so a restart
(``ViewState.load``) continues where the last commit left off.

``meta`` keys written here (JSON values):

    view_state     {"generation": int, "last_audit_start": float|null, "audit_cycle": int,
                    "audit_rows_seen": int, "last_audit_finished_at": float,
                    "audit_cycle_count": int, "last_event_latency_ms": float,
                    "last_event_at": float}
    clock_samples  [int, ...]  skew samples of the logical clock, oldest first

``audit_cycle`` is the number of the open (or last) audit cycle: a node reported
by that cycle carries it in its ``audit_mark`` field. Numbers only grow (a reset,
which empties the tree of marks, starts them again), so marks left by an
abandoned cycle never count for a later one.

Only the store's writer thread changes this object (after it is loaded): each write
job of ``views/fs.py`` takes a ``checkpoint`` first and carries an ``undo`` that
restores it, which the store calls in the writer thread whenever the job's changes do
not reach the disk (the job failed, the group is run again after a map growth, the
disk is full). So the object always matches what is committed plus the jobs in
flight, and no other thread ever reloads it. ``sync`` (``generation`` is bumped by
every save) remains as a cheap guard for callers that run rules directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fustor.clock import LogicalClock
from fustor.store import TreeReader, TreeWriter

STATE_KEY = "view_state"
CLOCK_KEY = "clock_samples"
# Persisting 10000 samples costs ~100 µs; once a second keeps batches cheap and a
# crash loses at most a second of samples (the mode barely moves).
CLOCK_SAVE_INTERVAL = 1.0


@dataclass(eq=False)
class ViewState:
    """Config and view-level scalars of one fs view (one forest member)."""

    hot_file_threshold: float = 30.0
    tombstone_ttl_seconds: float = 3600.0
    max_nodes: int = 0  # 0 = unlimited
    now: Callable[[], float] = time.time
    clock: LogicalClock | None = None
    last_audit_start: float | None = None
    audit_cycle: int = 0
    audit_rows_seen: int = 0
    last_audit_finished_at: float = 0.0
    audit_cycle_count: int = 0
    last_event_latency_ms: float = 0.0
    last_event_at: float = 0.0
    _saved: tuple | None = field(default=None, repr=False)
    _generation: int = field(default=0, repr=False)
    _clock_saved_version: int = field(default=-1, repr=False)
    _clock_saved_at: float = field(default=float("-inf"), repr=False)
    _cp_clock: tuple | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = LogicalClock(now=self.now)

    @property
    def is_auditing(self) -> bool:
        return self.last_audit_start is not None

    def _scalars(self) -> tuple:
        return (
            self.last_audit_start, self.audit_cycle, self.audit_rows_seen,
            self.last_audit_finished_at, self.audit_cycle_count,
            self.last_event_latency_ms, self.last_event_at,
        )

    def load(self, reader: TreeReader) -> None:
        """Take the values committed in the store (defaults for a new store)."""
        self._load_scalars(reader.meta(STATE_KEY, None) or {})
        self.clock.load(reader.meta(CLOCK_KEY, None) or [])
        self._clock_saved_version = self.clock.version
        self._clock_saved_at = float("-inf")  # the first new sample is saved at once

    def sync(self, reader: TreeReader) -> None:
        """Re-read the scalars when the transaction does not hold what was last saved.

        The store runs a job again after growing its map, in a fresh transaction;
        the first attempt's changes to this object must not count twice (an audit
        end would find its cycle already closed). Cheap: one meta read.
        """
        d = reader.meta(STATE_KEY, None) or {}
        if d.get("generation", 0) != self._generation:
            self._load_scalars(d)

    def _load_scalars(self, d: dict) -> None:
        self.last_audit_start = d.get("last_audit_start")
        self.audit_cycle = int(d.get("audit_cycle", 0))
        self.audit_rows_seen = int(d.get("audit_rows_seen", 0))
        self.last_audit_finished_at = float(d.get("last_audit_finished_at", 0.0))
        self.audit_cycle_count = int(d.get("audit_cycle_count", 0))
        self.last_event_latency_ms = float(d.get("last_event_latency_ms", 0.0))
        self.last_event_at = float(d.get("last_event_at", 0.0))
        self._generation = int(d.get("generation", 0))
        self._saved = self._scalars()

    def save(self, writer: TreeWriter, force: bool = False) -> None:
        """Write what changed: the scalars always, the clock samples at most once a
        second of wall time unless ``force``."""
        cur = self._scalars()
        if force or cur != self._saved:
            self._generation += 1
            writer.put_meta(STATE_KEY, {
                "generation": self._generation,
                "last_audit_start": self.last_audit_start,
                "audit_cycle": self.audit_cycle,
                "audit_rows_seen": self.audit_rows_seen,
                "last_audit_finished_at": self.last_audit_finished_at,
                "audit_cycle_count": self.audit_cycle_count,
                "last_event_latency_ms": self.last_event_latency_ms,
                "last_event_at": self.last_event_at,
            })
            self._saved = cur
        version = self.clock.version
        if version != self._clock_saved_version:
            wall = self.now()
            if force or wall - self._clock_saved_at >= CLOCK_SAVE_INTERVAL:
                writer.put_meta(CLOCK_KEY, self.clock.dump())
                self._clock_saved_version = version
                self._clock_saved_at = wall

    def checkpoint(self) -> tuple:
        """Everything a write job may change here, to put back with :meth:`restore`
        (the clock's samples are copied only when they changed since the last one)."""
        version = self.clock.version
        if self._cp_clock is None or self._cp_clock[0] != version:
            self._cp_clock = (version, self.clock.dump())
        return (self._scalars(), self._generation, self._saved, self._cp_clock,
                self._clock_saved_version, self._clock_saved_at)

    def restore(self, cp: tuple) -> None:
        """Back to a :meth:`checkpoint`: the job that changed this object did not commit."""
        scalars, self._generation, self._saved, clock, self._clock_saved_version, \
            self._clock_saved_at = cp
        (self.last_audit_start, self.audit_cycle, self.audit_rows_seen,
         self.last_audit_finished_at, self.audit_cycle_count, self.last_event_latency_ms,
         self.last_event_at) = scalars
        if self.clock.version != clock[0]:
            self.clock.load(clock[1])
            self._cp_clock = (self.clock.version, clock[1])
            if self._clock_saved_version == clock[0]:
                self._clock_saved_version = self.clock.version  # the same samples as saved

    def clear(self) -> None:
        """Forget every scalar and clock sample (view reset); the config stays."""
        self.clock.reset()
        self.last_audit_start = None
        self.audit_cycle = 0
        self.audit_rows_seen = 0
        self.last_audit_finished_at = 0.0
        self.audit_cycle_count = 0
        self.last_event_latency_ms = 0.0
        self.last_event_at = 0.0
