"""The single writer of one environment: a thread fed by a bounded queue.

    submit(fn) ──► queue (bounded) ──► writer thread
                                          │ takes up to ``max_group`` queued jobs
                                          ▼
                              one write transaction
                                ├─ job 1 in a child transaction ── error? only job 1 is undone
                                ├─ job 2 …
                                └─ commit ──► futures resolved (after the data is on disk)
                              MapFullError: abort all, grow the map, run the group again
                              disk full:    abort all; a group of several jobs runs again one
                                            job per transaction, so each job that does not
                                            fit alone fails with StoreFullError, and only it

A job is a callable taking the transaction's ``TreeWriter``. It must not have
side effects outside the transaction (after a map growth it runs again), unless it
also carries an ``undo()`` that takes them back; the store calls it, in this thread,
whenever the job's changes do not reach the disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

import lmdb

from fustor.errors import StoreBusyError, StoreClosedError, StoreError, StoreFullError

log = logging.getLogger("fustor.store")

_STOP = object()
_FULL_HINTS = ("No space left", "File too large", "Disk quota", "Input/output error")


def is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, lmdb.DiskError) or any(h in text for h in _FULL_HINTS)


class Writer:
    def __init__(
        self,
        run_group: Callable[[list], list],
        grow: Callable[[], None],
        name: str,
        max_queue: int = 64,
        max_group: int = 16,
    ) -> None:
        self._run_group = run_group
        self._grow = grow
        self._q: queue.Queue = queue.Queue(max_queue)
        self._max_group = max_group
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"fustor-writer:{name}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._q.qsize()

    def submit(self, fn: Callable, *, block: bool = True, timeout: float | None = None) -> Future:
        """Queue ``fn`` for the next transaction; the future resolves after commit.

        With ``block=False`` (or a ``timeout``) a full queue raises :class:`StoreBusyError`.
        """
        if self._closed:
            raise StoreClosedError("the store is closed")
        fut: Future = Future()
        try:
            self._q.put((fn, fut), block=block, timeout=timeout)
        except queue.Full:
            raise StoreBusyError("the store is busy writing; retry shortly") from None
        return fut

    def close(self) -> None:
        """Finish every queued job, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._q.put(_STOP)
        self._thread.join()

    def _loop(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            if item is _STOP:
                break
            group = [item]
            while len(group) < self._max_group:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                group.append(nxt)
            self._commit(group)

    def _commit(self, group: list) -> None:
        group = [(fn, fut) for fn, fut in group if fut.set_running_or_notify_cancel()]
        if group:
            self._attempt(group)

    def _attempt(self, group: list) -> None:
        for _try in range(32):
            try:
                results = self._run_group(group)
            except lmdb.MapFullError:
                try:
                    self._grow()
                except StoreBusyError as exc:
                    self._fail(group, exc)
                    return
                except Exception as exc:  # growing failed: report, keep the thread alive
                    self._fail(group, StoreFullError(f"cannot grow the store: {exc}"))
                    return
                continue
            except BaseException as exc:  # never let the writer thread die
                if is_disk_full(exc) and len(group) > 1:
                    # jobs share a transaction only to save commits: on a full disk each
                    # one is tried alone, so a batch that fits is not refused because a
                    # job queued beside it (another push, a background job) did not
                    for item in group:
                        self._attempt([item])
                    return
                if is_disk_full(exc):
                    err: Exception = StoreFullError(
                        f"the store could not write to disk ({exc}): the disk is full, a "
                        "file-size or quota limit was reached, or the disk failed; nothing of "
                        "this batch was written; free space and retry"
                    )
                else:
                    log.exception("write transaction failed")
                    err = StoreError(f"write failed: {exc}")
                self._fail(group, err)
                return
            for (_fn, fut), (ok, value) in zip(group, results, strict=True):
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            return
        self._fail(group, StoreFullError("the store could not grow enough for this batch"))

    @staticmethod
    def _fail(group: list, err: Exception) -> None:
        for _fn, fut in group:
            fut.set_exception(err)
