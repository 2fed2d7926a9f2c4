"""A plain-dict model of the tree semantics, to check the store against."""

from fustor.store import keys
from fustor.store.inspect import verify


class Model:
    def __init__(self):
        self.nodes = {b"/": (True, 0, 0.0)}  # path -> (is_dir, size, mtime)

    def _drop(self, path):
        inside = path + b"/"
        for p in [p for p in self.nodes if p == path or p.startswith(inside)]:
            del self.nodes[p]

    def upsert(self, path, is_dir, size, mtime):
        old = self.nodes.get(path)
        if old is not None and old[0] != is_dir:
            self._drop(path)
        chain = []
        p = path
        while p != b"/":
            p = keys.parent_of(p)
            chain.append(p)
        for p in reversed(chain):
            cur = self.nodes.get(p)
            if cur is None or not cur[0]:
                if cur is not None:
                    self._drop(p)
                self.nodes[p] = (True, 0, 0.0)
        self.nodes[path] = (is_dir, size, mtime)

    def delete(self, path):
        if path != b"/" and path in self.nodes:
            self._drop(path)

    def stats(self, d):
        inside = d + b"/" if d != b"/" else b"/"
        f = s = 0
        n_dirs = 0
        m = float("-inf")
        for p, (is_dir, size, mtime) in self.nodes.items():
            if p == d or p.startswith(inside):
                if is_dir:
                    n_dirs += 1
                else:
                    f += 1
                    s += size
                m = max(m, mtime)
        return (f, n_dirs, s, m)


def assert_store_matches(store, model):
    """Aggregates equal a recount, and every directory lists exactly its children."""
    assert verify(store) == []
    with store.read() as r:
        got = {}
        for _d, n in r.walk(b"/"):
            got[n.path] = (n.is_dir, n.size if not n.is_dir else 0, n.modified_time)
        want = {p: (v[0], v[1] if not v[0] else 0, v[2]) for p, v in model.nodes.items()}
        assert got == want
        for p, (is_dir, _s, _m) in model.nodes.items():
            if is_dir:
                names = sorted(q for q in model.nodes if q != b"/" and keys.parent_of(q) == p)
                listed, nxt = r.children(p)
                assert nxt is None
                assert [n.path for n in listed] == names
                st = r.stats(p)
                assert (st.file_count, st.dir_count, st.total_size, st.latest_mtime) == model.stats(p)
