"""A realistic generated tree for benchmarks: depth 4-6, ~100 files per leaf directory,
paths of 40-80 bytes, in crawl order (each directory's row before its entries)."""

from __future__ import annotations

import random
from collections.abc import Iterator

EXTS = [".fastq.gz", ".bam", ".bai", ".vcf.gz", ".csv", ".txt", ".h5", ".json"]
LEVEL_NAMES = ["proj", "sample", "run", "lane", "part", "chunk"]


def rows(files: int, seed: int = 7, base_mtime: float = 1.7e9) -> Iterator[tuple]:
    """Yield ``("upsert", path, is_dir, size, mtime, ctime)`` rows for about ``files`` files."""
    rng = random.Random(seed)
    leaves = max(1, files // 100)
    made = 0
    yield ("upsert", "/", True, 4096, base_mtime, base_mtime)
    leaf = 0
    top = 0
    while made < files:
        # one top-level project per ~10% of leaves, each a subtree of depth 4-6
        top_name = f"/{LEVEL_NAMES[0]}{top:03d}"
        top += 1
        t = base_mtime + rng.random() * 1e6
        yield ("upsert", top_name, True, 4096, t, t)
        stack = [(top_name, 1)]
        budget = max(1, leaves // 10)
        while stack and budget > 0 and made < files:
            d, depth = stack.pop()
            target = rng.choice((4, 5, 6))
            if depth >= target - 1 or depth >= 5:
                # a leaf directory with ~100 files
                n = min(files - made, rng.randint(80, 120))
                for i in range(n):
                    ext = EXTS[(leaf + i) % len(EXTS)]
                    mt = base_mtime + rng.random() * 1e7
                    yield ("upsert", f"{d}/f{i:04d}_{leaf:06d}{ext}", False,
                           rng.randint(0, 1 << 30), mt, mt)
                made += n
                leaf += 1
                budget -= 1
                continue
            kids = []
            for k in range(rng.randint(3, 6)):
                name = f"{d}/{LEVEL_NAMES[depth]}{k:02d}"
                mt = base_mtime + rng.random() * 1e7
                yield ("upsert", name, True, 4096, mt, mt)
                kids.append((name, depth + 1))
            stack.extend(reversed(kids))


def dict_tree_ingest(changes) -> dict:
    """The design fustor replaces: the whole tree as nested Python dicts in memory."""
    root = {"name": "", "is_dir": True, "children": {}}
    index = {"/": root}
    for _op, path, is_dir, size, mtime, ctime in changes:
        parent_path, _, name = path.rpartition("/")
        parent = index.get(parent_path or "/")
        if parent is None:
            parts = [p for p in parent_path.split("/") if p]
            cur, cur_path = root, ""
            for p in parts:
                cur_path += "/" + p
                nxt = index.get(cur_path)
                if nxt is None:
                    nxt = {"name": p, "is_dir": True, "children": {}, "size": 0, "mtime": 0.0}
                    cur["children"][p] = nxt
                    index[cur_path] = nxt
                cur = nxt
            parent = cur
        node = index.get(path)
        if node is None:
            node = {"name": name, "is_dir": is_dir}
            if is_dir:
                node["children"] = {}
            if path != "/":
                parent["children"][name] = node
            index[path] = node
        node.update(size=size, mtime=mtime, ctime=ctime)
    return index
