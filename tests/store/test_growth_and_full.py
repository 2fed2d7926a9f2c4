"""The map grows on demand; a full disk (file-size limit) fails a batch cleanly."""

import json
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import pytest

from fustor.errors import FustorError
from fustor.store import Store
from fustor.store.inspect import verify

PER_BATCH = 2_000
NAME_PAD = b"n" * 150  # ~200-byte records, so ~20 MB is ~100,000 nodes


def batch_job(n, per=PER_BATCH):
    def job(w):
        for i in range(per):
            w.upsert(b"/g%04d/%s%05d" % (n, NAME_PAD, i), False, i, float(n), 0.0)
        w.put_meta("last_batch", n)
    return job


def test_map_grows_from_one_mib_to_twenty_mb_of_nodes(tmp_path):
    path = tmp_path / "grow.lmdb"
    seen = []  # root file counts observed by a concurrent reader
    stop = threading.Event()

    with Store(path, map_size=1 << 20) as store, ThreadPoolExecutor(1) as pool:
        def reader():
            while not stop.is_set():
                with store.read() as r:
                    seen.append(r.stats(b"/").file_count)

        fut = pool.submit(reader)
        try:
            n = 0
            while path.stat().st_size < 20 << 20:
                assert n < 500, "20 MB never reached"
                store.write(batch_job(n))
                n += 1
        finally:
            stop.set()
        fut.result(timeout=30)  # the reader never failed
        assert len(seen) > 1
        assert all(c % PER_BATCH == 0 for c in seen)  # readers only see whole batches
        assert verify(store) == []
        with store.read() as r:
            assert r.stats(b"/").file_count == n * PER_BATCH
    with Store(path) as store:  # no map_size: the file's size decides
        with store.read() as r:
            assert r.meta("last_batch") == n - 1
            assert r.stats(b"/").file_count == n * PER_BATCH
            assert len(r.children(b"/g%04d" % (n - 1))[0]) == PER_BATCH
        store.write(batch_job(n))
        assert verify(store) == []


def test_map_grows_for_one_batch_bigger_than_many_doublings(tmp_path):
    path = tmp_path / "one-big.lmdb"
    with Store(path, map_size=1 << 20) as store:
        store.write(batch_job(0, per=60_000))  # ~15 MB in one transaction
        with store.read() as r:
            assert r.stats(b"/").file_count == 60_000
        assert verify(store) == []


def test_write_awaited_inside_a_read_does_not_hang_when_the_map_must_grow(tmp_path):
    with Store(tmp_path / "inside.lmdb", map_size=1 << 20) as store:
        fut = None
        with store.read() as r:
            before = r.stats(b"/").file_count
            try:
                fut = store.submit(batch_job(0, per=20_000))  # ~5 MB: more than the 1 MiB map
                fut.result(timeout=10)
            except FustorError:
                fut = None  # refusing the write with a clear error is fine; hanging is not
            except FuturesTimeout:
                pytest.fail("write waited for growth while this thread held a read: deadlock")
            assert r.stats(b"/").file_count == before  # the snapshot did not move
        if fut is not None:
            with store.read() as r:
                assert r.stats(b"/").file_count == 20_000


READER_CHILD = """
import sys
from fustor.store import Store

store = Store(sys.argv[1], readonly=True, map_size=1 << 20)
for _line in sys.stdin:
    with store.read() as r:
        print(r.stats(b"/").file_count, flush=True)
store.close()
"""


def read_line(proc, timeout=30.0):
    """One line from ``proc``'s stdout, or fail after ``timeout`` seconds."""
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, "no answer from the reader process"
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = os.read(proc.stdout.fileno(), 1)  # bytewise: never reads past the line
            assert chunk, f"reader process exited: {proc.stderr.read()!r}"
            buf += chunk
    return buf


def test_reader_in_another_process_follows_the_map_growth(tmp_path):
    path = tmp_path / "shared.lmdb"
    with Store(path, map_size=1 << 20) as store:
        store.write(batch_job(0, per=10))
        proc = subprocess.Popen([sys.executable, "-c", READER_CHILD, str(path)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            def ask():
                proc.stdin.write(b"stats\n")
                proc.stdin.flush()
                return int(read_line(proc))

            assert ask() == 10
            for n in range(1, 11):  # ~4 MB: the writer's map doubles past the reader's 1 MiB
                store.write(batch_job(n))
            assert ask() == 10 + 10 * PER_BATCH
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()


FULL_CHILD = """
import json, resource, signal, sys
from fustor.store import Store

limit, lift = int(sys.argv[2]), sys.argv[3] == "lift"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit if not lift else resource.RLIM_INFINITY))

def job(n):
    def fn(w):
        for i in range(300):
            w.upsert(b"/b%05d/f%03d" % (n, i), False, i, float(n), 0.0)
        w.put_meta("last_batch", n)
    return fn

out = {"last": -1}
store = Store(sys.argv[1])
for n in range(100_000):
    try:
        store.write(job(n))
    except Exception as exc:
        out["error"], out["message"] = type(exc).__name__, str(exc)
        out["code"] = getattr(exc, "code", None)
        break
    out["last"] = n
if lift:  # the user freed space: the same open store takes the batch again
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    store.write(job(out["last"] + 1))
    out["retried"] = out["last"] + 1
store.close()
print(json.dumps(out), flush=True)
"""


def run_full_child(path, limit, lift=False):
    proc = subprocess.run(
        [sys.executable, "-c", FULL_CHILD, str(path), str(limit), "lift" if lift else "keep"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def check_batches(path, last):
    with Store(path) as store:
        with store.read() as r:
            assert r.meta("last_batch") == last
            for n in range(last + 1):
                assert len(r.children(b"/b%05d" % n)[0]) == 300
            assert r.get(b"/b%05d" % (last + 1)) is None  # the failed batch left nothing
            assert r.stats(b"/").file_count == 300 * (last + 1)
        assert verify(store) == []
        store.write(lambda w: w.upsert(b"/after", False, 1, 1.0, 0.0))


# A limit that is not a multiple of the page size makes the failing write a short one,
# as a disk with a few bytes left does.
@pytest.mark.parametrize("limit", [2 << 20, (2 << 20) + 1000, (3 << 20) + 123])
def test_file_size_limit_fails_with_store_full_and_keeps_committed_batches(tmp_path, limit):
    path = tmp_path / "full.lmdb"
    out = run_full_child(path, limit)
    assert out["last"] >= 5, out  # the limit is hit after real progress, not at open
    assert out.get("error") == "StoreFullError", out
    assert out["code"] == "store_full"
    assert "retry" in out["message"] and "space" in out["message"]
    check_batches(path, out["last"])


def test_same_store_takes_the_failed_batch_once_space_is_freed(tmp_path):
    path = tmp_path / "full-retry.lmdb"
    out = run_full_child(path, (2 << 20) + 1000, lift=True)
    assert out["last"] >= 5 and "error" in out, out
    assert out["retried"] == out["last"] + 1
    check_batches(path, out["last"] + 1)


GROUPED_CHILD = """
import json, resource, signal, sys, threading
from fustor.store import Store

limit = int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

def job(n, rows):
    def fn(w):
        for i in range(rows):
            w.upsert(b"/b%05d/f%03d" % (n, i), False, i, float(n), 0.0)
    return fn

out = {}
store = Store(sys.argv[1])
n = 0
while n < 100_000:  # fill the file up to its limit
    try:
        store.write(job(n, 300))
    except Exception as exc:
        out["filled_by"] = type(exc).__name__
        break
    n += 1
go = threading.Event()
hold = store.submit(lambda w: go.wait(30))  # the writer waits here while two jobs queue up
big = store.submit(job(n, 300))  # what failed alone just now
small = store.submit(job(n + 1, 1))
go.set()
hold.result(timeout=60)
for name, fut in (("big", big), ("small", small)):
    try:
        fut.result(timeout=60)
        out[name] = "ok"
    except Exception as exc:
        out[name] = type(exc).__name__
with store.read() as r:
    out["small_visible"] = r.get(b"/b%05d/f000" % (n + 1)) is not None
    out["big_visible"] = r.get(b"/b%05d/f000" % n) is not None
store.close()
print(json.dumps(out), flush=True)
"""


def test_on_a_full_disk_a_job_that_fits_is_not_refused_for_its_neighbour(tmp_path):
    # two jobs queued together share one transaction; when it cannot be written, each is
    # tried alone: the one that fits commits, the other is refused as a full disk
    proc = subprocess.run(
        [sys.executable, "-c", GROUPED_CHILD, str(tmp_path / "g.lmdb"), str((2 << 20) + 1000)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["filled_by"] == "StoreFullError", out
    assert (out["big"], out["small"]) == ("StoreFullError", "ok"), out
    assert out["small_visible"] and not out["big_visible"], out
    with Store(tmp_path / "g.lmdb") as store:
        assert verify(store) == []
