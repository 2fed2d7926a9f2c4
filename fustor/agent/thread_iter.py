"""A blocking generator (a directory walk) consumed from asyncio: the walk runs in a thread
and hands its items over through a small queue, so walks never starve the event loop and a
slow consumer holds at most ``depth`` items in memory."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator

_END = object()


class ThreadIter:
    """Run a blocking generator in a thread; hand its items over through a small queue."""

    def __init__(self, make: Callable[[], Iterator], depth: int = 4) -> None:
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(make,), daemon=True)
        self._thread.start()

    def _produce(self, make) -> None:
        try:
            for item in make():
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put_final(_END)
        except BaseException as exc:  # hand the error to the consumer
            self._put_final(exc)

    def _put_final(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    async def __aiter__(self):
        try:
            while True:
                item = await asyncio.to_thread(self._q.get)
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            # A cancelled consumer may leave an executor thread blocked in _q.get(); the
            # producer puts nothing more once stopped, so wake that thread here (it would
            # otherwise hold a default-executor worker forever and hang asyncio.run's exit).
            try:
                self._q.put_nowait(_END)
            except queue.Full:
                pass  # not empty: a blocked get() returns anyway
