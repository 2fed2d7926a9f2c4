"""Locate across the members of a forest: which members hold each matching path.

Each member answers the same search (``fustor.store.search``) in the same order
(folded name, then node key), so the members' answers are merged as sorted
streams, one entry per path: no member's matches are ever held beyond the page.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from contextlib import ExitStack

from fustor.store import Query, Searcher, decode_after, encode_after, keys

COUNT_CAP = 10_000  # matches counted per member before the count says "at least"


def _tagged(pipe: str, stream, seen: dict) -> Iterator[tuple[bytes, bytes, str, object]]:
    for f, k, node in stream:
        seen[pipe] += 1
        yield f, k, pipe, node


def _order(t: tuple) -> tuple[bytes, bytes]:
    return t[0], t[1]


def locate(members: dict, query: Query, after: str | None = None, limit: int = 1000,
           count_cap: int = COUNT_CAP) -> dict:
    """``members`` maps pipe id -> fs view. Returns one page of matching paths, each with
    the members holding it and whether their (size, mtime) agree, and per member how many
    matches it holds under the path (exact up to ``count_cap``)."""
    cursor = decode_after(after)
    names = sorted(members)
    # the first page counts each member's matches by reading on in the same streams;
    # a later page starts after the cursor, so it counts with fresh ones
    want = max(limit, count_cap) + 1 if cursor is None else limit + 1
    seen = dict.fromkeys(names, 0)
    with ExitStack() as stack:
        readers = {p: stack.enter_context(members[p].store.read()) for p in names}
        streams = [_tagged(p, Searcher(readers[p].txn, readers[p].dbs, query).stream(cursor, want), seen)
                   for p in names]
        results: list[dict] = []
        last = None
        more = False
        for key, group in itertools.groupby(heapq.merge(*streams, key=_order), key=_order):
            if len(results) >= limit:
                more = True
                break
            results.append(_entry(list(group), names))
            last = key
        if cursor is not None:
            seen.update(dict.fromkeys(names, 0))
            streams = [_tagged(p, Searcher(readers[p].txn, readers[p].dbs, query).stream(None, count_cap + 1),
                               seen) for p in names]
        for p, stream in zip(names, streams, strict=True):
            for _ in stream:
                if seen[p] > count_cap:
                    break
        counts = {p: {"matches": min(n, count_cap), "exact": n <= count_cap} for p, n in seen.items()}
    return {"pattern": query.pattern, "path": keys.display(query.path), "results": results,
            "members": counts, "truncated": more,
            "next_after": encode_after(*last) if more and last else None}


def _entry(group: list, names: list[str]) -> dict:
    held = {pipe: node for _f, _k, pipe, node in group}
    first = group[0][3]
    sizes = {(n.size, n.modified_time) for n in held.values() if not n.is_dir}
    return {
        "path": first.path_str, "name": first.name,
        "content_type": "directory" if first.is_dir else "file",
        "members": {p: {"content_type": "directory" if n.is_dir else "file", "size": n.size,
                        "modified_time": n.modified_time} for p, n in held.items()},
        "missing_in": [p for p in names if p not in held],
        "agree": len(sizes) <= 1 and len({n.is_dir for n in held.values()}) == 1,
    }
