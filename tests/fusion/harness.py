"""A view harness for the consistency rules: a real store in tmp_path, a fake wall clock.

Test modules import the fixtures from here (``from tests.fusion.harness import ...``).
"""

from __future__ import annotations

import pytest

from fustor.fusion import arbitration as rules
from fustor.store import Store, keys
from fustor.store.inspect import verify

START = 10_000.0


class FakeWall:
    """The wall clock the rules see; tests move it explicitly."""

    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def P(path: str) -> bytes:
    return keys.normalise(path)


class View:
    """One fs view: store + ViewState, driven the way the view layer drives them."""

    def __init__(self, path, wall: FakeWall, **config) -> None:
        self.path = path
        self.wall = wall
        self.config = config
        self.store = Store(path)
        self.st = rules.ViewState(now=wall, **config)
        with self.store.read() as r:
            self.st.load(r)

    def close(self) -> None:
        self.store.close()

    def reopen(self) -> None:
        """Simulate a fusion restart: new store handle, new state loaded from disk."""
        self.close()
        self.__init__(self.path, self.wall, **self.config)

    # -- writes -------------------------------------------------------------------
    def run(self, fn, *args):
        def job(w):
            out = fn(w, self.st, *args)
            self.st.save(w)
            return out

        return self.store.write(job)

    def event(self, src: str, etype: str, rows: list) -> rules.EventResult:
        return self.run(rules.process_event,
                        {"event_type": etype, "message_source": src, "rows": rows})

    def upsert(self, src: str, path: str, mtime: float, size: int = 0, is_dir: bool = False,
               **extra) -> rules.EventResult:
        row = {"path": path, "modified_time": mtime, "size": size, "is_directory": is_dir,
               "created_time": mtime, **extra}
        return self.event(src, "update", [row])

    def delete(self, src: str, path: str, mtime: float | None = None) -> rules.EventResult:
        row = {"path": path} if mtime is None else {"path": path, "modified_time": mtime}
        return self.event(src, "delete", [row])

    def audit_start(self):
        return self.run(rules.audit_start)

    def audit_end(self) -> int:
        return self.run(rules.audit_end)

    def session_start(self):
        return self.run(rules.session_start)

    def reset(self):
        return self.run(rules.reset)

    def sweep(self) -> int:
        return self.run(rules.sweep_suspects)

    def sentinel(self, path: str, mtime: float, size=None, status=None) -> bool:
        return self.run(rules.update_suspect, path, mtime, size, status)

    # -- reads --------------------------------------------------------------------
    def node(self, path: str):
        with self.store.read() as r:
            return r.get(P(path))

    def exists(self, path: str) -> bool:
        return self.node(path) is not None

    def tombstone(self, path: str):
        with self.store.read() as r:
            return r.tombstone(P(path))

    def suspect(self, path: str):
        with self.store.read() as r:
            return r.suspect(P(path))

    def suspects(self) -> set[str]:
        with self.store.read() as r:
            return {keys.display(p) for p, _e, _m in r.iter_suspects()}

    def tombstones(self) -> set[str]:
        with self.store.read() as r:
            return {keys.display(p) for p, _a, _b in r.iter_tombstones()}

    def blind(self, kind: str) -> set[str]:
        with self.store.read() as r:
            return {keys.display(p) for p in r.iter_blind(kind)}

    def paths(self) -> set[str]:
        with self.store.read() as r:
            return {n.path_str for _d, n in r.walk(keys.ROOT)}

    def check(self) -> None:
        """Aggregates exact, every node linked, suspect flags match the suspect list."""
        assert verify(self.store) == []
        with self.store.read() as r:
            flagged = {n.path for _d, n in r.walk(keys.ROOT) if n.integrity_suspect}
            listed = {p for p, _e, _m in r.iter_suspects()}
            for p in listed:
                assert r.get(p) is not None, p
        assert flagged == listed


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
def make_view(tmp_path, wall):
    views = []

    def make(**config) -> View:
        v = View(tmp_path / f"view{len(views)}.lmdb", wall, **config)
        views.append(v)
        return v

    yield make
    for v in views:
        v.close()


@pytest.fixture
def view(make_view) -> View:
    return make_view()
