"""A forest view: one member tree per pipe behind one view, one store file per member.

Each member (``DATA/views/<view>/<pipe>.lmdb``) is a full fs view of its own —
arbitration, tombstones, suspects, blind spots, audit cycle, clock — with its own
leader election under the key ``"<view>:<pipe>"``. The forest only answers
questions across members: per-member stats of a path (and which member is
"best"), the best member's tree, and ``compare``: what differs between members
under a directory, descending only into subtrees whose aggregates differ.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from fustor.errors import BadQueryError, FustorError, NotFoundError
from fustor.fusion.views.fs import FsView, node_json
from fustor.fusion.views.locate import locate
from fustor.store import Query, keys
from fustor.store.records import AGG_COUNTS, IS_DIR, NODE_SIZE, NODE_SIZE_AND_MTIME, unpack_node

BEST_FIELDS = ("file_count", "total_size", "latest_mtime", "dir_count")
EPS = 1e-6


class ForestView:
    driver = "forest-fs"

    def __init__(self, view_id: str, directory: Path, member_pipes: list[str], **params) -> None:
        self.id = view_id
        self.dir = Path(directory)
        self.params = params
        self.allowed = set(member_pipes)
        self.members: dict[str, FsView] = {}
        for pipe in sorted(self.allowed):
            if (self.dir / f"{pipe}.lmdb").exists():
                self.member(pipe)

    def member_key(self, pipe_id: str) -> str:
        return f"{self.id}:{pipe_id}"

    def member(self, pipe_id: str) -> FsView:
        """The member tree of ``pipe_id``, created on first sight."""
        m = self.members.get(pipe_id)
        if m is None:
            if pipe_id not in self.allowed:
                raise NotFoundError(f"pipe {pipe_id!r} is not a member of forest view {self.id!r}")
            m = FsView(self.member_key(pipe_id), self.dir / f"{pipe_id}.lmdb", **self.params)
            # copy on write: a query in a worker thread keeps the dict it started with
            self.members = {**self.members, pipe_id: m}
        return m

    def set_members(self, member_pipes: list[str]) -> list[FsView]:
        """Adopt a new member list (config reload); returns the members dropped, for the
        caller to close (off the event loop). Their files stay on disk; adding the pipe
        back serves them again."""
        self.allowed = set(member_pipes)
        gone = [m for p, m in self.members.items() if p not in self.allowed]
        self.members = {p: m for p, m in self.members.items() if p in self.allowed}
        return gone

    def close(self) -> None:
        members, self.members = self.members, {}
        for m in members.values():
            m.close()

    # -- queries --------------------------------------------------------------------
    def _check_best(self, best: str | None) -> None:
        if best is not None and best not in BEST_FIELDS:
            raise BadQueryError(f"best must be one of {', '.join(BEST_FIELDS)}")

    def stats(self, path: str = "/", best: str | None = None) -> dict:
        self._check_best(best)
        p = keys.normalise(path)
        out = []
        for pipe, m in sorted(self.members.items()):
            with m.store.read() as r:
                s = r.stats(p)
            if s is None:
                out.append({"fusion_pipe_id": pipe, "view_id": pipe, "status": "error",
                            "message": f"path {path!r} is not in this member"})
            else:
                out.append({"fusion_pipe_id": pipe, "view_id": pipe, "status": "ok", **s.as_dict()})
        result = {"path": keys.display(p), "members": out, "best": None}
        if best:
            ok = [e for e in out if e["status"] == "ok"]
            if ok:
                win = max(ok, key=lambda e: (e[best], e["file_count"]))
                result["best"] = {"fusion_pipe_id": win["fusion_pipe_id"], "view_id": win["view_id"],
                                  "reason": best, "value": win[best]}
        return result

    def tree(self, path: str = "/", best: str | None = None, **kw) -> dict:
        self._check_best(best)
        if best:
            winner = self.stats(path, best)["best"]
            if winner is None:
                return {"path": path, "members": {}, "error": "no member has this path"}
            pipe = winner["fusion_pipe_id"]
            return {"path": path, "best_view_selected": pipe, "best": winner,
                    "members": {pipe: {"status": "ok", "data": self.members[pipe].tree(path, **kw)}}}
        out = {}
        for pipe, m in sorted(self.members.items()):
            try:
                out[pipe] = {"status": "ok", "data": m.tree(path, **kw)}
            except FustorError as exc:
                out[pipe] = {"status": "error", "error": exc.message}
        return {"path": path, "members": out}

    def locate(self, pattern: str, path: str = "/", limit: int = 1000, after: str | None = None,
               **filters) -> dict:
        """The paths under ``path`` matching ``pattern`` in any member, each with the members
        holding it and whether they agree (see ``views/locate.py``)."""
        q = Query(pattern, keys.normalise(path), **filters)
        return locate(dict(self.members), q, after, limit)

    search = locate  # a forest's search is over all its members

    def compare(self, path: str = "/", *, members: list[str] | None = None, mtime: bool = True,
                recursive: bool = True, limit: int = 1000, after: str | None = None) -> dict:
        """Entries under ``path`` whose presence, size or mtime differ between members.

        Directories are compared by their subtree aggregates (file_count, dir_count,
        total_size, and latest_mtime when ``mtime``); only differing ones are listed
        and descended into. Results come in path order; pass ``next_after`` back as
        ``after`` for the next page.
        """
        current = self.members
        names = sorted(members or current)
        missing = [n for n in names if n not in current]
        if missing:
            raise NotFoundError(f"not members of {self.id!r}: {', '.join(missing)}")
        if len(names) < 2:
            raise BadQueryError("compare needs at least two members")
        top = keys.normalise(path)
        after_parts = keys.normalise(after).split(b"/") if after else None
        out: list[dict] = []
        with ExitStack() as stack:
            readers = {n: stack.enter_context(current[n].store.read()) for n in names}
            tops = {n: r.get(top) for n, r in readers.items()}
            if not any(tops.values()):
                raise NotFoundError(f"path {path!r} is in no member")
            more = self._compare_dir(readers, top, mtime, recursive, limit, after_parts, out)
        result = {"path": keys.display(top), "members": names, "differences": out,
                  "next_after": out[-1]["path"] if more and out else None}
        return result

    def _compare_dir(self, readers: dict, d: bytes, mtime: bool, recursive: bool, limit: int,
                     after: list[bytes] | None, out: list[dict]) -> bool:
        """Append differences under ``d``; True when ``limit`` cut the listing short.

        Children are grouped by key and compared as raw records (size and mtime bytes
        of files, aggregate bytes of directories); only differing ones are decoded.
        """
        names = list(readers)
        lists = [list(readers[n].iter_children_raw(d)) for n in names]
        file_sig = NODE_SIZE_AND_MTIME if mtime else NODE_SIZE
        agg_sig = slice(0, None) if mtime else AGG_COUNTS
        total = len(readers)
        if all(len(x) == len(lists[0]) for x in lists) and all(
            x[-1][0] == lists[0][-1][0] and x[0][0] == lists[0][0][0] for x in lists if x
        ):
            # the usual case: every member lists the same names; compare record bytes in
            # step and decode nothing for the (many) equal entries
            kids = {}
            for row in zip(*lists, strict=True):
                k0, v0 = row[0]
                if any(k != k0 for k, _ in row[1:]):
                    kids = None
                    break
                if v0[0] & IS_DIR or any(v[file_sig] != v0[file_sig] or v[0] != v0[0] for _, v in row[1:]):
                    kids[k0] = {n: v for n, (_, v) in zip(names, row, strict=True)}
        else:
            kids = None
        if kids is None:
            kids = {}
            for n, lst in zip(names, lists, strict=True):
                for k, v in lst:
                    kids.setdefault(k, {})[n] = v
        for key in sorted(kids):
            have = kids[key]
            p = None
            flags = {v[0] & IS_DIR for v in have.values()}
            descend = False
            why = None
            if len(have) < total:
                why = "missing"
            elif len(flags) > 1:
                why = "type"
            elif flags == {IS_DIR}:
                aggs = {n: readers[n].aggregate_raw(key) for n in have}
                if len({bytes(a[agg_sig]) for a in aggs.values()}) > 1:
                    why, descend = "subtree", True
            elif len({bytes(v[file_sig]) for v in have.values()}) > 1:
                sizes = {bytes(v[NODE_SIZE]) for v in have.values()}
                why = "size" if len(sizes) > 1 else "mtime"
            if why is None:
                continue
            nodes = {n: unpack_node(key, v) for n, v in have.items()}
            p = next(iter(nodes.values())).path
            parts = p.split(b"/")
            if after is not None and parts < after[: len(parts)]:
                continue  # this whole subtree comes before the page start
            if after is None or parts > after:
                if len(out) >= limit:
                    return True
                aggs = ({n: readers[n].stats(p) for n in nodes} if why == "subtree" else None)
                out.append(self._entry(readers, p, nodes, why, aggs))
            if descend and recursive:
                if self._compare_dir(readers, p, mtime, recursive, limit, after, out):
                    return True
        return False

    @staticmethod
    def _entry(readers: dict, p: bytes, have: dict, why: str, aggs: dict | None = None) -> dict:
        """One difference: per member its node (and subtree figures), None where absent."""
        per = {}
        for n in readers:
            k = have.get(n)
            if k is None:
                per[n] = None
                continue
            j = node_json(k)
            if aggs is not None:
                j.update(aggs[n].as_dict())
            per[n] = j
        return {"path": keys.display(p), "difference": why,
                "missing_in": sorted(n for n in readers if n not in have), "members": per}
