"""Explanations of one candidate (gdig.studio.explain) on a hand-made run whose answers are known, and the token
heatmap's HTML: text from data is always escaped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app_pages.heatmap import heatmap_html
from gdig.rundir.results import RunResults
from gdig.studio.explain import TokenInfluence, explain


@pytest.fixture
def run(tmp_path) -> RunResults:
    influence = np.array([[1.0, -2.0, 3.0, 0.5], [-1.0, -1.0, -1.0, -1.0], [0.2, 0.1, 0.3, 0.4]], np.float32)
    sketch = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], np.float32)
    candidates = pd.DataFrame(
        {"id": ["a", "b", "c"], "loss": [1.0, 2.0, 3.0], "n_tokens": [4, 5, 6], "target": ["ta", "tb", "tc"]}
    )
    seeds = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(8)],
            "prompt": [f"p{i}" for i in range(8)],
            "target": [f"t{i}" for i in range(8)],
        }
    )
    config = {"settings": {"seed_batch": 2}}  # 8 seeds in 4 columns of 2
    return RunResults(tmp_path, config, candidates, seeds, influence, sketch)


def test_explain_ranks_and_names_the_seeds_helped_and_hurt(run):
    e = explain(run, 0, k=2)
    assert (e.id, e.rank, e.n, e.loss, e.n_tokens) == ("a", 1, 3, 1.0, 4)
    assert e.frac_helped == pytest.approx(0.75) and e.mean_influence == pytest.approx(0.625)
    assert e.helps["seed"].tolist() == ["s4, s5", "s0, s1"] and e.helps["influence"].tolist() == [3.0, 1.0]
    assert e.helps["target"].tolist() == ["t4 / t5", "t0 / t1"]
    assert e.hurts["seed"].tolist() == ["s2, s3"] and e.hurts["influence"].tolist() == [-2.0]
    assert e.neighbours["id"].tolist()[0] == "c"  # the nearest sketch, itself excluded
    assert explain(run, 1).helps.empty and explain(run, 1).rank == 3


def test_explain_reports_the_decision_and_cluster_it_is_given(run):
    e = explain(run, 2, kept=np.array([False, False, True]), labels=np.array([-1, -1, 4]))
    assert e.kept and e.cluster == 4
    assert explain(run, 1, kept=np.array([True, False, True]), labels=np.array([0, -1, 0])).cluster is None


def test_heatmap_escapes_every_token_and_colours_by_sign():
    tokens = ['<script>alert("x")</script>', " & ", "'q'", "\n"]
    html = heatmap_html(TokenInfluence(tokens, np.array([1.0, -0.5, 0.0, 2.0]), n_prompt=1, total=2.5))
    assert "<script>" not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert " &amp; " in html and "&#x27;q&#x27;" in html and "&#8629;" in html
    assert html.count("<span") == 4 and "22,163,74" in html and "220,38,38" in html
    assert html.count("opacity: 0.75") == 1  # the prompt is faded
