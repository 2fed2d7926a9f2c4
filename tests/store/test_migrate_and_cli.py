"""Format-0 stores, `fustor migrate` and `fustor inspect`."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import lmdb
import orjson
import pytest
from click.testing import CliRunner

from fustor import migrations
from fustor.cli import main
from fustor.errors import StoreFormatError
from fustor.store import FORMAT_VERSION, Store, keys
from fustor.store.inspect import verify
from fustor.store.records import AGG

RAW_NAME = b"/raw\xff/data\xfe.bin"


def format0_nodes():
    """A few hundred nodes: nested dirs, files with sizes and times, one non-UTF-8 name."""
    nodes = {b"/": {"is_dir": True, "size": 4096, "mtime": 1.0, "ctime": 1.0}}
    for d in range(5):
        nodes[b"/proj%d" % d] = {"is_dir": True, "size": 4096, "mtime": 10.0 + d, "ctime": 2.0}
        for s in range(4):
            sub = b"/proj%d/sub%d" % (d, s)
            nodes[sub] = {"is_dir": True, "size": 4096, "mtime": 20.0 + s, "ctime": 3.0}
            nodes[sub + b"/deeper"] = {"is_dir": True, "size": 4096, "mtime": 5.0, "ctime": 3.0}
            for f in range(12):
                nodes[sub + b"/file%02d.txt" % f] = {
                    "is_dir": False, "size": 100 * d + f, "mtime": 100.0 + f + s, "ctime": 4.0}
            nodes[sub + b"/deeper/leaf.bin"] = {"is_dir": False, "size": 7, "mtime": 50.0, "ctime": 5.0}
    nodes[b"/raw\xff"] = {"is_dir": True, "size": 4096, "mtime": 3.0, "ctime": 3.0}
    nodes[RAW_NAME] = {"is_dir": False, "size": 999, "mtime": 500.0, "ctime": 6.0}
    return nodes


def write_format0(path, version=0, tree_id="t0"):
    nodes = format0_nodes()
    env = lmdb.open(str(path), subdir=False, max_dbs=4)
    try:
        meta = env.open_db(b"meta")
        db = env.open_db(b"nodes")
        with env.begin(write=True) as txn:
            txn.put(b"format_version", orjson.dumps(version), db=meta)
            txn.put(b"tree_id", orjson.dumps(tree_id), db=meta)
            for p, rec in nodes.items():
                txn.put(p, orjson.dumps(rec), db=db)
    finally:
        env.close()
    return nodes


def expected_root_stats(nodes):
    files = [r for r in nodes.values() if not r["is_dir"]]
    return (len(files), len(nodes) - len(files), sum(r["size"] for r in files),
            max(r["mtime"] for r in nodes.values()))


def check_migrated(path, nodes):
    with Store(path) as store:
        assert store.format_version == FORMAT_VERSION and store.tree_id == "t0"
        with store.read() as r:
            assert r.meta("migrations") == ["m0001_format1"]
            assert r.count(r.dbs.nodes) == len(nodes)
            for p, rec in nodes.items():
                n = r.get(p)
                assert n is not None, p
                got = (n.is_dir, n.size, n.modified_time, n.created_time)
                assert got == (rec["is_dir"], rec["size"], rec["mtime"], rec["ctime"]), p
            st = r.stats(b"/")
            assert (st.file_count, st.dir_count, st.total_size, st.latest_mtime) == (
                expected_root_stats(nodes))
            assert r.stats(b"/proj3/sub1").file_count == 13
            assert [n.path for n in r.search("data*").nodes] == [RAW_NAME]
        assert verify(store) == []


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error_line(result, *words):
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0]


# -- migrate --------------------------------------------------------------------------------


def test_format0_store_is_refused_with_a_migrate_hint(tmp_path):
    write_format0(tmp_path / "old.lmdb")
    with pytest.raises(StoreFormatError, match=r"store format 0.*Run `fustor migrate") as info:
        Store(tmp_path / "old.lmdb")
    assert str(tmp_path) in str(info.value)
    result = invoke("inspect", tmp_path / "old.lmdb")
    assert_one_error_line(result, "fustor migrate")


def test_migrate_with_cli_runner(tmp_path):
    nodes = write_format0(tmp_path / "old.lmdb")
    result = invoke("migrate", tmp_path)
    assert result.exit_code == 0, result.output
    assert "applied m0001_format1" in result.stdout and "old.lmdb.format0.bak" in result.stdout
    check_migrated(tmp_path / "old.lmdb", nodes)
    bak = tmp_path / "old.lmdb.format0.bak"
    env = lmdb.open(str(bak), subdir=False, readonly=True, lock=False, max_dbs=4)
    try:  # the backup is the untouched original
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            assert orjson.loads(txn.get(b"format_version", db=meta)) == 0
    finally:
        env.close()
    assert not list(tmp_path.glob("*migrating*"))
    again = invoke("migrate", tmp_path)
    assert again.exit_code == 0 and "up to date" in again.stdout
    check_migrated(tmp_path / "old.lmdb", nodes)


def test_migrate_in_a_real_process_upgrades_every_store_under_dir(tmp_path):
    nodes = write_format0(tmp_path / "a.lmdb")
    (tmp_path / "nested").mkdir()
    write_format0(tmp_path / "nested" / "b.lmdb")
    proc = subprocess.run([sys.executable, "-m", "fustor.cli", "migrate", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("applied m0001_format1") == 2
    for p in (tmp_path / "a.lmdb", tmp_path / "nested" / "b.lmdb"):
        check_migrated(p, nodes)
        assert p.with_name(p.name + ".format0.bak").is_file()


def test_crash_at_the_swap_of_migrate_loses_no_store(tmp_path, monkeypatch):
    """A kill at the worst moment of the swap cannot be caused for real; os.replace (the
    swap of the migrated file into place) is made to die, where the process would be killed."""
    nodes = write_format0(tmp_path / "old.lmdb")
    calls = []

    class DyingOs:
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            calls.append((src, dst))
            if len(calls) == 1:
                raise KeyboardInterrupt("killed mid-swap")
            os.replace(src, dst)

    monkeypatch.setattr(migrations, "os", DyingOs())
    with pytest.raises(KeyboardInterrupt):
        migrations.migrate_store(tmp_path / "old.lmdb")
    monkeypatch.undo()
    # after the crash the store is still at its name (old or new format) ...
    assert (tmp_path / "old.lmdb").is_file()
    # ... and running `fustor migrate` again finishes the job
    result = invoke("migrate", tmp_path)
    assert result.exit_code == 0, result.output
    check_migrated(tmp_path / "old.lmdb", nodes)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.lmdb"
    write_format0(path, version=99)
    before = path.read_bytes()
    with pytest.raises(StoreFormatError, match="newer"):
        Store(path)
    result = invoke("migrate", tmp_path)
    assert_one_error_line(result, "newer")
    assert_one_error_line(invoke("inspect", path), "newer")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if "lock" not in p.name) == ["future.lmdb"]


# -- inspect --------------------------------------------------------------------------------


def make_store(path, tree_id="inspect-me"):
    with Store(path, tree_id=tree_id) as store:
        def job(w):
            for i in range(5):
                w.upsert(b"/data/f%d" % i, False, 10 * i, float(i), 0.0)
            for i in range(3):
                w.upsert(b"/data/sub/g%d" % i, False, 1, 100.0, 0.0)
            w.put_tombstone(b"/gone", 1.0, 1.0)
        store.write(job)
    return path


def test_inspect_text_output(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"format\s+2\s+tree id inspect-me", out)
    assert re.search(r"nodes\s+11 \(8 files, 3 dirs\)", out)
    assert re.search(rf"size on disk\s+{path.stat().st_size:,} bytes", out)
    assert re.search(r"total_size 103\s+latest_mtime 100.0", out)
    assert "1 tombstones" in out


def test_inspect_json_output(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["format_version"] == FORMAT_VERSION and out["tree_id"] == "inspect-me"
    assert (out["nodes"], out["files"], out["dirs"]) == (11, 8, 3)
    assert out["disk_bytes"] == path.stat().st_size
    assert out["stats"] == {"file_count": 8, "dir_count": 3, "total_size": 103,
                            "latest_mtime": 100.0}
    assert out["tombstones"] == 1


def test_inspect_path_shows_children(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    out = json.loads(invoke("inspect", path, "--json", "--path", "/data/").stdout)
    node = out["node"]
    assert node["node"]["path"] == "/data" and node["node"]["is_dir"]
    assert [c["name"] for c in node["children"]] == ["f0", "f1", "f2", "f3", "f4", "sub"]
    assert node["more_children"] is False and node["stats"]["file_count"] == 8
    text = invoke("inspect", path, "--path", "/data", "--limit", "2").stdout
    assert re.search(r"^dir +/data", text, re.MULTILINE)
    assert re.search(r"^  - +10 .* f1$", text, re.MULTILINE)
    assert "more; raise --limit" in text and " f2" not in text
    file_out = json.loads(invoke("inspect", path, "--json", "--path", "/data/f3").stdout)
    assert file_out["node"]["node"]["size"] == 30 and "children" not in file_out["node"]
    assert_one_error_line(invoke("inspect", path, "--path", "/nope"), "/nope")


def test_inspect_json_with_a_non_utf8_name(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    with Store(path) as store:
        store.write(lambda w: w.upsert(RAW_NAME, False, 4, 1.0, 0.0))
    result = invoke("inspect", path, "--json", "--path", "/")
    assert result.exit_code == 0, repr(result.exception)
    names = [c["name"] for c in json.loads(result.stdout)["node"]["children"]]
    assert len(names) == 2 and names[0] == "data" and names[1].startswith("raw")
    text = invoke("inspect", path, "--path", os.fsdecode(b"/raw\xff"))
    assert text.exit_code == 0 and "data" in text.stdout


def corrupt_aggregate(path, directory):
    env = lmdb.open(str(path), subdir=False, max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            aggs = env.open_db(b"aggregates", txn=txn, create=False)
            f, d, s, *rest = AGG.unpack(txn.get(keys.node_key(directory), db=aggs))
            txn.put(keys.node_key(directory), AGG.pack(f + 1, d, s + 5, *rest), db=aggs)
    finally:
        env.close()


def test_inspect_verify_exit_status(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    good = invoke("inspect", path, "--verify")
    assert good.exit_code == 0 and re.search(r"verify\s+ok", good.stdout)
    corrupt_aggregate(path, b"/data/sub")
    bad = invoke("inspect", path, "--verify")
    assert bad.exit_code == 1
    assert "1 problem(s)" in bad.stdout and "/data/sub: aggregate mismatch" in bad.stdout
    bad_json = invoke("inspect", path, "--verify", "--json")
    assert bad_json.exit_code == 1
    report = json.loads(bad_json.stdout)["verify"]
    assert report["ok"] is False and report["problem_count"] == 1
    assert report["problems"][0]["path"] == "/data/sub"
    assert report["problems"][0]["stored"][0] == report["problems"][0]["recomputed"][0] + 1
    assert invoke("inspect", path).exit_code == 0  # without --verify the summary still prints


def test_inspect_of_a_missing_file(tmp_path):
    assert_one_error_line(invoke("inspect", tmp_path / "nope.lmdb"), "nope.lmdb")
    assert not (tmp_path / "nope.lmdb").exists()


@pytest.mark.parametrize("command", ["inspect", "migrate"])
@pytest.mark.parametrize("content", [b"this is a text file, not a store\n" * 300, b""],
                         ids=["text", "empty"])
def test_cli_on_a_file_that_is_not_a_store(tmp_path, content, command):
    path = tmp_path / "notes.lmdb"
    path.write_bytes(content)
    assert_one_error_line(invoke(command, path), "notes.lmdb")
    assert path.read_bytes() == content


def test_inspect_of_a_plain_copy_without_lock_file(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "s.lmdb"
    shutil.copy(path, copy)
    assert sorted(p.name for p in copy.parent.iterdir()) == ["s.lmdb"]
    result = invoke("inspect", copy, "--json", "--verify")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["tree_id"] == "inspect-me" and out["files"] == 8 and out["verify"]["ok"]


def test_inspect_while_this_process_has_the_store_open_for_writing(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    with Store(path) as store:
        store.write(lambda w: w.upsert(b"/live/a", False, 1000, 1.0, 0.0))
        first = invoke("inspect", path, "--json", "--verify")
        assert first.exit_code == 0, first.output
        assert json.loads(first.stdout)["stats"]["total_size"] == 1103
        store.write(lambda w: w.upsert(b"/live/b", False, 1, 1.0, 0.0))  # the writer still works
        second = json.loads(invoke("inspect", path, "--json").stdout)
        assert second["files"] == 10
        with store.read() as r:
            assert r.stats(b"/").file_count == 10
        assert verify(store) == []


def test_inspect_process_while_writes_continue(tmp_path):
    path = make_store(tmp_path / "s.lmdb")
    stop, flowing = threading.Event(), threading.Event()
    with Store(path) as store, ThreadPoolExecutor(1) as pool:
        def writer():
            n = 0
            try:
                while not stop.is_set() and n < 100_000:
                    store.write(lambda w, n=n: [w.upsert(b"/w/%d/%d" % (n, i), False, 1, 1.0, 0.0)
                                                for i in range(100)])
                    n += 1
                    if n == 3:
                        flowing.set()
            finally:
                flowing.set()
            return n

        fut = pool.submit(writer)
        try:
            assert flowing.wait(30) and not fut.done()
            proc = subprocess.run(
                [sys.executable, "-m", "fustor.cli", "inspect", str(path), "--json", "--verify"],
                check=False, capture_output=True, text=True, timeout=120)
        finally:
            stop.set()
        written = fut.result(timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verify"]["ok"] and (out["files"] - 8) % 100 == 0
    assert 8 + 300 <= out["files"] <= 8 + 100 * written
