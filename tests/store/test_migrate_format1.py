"""`fustor migrate` of a real format-1 store (written by the format-1 code, see fixtures/)."""

import shutil
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner

from fustor.cli import main
from fustor.errors import StoreFormatError
from fustor.store import FORMAT_VERSION, Store, keys
from fustor.store.inspect import verify
from fustor.store.records import NODE

FIXTURE = Path(__file__).parent / "fixtures" / "format1.lmdb"
LONG = "/long/" + "d" * 120 + "/" + "e" * 100


def raw_tables(path):
    """Every record of the tables format 2 keeps as they were, straight from LMDB."""
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=16)
    out = {}
    try:
        with env.begin() as txn:
            for name in ("nodes", "tombstones", "suspects", "suspect_expiry", "blind_additions",
                         "blind_deletions", "audit_dirs"):
                db = env.open_db(name.encode(), txn=txn, create=False)
                out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
    finally:
        env.close()
    return out


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def old(tmp_path):
    path = tmp_path / "views" / "v.lmdb"
    path.parent.mkdir()
    shutil.copyfile(FIXTURE, path)
    return path


def test_the_fixture_is_format_1_and_is_refused_until_migrated(old):
    with pytest.raises(StoreFormatError, match="store format 1.*fustor migrate"):
        Store(old)


def test_migrate_a_format1_store(old):
    before = raw_tables(old)
    result = invoke("migrate", old.parent)
    assert result.exit_code == 0, result.output
    assert "m0002_format2" in result.stdout and "v.lmdb.format1.bak" in result.stdout
    assert raw_tables(old) == before  # every kept record is byte for byte the same
    with Store(old) as st:
        assert st.format_version == FORMAT_VERSION == 2
        assert st.tree_id == "fixture-format1"
        assert verify(st) == []  # aggregates, digests, child counts, indexes recomputed
        with st.read() as r:
            assert r.meta("migrations")[-1] == "m0002_format2"
            assert r.meta("audit_cycle") == 3  # the fusion layer's meta keys survive
            assert r.get(b"/raw\xff/data\xfe.bin").size == 999
            # the name index was built from the nodes: a search answers from it
            assert [n.path for n in r.search("DATA*", b"/", 10).nodes] == [b"/raw\xff/data\xfe.bin"]
            assert [n.path for n in r.search("inside.dat", b"/", 10).nodes] == \
                [keys.normalise(LONG + "/inside.dat")]
            long_file = r.get(keys.normalise(LONG + "/inside.dat"))
            assert long_file.size == 4242 and long_file.modified_time == 4000.25
            assert r.tombstone(keys.normalise(LONG + "/old.dat")) == (4101.0, 4201.0)
            assert r.suspect(keys.normalise("/proj0/run0/hot.tmp")) == (1.0e10, 4500.0)
            assert r.tombstones_due(4200.5) and not r.tombstones_due(4199.0)
            assert r.suspects_under(keys.normalise("/proj0")) == 1
            assert r.suspects_under(keys.normalise(LONG)) == 1
            st_root = r.stats(b"/")
            files = sum(1 for _k, v in r.txn.cursor(db=r.dbs.nodes) if not v[0] & 1)
            assert st_root.file_count == files == 48
            assert r.aggregate(b"/").child_count == 5  # proj0-2, raw, long
            assert r.aggregate(keys.normalise("/proj1/run2")).child_count == 4
            assert max(NODE.unpack_from(v)[2] for _k, v in r.txn.cursor(db=r.dbs.nodes)) == \
                st_root.latest_mtime == 4500.0
        # and it works as a store: a change updates the new aggregates
        st.write(lambda w: w.delete(keys.normalise("/proj0/run0/hot.tmp")))
        assert verify(st) == []
    again = invoke("migrate", old.parent)
    assert again.exit_code == 0, again.output
    assert "m0002" not in again.stdout  # already current: nothing applied
    assert not (old.parent / "v.lmdb.format2.bak").exists()


def test_migrate_of_a_current_store_changes_nothing(tmp_path):
    path = tmp_path / "cur.lmdb"
    with Store(path) as st:
        st.write(lambda w: w.upsert(b"/a", False, 1, 1.0))
    data = path.read_bytes()
    result = invoke("migrate", tmp_path)
    assert result.exit_code == 0, result.output
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur.lmdb", "cur.lmdb-lock"]
