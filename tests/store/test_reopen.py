"""Reopening a large store is instant (no rebuild), and a live backup is complete."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fustor.errors import NotFoundError, StoreBusyError, StoreClosedError, StoreError
from fustor.store import Store
from fustor.store.inspect import verify

NODES = 100_000
BATCH = 5_000
PER_DIR = 100  # files per directory


def tree_ops(nodes):
    """Exactly ``nodes`` upserts: groups of 10 dirs of PER_DIR files each."""
    ops = []
    i = 0
    while len(ops) < nodes:
        d = b"/g%03d/d%05d" % (i // (PER_DIR * 10), i // PER_DIR)
        if i % (PER_DIR * 10) == 0:
            ops.append((d.rsplit(b"/", 1)[0], True, 0, 1.0))
        if i % PER_DIR == 0:
            ops.append((d, True, 0, 1.0))
        ops.append((d + b"/f%05d.bin" % i, False, i % 977, float(i)))
        i += 1
    return ops[:nodes]


def build(store, nodes=NODES):
    """Write ``nodes`` nodes in batches of BATCH; returns (files, dirs, total_size)."""
    ops = tree_ops(nodes)
    for start in range(0, len(ops), BATCH):
        def job(w, chunk=ops[start:start + BATCH]):
            for path, is_dir, size, mtime in chunk:
                w.upsert(path, is_dir, size, mtime, 0.0)

        store.write(job)
    files = [op for op in ops if not op[1]]
    return len(files), len(ops) - len(files), sum(op[2] for op in files)


def test_reopen_of_100k_nodes_reads_stats_without_a_rebuild(tmp_path):
    path = tmp_path / "big.lmdb"
    with Store(path) as store:
        files, dirs, total = build(store)
        assert files + dirs == NODES
        with store.read() as r:
            assert r.count(r.dbs.nodes) == files + dirs + 1
    t0 = time.perf_counter()
    store = Store(path)
    try:
        with store.read() as r:
            st = r.stats(b"/")
        elapsed = time.perf_counter() - t0
        assert (st.file_count, st.dir_count, st.total_size) == (files, dirs + 1, total)
        assert st.latest_mtime == float(files - 1)
        assert elapsed < 1.0, f"reopen + stats took {elapsed:.3f}s"
    finally:
        store.close()


def test_copy_to_while_writing_gives_a_complete_store(tmp_path):
    path = tmp_path / "live.lmdb"
    committed = []  # batch numbers whose write() returned
    progress = threading.Condition()
    stop = threading.Event()

    def batch(n):
        def job(w):
            for i in range(500):
                w.upsert(b"/b%05d/f%03d" % (n, i), False, 10, float(n), 0.0)
            w.put_meta("last_batch", n)
        return job

    def wait_for_batches(fut, count):
        with progress:
            ok = progress.wait_for(lambda: len(committed) >= count or fut.done(), timeout=30)
        if fut.done():
            fut.result()  # the writer's own error, if any
        assert ok and len(committed) >= count

    with Store(path) as store, ThreadPoolExecutor(1) as pool:
        build(store, 20_000)
        with store.read() as r:
            base_files = r.stats(b"/").file_count

        def writer():
            n = 0
            while not stop.is_set() and n < 100_000:
                store.write(batch(n))
                with progress:
                    committed.append(n)
                    progress.notify_all()
                n += 1

        fut = pool.submit(writer)
        try:
            wait_for_batches(fut, 5)
            before = len(committed)
            store.copy_to(tmp_path / "backup.lmdb")
            store.copy_to(tmp_path / "backup-raw.lmdb", compact=False)
            after = len(committed)
            wait_for_batches(fut, after + 2)  # and the writer keeps going after the copy
        finally:
            stop.set()
        fut.result(timeout=30)
        tree_id = store.tree_id

    for name in ("backup.lmdb", "backup-raw.lmdb"):
        with Store(tmp_path / name) as copy:
            assert copy.tree_id == tree_id
            with copy.read() as r:
                last = r.meta("last_batch")
                assert before - 1 <= last <= after
                for n in range(last + 1):
                    assert len(r.children(b"/b%05d" % n)[0]) == 500
                assert r.get(b"/b%05d" % (last + 1)) is None
                assert r.stats(b"/").file_count == base_files + 500 * (last + 1)
            assert verify(copy) == []


# -- lifecycle ------------------------------------------------------------------------------


def hold_writer(store):
    """Submit a job that keeps the writer busy until the returned event is set."""
    gate, entered = threading.Event(), threading.Event()

    def blocker(w):
        entered.set()
        assert gate.wait(30), "test gate never opened"
        w.upsert(b"/held", False, 1, 1.0, 0.0)

    fut = store.submit(blocker)
    assert entered.wait(30)
    return gate, fut


def test_close_commits_every_job_queued_before_it(tmp_path):
    path = tmp_path / "close.lmdb"
    store = Store(path)
    gate, held = hold_writer(store)
    futs = [store.submit(lambda w, i=i: w.upsert(b"/q/%d" % i, False, i, 1.0, 0.0))
            for i in range(20)]
    with ThreadPoolExecutor(1) as pool:
        closing = pool.submit(store.close)
        gate.set()
        closing.result(timeout=30)
    assert held.result(timeout=0) is None
    assert [f.result(timeout=0).size for f in futs] == list(range(20))
    with Store(path) as again, again.read() as r:
        assert r.stats(b"/").file_count == 21


def test_closed_store_says_it_is_closed(tmp_path):
    store = Store(tmp_path / "c.lmdb")
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreClosedError):
        store.write(lambda w: w.upsert(b"/x", False, 1, 1.0, 0.0))
    with pytest.raises(StoreClosedError), store.read() as r:
        r.stats(b"/")


def test_full_queue_is_back_pressure_not_a_hang(tmp_path):
    with Store(tmp_path / "busy.lmdb", max_queue=2) as store:
        gate, held = hold_writer(store)
        queued = [store.submit(lambda w, i=i: w.upsert(b"/q/%d" % i, False, 1, 1.0, 0.0))
                  for i in range(2)]
        with pytest.raises(StoreBusyError, match="retry"):
            store.submit(lambda w: None, block=False)
        with pytest.raises(StoreBusyError):
            store.submit(lambda w: None, timeout=0.05)
        assert store.queued == 2
        gate.set()
        held.result(timeout=30)
        for f in queued:
            f.result(timeout=30)
        assert store.submit(lambda w: 42, block=False).result(timeout=30) == 42
        with store.read() as r:
            assert r.stats(b"/").file_count == 3


def test_readonly_store_reads_but_refuses_writes(tmp_path):
    path = tmp_path / "ro.lmdb"
    with Store(path) as store:
        store.write(lambda w: w.upsert(b"/f", False, 5, 1.0, 0.0))
    with Store(path, readonly=True) as ro:
        with ro.read() as r:
            assert r.get(b"/f").size == 5
        with pytest.raises(StoreError, match="read-only"):
            ro.write(lambda w: w.delete(b"/f"))
    with pytest.raises(NotFoundError):
        Store(tmp_path / "absent.lmdb", readonly=True)
