"""Seeded random upserts, deletes, directory deletes and type switches; checked after every batch."""

import random

import pytest

from fustor.store import Store
from tests.store.model import Model, assert_store_matches

NAMES = [b"a", b"b", b"c", b"d\xff", b"e e", b".h"]


def random_path(rng):
    depth = rng.randint(1, 4)
    return b"/" + b"/".join(rng.choice(NAMES) for _ in range(depth))


def random_batch(rng, model, size):
    ops = []
    for _ in range(size):
        r = rng.random()
        if r < 0.55:
            ops.append(("upsert", random_path(rng), False, rng.randint(0, 5000), float(rng.randint(0, 100))))
        elif r < 0.7:
            ops.append(("upsert", random_path(rng), True, 4096, float(rng.randint(0, 100))))
        else:
            existing = [p for p in model.nodes if p != b"/"]
            target = rng.choice(existing) if existing and rng.random() < 0.8 else random_path(rng)
            ops.append(("delete", target))
    return ops


def apply(store, model, ops):
    def job(w):
        for op in ops:
            if op[0] == "delete":
                w.delete(op[1])
            else:
                w.upsert(op[1], op[2], op[3], op[4], 0.0)

    store.write(job)
    for op in ops:
        if op[0] == "delete":
            model.delete(op[1])
        else:
            model.upsert(op[1], op[2], op[3], op[4])


@pytest.mark.parametrize("seed", range(8))
def test_random_batches_keep_aggregates_and_children_exact(tmp_path, seed):
    rng = random.Random(seed)
    model = Model()
    with Store(tmp_path / "t.lmdb") as store:
        for _ in range(40):
            apply(store, model, random_batch(rng, model, rng.randint(1, 25)))
            assert_store_matches(store, model)


def test_state_survives_reopen_after_random_batches(tmp_path):
    rng = random.Random(99)
    model = Model()
    with Store(tmp_path / "t.lmdb") as store:
        for _ in range(30):
            apply(store, model, random_batch(rng, model, 20))
    with Store(tmp_path / "t.lmdb") as store:
        assert_store_matches(store, model)
