"""The walk bridge (ThreadIter) must give its executor thread back when the consumer is
cancelled while waiting for the next item — otherwise each cancelled snapshot or audit
(demotion, lost session, stop) kept one default-executor worker blocked forever, and the
agent process hung at exit until `fustor agent stop` SIGKILLed it."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from fustor.agent.thread_iter import ThreadIter


async def test_cancelled_consumer_releases_its_executor_thread():
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)  # one worker: a leaked one starves every to_thread
    loop.set_default_executor(pool)
    first, release = threading.Event(), threading.Event()

    def walk():
        yield 1
        first.set()
        release.wait(10)  # the walk is busy when the consumer is cancelled
        yield 2

    it = ThreadIter(walk)

    async def consume():
        async for _ in it:
            pass

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(asyncio.to_thread(first.wait, 10), 10)
        await asyncio.sleep(0.05)  # the consumer now waits in the worker for item 2
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        release.set()  # the producer sees the stop and ends without putting item 2
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 5) == "free"
    finally:
        release.set()
        with contextlib.suppress(queue.Full):  # never leave a blocked worker behind
            it._q.put_nowait(None)
