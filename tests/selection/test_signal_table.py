"""The table of signals: every consumer (the scorer's reading, the rule, the export, the tables, the pages) follows
it, so that a new signal is one entry plus the code that stores its column."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from gdig.options import specs
from gdig.selection import signal_table
from gdig.selection.select import SelectionConfig
from gdig.selection.signal_table import HIGHER, LOWER, SIGNALS, TYPICAL, Signal
from gdig.selection.signals import rule_signals, signal_filters, signal_scores

# A toxicity score stored by some future scorer, lower is better, thresholded by a setting of its own.
TOXICITY = Signal("toxicity", "toxicity", "toxicity", "toxic", LOWER, catches="toxicity offensive targets")


def test_each_entry_names_a_real_setting_and_a_known_direction():
    settings = specs(SelectionConfig)
    names = [s.name for s in SIGNALS]
    assert len(set(names)) == len(names) and len({s.column for s in SIGNALS}) == len(SIGNALS)
    for s in SIGNALS:
        assert s.direction in (HIGHER, LOWER, TYPICAL), s.name
        if s.threshold:
            assert settings[s.threshold].optional and settings[s.threshold].default is None, s.name  # off by default
    assert {s.name for s in SIGNALS if s.adequacy} == {"adequacy", "dual"}


def test_scores_follow_each_entrys_direction_in_the_tables_order():
    cand = pd.DataFrame(
        {
            "dual_xent": [0.5, 0.1, 0.2],
            "loss": [1.0, 3.0, 2.0],
            "length_ratio": [1.0, 1.0, np.e],
            "language_score": [0.9, np.nan, 0.1],
        }
    )
    scores = signal_scores(cand)
    assert list(scores) == ["length", "language", "loss", "dual"]  # the table's order, not the frame's
    np.testing.assert_allclose(scores["loss"], [-1.0, -3.0, -2.0])
    np.testing.assert_allclose(scores["length"], [0.0, 0.0, -1.0], atol=1e-6)
    np.testing.assert_array_equal(scores["dual"], [0.5, 0.1, 0.2])
    assert list(rule_signals(scores, adequacy=False)) == ["length", "language", "loss"]
    assert list(rule_signals(scores, adequacy=True)) == ["length", "language", "loss", "dual"]


def test_the_export_and_the_tables_keep_their_column_order():
    assert signal_table.exported_columns() == (
        "loss",
        "length_ratio",
        "language_score",
        "src_lang_detected",
        "trg_lang_detected",
        "conditional_information",
        "dual_xent",
    )
    assert list(signal_table.shown_columns()) == [
        "length_ratio",
        "language_score",
        "trg_lang_detected",
        "conditional_information",
        "dual_xent",
    ]


@pytest.fixture
def with_toxicity(monkeypatch):
    """The table with one more entry, thresholded by a setting that a SelectionConfig subclass adds."""
    entry = dataclasses.replace(TOXICITY, threshold="max_toxicity", threshold_sign=-1.0)
    monkeypatch.setattr(signal_table, "SIGNALS", (*SIGNALS, entry))
    monkeypatch.setattr(signal_table, "BY_NAME", {s.name: s for s in signal_table.SIGNALS})
    return entry


def test_a_new_entry_reaches_the_scores_the_filters_the_export_the_tables_and_the_caption(with_toxicity):
    cand = pd.DataFrame({"length_ratio": [1.0, 1.0, 1.0], "toxicity": [0.1, 0.9, 0.3]})
    scores = signal_scores(cand)
    np.testing.assert_allclose(scores["toxicity"], [-0.1, -0.9, -0.3])
    assert "toxicity" in rule_signals(scores, adequacy=False)

    @dataclasses.dataclass
    class WithToxicity(SelectionConfig):
        max_toxicity: float | None = None

    keep = signal_filters(WithToxicity(max_toxicity=0.5), scores, 3)
    assert keep.tolist() == [True, False, True]
    assert signal_table.exported_columns()[-1] == "toxicity"
    assert signal_table.shown_columns()["toxicity"] == "toxic"
    assert signal_table.label("toxicity") == "toxicity"
    assert "toxicity offensive targets" in signal_table.what_signals_catch()
    assert signal_table.thresholded()[-1] is with_toxicity
