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
