"""bench/bench_duplicates.py on a small pool: the planted copies are the groups it finds (so the benchmark's
1,000,000-pair figure counts what it claims), and its report renders without ../shared/data."""

from __future__ import annotations

import bench.bench_duplicates as bd


def test_the_planted_copies_are_found_exactly(monkeypatch):
    monkeypatch.setattr(bd, "have_shared_data", lambda: False)
    r = bd.speed(3000, 1)
    # every 100 rows: one exact copy (case changed) and one near copy (a mark added) of the same pair
    assert r["counts"] == {"exact_duplicates": 60, "exact_extra": 30, "near_duplicates": 90, "near_extra": 60}
    text = bd.markdown({"date": "d", "machine": "m", "speed": r, "real_pools": [], "pretrained_pools": []})
    assert "3,000 pairs" in text
