"""A client of fusion's query API for `fustor find`, `du`, `ls`, `stat`, `compare` and `locate`.

Everything streams: :meth:`IndexClient.walk` yields entries as their pages arrive and
holds at most one answer (bounded by the view's ``max_tree_items``) plus one page
marker per directory level, so walking ten million entries starts printing at once and
never holds them all. A subtree is asked for whole (``tree``, ``limit`` children per
directory); when fusion refuses it — more items than ``max_tree_items``, or deeper than
200 levels — the walk lists that directory page by page (``after``/``next_after``) and
asks again for each child. ``du -s`` is one ``stats`` call.

Paths are bytes. In JSON fusion shows a byte XX that is not UTF-8 as the lone surrogate
``\\udcXX`` (Python's ``surrogateescape``), and takes it percent-encoded as ``%XX``; this
module keeps paths as such ``str`` and :func:`shown` prints them the way GNU tools do.
On a forest view each answer comes from the member holding the most files under the
path asked (``best=file_count``).
"""

from __future__ import annotations

import fnmatch
import math
import os
import stat as stat_mod
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from fustor.errors import ConfigError, FustorError

KEY_ENV = "FUSTOR_KEY"
SERVER_ENV = "FUSTOR_SERVER"
DEFAULT_SERVER = "http://127.0.0.1:8101"
PAGE = 1000  # children per directory and request
FALLBACK_CODES = ("too_many_items", "bad_query")  # subtree too large or too deep: list it


class RemoteError(FustorError):
    """An error answer of fusion, with its status and code."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def read_key(key_file: Path | None) -> str:
    """The key: ``FUSTOR_KEY``, else the first line of ``key_file`` (which must be 0600).
    Never a command-line value: every local user can read a command line."""
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            text = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--key-file {key_file}: cannot read it: {exc}") from None
        if mode & (stat_mod.S_IRWXG | stat_mod.S_IRWXO):
            raise ConfigError(f"--key-file {key_file}: other users can read it; chmod 600 it")
        if not text or len(text.split()) != 1:
            raise ConfigError(f"--key-file {key_file}: expected the key alone on one line")
        return text
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise ConfigError(f"no key: set {KEY_ENV} or give --key-file FILE (mode 600) with a "
                          "query key of the view (or an admin key)")
    return key


def split_target(target: str) -> tuple[str, str]:
    """``VIEW:PATH`` → ``(view, path)``; an empty PATH is ``/``."""
    view, sep, path = target.partition(":")
    if not sep or not view:
        raise ConfigError(f"{target!r}: give VIEW:PATH, e.g. research:/data/run1")
    return view, "/" + path.lstrip("/") if path else "/"


def as_bytes(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _q(value: str) -> str:
    return quote(as_bytes(value), safe="/")


@dataclass(slots=True)
class Entry:
    """One node of the index as a walk yields it; ``depth`` 0 is the path asked for."""

    path: str
    name: str
    is_dir: bool
    size: int
    mtime: float
    ctime: float
    depth: int

    @classmethod
    def of(cls, node: dict, depth: int) -> Entry:
        return cls(node["path"], node.get("name") or "", node.get("content_type") == "directory",
                   node.get("size") or 0, node.get("modified_time") or 0.0,
                   node.get("created_time") or 0.0, depth)

    def as_json(self) -> dict:
        return {"path": self.path, "type": "d" if self.is_dir else "f", "size": self.size,
                "mtime": self.mtime, "ctime": self.ctime}


class IndexClient:
    """Reads one fusion's views; every call is one or more GETs of the query API."""

    def __init__(self, server: str, key: str, *, timeout: float = 120.0,
                 ca_file: str | None = None, transport: httpx.BaseTransport | None = None,
                 page: int = PAGE) -> None:
        verify = ca_file if ca_file else True
        self._http = httpx.Client(base_url=server.rstrip("/"), headers={"X-API-Key": key},
                                  timeout=timeout, verify=verify, transport=transport)
        self.server = server
        self.page = page
        self._cap = page  # children per listing request; shrinks if fusion says too many

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> IndexClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one request ------------------------------------------------------------------
    def get(self, view: str, route: str, **params) -> dict:
        """GET a route of ``view``; parameters are percent-encoded as bytes."""
        qs = "&".join(f"{k}={_q(str(v).lower() if isinstance(v, bool) else str(v))}"
                      for k, v in params.items() if v is not None)
        url = f"/api/v1/views/{quote(view, safe='')}/{route}" + (f"?{qs}" if qs else "")
        try:
            r = self._http.get(url)
        except httpx.HTTPError as exc:
            raise FustorError(f"cannot reach fusion at {self.server}: {exc}") from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {}
            detail = body.get("detail") if isinstance(body, dict) else None
            code = body.get("code", "") if isinstance(body, dict) else ""
            raise RemoteError(f"{view}: {detail or f'HTTP {r.status_code}'}", r.status_code, code)
        return r.json()

    def tree(self, view: str, path: str, **params) -> dict:
        """A tree answer; on a forest view, the best member's."""
        out = self.get(view, "tree", path=path, best="file_count", **params)
        if "members" in out:  # a forest answered with the member that has the most files
            if not out["members"]:
                raise RemoteError(f"{view}: path {path!r} is in no member", 404, "not_found")
            member = next(iter(out["members"].values()))
            if member.get("status") != "ok":
                raise RemoteError(f"{view}: {member.get('error')}", 404, "not_found")
            return member["data"]
        return out

    def stats(self, view: str, path: str) -> dict:
        """Subtree figures of ``path`` (one aggregate read on fusion)."""
        out = self.get(view, "stats", path=path, best="file_count")
        if "members" in out:
            best = out.get("best")
            if best is None:
                raise RemoteError(f"{view}: path {path!r} is in no member", 404, "not_found")
            found = next(m for m in out["members"] if m["fusion_pipe_id"] == best["fusion_pipe_id"])
            return {**found, "path": out["path"], "member": best["fusion_pipe_id"]}
        return out

    def node(self, view: str, path: str) -> Entry:
        return Entry.of(self.tree(view, path, max_depth=0), 0)

    def _page(self, view: str, path: str, after: str | None) -> dict:
        """One page of ``path``'s children. A view whose ``max_tree_items`` is below the
        page size refuses it: ask again for half as many, down to one."""
        for _ in range(64):
            try:
                return self.tree(view, path, max_depth=1, limit=self._cap, after=after)
            except RemoteError as exc:
                if exc.code != "too_many_items" or self._cap == 1:
                    raise
                self._cap = max(1, self._cap // 2)
        raise FustorError(f"{view}: {path!r} cannot be listed")  # pragma: no cover

    def list_dir(self, view: str, path: str) -> Iterator[Entry]:
        """The direct children of ``path``, page by page."""
        after = None
        for _ in range(1 << 40):  # bounded by the directory's size; each page moves on
            data = self._page(view, path, after)
            for child in data.get("children", []):
                yield Entry.of(child, 1)
            after = data.get("next_after")
            if not after:
                return

    # -- walks ------------------------------------------------------------------------
    def walk(self, view: str, path: str, *, max_depth: int | None = None) -> Iterator[Entry]:
        """Every entry under ``path`` (itself first, depth 0) in pre-order, children by
        name, as `find` lists them; ``max_depth`` levels below ``path`` at most."""
        top = self.tree(view, path, max_depth=0)
        yield Entry.of(top, 0)
        if top.get("content_type") != "directory" or max_depth == 0:
            return
        stack: list[tuple] = [("expand", top["path"], 0)]
        while stack:
            step = stack.pop()
            if step[0] == "yield":
                _, node, depth = step
                yield Entry.of(node, depth)
                if node.get("content_type") == "directory" and (max_depth is None
                                                                 or depth < max_depth):
                    if "children" in node:  # it came inside a subtree answer
                        stack.extend(reversed(self._steps(node, depth)))
                    else:
                        stack.append(("expand", node["path"], depth))
            elif step[0] == "expand":
                _, p, depth = step
                try:
                    sub = self.tree(view, p, limit=self.page,
                                    max_depth=None if max_depth is None else max_depth - depth)
                except RemoteError as exc:
                    if exc.status != 400 or exc.code not in FALLBACK_CODES:
                        raise
                    stack.append(("list", p, depth, None))  # too big or deep for one answer
                    continue
                stack.extend(reversed(self._steps(sub, depth)))
            else:
                _, p, depth, after = step
                data = self._page(view, p, after)
                steps = [("yield", {k: v for k, v in c.items() if k != "children"}, depth + 1)
                         for c in data.get("children", [])]
                if data.get("next_after"):
                    steps.append(("list", p, depth, data["next_after"]))
                stack.extend(reversed(steps))

    @staticmethod
    def _steps(node: dict, depth: int) -> list[tuple]:
        """What to do with a directory's answer: yield each child, then page on."""
        steps: list[tuple] = [("yield", c, depth + 1) for c in node.get("children", [])]
        if node.get("next_after"):
            steps.append(("list", node["path"], depth, node["next_after"]))
        return steps

    def du(self, view: str, path: str, *, max_depth: int | None = None,
           all_dirs: bool = True) -> Iterator[tuple[Entry, dict]]:
        """``(directory, its subtree figures)`` in post-order, as `du` prints: a directory
        after everything under it. ``all_dirs`` False: only ``path`` (`du -s`)."""
        if not all_dirs:  # one request: fusion keeps the total of every directory
            st = self.stats(view, path)
            yield Entry(st["path"], "", True, 0, st["latest_mtime"], 0.0, 0), st
            return
        pending: list[Entry] = []
        for e in self.walk(view, path, max_depth=max_depth):
            if not e.is_dir:
                continue
            while pending and pending[-1].depth >= e.depth:
                d = pending.pop()
                yield d, self.stats(view, d.path)
            pending.append(e)
        while pending:
            d = pending.pop()
            yield d, self.stats(view, d.path)

    def compare(self, view: str, path: str, members: list[str] | None = None,
                mtime: bool = True) -> Iterator[dict]:
        """The differences between a forest's members under ``path``, page by page."""
        after = None
        for _ in range(1 << 40):  # each page moves ``after`` on
            out = self.get(view, "compare", path=path, members=",".join(members or []) or None,
                           mtime=mtime, limit=self.page, after=after)
            yield from out.get("differences", [])
            after = out.get("next_after")
            if not after:
                return

    def locate(self, view: str, pattern: str, path: str = "/", **filters) -> Iterator[dict]:
        """The matches of ``pattern`` under ``path``, page by page (fusion's name index):
        nodes on an fs view; on a forest, paths with the members holding them. The first
        item is the answer's header (``{"members": ...}``: per member match counts)."""
        after = None
        first = True
        for _ in range(1 << 40):  # each page moves ``after`` on
            out = self.get(view, "locate", pattern=pattern, path=path, limit=self.page,
                           after=after, **filters)
            if first:
                yield {"members": out.get("members")}
                first = False
            yield from out.get("results", [])
            after = out.get("next_after")
            if not after:
                return


# -- find's tests ------------------------------------------------------------------------
_UNITS = {"c": 1, "w": 2, "b": 512, "k": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def size_test(spec: str) -> Callable[[Entry], bool]:
    """find's ``-size [+-]N[cwbkMG]``: the size rounded up to whole units (default 512-byte
    blocks) is more than (+), less than (-) or exactly N."""
    sign = spec[:1] if spec[:1] in "+-" else ""
    body = spec[len(sign):]
    unit = body[-1:] if body[-1:] in _UNITS else "b"
    digits = body[:-1] if body[-1:] in _UNITS else body
    if not digits.isdigit():
        raise ConfigError(f"-size {spec}: expected [+-]N[ckMG], e.g. +10M")
    n, u = int(digits), _UNITS[unit]

    def test(e: Entry) -> bool:
        units = math.ceil(e.size / u)
        return units > n if sign == "+" else units < n if sign == "-" else units == n

    return test


def mmin_test(spec: str, now: float | None = None) -> Callable[[Entry], bool]:
    """find's ``-mmin [+-]N``: modified more (+), less (-) or exactly N minutes ago."""
    sign = spec[:1] if spec[:1] in "+-" else ""
    try:
        n = float(spec[len(sign):])
    except ValueError:
        raise ConfigError(f"-mmin {spec}: expected [+-]N minutes, e.g. -60") from None
    t = time.time() if now is None else now

    def test(e: Entry) -> bool:
        age = (t - e.mtime) / 60
        return age > n if sign == "+" else age < n if sign == "-" else math.ceil(age) == n

    return test


def newer_test(spec: str) -> Callable[[Entry], bool]:
    """``-newer DATE``: modified after DATE (ISO 8601, e.g. 2024-05-01 or
    2024-05-01T12:00, local time unless it says otherwise; seconds since 1970; or a local
    file, whose mtime is used, as find does)."""
    if os.path.exists(spec):
        when = os.stat(spec).st_mtime
    else:
        try:
            when = float(spec)
        except ValueError:
            try:
                when = datetime.fromisoformat(spec).timestamp()
            except ValueError:
                raise ConfigError(f"-newer {spec}: expected a date (2024-05-01, "
                                  "2024-05-01T12:00), seconds since 1970, or a file") from None
    return lambda e: e.mtime > when


def find_filter(name: str | None = None, kind: str | None = None, sizes: tuple = (),
                newer: str | None = None, mmins: tuple = ()) -> Callable[[Entry], bool]:
    """All of find's tests given, and-ed as find does."""
    tests: list[Callable[[Entry], bool]] = []
    if name is not None:
        tests.append(lambda e: fnmatch.fnmatchcase(e.name or "/", name))
    if kind is not None:
        tests.append(lambda e: e.is_dir == (kind == "d"))
    tests += [size_test(s) for s in sizes] + [mmin_test(m) for m in mmins]
    if newer is not None:
        tests.append(newer_test(newer))
    return lambda e: all(t(e) for t in tests)


# -- output as GNU tools print it -----------------------------------------------------------
def shown(path: str, tty: bool, style: str = "find") -> bytes:
    """``path`` as bytes to write. Not a terminal: the exact bytes of the name, as find,
    du and ls write them to a pipe. A terminal: find and du show each byte that is not
    printable (or not UTF-8) as ``?``; ls quotes the name as its shell-escape style does
    (``'caf'$'\\351'``)."""
    raw = as_bytes(path)
    if not tty:
        return raw
    if style == "ls":
        return _shell_escape(path).encode()
    return "".join("?" if _unprintable(c) else c for c in path).encode()


def _unprintable(c: str) -> bool:
    return "\udc80" <= c <= "\udcff" or not c.isprintable()


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def _shell_escape(name: str) -> str:
    if name and all(c in _SAFE or (ord(c) > 127 and not _unprintable(c)) for c in name):
        return name
    parts, run = [], ""
    for c in name:
        if _unprintable(c):
            if run:
                parts.append("'" + run.replace("'", "'\\''") + "'")
                run = ""
            parts.append("$'" + "".join(f"\\{b:03o}" for b in as_bytes(c)) + "'")
        else:
            run += c
    if run:
        parts.append("'" + run.replace("'", "'\\''") + "'")
    return "".join(parts)


def human(n: float) -> str:
    """du -h: 1K, 2.5M, 10G (powers of 1024; one decimal below 10, rounded up as du does)."""
    for unit in ("", "K", "M", "G", "T", "P"):
        if n < 1024 or unit == "P":
            if not unit:
                return str(int(n))
            if n < 10:
                return f"{math.ceil(n * 10) / 10:.1f}{unit}"
            return f"{math.ceil(n)}{unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def du_size(total: int, human_readable: bool, in_bytes: bool) -> str:
    """du's size column from apparent bytes: 1K units rounded up (du --apparent-size),
    -h human, -b bytes."""
    if in_bytes:
        return str(total)
    if human_readable:
        return human(total)
    return str(math.ceil(total / 1024))


def mtime_text(t: float) -> str:
    """ls -l's date: month, day and time within six months, else the year."""
    fmt = "%b %e %H:%M" if abs(time.time() - t) < 182 * 86400 else "%b %e  %Y"
    return time.strftime(fmt, time.localtime(t))


def stamp(t: float) -> str:
    """stat's full time: 2024-05-01 12:00:00.123456789 +0200."""
    frac = f"{t % 1:.9f}"[1:]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + frac + \
        time.strftime(" %z", time.localtime(t))
