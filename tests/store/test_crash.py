"""SIGKILL a writing process: every acknowledged batch survives, nothing is half-applied."""

import os
import selectors
import signal
import subprocess
import sys
import time

from fustor.store import Store
from fustor.store.inspect import verify

FILES = 200
MIN_COMMITTED = 30

WRITER = f"""
import sys
from fustor.store import Store

store = Store(sys.argv[1])
for n in range(100_000):
    def batch(w, n=n):
        for i in range({FILES}):
            w.upsert(b"/b%d/f%03d" % (n, i), False, i + 1, float(n), 0.0)
        w.put_meta("last_batch", n)
    store.write(batch)
    print(n, flush=True)
"""


def read_lines_until(proc, want, deadline):
    """Batch numbers printed by ``proc`` until ``want`` of them, and any partial line."""
    printed = []
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while len(printed) < want:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(printed)} batches committed before the deadline"
            if not sel.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"writer exited early: {proc.wait(10)} {proc.stderr.read()!r}"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            printed += [int(x) for x in lines]
    finally:
        sel.close()
    return printed, buf


def test_sigkill_mid_stream_keeps_every_acknowledged_batch_whole(tmp_path):
    path = tmp_path / "crash.lmdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        printed, rest = read_lines_until(proc, MIN_COMMITTED, time.monotonic() + 60)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        printed += [int(x) for x in (rest + proc.stdout.read()).split()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()

    assert printed == list(range(len(printed)))
    with Store(path) as store:
        with store.read() as r:
            last = r.meta("last_batch")
            assert last >= printed[-1]
            batches = [n.name for n in r.children(b"/")[0]]
            present = sorted(int(name[1:]) for name in batches)
            # the meta key and the files of a batch commit together
            assert present == list(range(last + 1))
            for n in present:
                kids, more = r.children(b"/b%d" % n)
                assert more is None
                assert len(kids) == FILES, f"batch {n} has {len(kids)} of {FILES} files"
                assert r.stats(b"/b%d" % n).file_count == FILES
            assert r.stats(b"/").file_count == FILES * len(present)
            assert r.stats(b"/").total_size == len(present) * FILES * (FILES + 1) // 2
        assert verify(store) == []
        # and the reopened store takes writes again
        store.write(lambda w: w.upsert(b"/after-crash", False, 1, 1.0, 0.0))
        with store.read() as r:
            assert r.stats(b"/").file_count == FILES * len(present) + 1
