"""Diversity: K-means on gradient sketches and resampling across clusters, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from gdig.clusters import GradientClusterer, cluster_quotas, normalise_rows, resample


def test_uniform_resampling_is_balanced_when_clusters_are_large_enough():
    labels = np.repeat(np.arange(4), [50, 30, 20, 12])
    rows = np.arange(len(labels))
    quality = np.random.default_rng(1).random(len(labels))
    chosen = resample(labels, rows, quality, budget=40, strategy="uniform", within="quality", seed=0)
    counts = np.bincount(labels[chosen], minlength=4)
    assert counts.sum() == 40 and counts.max() - counts.min() <= 1
    for c in range(4):  # best quality first inside each cluster
        members = rows[labels == c]
        best = set(members[np.argsort(-quality[members])][: counts[c]].tolist())
        assert set(chosen[labels[chosen] == c].tolist()) == best


def test_uniform_gives_small_clusters_everything_and_the_rest_to_others():
    quota = cluster_quotas(np.array([100, 3, 50]), 30, "uniform")
    assert quota.tolist()[1] == 3 and quota.sum() == 30 and abs(quota[0] - quota[2]) <= 1


def test_proportional_follows_sizes():
    quota = cluster_quotas(np.array([60, 30, 10]), 10, "proportional")
    assert quota.tolist() == [6, 3, 1]


def test_more_clusters_than_kept_candidates_is_a_clear_error():
    with pytest.raises(ValueError, match="K = 3 clusters is more than the 2 kept candidates"):
        GradientClusterer(3).fit(np.eye(5, dtype=np.float32)[:2])


def test_clusterer_finds_planted_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))
    x = np.concatenate([c + 0.05 * rng.normal(size=(40, 32)) for c in centres])
    labels = GradientClusterer(3, random_state=0).fit_predict(x)
    for k in range(3):
        assert len(set(labels[k * 40 : (k + 1) * 40].tolist())) == 1
    assert len(set(labels.tolist())) == 3


def test_rows_are_normalised_and_zero_rows_stay_zero():
    x = normalise_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(x[0], [0.6, 0.8]) and np.all(x[1] == 0)
