"""Duplicate pairs (gdig.selection.duplicates) and the rule option that keeps one per group: exact and near groups on
hand-made texts, the best member kept, overrides still winning, and the counts in the export's manifest."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gdig.rundir.results import RunResults
from gdig.selection.duplicates import find_duplicates, one_per_group
from gdig.selection.select import SelectionConfig, rule_decisions, select_run
from gdig.studio.views import duplicate_rows

SRC = [
    "The cat sleeps.",
    "the  cat SLEEPS.",
    "The cat sleeps!",
    "Ｔｈｅ cat sleeps.",
    "Room 1",
    "Room 2",
    "A dog",
    "A dog",
]
TRG = ["Die Katze schläft.", "die katze schläft.", "Die Katze schläft", "Die Katze schläft.", "Zimmer 1", "Zimmer 2"]
TRG += ["Ein Hund", "Eine Katze"]  # the same source with another translation is no duplicate pair


def test_exact_groups_fold_case_whitespace_and_unicode_width_and_near_groups_also_punctuation_not_numbers():
    d = find_duplicates(SRC, TRG)
    assert d.exact.tolist()[:4] == [d.exact[0], d.exact[0], -1, d.exact[0]] and d.exact[0] >= 0
    assert (d.exact[4:] == -1).all()
    assert len(set(d.near[:4])) == 1 and d.near[0] >= 0  # "!" and the dropped full stop: near only
    assert (d.near[4:] == -1).all()  # "Room 1" and "Room 2" are two pairs: a number is content
    assert d.counts() == {"exact_duplicates": 3, "exact_extra": 2, "near_duplicates": 4, "near_extra": 3}
    with pytest.raises(ValueError, match="duplicate level"):
        d.groups("fuzzy")


def test_one_per_group_keeps_the_best_member_that_passes():
    groups = np.array([0, 0, 0, 1, 1, -1, -1])
    score = np.array([0.1, 0.9, 0.5, 0.3, 0.3, 0.0, 0.0])
    keep = np.array([True, False, True, True, True, True, False])  # group 0's best (row 1) fails the rule
    out = one_per_group(keep, groups, score)
    assert out.tolist() == [False, False, True, True, False, True, False]  # ties: the first row


@pytest.fixture
def run(tmp_path) -> RunResults:
    rng = np.random.default_rng(0)
    influence = rng.normal(0.5, 1.0, size=(len(SRC), 6)).astype(np.float32)
    influence[1] += 3  # the best of the cat group by far
    candidates = pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(len(SRC))],
            "loss": np.ones(len(SRC)),
            "src_text": SRC,
            "trg_text": TRG,
            "prompt": SRC,
            "target": TRG,
            "record": [json.dumps({"src_text": s, "trg_text": t}) for s, t in zip(SRC, TRG, strict=True)],
        }
    )
    seeds = pd.DataFrame({"id": [f"s{j}" for j in range(6)]})
    sketch = rng.normal(size=(len(SRC), 4)).astype(np.float32)
    return RunResults(tmp_path, {"settings": {}}, candidates, seeds, influence, sketch)


def test_the_rule_keeps_one_per_group_and_overrides_still_win(run):
    base = SelectionConfig(rule="fraction", tau=0.0, combine="influence", clusters=1)
    kept, _, dropped = rule_decisions(run.frac_helped, run.mean_influence, run.id_index, base)
    assert kept.all() and dropped == 0
    cfg = SelectionConfig(rule="fraction", tau=0.0, combine="influence", clusters=1, dedupe="exact")
    kept, _, dropped = rule_decisions(
        run.frac_helped, run.mean_influence, run.id_index, cfg, quality=run.quality, duplicates=run.duplicates
    )
    assert dropped == 2 and kept.tolist() == [False, True, True, False, True, True, True, True]
    near = SelectionConfig(rule="fraction", tau=0.0, combine="influence", clusters=1, dedupe="near")
    sel = select_run(run, near)
    assert sel.dropped_duplicates == 3 and sel.kept[1] and sel.kept[:4].sum() == 1 and sel.kept[4:].all()
    runner_up = max((0, 2, 3), key=lambda i: run.quality[i])
    other = next(i for i in (0, 2, 3) if i != runner_up)
    by_hand = SelectionConfig(
        rule="fraction", tau=0.0, combine="influence", clusters=1, dedupe="near", exclude=["c1"], include=[f"c{other}"]
    )
    sel = select_run(run, by_hand)  # the best excluded by hand: the runner-up is kept; another one forced in
    assert not sel.kept[1] and sel.kept[runner_up] and sel.kept[other] and sel.kept[:4].sum() == 2
    with pytest.raises(ValueError, match="duplicate groups"):
        rule_decisions(run.frac_helped, run.mean_influence, run.id_index, near)
    with pytest.raises(ValueError, match="dedupe must be one of"):
        SelectionConfig(dedupe="fuzzy")


def test_duplicate_rows_lists_each_group_together_in_the_order_given():
    groups = np.array([5, -1, 2, 5, 2, -1, 7])
    rows = np.array([4, 3, 0, 2, 1, 5, 6])  # e.g. best first
    assert duplicate_rows(rows, groups).tolist() == [4, 2, 3, 0, 6]  # a group may be cut by a search
    assert duplicate_rows(np.array([1, 5]), groups).tolist() == []


def test_the_manifest_counts_the_pairs_dropped_as_duplicates(run, tmp_path):
    from gdig.outputs.export import export_selection

    cfg = SelectionConfig(rule="fraction", tau=0.0, combine="influence", clusters=1, dedupe="near")
    out, man = export_selection(run, select_run(run, cfg), cfg, tmp_path / "picked.jsonl")
    manifest = json.loads(man.read_text())
    assert manifest["counts"]["dropped_as_duplicates"] == 3 and manifest["selection"]["dedupe"] == "near"
    assert len(out.read_text().splitlines()) == len(SRC) - 3
