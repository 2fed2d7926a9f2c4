"""Locate across three partially overlapping forest members: every matching path once, in
name order, with the members holding it, whether they agree, and per-member counts."""

from __future__ import annotations

import fnmatch
import random

import pytest

from fustor.fusion.views.locate import locate
from fustor.store import Query
from tests.fusion.conftest import batch, event, row
from tests.fusion.test_forest import Q, forest_client
from tests.store.test_name_index import order_key

NAMES = ["Sample_%d.bam", "sample_%d.BAI", "run%d.fastq.gz", "notes%d.txt", "x%d"]


def trees(seed: int) -> dict[str, dict[str, tuple[int, float]]]:
    rng = random.Random(seed)
    base = {}
    for _ in range(260):
        d = rng.choice(["/up/a", "/up/b", "/up/b/c", "/other"])
        base[f"{d}/{rng.choice(NAMES) % rng.randrange(40)}"] = (rng.randrange(1000), 1000.0)
    out = {}
    for pipe, share in (("nfs1", 0.8), ("nfs2", 0.6), ("nfs3", 0.4)):
        mine = {}
        for p, (size, mtime) in base.items():
            if rng.random() < share:
                if rng.random() < 0.1:  # a copy that differs
                    size, mtime = (size + 1, mtime) if rng.random() < 0.5 else (size, mtime + 5)
                mine[p] = (size, mtime)
        for i in range(15):  # only here
            mine[f"/own/{pipe}/sample_{i}.bam"] = (i, 1.0)
        out[pipe] = mine
    return out


async def load(c, pipe: str, files: dict) -> None:
    key = {"X-API-Key": "k" + pipe[-1]}
    r = await c.post("/api/v1/pipe/session/", json={"task_id": f"h:{pipe}"}, headers=key)
    sid = r.json()["session_id"]
    rows = [row(p, mtime=m, size=s) for p, (s, m) in files.items()]
    r = await c.post(f"/api/v1/pipe/ingest/{sid}/events", json=batch([event(rows)], is_end=True),
                     headers=key)
    assert r.status_code == 200


def brute(members: dict, pattern: str, under: str) -> tuple[list[dict], dict]:
    glob = any(c in pattern for c in "*?[")
    want = pattern.lower()
    found: dict[str, dict] = {}
    counts = {}
    for pipe, files in members.items():
        n = 0
        for p, (size, mtime) in files.items():
            name = p.rsplit("/", 1)[1].lower()
            if under != "/" and not p.startswith(under + "/"):
                continue
            if not (fnmatch.fnmatchcase(name, want) if glob else want in name):
                continue
            n += 1
            found.setdefault(p, {})[pipe] = {"content_type": "file", "size": size, "modified_time": mtime}
        counts[pipe] = {"matches": n, "exact": True}
    order = sorted(found, key=lambda p: order_key(p.encode()))
    return [{"path": p, "members": found[p],
             "missing_in": sorted(set(members) - set(found[p])),
             "agree": len({(m["size"], m["modified_time"]) for m in found[p].values()}) == 1}
            for p in order], counts


@pytest.mark.parametrize("seed", [1, 2])
async def test_locate_across_three_overlapping_members_pages_every_path_once(tmp_path, seed):
    members = trees(seed)
    f, c = await forest_client(tmp_path)
    async with c:
        for pipe, files in members.items():
            await load(c, pipe, files)
        for pattern, under in [("*.bam", "/"), ("SAMPLE_1", "/"), ("*.fastq.gz", "/up"),
                               ("notes?.txt", "/up/b"), ("x3", "/"), ("nothing-here", "/")]:
            want, counts = brute(members, pattern, under)
            got, after = [], None
            for _ in range(1000):
                r = await c.get("/api/v1/views/uploads/locate", headers=Q,
                                params={"pattern": pattern, "path": under, "limit": 7,
                                        **({"after": after} if after else {})})
                assert r.status_code == 200, r.text
                page = r.json()
                assert page["members"] == counts
                assert len(page["results"]) <= 7
                got += [{k: e[k] for k in ("path", "members", "missing_in", "agree")}
                        for e in page["results"]]
                after = page["next_after"]
                assert page["truncated"] == (after is not None)
                if not after:
                    break
            assert got == want, pattern
            # search on a forest is the same answer
            one = (await c.get("/api/v1/views/uploads/search", headers=Q,
                               params={"pattern": pattern, "path": under, "limit": 100000})).json()
            assert [e["path"] for e in one["results"]] == [e["path"] for e in want]
        assert any(not e["agree"] for e in brute(members, "*", "/")[0])  # the test holds disagreements
        # past the cap a count says "at least", on the first page and on later ones
        forest = f.views["uploads"]
        want, counts = brute(members, "*.bam", "/")
        first = locate(dict(forest.members), Query("*.bam"), None, 4, count_cap=5)
        later = locate(dict(forest.members), Query("*.bam"), first["next_after"], 4, count_cap=5)
        capped = {p: {"matches": min(n["matches"], 5), "exact": n["matches"] <= 5}
                  for p, n in counts.items()}
        assert first["members"] == later["members"] == capped
        assert [e["path"] for e in first["results"] + later["results"]] == [e["path"] for e in want[:8]]
        bad = await c.get("/api/v1/views/uploads/locate", params={"pattern": "x", "after": "%%"}, headers=Q)
        assert bad.status_code == 400 and "after" in bad.json()["detail"]
    await f.stop()
