"""An audit end purges expired tombstones in bounded chunks; the rest follows in later jobs."""

import time

from fustor.fusion.views.fs import FsView
from fustor.store import keys
from fustor.store.state import PURGE_CHUNK


async def test_audit_end_purges_in_chunks_and_the_sweep_finishes_the_same_purge(tmp_path):
    v = FsView("v", tmp_path / "v.lmdb", tombstone_ttl_seconds=60.0)
    try:
        now = time.time()
        old = PURGE_CHUNK + 30

        def tombs(w):
            for i in range(old):
                w.put_tombstone(keys.normalise(f"/gone/{i}"), 1.0, now - 120)
            w.put_tombstone(b"/young", 1.0, now - 10)

        v.store.write(tombs)
        assert not v.tombstones_due()  # no audit has ended: nothing is purged
        await v.audit_start()
        await v.audit_end()
        with v.store.read() as r:
            assert r.count(r.dbs.tombstones) == old + 1 - PURGE_CHUNK
        assert v.tombstones_due()
        while v.tombstones_due():  # what the background sweep does, one job at a time
            assert await v.purge_tombstones() > 0
        with v.store.read() as r:
            assert [p for p, _a, _b in r.iter_tombstones()] == [b"/young"]
    finally:
        v.close()
