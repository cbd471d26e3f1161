"""Signals beside influence: length ratio, language identification, loss; their rank average and thresholds in
the selection rule; stored per candidate by a scored run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gdig.selection.select import SelectionConfig, select
from gdig.selection.signals import (
    language_scores,
    length_ratio,
    length_score,
    lingua_language,
    rank_average,
    signal_scores,
    weakest_rank,
)

EN = [
    "The weather was so pleasant yesterday that we walked along the river for hours.",
    "My grandmother keeps all her old letters in a wooden box under the bed.",
    "The train to the airport leaves every twenty minutes from the main station.",
]
DE = [
    "Das Wetter war gestern so angenehm, dass wir stundenlang am Fluss entlang gingen.",
    "Meine Großmutter bewahrt all ihre alten Briefe in einer Holzkiste unter dem Bett auf.",
    "Der Zug zum Flughafen fährt alle zwanzig Minuten vom Hauptbahnhof ab.",
]
FR = "Le train pour l'aéroport part toutes les vingt minutes de la gare centrale."


def test_length_score_is_highest_at_the_pools_typical_ratio():
    ratio = length_ratio(["abcd"] * 4, ["abcde", "abcde", "abcde", "abcdeabcdeabcdeabcde"])
    np.testing.assert_allclose(ratio, [1.25, 1.25, 1.25, 5.0])
    score = length_score(ratio)
    assert score[0] == 0 and score[3] == pytest.approx(-np.log(4))


def test_languages_are_parsed_from_codes_and_names():
    from lingua import Language

    for code in ("de", "deu", "deu_Latn", "German", "DE"):
        assert lingua_language(code) == Language.GERMAN, code
    assert lingua_language("xx-unknown") is None and lingua_language(None) is None


def test_language_scores_find_untranslated_and_wrong_language_targets():
    src = EN + [EN[0], EN[2]]
    tgt = DE + [EN[0], FR]  # an untranslated pair and one in a third language
    got = language_scores(src, tgt, ["en"] * 5, ["de"] * 5)
    assert list(got["src_lang_detected"]) == ["en"] * 5
    assert list(got["trg_lang_detected"]) == ["de", "de", "de", "en", "fr"]
    score = got["language_score"]
    assert score[:3].min() > 0.5 and score[3:].max() < 0.1
    one_side = language_scores(EN[:1], [EN[0]], ["en"], [None])["language_score"]
    assert one_side[0] > 0.5  # no declared target language: the source's verdict alone
    neither = language_scores(EN[:1], DE[:1], [None], ["klingon"])["language_score"]
    assert np.isnan(neither[0])


def test_rank_average_skips_missing_scores_and_needs_no_common_scale():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([400.0, 300.0, np.nan, 100.0])
    np.testing.assert_allclose(rank_average([a]), [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(rank_average([a, b]), [0.5, 5 / 12, 2 / 3, 0.5])


def test_the_weakest_rank_is_each_candidates_worst_percentile_rank():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([400.0, 300.0, np.nan, 100.0])
    np.testing.assert_allclose(weakest_rank([a, b]), [0, 1 / 3, 2 / 3, 0])  # b ranks 1, 1/2, -, 0
    assert np.isnan(weakest_rank([np.array([1.0, np.nan]), np.array([2.0, np.nan])])[1])  # no score at all
    # a pair one signal condemns stays condemned however good the others say it is; an average forgives it
    good, flagged = np.arange(10.0), np.r_[np.arange(9.0) + 1, -5.0]
    assert weakest_rank([good, flagged])[9] == 0 and rank_average([good, flagged])[9] == 0.5


def test_signal_scores_are_higher_is_better():
    table = pd.DataFrame({"length_ratio": [1.0, 1.0, 4.0], "language_score": [0.9, 0.1, 0.9], "loss": [1.0, 2.0, 3.0]})
    s = signal_scores(table)
    assert s["length"][2] < s["length"][0] and s["language"][1] < s["language"][0] and s["loss"][2] < s["loss"][0]


def _selection(cfg, signals, include=()):
    n = 6
    mean = np.array([0.6, 0.5, 0.4, 0.3, 0.2, -0.1], np.float32)
    frac = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.1], np.float32)
    ids = [str(i) for i in range(n)]
    sketch = np.eye(n, dtype=np.float32)
    cfg = SelectionConfig(**(cfg | {"clusters": 1, "include": list(include)}))
    return select(frac, mean, sketch, ids, cfg, signals=signals)


def test_signal_filters_and_the_combined_rule_in_the_selection():
    signals = {
        "length": np.array([0.0, -2.0, 0.0, 0.0, 0.0, 0.0]),  # row 1: far off the typical length ratio
        "language": np.array([0.99, 0.99, 0.01, np.nan, 0.99, 0.99]),  # row 2: wrong language, row 3: unknown
    }
    plain = _selection({"combine": "influence"}, signals)
    assert list(np.flatnonzero(plain.kept)) == [0, 1, 2, 3, 4]  # mean >= 0; the signals ignored
    filtered = _selection({"max_length_deviation": 1.0, "min_language_score": 0.5}, signals)
    assert list(np.flatnonzero(filtered.kept)) == [0, 3, 4]
    assert _selection({"max_length_deviation": 1.0}, signals, include=["1"]).kept[1]  # overrides still win
    combined = _selection({"combine": "rank-average", "min_combined": 0.6}, signals)
    assert combined.kept[0] and not combined.kept[1] and not combined.kept[2] and not combined.kept[5]
    assert np.all(np.diff(combined.quality[combined.indices]) <= 0)  # best combined first
    with pytest.raises(ValueError, match="no language signal"):
        _selection({"min_language_score": 0.5}, {"length": signals["length"]})
    with pytest.raises(ValueError, match="between 0 and 1"):
        SelectionConfig(min_combined=1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SelectionConfig(min_weakest=-0.1)


def test_the_default_rule_is_gdigs_and_no_signal_in_its_bottom_share():
    signals = {
        "length": np.array([0.0, -2.0, 0.0, 0.0, 0.0, 0.0]),  # row 1: far off the typical length ratio
        "language": np.array([0.99, 0.99, 0.01, np.nan, 0.99, 0.99]),  # row 2: wrong language, row 3: unknown
    }
    assert SelectionConfig().combine == "weakest"
    default = _selection({}, signals)
    # rows 1 and 2 sit at the bottom of one signal (rank 0 < 0.1) though G-DIG ranks them second and third; row 5
    # fails G-DIG's rule (mean < 0) though every signal likes it; row 3's unknown language is no evidence
    assert list(np.flatnonzero(default.kept)) == [0, 3, 4]
    # ranked by the worst percentile rank: row 0 min(1, 0.6, 0.625), row 3 min(0.4, 0.6), row 4 min(0.2, ...)
    assert list(default.indices) == [0, 3, 4]
    np.testing.assert_allclose(default.quality[[0, 3, 4]], [0.6, 0.4, 0.2], atol=1e-5)
    assert list(np.flatnonzero(_selection({"min_weakest": 0.0}, signals).kept)) == [0, 1, 2, 3, 4]
    alone = _selection({}, {})  # a run without signals: G-DIG's rule, as with combine=influence
    assert list(np.flatnonzero(alone.kept)) == list(np.flatnonzero(_selection({"combine": "influence"}, {}).kept))


def test_a_scored_run_stores_the_signals_per_candidate(tmp_path, tokenizer, data_files, model):
    from gdig.config import ScoreConfig
    from gdig.pipeline.run import score
    from gdig.rundir.results import load_run

    cands, seeds = data_files
    cfg = ScoreConfig(model="m", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "r"), umap=False)
    run = load_run(score(cfg, model=model, tokenizer=tokenizer))
    df = run.candidates
    for column in ("length_ratio", "language_score", "src_lang_detected", "trg_lang_detected"):
        assert column in df, column
    texts = pd.read_json(cands, lines=True)
    np.testing.assert_allclose(df["length_ratio"], texts.trg_text.str.len() / texts.src_text.str.len(), rtol=1e-6)
    assert df["language_score"].between(0, 1).all()
    assert "signals" in run.config["timings"]
