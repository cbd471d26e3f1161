"""The engine benchmark's regimes and the ratios it reports (bench/bench_engine.py)."""

from __future__ import annotations

import pytest

from bench.bench_engine import regime_settings, summarise


def test_each_regime_sets_what_it_names():
    assert regime_settings("reuse", 2000) == {}
    assert regime_settings("recompute", 2000) == {"fit_cache_mb": 0}
    assert regime_settings("quarter", 2001) == {"fit_examples": 500}


def test_the_engine_ratio_leaves_out_only_the_language_identification():
    timings = {"load": 1.0, "fit_covariance": 3.0, "fit_eigen": 2.0, "seeds": 1.0, "score": 2.0, "signals": 4.0}
    runs = [{"seconds": 14.0, "timings": timings, "peak_rss_mb": 10.0}]
    got = summarise(runs, floor=5.0, goal=1.8)
    assert got["total/floor"] == pytest.approx(14.0 / 5.0) and got["engine/floor"] == pytest.approx(10.0 / 5.0)
    assert got["seconds"]["fit"] == 5.0


def test_the_smollm2_workload_reports_each_stage_against_its_floor_and_skips_without_its_data(monkeypatch):
    from bench import engine_smollm2

    seconds = {"load": 3.0, "fit_covariance": 120.0, "fit_eigen": 100.0, "seeds": 67.0, "score": 107.0}
    result = {
        "date": "2026-12-07",
        "machine": {},
        "data": "d",
        "model": "m",
        "settings": {},
        "floor_seconds": 100.0,
        "floor_load_seconds": 3.0,
        "seconds": seconds | {"total": 400.0},
        "per_floor": {k: v / 100.0 for k, v in seconds.items()} | {"total": 4.0},
        "goal": engine_smollm2.GOAL,
        "factors_mb": 1171.0,
        "peak_rss_mb": {"floor": 1.0, "gdig": 2.0},
    }
    text = engine_smollm2.markdown(result)
    assert "| fit_covariance | 120.0 | 1.20 |" in text and "not met (4.00 x)" in text
    monkeypatch.setattr(engine_smollm2, "have_shared_data", lambda: False)
    assert "shared/data" in engine_smollm2.missing()
