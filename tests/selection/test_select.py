"""Quality rule, overrides, clustering, resampling, baselines: on hand-made matrices."""

from __future__ import annotations

import numpy as np
import pytest

from gdig.selection.select import (
    SelectionConfig,
    quality_mask,
    select,
)
from gdig.selection.signals import length_ratio_score


def frac_mean(infl):
    return (infl > 0).mean(1), infl.mean(1)


INFL = np.array([[1.0, 2.0, 0.5], [1.0, -0.1, 3.0], [-1.0, -2.0, -3.0], [0.1, 0.1, 0.1], [5.0, 0.0, 1.0]], np.float32)
IDS = ["a", "b", "c", "d", "e"]


def test_tau_one_keeps_exactly_the_all_positive_rows():
    f, m = frac_mean(INFL)
    assert quality_mask(f, m, 1.0, None).tolist() == [True, False, False, True, False]  # 0 is not beneficial
    assert quality_mask(f, m, 2 / 3, None).tolist() == [True, True, False, True, True]
    assert quality_mask(f, m, None, 1.0).tolist() == [True, True, False, False, True]


def test_overrides_always_win():
    f, m = frac_mean(INFL)
    keep = quality_mask(f, m, 1.0, None, IDS, include=["c"], exclude=["a"])
    assert keep.tolist() == [False, False, True, True, False]
    with pytest.raises(ValueError, match="override ids not in the run: zz"):
        quality_mask(f, m, 1.0, None, IDS, include=["zz"])


def test_included_rows_are_selected_first_and_excluded_never():
    rng = np.random.default_rng(0)
    infl = np.abs(rng.normal(size=(60, 4))).astype(np.float32)
    sketch = rng.normal(size=(60, 8)).astype(np.float32)
    ids = [str(i) for i in range(60)]
    infl[7] = -1  # rejected by the rule, included by hand
    cfg = SelectionConfig(rule="fraction", tau=1.0, clusters=3, budget=10, include=["7"], exclude=["0", "1"])
    sel = select(*frac_mean(infl), sketch, ids, cfg)
    assert len(sel.indices) == 10 and 7 in sel.indices and 0 not in sel.indices and 1 not in sel.indices


def test_selection_is_deterministic_and_seed_dependent():
    rng = np.random.default_rng(2)
    infl = rng.normal(size=(300, 8)).astype(np.float32) + 0.3
    sketch = rng.normal(size=(300, 16)).astype(np.float32)
    ids = [str(i) for i in range(300)]
    cfg = SelectionConfig(rule="fraction", tau=0.5, clusters=5, budget=50, within="random", seed=3)
    a, b = select(*frac_mean(infl), sketch, ids, cfg), select(*frac_mean(infl), sketch, ids, cfg)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.labels, b.labels)
    other_cfg = SelectionConfig(rule="fraction", tau=0.5, clusters=5, budget=50, within="random", seed=4)
    other = select(*frac_mean(infl), sketch, ids, other_cfg)
    assert set(other.indices.tolist()) != set(a.indices.tolist())


def test_budget_larger_than_kept_set_returns_kept_with_a_message():
    f, m = frac_mean(INFL)
    sel = select(
        f, m, np.eye(5, dtype=np.float32), IDS, SelectionConfig(rule="fraction", tau=1.0, clusters=1, budget=100)
    )
    assert sorted(sel.indices.tolist()) == [0, 3]
    assert "budget 100 is more than the 2 candidates kept" in sel.messages[0]


def test_baselines_rank_by_their_own_signal():
    f, m = frac_mean(INFL)
    sk = np.eye(5, dtype=np.float32)
    loss = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    sel = select(f, m, sk, IDS, SelectionConfig(method="loss", budget=2), loss=loss)
    assert sel.indices.tolist() == [1, 2]
    sel = select(f, m, sk, IDS, SelectionConfig(method="mean-influence", budget=1))
    assert sel.indices.tolist() == [4]
    lr = length_ratio_score(["aaaa", "bbbb", "cccc"], ["aaaa", "bbbbbbbbbbbbbbbbbbbbbbbbb", "ccc"])
    assert lr.argmin() == 1
    sel = select(f[:3], m[:3], sk[:3], IDS[:3], SelectionConfig(method="length-ratio", budget=2), length_score=lr)
    assert sorted(sel.indices.tolist()) == [0, 2]
    r1 = select(f, m, sk, IDS, SelectionConfig(method="random", budget=3, seed=1))
    assert len(r1.indices) == 3


def test_bad_settings():
    with pytest.raises(ValueError, match="strategy must be"):
        SelectionConfig(strategy="nope")
    with pytest.raises(ValueError, match="tau must be a number between 0 and 1"):
        SelectionConfig(rule="fraction", tau=1.5)
    with pytest.raises(ValueError, match="tau must be a number"):
        SelectionConfig(rule="fraction", tau=float("nan"))
    with pytest.raises(ValueError, match="must be a finite number"):
        SelectionConfig(min_mean=float("nan"))
    with pytest.raises(ValueError, match="rule must be one of mean, fraction"):
        SelectionConfig(rule="all")


def test_default_rule_keeps_the_candidates_that_help_on_average():
    """The default rule (mean influence >= 0) keeps a useful share where the paper's tau = 1 keeps none."""
    rng = np.random.default_rng(5)
    infl = rng.normal(loc=0.2, size=(200, 64)).astype(np.float32)  # every row hurts some of 64 seeds
    f, m = frac_mean(infl)
    default = select(f, m, rng.normal(size=(200, 8)), [str(i) for i in range(200)], SelectionConfig(clusters=4))
    assert default.kept.sum() == (m >= 0).sum() > 100
    paper = SelectionConfig(rule="fraction", tau=1.0)
    assert select(f, m, rng.normal(size=(200, 8)), [str(i) for i in range(200)], paper).kept.sum() == 0


def test_budget_zero_or_none_means_every_kept_candidate():
    assert SelectionConfig(budget=0).budget is None
    f, m = frac_mean(np.abs(np.random.default_rng(2).normal(size=(30, 4))).astype(np.float32))
    ids = [str(i) for i in range(30)]
    sk = np.random.default_rng(3).normal(size=(30, 6))
    assert len(select(f, m, sk, ids, SelectionConfig(clusters=3, budget=0)).indices) == 30


@pytest.mark.parametrize("k", [0, 1, 7, 30, 200])
def test_best_first_is_the_head_of_a_stable_sort_ties_included(k):
    from gdig.selection.clusters import best_first

    rng = np.random.default_rng(k)
    score = rng.integers(0, 20, 1000).astype(np.float64)  # many ties, at the cut too
    rows = np.sort(rng.choice(1000, 600, replace=False))
    expected = rows[np.argsort(-score[rows], kind="stable")][:k]
    assert np.array_equal(best_first(rows, score, k), expected)


def test_a_run_id_index_gives_the_same_selection_and_decisions_as_the_id_list():
    from gdig.selection.decisions import decision_labels, id_index

    rng = np.random.default_rng(0)
    frac, mean = rng.random(50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    sketch, ids = rng.normal(size=(50, 8)).astype(np.float32), [f"x{i}" for i in range(50)]
    cfg = SelectionConfig(clusters=3, budget=10, include=["x3"], exclude=["x7", "x9"])
    by_list, by_index = select(frac, mean, sketch, ids, cfg), select(frac, mean, sketch, id_index(ids), cfg)
    assert np.array_equal(by_list.indices, by_index.indices) and np.array_equal(by_list.kept, by_index.kept)
    assert 3 in by_index.indices and not by_index.kept[[7, 9]].any()
    labels = decision_labels(by_index, id_index(ids), cfg.include, cfg.exclude)
    assert np.array_equal(labels, decision_labels(by_list, ids, cfg.include, cfg.exclude))
    assert labels[3] == "included by hand" and labels[7] == "excluded by hand"
