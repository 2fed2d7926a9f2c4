"""The logical clock (spec/consistency.md §2)."""

from __future__ import annotations

import random
import threading
from collections import Counter

import orjson

from fustor.clock import CAPACITY, SAMPLE_LIMIT, LogicalClock
from tests.fusion.harness import FakeWall


def test_cold_start_watermark_is_physical_time_and_reset_returns_to_it():
    wall = FakeWall(5000.0)
    c = LogicalClock(now=wall)
    assert c.skew() is None
    assert c.get_skew() == 0.0
    assert c.watermark() == 5000.0
    wall.advance(12.5)
    assert c.watermark() == 5012.5
    c.update(4012.5, can_sample=True)
    assert c.watermark() == 4012.5
    c.reset()
    assert c.skew() is None
    assert c.watermark() == wall.t
    assert c.dump() == []


def test_realtime_sample_sets_skew_and_watermark():
    wall = FakeWall(200.0)
    c = LogicalClock(now=wall)
    assert c.update(100.0, can_sample=True) == 100.0
    assert c.skew() == 100
    assert c.watermark() == 100.0

    fresh = LogicalClock(now=wall)
    fresh.update(200.0, can_sample=True)
    assert fresh.skew() == 0
    assert fresh.watermark() == 200.0


def test_update_without_mtime_returns_watermark_without_sampling():
    wall = FakeWall(200.0)
    c = LogicalClock(now=wall)
    assert c.update(None, can_sample=True) == 200.0
    assert c.sample_count() == 0
    c.update(150.0, can_sample=True)
    assert c.update(None, can_sample=True) == 150.0
    assert c.sample_count() == 1


def test_non_sampling_updates_never_move_the_clock():
    wall = FakeWall(10_000.0)
    c = LogicalClock(now=wall)
    c.update(9_990.0, can_sample=True)
    # an audit/snapshot row with a very old mtime does not pull the watermark back
    assert c.update(1_000.0, can_sample=False) == 9_990.0
    assert c.update(50_000.0, can_sample=False) == 9_990.0
    assert c.dump() == [10]


def test_majority_skew_wins_over_a_rogue_sample():
    wall = FakeWall(10_000.0)
    c = LogicalClock(now=wall)
    for _ in range(3):
        c.update(9_900.0, can_sample=True)
    c.update(11_500.0, can_sample=True)  # skew -1500
    assert c.skew() == 100
    assert c.watermark() == 9_900.0


def test_single_future_touch_cannot_advance_the_watermark():
    wall = FakeWall(10_000.0)
    c = LogicalClock(now=wall)
    for _ in range(5):
        c.update(9_998.0, can_sample=True)
    before = c.watermark()
    c.update(10_000.0 + 86_400 * 365, can_sample=True)
    assert c.watermark() == before == 9_998.0


def test_tie_in_histogram_picks_the_smaller_skew():
    wall = FakeWall(1_000.0)
    c = LogicalClock(now=wall)
    c.update(990.0, can_sample=True)  # 10
    c.update(995.0, can_sample=True)  # 5
    assert c.skew() == 5
    c.update(990.0, can_sample=True)  # 10 leads
    assert c.skew() == 10
    c.update(995.0, can_sample=True)  # tie again
    assert c.skew() == 5


def test_watermark_tracks_physical_time_with_a_fixed_skew():
    wall = FakeWall(10_000.0)
    c = LogicalClock(now=wall)
    c.update(9_900.0, can_sample=True)
    wall.t = 10_510.0
    assert c.watermark() == 10_410.0


def test_skew_is_truncated_toward_zero():
    wall = FakeWall(100.0)
    c = LogicalClock(now=wall)
    c.update(100.9, can_sample=True)  # -0.9 -> 0
    c.update(98.5, can_sample=True)  # 1.5 -> 1
    c.update(101.7, can_sample=True)  # -1.7 -> -1
    assert sorted(c.dump()) == [-1, 0, 1]


def test_buffer_caps_and_evicting_the_mode_recounts():
    wall = FakeWall(100_000.0)
    c = LogicalClock(now=wall)
    for _ in range(CAPACITY):
        c.update(wall.t - 5, can_sample=True)
    assert c.sample_count() == CAPACITY and c.skew() == 5
    for i in range(1, CAPACITY + 1):
        c.update(wall.t - 7, can_sample=True)
        want = 5 if i <= CAPACITY // 2 else 7  # a tie at half-way picks the smaller
        assert c.skew() == want, i
    assert c.sample_count() == CAPACITY
    assert set(c.dump()) == {7}


def test_mode_matches_a_recount_under_random_samples():
    rng = random.Random(7)
    wall = FakeWall(1_000.0)
    c = LogicalClock(now=wall, capacity=50)
    window: list[int] = []
    for _ in range(3_000):
        d = rng.choice([0, 1, 2, 3, -2, 60, rng.randint(-100, 100)])
        c.update(wall.t - d, can_sample=True)
        window = (window + [d])[-50:]
        if rng.random() < 0.5:
            counts = Counter(window)
            best = max(counts.values())
            assert c.skew() == min(k for k, v in counts.items() if v == best)


def test_concurrent_updates_and_reads_keep_state_consistent():
    wall = FakeWall(50_000.0)
    c = LogicalClock(now=wall)
    errors = []

    def writer(seed):
        rng = random.Random(seed)
        try:
            for _ in range(4_000):
                c.update(wall.t - rng.randint(0, 9), can_sample=True)
                c.watermark()
        except Exception as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    samples = c.dump()
    assert len(samples) == CAPACITY
    counts = Counter(samples)
    best = max(counts.values())
    assert c.skew() == min(k for k, v in counts.items() if v == best)


def test_dump_and_load_round_trip_and_keep_only_the_last_samples():
    wall = FakeWall(1_000.0)
    c = LogicalClock(now=wall)
    for d in (3, 3, 4):
        c.update(wall.t - d, can_sample=True)
    other = LogicalClock(now=wall)
    other.load(c.dump())
    assert other.dump() == [3, 3, 4] and other.skew() == 3

    small = LogicalClock(now=wall, capacity=3)
    small.load([9, 9, 9, 1, 1, 2])
    assert small.dump() == [1, 1, 2] and small.skew() == 1


def test_absurd_mtimes_are_clamped_so_samples_stay_storable():
    wall = FakeWall(1_000.0)
    c = LogicalClock(now=wall)
    c.update(-1e300, can_sample=True)
    c.update(1e300, can_sample=True)
    assert sorted(c.dump()) == [-SAMPLE_LIMIT, SAMPLE_LIMIT]
    assert orjson.loads(orjson.dumps(c.dump())) == c.dump()
