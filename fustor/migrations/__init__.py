"""Numbered store-format migrations, applied in order by ``fustor migrate DIR``.

Each module ``mNNNN_*.py`` defines ``FROM``/``TO`` format versions and
``migrate(src_env, dest)`` that copies everything of an environment in format
``FROM`` into a fresh :class:`fustor.store.Store` of format ``TO``. A store is
migrated into a new file next to it, and only when that file is complete and
verified does it replace the original (which is kept as
``<name>.lmdb.format<FROM>.bak``): a crash mid-migration leaves the original as
it was.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path

import lmdb
import orjson

from fustor.errors import StoreError, StoreFormatError
from fustor.store.env import FORMAT_VERSION, Store


def write_in_batches(items, dest: Store, apply: Callable, size: int,
                     progress: Callable[[str], None], what: str) -> int:
    """Write ``items`` into ``dest``, ``size`` per write job (``apply(writer, batch)``),
    saying ``"<n> <what>"`` after each full batch. Returns how many were written."""
    batch: list = []
    done = 0
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            dest.write(lambda w, b=batch: apply(w, b))
            done += len(batch)
            progress(f"{done} {what}")
            batch = []
    if batch:
        dest.write(lambda w, b=batch: apply(w, b))
        done += len(batch)
    return done


def registry() -> dict[int, object]:
    """Migration modules keyed by the format they upgrade from."""
    out = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("m") and info.name[1:5].isdigit():
            mod = importlib.import_module(f"{__name__}.{info.name}")
            out[mod.FROM] = mod
    return out


def stored_format(path: Path) -> int:
    """The format version recorded in the store at ``path`` (0 when none is recorded)."""
    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=16)
    except lmdb.Error as exc:
        raise StoreFormatError(f"{path} cannot be opened as a fustor store: {exc}") from None
    try:
        with env.begin() as txn:
            if txn.get(b"meta") is None:
                raise StoreFormatError(f"{path} is not a fustor store (no meta table)")
            meta = env.open_db(b"meta", txn=txn, create=False)
            raw = txn.get(b"format_version", db=meta)
        return 0 if raw is None else int(orjson.loads(raw))
    finally:
        env.close()


def find_stores(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.lmdb") if p.is_file())


def migrate_store(path: Path, progress: Callable[[str], None] = lambda s: None) -> list[str]:
    """Bring one store up to the current format; returns the migrations applied."""
    version = stored_format(path)
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{path} is in store format {version}, newer than this fustor ({FORMAT_VERSION})"
        )
    steps = registry()
    applied = []
    while version < FORMAT_VERSION:
        mod = steps.get(version)
        if mod is None:
            raise StoreError(f"no migration from store format {version}")
        tmp = path.with_name(path.name + ".migrating")
        for leftover in (tmp, Path(str(tmp) + "-lock")):
            if leftover.exists():
                leftover.unlink()
        src = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=16)
        try:
            with src.begin() as txn:
                meta = src.open_db(b"meta", txn=txn, create=False)
                tree_id = txn.get(b"tree_id", db=meta)
            dest = Store(tmp, tree_id=orjson.loads(tree_id) if tree_id else None)
            try:
                mod.migrate(src, dest, progress)
                name = mod.__name__.rsplit(".", 1)[-1]
                done = dest.write(lambda w: w.meta("migrations", []))
                dest.write(lambda w, d=done, n=name: w.put_meta("migrations", [*d, n]))
            finally:
                dest.close()
        finally:
            src.close()
        backup = path.with_name(f"{path.name}.format{version}.bak")
        if backup.exists():
            backup.unlink()
        os.link(path, backup)  # keep the original under a second name first...
        os.replace(tmp, path)  # ...so this atomic swap never leaves NAME.lmdb missing
        lock = Path(str(tmp) + "-lock")
        if lock.exists():
            lock.unlink()
        applied.append(f"{mod.__name__.rsplit('.', 1)[-1]} (format {version} -> {mod.TO}; "
                       f"original kept as {backup.name})")
        # a migration writes a store of the current format (it goes through this
        # fustor's Store), so later steps may have nothing left to do
        version = max(mod.TO, stored_format(path))
    return applied
