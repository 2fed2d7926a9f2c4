"""Backups taken while stores are written are consistent and complete; restores check
every store before putting it in place and never touch a data dir a fusion uses; a torn
copy is called torn, never "run migrate"."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time

import httpx
import lmdb
import pytest
from click.testing import CliRunner

from fustor.backup import BackupError, backup, restore
from fustor.cli import main
from fustor.datadir import DataDirInUseError, DataDirLock
from fustor.errors import ConflictError, NotFoundError, StoreFormatError
from fustor.store import Store, apply_changes
from fustor.store.inspect import open_readonly, report_isolated, summary
from fustor.store.records import AGG
from tests.e2e import run_cli
from tests.procs import Proc, free_port, wait_http, wait_until

BATCH = 500


def files(i: int, n: int = BATCH) -> list[tuple]:
    return [("upsert", f"/d{i}/f{j}", False, j + 1, 1000.0 + i, 1000.0) for j in range(n)]


def make_data_dir(root, batches: int = 4):
    """A data dir with an fs view and a forest view of two members."""
    data = root / "data"
    for rel in ("views/research.lmdb", "views/forest/a.lmdb", "views/forest/b.lmdb"):
        with Store(data / rel) as st:
            for i in range(batches):
                st.write(lambda w, i=i: apply_changes(w, files(i)))
    return data


def stats_of(path) -> dict:
    st = open_readonly(path)
    try:
        return summary(st)["stats"]
    finally:
        st.close()


def test_backup_while_a_writer_commits_holds_whole_batches_and_restores(tmp_path):
    data = make_data_dir(tmp_path)
    live = Store(data / "views/research.lmdb")
    stop = threading.Event()
    written = [4]

    def writer():
        while not stop.is_set():
            live.write(lambda w, i=written[0]: apply_changes(w, files(i)))
            written[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until(lambda: written[0] > 10, what="the writer to commit")
        events = []
        m = backup(data, tmp_path / "bk", progress=events.append)
    finally:
        stop.set()
        t.join()
        live.close()
    assert m["views"] == ["forest", "research"]
    assert [(s["view"], s["member"], s["path"]) for s in m["stores"]] == [
        ("forest", "a", "views/forest/a.lmdb"), ("forest", "b", "views/forest/b.lmdb"),
        ("research", None, "views/research.lmdb")]
    research = m["stores"][2]
    # one moment of the store: whole batches only, while the writer went on past it
    assert research["stats"]["file_count"] % BATCH == 0
    assert 4 * BATCH <= research["stats"]["file_count"] < written[0] * BATCH
    assert sorted(p.name for p in (tmp_path / "bk").iterdir()) == ["manifest.json", "views"]
    assert not list((tmp_path / "bk").rglob("*-lock"))
    on_disk = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert on_disk == m and m["bytes"] == sum(s["bytes"] for s in m["stores"])
    assert {e["event"] for e in events} >= {"store", "copied"}
    out = restore(tmp_path / "bk", tmp_path / "new")
    assert out["restored"] == [s["path"] for s in m["stores"]] and out["replaced"] == []
    for s in m["stores"]:
        rep = report_isolated(tmp_path / "new" / s["path"], check=True)
        assert rep["verify"]["ok"] and rep["stats"] == s["stats"] and rep["tree_id"] == s["tree_id"]


def test_backup_of_one_view_and_the_refusals(tmp_path, monkeypatch):
    data = make_data_dir(tmp_path)
    (data / "keys.yaml").write_text("ingest: a\n")
    m = backup(data, tmp_path / "one", view="forest")
    assert [s["path"] for s in m["stores"]] == ["views/forest/a.lmdb", "views/forest/b.lmdb"]
    assert m["files"] == []  # the keys go only with a whole data dir
    full = backup(data, tmp_path / "full")
    assert [f["path"] for f in full["files"]] == ["keys.yaml"]
    assert (tmp_path / "full" / "keys.yaml").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConflictError, match="already exists"):
        backup(data, tmp_path / "one")
    with pytest.raises(NotFoundError, match="view 'nope' has no store.*forest, research"):
        backup(data, tmp_path / "x", view="nope")
    import fustor.backup as mod

    real, calls = mod._copy_store, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(mod, "_copy_store", failing)
    with pytest.raises(OSError, match="No space"):
        backup(data, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "full", "one"]  # no leftovers


def test_restore_checks_every_store_before_putting_any_in_place(tmp_path):
    data = make_data_dir(tmp_path)
    backup(data, tmp_path / "bk")
    bad = tmp_path / "bk" / "views/forest/b.lmdb"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(BackupError, match="does not match the digest"):
        restore(tmp_path / "bk", tmp_path / "new")
    assert not (tmp_path / "new" / "views").exists()  # nothing of it was put in place
    # a store that opens but whose aggregates do not add up (the digest updated to hide it)
    backup(data, tmp_path / "bk2", view="research")
    path = tmp_path / "bk2" / "views/research.lmdb"
    env = lmdb.open(str(path), subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        aggs = env.open_db(b"aggregates", txn=txn, create=False)
        txn.put(b"/", bytes(AGG.size), db=aggs)
    env.close()
    os.unlink(f"{path}-lock")
    m = json.loads((tmp_path / "bk2" / "manifest.json").read_text())
    from fustor.backup import _sha256

    m["stores"][0]["sha256"] = _sha256(path)
    (tmp_path / "bk2" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackupError, match="aggregate problem"):
        restore(tmp_path / "bk2", tmp_path / "new")
    assert not (tmp_path / "new" / "views").exists()
    with pytest.raises(BackupError, match="not a fustor backup"):
        restore(tmp_path / "data", tmp_path / "new")


def test_restore_refuses_a_data_dir_in_use_and_existing_stores(tmp_path):
    data = make_data_dir(tmp_path)
    backup(data, tmp_path / "bk")
    held = DataDirLock(data)
    held.acquire()
    try:
        with pytest.raises(DataDirInUseError, match="in use by another fusion.*a restore"):
            restore(tmp_path / "bk", data, replace=True)
    finally:
        held.release()
    with pytest.raises(ConflictError, match="already has views/forest/a.lmdb.*--replace"):
        restore(tmp_path / "bk", data)
    with Store(data / "views/research.lmdb") as st:  # changed after the backup
        st.write(lambda w: apply_changes(w, files(99)))
    out = restore(tmp_path / "bk", data, view="research", replace=True)
    assert out["restored"] == out["replaced"] == ["views/research.lmdb"]
    assert stats_of(data / "views/research.lmdb")["file_count"] == 4 * BATCH


def _torn_message(result) -> None:
    assert result.exit_code == 1, result.output
    assert "not a consistent fustor store: torn copy or corruption; restore from a backup" \
        in result.output
    assert "migrate" not in result.output


def test_inspect_calls_torn_and_foreign_files_what_they_are(tmp_path):
    data = make_data_dir(tmp_path, batches=40)
    good = data / "views/research.lmdb"
    raw = good.read_bytes()
    runner = CliRunner()
    cut = tmp_path / "cut.lmdb"
    cut.write_bytes(raw[: len(raw) // 2])
    _torn_message(runner.invoke(main, ["inspect", str(cut), "--verify"]))
    lost = tmp_path / "lost.lmdb"  # its format version no longer readable: not a format-0 store
    shutil.copy(good, lost)
    env = lmdb.open(str(lost), subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.delete(b"format_version", db=env.open_db(b"meta", txn=txn, create=False))
    env.close()
    _torn_message(runner.invoke(main, ["inspect", str(lost)]))
    with pytest.raises(StoreFormatError, match="torn copy"):
        Store(lost)  # fusion refuses to serve it, with the same words
    junk = tmp_path / "pages.lmdb"  # pages overwritten in the middle of the tree
    mixed = bytearray(raw)
    for at in range(len(raw) // 4, len(raw) - 4096, len(raw) // 10):
        mixed[at:at + 4096] = os.urandom(4096)
    junk.write_bytes(bytes(mixed))
    out = runner.invoke(main, ["inspect", str(junk), "--verify"])
    assert "migrate" not in out.output
    if out.exit_code == 1 and "aggregate" not in out.output:
        _torn_message(out)
    foreign = tmp_path / "foreign.lmdb"
    env = lmdb.open(str(foreign), subdir=False, max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=env.open_db(b"other", txn=txn))
    env.close()
    out = runner.invoke(main, ["inspect", str(foreign)])
    assert out.exit_code == 1 and "is an LMDB file but not a fustor store" in out.output


def test_a_slow_plain_copy_under_writes_is_never_sent_to_migrate(tmp_path):
    """What users did: a plain copy of a live store. Whatever state the copy is in, inspect
    either reads it or calls it torn; never a traceback, a crash or "run migrate"."""
    live = Store(tmp_path / "live.lmdb")
    for i in range(20):
        live.write(lambda w, i=i: apply_changes(w, files(i)))
    stop = threading.Event()

    def writer():
        i = 20
        while not stop.is_set():
            live.write(lambda w, i=i: apply_changes(w, files(i)))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        with open(live.path, "rb") as src, open(tmp_path / "copy.lmdb", "wb") as dst:
            while chunk := src.read(64 << 10):
                dst.write(chunk)
                time.sleep(0.001)
    finally:
        stop.set()
        t.join()
        live.close()
    out = CliRunner().invoke(main, ["inspect", str(tmp_path / "copy.lmdb"), "--verify"])
    assert "migrate" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)  # no traceback
    if out.exit_code:
        assert "not a consistent fustor store" in out.output or "problem(s)" in out.output


CONFIG = """
host: 127.0.0.1
port: {port}
admin_keys: [adm]
receivers:
  r: {{bind_host: 127.0.0.1, port: {port}, api_keys: [{{key: ing, pipe_id: v}}]}}
views:
  v: {{api_keys: [qk]}}
pipes:
  v: {{receiver: r, views: [v]}}
"""


def test_backup_of_a_running_fusion_and_restore_into_a_new_one(tmp_path):
    """The operator's path: back up a fusion that is ingesting, find its data dir refused
    for restore, restore elsewhere, start a fusion there: it answers at once."""
    home, port = tmp_path / "home", free_port()
    (tmp_path / "f.yaml").write_text(CONFIG.format(port=port))
    base = f"http://127.0.0.1:{port}"
    p = Proc(["fusion", "serve", "--data", str(tmp_path / "data"), "--config",
              str(tmp_path / "f.yaml")], home, tmp_path / "f.log")
    stop = threading.Event()
    pushed = [0]
    clients = contextlib.ExitStack()
    try:
        wait_http(base + "/", p)
        c = clients.enter_context(httpx.Client(base_url=base, headers={"X-API-Key": "ing"},
                                               timeout=30))
        sid = c.post("/api/v1/pipe/session/", json={"task_id": "a:v"}).json()["session_id"]

        def push(i, end=False):
            rows = [{"path": f"/d{i}/f{j}", "size": 1, "modified_time": 1000.0,
                     "created_time": 1000.0, "is_directory": False} for j in range(200)]
            ev = {"event_type": "update", "event_schema": "fs", "table": "files",
                  "fields": list(rows[0]), "rows": rows, "index": 1, "message_source": "snapshot"}
            r = c.post(f"/api/v1/pipe/ingest/{sid}/events",
                       json={"events": [ev], "source_type": "snapshot", "is_end": end})
            assert r.status_code == 200, r.text

        push(0, end=True)

        def pusher():
            i = 1
            while not stop.is_set() and i < 2000:
                push(i)
                pushed[0] = i
                i += 1

        t = threading.Thread(target=pusher)
        t.start()
        wait_until(lambda: pushed[0] > 5, what="pushes")
        out = run_cli(["backup", str(tmp_path / "data"), str(tmp_path / "bk")], home)
        stop.set()
        t.join()
        assert out.returncode == 0, out.stderr
        assert "backup of 1 store(s) of 1 view(s)" in out.stdout
        refused = run_cli(["restore", str(tmp_path / "bk"), str(tmp_path / "data"), "--replace"],
                          home)
        assert refused.returncode == 1 and "in use by another fusion" in refused.stderr
        assert p.alive()
    finally:
        stop.set()
        clients.close()
        assert p.stop() == 0
    m = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    files_backed = m["stores"][0]["stats"]["file_count"]
    assert files_backed % 200 == 0 and files_backed >= 1200  # whole batches only
    out = run_cli(["restore", str(tmp_path / "bk"), str(tmp_path / "again")], home)
    assert out.returncode == 0 and "restored views/v.lmdb" in out.stdout, out.stderr
    port2 = free_port()
    (tmp_path / "f2.yaml").write_text(CONFIG.format(port=port2))
    p2 = Proc(["fusion", "serve", "--data", str(tmp_path / "again"), "--config",
               str(tmp_path / "f2.yaml")], home, tmp_path / "f2.log")
    try:
        wait_http(f"http://127.0.0.1:{port2}/", p2)
        r = httpx.get(f"http://127.0.0.1:{port2}/api/v1/views/v/stats",
                      headers={"X-API-Key": "qk"}, timeout=10)
        assert r.status_code == 200 and r.json()["file_count"] == files_backed
    finally:
        assert p2.stop() == 0
