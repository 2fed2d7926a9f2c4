"""A real directory tree 2,000 levels deep (paths near PATH_MAX): the agent's snapshot,
audit and on-demand scan reach the bottom, and arming a watch at the bottom before its
ancestors are watched (a scoped audit) climbs them without recursion."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.agent.conftest import collect, has_update

DEPTH = 2000


@pytest.fixture
def root(root):
    yield root
    # shutil.rmtree (pytest's own clean-up of old temp dirs included) recurses once per
    # level and fails 2,000 levels down; GNU rm walks without recursion
    subprocess.run(["rm", "-rf", str(root / "d")], check=True, timeout=120)


def deep_tree(root) -> str:
    """``root/d/d/…/d`` 2,000 levels deep with one file at the bottom; its view path."""
    p = str(root)
    for _ in range(DEPTH):
        p += "/d"
        os.mkdir(p)
    with open(p + "/bottom.txt", "w") as fh:
        fh.write("x")
    return "/d" * DEPTH


def test_scans_and_watches_reach_the_bottom_of_a_2000_deep_tree(root, make_source):
    bottom = deep_tree(root)
    src = make_source(root, backend="inotify")
    src.start_watch()
    # a scoped audit of the bottom directory arms it first: 2,000 unwatched ancestors
    rows = [r for b, _cache in src.audit({}, scope=[(bottom, True)]) for r in b]
    assert bottom + "/bottom.txt" in {r["path"] for r in rows}
    with open(os.path.join(str(root) + bottom, "new.txt"), "w") as fh:
        fh.write("y")
    collect(src, has_update(bottom + "/new.txt"))
    snap = {r["path"] for b in src.snapshot() for r in b}  # "/", the dirs, two files
    assert len(snap) == DEPTH + 3 and bottom + "/bottom.txt" in snap
    half = "/d" * (DEPTH // 2)
    scanned = {r["path"] for b in src.scan_path(half) for r in b}
    assert bottom + "/bottom.txt" in scanned and len(scanned) == DEPTH // 2 + 3
