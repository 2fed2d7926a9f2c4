"""Consistent backups of a data directory's view stores, and restores that check first.

A plain file copy of a store is only safe while no fusion writes to it: a copy taken
during commits mixes pages of different moments and is torn. :func:`backup` copies
each store with LMDB's own copy (a read transaction: one consistent moment, while
fusion keeps writing; compacted by default), checks the copy, and writes::

    DEST/
      manifest.json          views, files, sizes, SHA-256, stats of /, time (see below)
      views/<view>.lmdb      an fs view
      views/<view>/<pipe>.lmdb   each member of a forest view
      keys.yaml              the zero-config keys (0600), when the data dir has them

Everything goes to a hidden ``.DEST.partial-PID`` directory first, every file and the
directories are fsynced, and only then is it renamed to DEST: a DEST that exists is a
complete backup. :func:`restore` holds the data dir's lock for its whole run (so no
fusion can start on it meanwhile, and it refuses a data dir a fusion holds), checks
every store of the backup — digest, format, a full recount of its aggregates, the
figures of the manifest — before it puts any in place, and replaces a store only by
an atomic rename of a complete, fsynced file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from fustor.datadir import DataDirLock
from fustor.errors import ConflictError, FustorError, NotFoundError
from fustor.store.env import Store
from fustor.store.inspect import report_isolated, summary

MANIFEST = "manifest.json"
BACKUP_FORMAT = 1
KEYS_FILE = "keys.yaml"
PROGRESS_EVERY_S = 0.5

Progress = Callable[[dict], None]


class BackupError(FustorError):
    status = 409
    code = "backup_invalid"


@dataclass(frozen=True)
class StoreFile:
    view: str
    member: str | None  # the pipe of a forest member; None for an fs view
    rel: str  # path under the data dir (and under the backup), e.g. views/x.lmdb

    @property
    def name(self) -> str:
        return f"{self.view}/{self.member}" if self.member else self.view


def view_stores(data_dir: Path, view: str | None = None) -> list[StoreFile]:
    """The stores of a data dir (or of one view): fs views and forest members."""
    views = Path(data_dir) / "views"
    out: list[StoreFile] = []
    if views.is_dir():
        for p in sorted(views.iterdir()):
            if p.is_file() and p.suffix == ".lmdb":
                out.append(StoreFile(p.stem, None, f"views/{p.name}"))
            elif p.is_dir():
                out.extend(StoreFile(p.name, m.stem, f"views/{p.name}/{m.name}")
                           for m in sorted(p.glob("*.lmdb")) if m.is_file())
    if view is not None:
        known = sorted({s.view for s in out})
        out = [s for s in out if s.view == view]
        if not out:
            raise NotFoundError(f"view {view!r} has no store under {views} (views there: "
                                f"{', '.join(known) or 'none'})")
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _watch_size(path: Path, total: int, name: str, progress: Progress | None):
    """Report the size of ``path`` while another thread writes it; returns a stop()."""
    if progress is None:
        return lambda: None
    done = threading.Event()

    def run() -> None:
        while not done.wait(PROGRESS_EVERY_S):
            with contextlib.suppress(OSError):
                progress({"event": "copying", "store": name, "bytes": path.stat().st_size,
                          "of": total})

    t = threading.Thread(target=run, name="fustor-backup-progress", daemon=True)
    t.start()

    def stop() -> None:
        done.set()
        t.join()

    return stop


def _copy_store(src: Path, dest: Path, compact: bool, name: str,
                progress: Progress | None) -> dict:
    """LMDB's copy of one store (consistent under writes), fsynced and checked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    st = Store(src, readonly=True)
    try:
        source_bytes = st.disk_bytes()
        stop = _watch_size(dest, source_bytes, name, progress)
        t0 = time.monotonic()
        try:
            st.copy_to(dest, compact=compact)
        finally:
            copy_s = time.monotonic() - t0
            stop()
    finally:
        st.close()
    _fsync(dest)
    copy = Store(dest, readonly=True)  # the copy must open as a store of this format
    try:
        s = summary(copy)
    finally:
        copy.close()
        Path(f"{dest}-lock").unlink(missing_ok=True)  # made by that open; never needed
    return {"bytes": dest.stat().st_size, "source_bytes": source_bytes,
            "copy_seconds": round(copy_s, 3), "sha256": _sha256(dest),
            "format_version": s["format_version"], "tree_id": s["tree_id"],
            "nodes": s["nodes"], "stats": s["stats"]}


def backup(data_dir: Path, dest: Path, *, view: str | None = None, compact: bool = True,
           progress: Progress | None = None) -> dict:
    """Back up every store of ``data_dir`` (or of ``view``) into the new directory
    ``dest``; returns the manifest. Works on a running fusion's data dir."""
    data_dir, dest = Path(data_dir), Path(dest)
    if dest.exists():
        raise ConflictError(f"{dest} already exists; give a new directory for the backup")
    stores = view_stores(data_dir, view)
    if not stores:
        raise NotFoundError(f"no view stores under {data_dir / 'views'}; is {data_dir} a "
                            "fusion data dir?")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)  # the keys may be in it
    started = time.time()
    t0 = time.monotonic()
    try:
        entries = []
        for s in stores:
            if progress:
                progress({"event": "store", "store": s.name, "rel": s.rel})
            info = _copy_store(data_dir / s.rel, tmp / s.rel, compact, s.name, progress)
            entries.append({"view": s.view, "member": s.member, "path": s.rel, **info})
            if progress:
                progress({"event": "copied", "store": s.name, "bytes": info["bytes"]})
        extra = []
        keys = data_dir / KEYS_FILE
        if view is None and keys.is_file():
            shutil.copy2(keys, tmp / KEYS_FILE)
            os.chmod(tmp / KEYS_FILE, 0o600)
            _fsync(tmp / KEYS_FILE)
            extra.append({"path": KEYS_FILE, "bytes": keys.stat().st_size,
                          "sha256": _sha256(tmp / KEYS_FILE)})
        seconds = time.monotonic() - t0
        total = sum(e["bytes"] for e in entries)
        manifest = {
            "fustor_backup": BACKUP_FORMAT, "created_at": started,
            "created_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "source": str(data_dir.resolve()), "view": view, "compacted": compact,
            "views": sorted({e["view"] for e in entries}), "stores": entries, "files": extra,
            "bytes": total, "seconds": round(seconds, 3),
            "mb_per_s": round(total / 1e6 / seconds, 1) if seconds > 0 else None,
        }
        part = tmp / (MANIFEST + ".tmp")
        part.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        _fsync(part)
        os.replace(part, tmp / MANIFEST)
        for d in sorted({(tmp / e["path"]).parent for e in entries}, reverse=True):
            _fsync(d)
        _fsync(tmp)
        os.rename(tmp, dest)
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(backup_dir: Path) -> dict:
    path = Path(backup_dir) / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{backup_dir} is not a fustor backup (no {MANIFEST}); a backup is "
                          "the directory `fustor backup` made") from None
    except orjson.JSONDecodeError as exc:
        raise BackupError(f"{path} is damaged ({exc}); use another backup") from None
    if not isinstance(manifest, dict) or manifest.get("fustor_backup") != BACKUP_FORMAT:
        raise BackupError(f"{path}: not a backup this fustor can restore (backup format "
                          f"{manifest.get('fustor_backup') if isinstance(manifest, dict) else '?'})")
    return manifest


def verify_backup(backup_dir: Path, entries: list[dict], progress: Progress | None = None) -> None:
    """Raise BackupError unless every store of ``entries`` is whole: the digest of the
    manifest, a store of this format, aggregates that match a full recount, and the
    manifest's figures. Reads in a child process (a damaged file may crash LMDB)."""
    for e in entries:
        path = Path(backup_dir) / e["path"]
        if progress:
            progress({"event": "verifying", "store": e["path"]})
        if not path.is_file():
            raise BackupError(f"{path} is missing; the backup is incomplete")
        if _sha256(path) != e["sha256"]:
            raise BackupError(f"{path} does not match the digest in the manifest: the backup "
                              "was damaged or changed; use another backup")
        lock = Path(f"{path}-lock")
        had_lock = lock.exists()
        try:
            out = report_isolated(path, check=True)
        except FustorError as exc:
            raise BackupError(f"{path}: {exc.message}") from None
        finally:
            if not had_lock:
                lock.unlink(missing_ok=True)
        if not out["verify"]["ok"]:
            raise BackupError(f"{path}: {out['verify']['problem_count']} aggregate problem(s) "
                              "in the store; use another backup")
        if (out["tree_id"], out["nodes"], out["files"], out["stats"]["total_size"]) != (
                e["tree_id"], e["nodes"], e["stats"]["file_count"], e["stats"]["total_size"]):
            raise BackupError(f"{path} does not hold what the manifest says; use another backup")


def _copy_in(src: Path, target: Path) -> None:
    """Put ``src`` at ``target`` atomically: copy beside it, fsync, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".restoring")
    part.unlink(missing_ok=True)
    shutil.copyfile(src, part)
    _fsync(part)
    os.replace(part, target)
    # the old environment's lock file: nothing uses it while we hold the data dir
    Path(f"{target}-lock").unlink(missing_ok=True)
    _fsync(target.parent)


def restore(backup_dir: Path, data_dir: Path, *, view: str | None = None,
            replace: bool = False, progress: Progress | None = None) -> dict:
    """Put the stores of ``backup_dir`` (or of ``view``) into ``data_dir``, after checking
    every one of them. Refuses a data dir a fusion holds, and stores that exist there
    unless ``replace``. Returns what was restored."""
    backup_dir, data_dir = Path(backup_dir), Path(data_dir)
    manifest = read_manifest(backup_dir)
    entries = manifest["stores"]
    if view is not None:
        entries = [e for e in entries if e["view"] == view]
        if not entries:
            raise NotFoundError(f"view {view!r} is not in the backup (it holds: "
                                f"{', '.join(manifest['views']) or 'nothing'})")
    lock = DataDirLock(data_dir)
    lock.acquire("a restore")  # held to the end: no fusion starts on a half-restored dir
    t0 = time.monotonic()
    try:
        present = [e["path"] for e in entries if (data_dir / e["path"]).exists()]
        if present and not replace:
            raise ConflictError(f"{data_dir} already has {', '.join(present)}; restore into an "
                                "empty data dir, or give --replace to overwrite those stores")
        verify_backup(backup_dir, entries, progress)
        for e in entries:
            if progress:
                progress({"event": "restoring", "store": e["path"]})
            _copy_in(backup_dir / e["path"], data_dir / e["path"])
        keys = backup_dir / KEYS_FILE
        kept_keys = (data_dir / KEYS_FILE).exists()
        if view is None and keys.is_file() and not kept_keys:
            _copy_in(keys, data_dir / KEYS_FILE)
            os.chmod(data_dir / KEYS_FILE, 0o600)
    finally:
        lock.release()
    return {"restored": [e["path"] for e in entries], "replaced": present,
            "bytes": sum(e["bytes"] for e in entries), "keys_restored":
            view is None and keys.is_file() and not kept_keys,
            "seconds": round(time.monotonic() - t0, 3), "backup_created_at": manifest["created_at"]}
