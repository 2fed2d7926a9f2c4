"""A forest view: one member tree per pipe behind one view, one store file per member.

Each member (``DATA/views/<view>/<pipe>.lmdb``) is a full fs view of its own —
arbitration, tombstones, suspects, blind spots, audit cycle, clock — with its own
leader election under the key ``"<view>:<pipe>"``. The forest only answers
questions across members: per-member stats of a path (and which member is
"best"), the best member's tree, and ``compare``: what differs between members
under a directory, descending only into subtrees whose digests differ (exact, and
the cost is the differences, not the files; see ``fustor/store/README.md``).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from fustor.errors import BadQueryError, FustorError, NotFoundError
from fustor.fusion.views.fs import FsView, record_json
from fustor.fusion.views.locate import locate
from fustor.store import Query, keys
from fustor.store.compare import Summary, differing_children, same_subtree, tally
from fustor.store.records import AGG

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
                settled = m.settled(r, p) if s is not None else None
            if s is None:
                out.append({"fusion_pipe_id": pipe, "view_id": pipe, "status": "error",
                            "message": f"path {path!r} is not in this member"})
            else:
                out.append({"fusion_pipe_id": pipe, "view_id": pipe, "status": "ok", **s.as_dict(),
                            **settled})
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
                recursive: bool = True, limit: int = 1000, after: str | None = None,
                reference: str | None = None) -> dict:
        """Entries under ``path`` whose presence, type, size or mtime differ between members.

        Directories are compared by their subtree digests (without mtimes when
        ``mtime`` is false): equal digests mean equal subtrees, so only differing
        directories are listed ("subtree") and descended into. Results come in path
        order; pass ``next_after`` back as ``after`` for the next page.

        ``summary`` says, for every member but the ``reference`` (default: the member
        with the most files under ``path``), exactly how many files and directories of
        the reference it lacks, how many it has extra, and how many of both differ
        (size or mtime; a directory by its own mtime), whatever ``limit`` is.
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
            ref = self._reference(readers, top, reference)
            counts = None
            if same_subtree(list(readers.values()), top, mtime):
                more = False  # the usual answer for complete copies, in O(members)
            else:
                # a walk that visits every difference (first page, recursive) counts the
                # summary as it goes; if the limit cuts it short, tally counts on its own
                if after_parts is None and recursive:
                    counts = Summary.start(readers, ref, top, mtime)
                more = self._compare(readers, top, mtime, recursive, limit, after_parts, out,
                                     counts)
            if counts is not None and not more:
                summary = counts.result()
            else:
                summary = {n: tally(readers[ref], readers[n], top, mtime)
                           for n in names if n != ref}
        result = {"path": keys.display(top), "members": names, "differences": out,
                  "next_after": out[-1]["path"] if more and out else None,
                  "reference": ref, "summary": summary}
        return result

    @staticmethod
    def _reference(readers: dict, top: bytes, reference: str | None) -> str:
        if reference is not None:
            if reference not in readers:
                raise BadQueryError(f"reference {reference!r} is not one of the compared members")
            return reference

        def files(n: str) -> int:
            st = readers[n].stats(top)
            return -1 if st is None else st.file_count

        return max(sorted(readers), key=files)  # ties: the first name

    def _compare(self, readers: dict, top: bytes, mtime: bool, recursive: bool, limit: int,
                 after: list[bytes] | None, out: list[dict], counts: Summary | None = None) -> bool:
        """Append differences under ``top`` in path order; True when ``limit`` cut the
        listing short. Descends with a stack of per-directory iterators, so any depth works.
        Each difference found is also added to ``counts`` (when given)."""
        stack = [differing_children(readers, top, mtime)]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            p, key, have, why, descend = item
            if counts is not None:
                counts.add(p, key, have, why)
            parts = p.split(b"/")
            if after is not None and parts < after[: len(parts)]:
                continue  # this whole subtree comes before the page start
            if after is None or parts > after:
                if len(out) >= limit:
                    return True
                out.append(self._entry(readers, p, key, have, why))
            if descend and recursive:
                stack.append(differing_children(readers, p, mtime))
        return False

    @staticmethod
    def _entry(readers: dict, p: bytes, key: bytes, have: dict[str, bytes], why: str) -> dict:
        """One difference: per member its node (and, for "subtree", the subtree figures),
        None where absent; ``have`` holds each member's raw node record."""
        path = keys.display(p)
        name = keys.display(p.rsplit(b"/", 1)[-1]) if p != keys.ROOT else ""
        per = {}
        for n, r in readers.items():
            rec = have.get(n)
            if rec is None:
                per[n] = None
                continue
            j = record_json(path, name, rec)
            if why == "subtree":
                fc, dc, size, latest = AGG.unpack_from(r.aggregate_raw(key))[:4]
                j.update(file_count=fc, dir_count=dc, total_size=size, latest_mtime=latest)
            per[n] = j
        return {"path": path, "difference": why,
                "missing_in": sorted(n for n in readers if n not in have), "members": per}
