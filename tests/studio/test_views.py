"""What the pages show (gdig.studio.views), on a hand-made run whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gdig.rundir.results import RunResults
from gdig.selection.select import Selection, SelectionConfig
from gdig.studio.views import (
    SearchIndex,
    candidate_table,
    cluster_summary,
    compare_with_random,
    find_rows,
    kept_mask,
    legend_order,
    map_sample,
    nothing_kept_reason,
    seed_table,
)


@pytest.fixture
def run(tmp_path) -> RunResults:
    influence = np.array([[1.0, 2.0], [-1.0, 0.5], [0.5, 0.5], [-2.0, -1.0]], np.float32)
    candidates = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "loss": [0.5, 1.5, 1.0, 3.0],
            "prompt": ["Cat", "dog", "Sun", "moon"],
            "target": ["Katze", "Hund", "Sonne", "Mondschein"],
        }
    )
    seeds = pd.DataFrame({"id": ["s0", "s1"], "prompt": ["p0", "p1"], "target": ["t0", "t1"]})
    return RunResults(tmp_path, {"settings": {}}, candidates, seeds, influence, np.eye(4, dtype=np.float32))


def test_kept_mask_and_threshold_lines_follow_the_rule(run):
    mean_rule = SelectionConfig()
    kept = kept_mask(run, mean_rule)
    assert kept.tolist() == [True, False, True, False]
    assert mean_rule.thresholds == (None, 0.0)  # the histograms draw a line on the statistic in force only
    fraction = SelectionConfig(rule="fraction", tau=0.5)
    kept = kept_mask(run, fraction)
    assert kept.tolist() == [True, True, True, False]
    assert fraction.thresholds == (0.5, None)
    assert kept_mask(run, SelectionConfig(exclude=["a"], include=["d"])).tolist() == [False, False, True, True]


def test_seed_table_puts_the_hardest_seed_first(run):
    table = seed_table(run)
    assert table["seed"].tolist() == ["s0", "s1"]  # s0 is helped by 2 of 4, s1 by 3 of 4
    assert table["helped by (share of candidates)"].tolist() == [0.5, 0.75]
    assert table["mean influence on it"].tolist() == pytest.approx([-0.375, 0.5])


def test_cluster_summary_counts_selected_members_and_shows_the_best(run):
    sel = Selection(np.array([0]), np.array([True, True, True, False]), np.array([0, 1, 0, -1]), np.zeros(4))
    summary = cluster_summary(run, sel)
    assert summary["cluster"].tolist() == [0, 1] and summary["size"].tolist() == [2, 1]
    assert summary["selected"].tolist() == [1, 0] and summary["example"].tolist() == ["Katze", "Hund"]


def test_search_finds_both_texts_literally_and_sorts(run):
    decisions = np.array(["selected", "kept", "kept", "rejected"])
    index = SearchIndex.of(run)

    def ids(*args) -> list[str]:
        return run.candidates["id"].to_numpy()[find_rows(run, index, decisions, *args)].tolist()

    assert ids("SON") == ["c"]  # case-insensitive, in the target
    assert ids("o", "kept", "loss") == ["c", "b"]
    assert ids(".*") == []  # literal, not a regex
    assert ids() == ["a", "c", "b", "d"]  # best mean influence first
    assert ids("", "all", "id") == ["a", "b", "c", "d"]
    assert ids("", "all", "fraction helped") == ["a", "c", "b", "d"]


def test_candidate_table_shows_the_rows_asked_for(run):
    decisions = np.array(["selected", "kept", "kept", "rejected"])
    table = candidate_table(run, decisions, np.array(["1", "-"]), rows=np.array([1, 3]))
    assert table["id"].tolist() == ["b", "d"] and table["decision"].tolist() == ["kept", "rejected"]
    assert table["cluster"].tolist() == ["1", "-"] and table["target"].tolist() == ["Hund", "Mondschein"]
    assert table["mean influence"].tolist() == pytest.approx([-0.25, -1.5])


def test_random_comparison_has_the_same_size(run):
    sel = Selection(np.array([0, 2]), np.ones(4, bool), np.zeros(4, np.int64), np.zeros(4))
    table, rnd, overlap = compare_with_random(run, sel, seed=0)
    assert len(rnd) == 2 and 0 <= overlap <= 2 and table[""].tolist() == ["G-DIG", "random"]
    assert table["mean influence (mean)"][0] == pytest.approx(1.0)


def test_map_sample_and_legend_order():
    assert map_sample(5, 10).tolist() == [0, 1, 2, 3, 4]
    sample = map_sample(1000, 10, seed=1)
    assert len(sample) == 10 and np.all(np.diff(sample) > 0) and np.array_equal(sample, map_sample(1000, 10, seed=1))
    assert legend_order(np.array(["10", "2", "kept", "selected", "2"])) == ["2", "10", "kept", "selected"]


def test_a_rule_that_keeps_nothing_says_why_and_what_would_keep_some(run):
    paper = SelectionConfig(rule="fraction", tau=1.0, combine="influence")
    none_kept = np.zeros(run.n, bool)
    reason = nothing_kept_reason(run, paper, none_kept)
    best = run.frac_helped.max()
    assert f"the most any candidate helps is {best:.0%}" in reason and "lower tau" in reason
    high = SelectionConfig(min_mean=1e9)
    assert "the highest is" in nothing_kept_reason(run, high, none_kept)
    assert nothing_kept_reason(run, SelectionConfig(), kept_mask(run, SelectionConfig())) is None


@pytest.mark.parametrize("combine", ["weakest", "rank-average"])
@pytest.mark.parametrize("rule", ["mean", "fraction"])
def test_the_runs_cached_ranks_give_the_rules_own_decisions(run, rule, combine):
    """The pages pass RunResults.rule_ranks (ranked once per run and rule) instead of ranking on every rerun."""
    from gdig.selection.select import apply_rule
    from gdig.studio.views import rule_on_run

    cfg = SelectionConfig(rule=rule, tau=0.5, min_mean=0.0, combine=combine, min_weakest=0.3, min_combined=0.4)
    kept, order, _ = rule_on_run(run, cfg)
    assert "_rule_ranks" in run.__dict__ and (rule, False) in run.__dict__["_rule_ranks"]
    fresh_kept, fresh_order = apply_rule(run.frac_helped, run.mean_influence, run.id_index, cfg, run.signals)
    assert np.array_equal(kept, fresh_kept) and np.array_equal(order, fresh_order)
