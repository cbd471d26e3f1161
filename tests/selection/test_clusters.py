"""Diversity: K-means on gradient sketches and resampling across clusters, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from gdig.selection.clusters import GradientClusterer, cluster_quotas, normalise_rows, resample


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


def _planted(n_per: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    truth = np.repeat(np.arange(4), n_per)
    return (centres[truth] + 0.3 * rng.normal(size=(len(truth), dim))).astype(np.float16), truth


def test_a_large_set_is_fitted_on_a_sample_and_every_row_assigned():
    from sklearn.metrics import adjusted_rand_score

    x, truth = _planted(150, 64)
    clusterer = GradientClusterer(4, random_state=0, init_sample=50, fit_sample=100).fit(x)
    assert len(clusterer.kmeans_.labels_) == 100  # Lloyd ran on the sample only
    assert adjusted_rand_score(truth, clusterer.labels_) == 1.0  # ... and every row got its planted cluster
    assert np.array_equal(clusterer.predict(x), clusterer.labels_)


def test_up_to_fit_sample_rows_the_clustering_is_plain_kmeans():
    from sklearn.cluster import KMeans

    x, _ = _planted(30, 16)
    labels = GradientClusterer(4, random_state=3).fit_predict(x)
    reference = KMeans(4, n_init=1, max_iter=100, random_state=3).fit(normalise_rows(x)).labels_
    assert np.array_equal(labels, reference)


def test_cluster_space_keeps_small_runs_and_reduces_large_ones():
    from sklearn.metrics import adjusted_rand_score

    from gdig.selection.clusters import cluster_space

    x, truth = _planted(100, 96)
    assert cluster_space(x, large=400) is x  # up to `large` rows: the sketches themselves, exact
    reduced = cluster_space(x, n_components=8, large=200)
    assert reduced.shape == (400, 8) and reduced.dtype == np.float32
    narrow = x[:, :8]
    assert cluster_space(narrow, n_components=8, large=200) is narrow  # sketches no wider than the reduction
    labels = GradientClusterer(4, random_state=0, fit_sample=200).fit_predict(reduced)
    assert adjusted_rand_score(truth, labels) == 1.0


def test_cosine_to_matches_the_dense_reference_across_blocks(monkeypatch):
    import gdig.selection.clusters as clusters

    x, _ = _planted(25, 12)
    x[3] = 0  # a zero row stays at similarity 0
    monkeypatch.setattr(clusters, "BLOCK", 7)  # several blocks, the last one short
    reference = normalise_rows(x) @ normalise_rows(x)[5]
    assert np.allclose(clusters.cosine_to(x, 5), reference, atol=1e-6) and clusters.cosine_to(x, 5)[3] == 0


def test_cosine_to_unit_float16_rows_takes_the_stored_dtype_within_1e_3():
    from gdig.selection.clusters import cosine_to, unit_rows

    x, _ = _planted(50, 64)
    x = normalise_rows(x).astype(np.float16)  # what `gdig score` stores
    assert unit_rows(x) and not unit_rows(x * 2)
    reference = normalise_rows(x) @ normalise_rows(x)[7]
    assert np.abs(cosine_to(x, 7) - reference).max() < 1e-3


def test_a_large_run_is_clustered_in_its_reduced_space(tmp_path, monkeypatch):
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    import gdig.selection.clusters as clusters
    from gdig.rundir.results import RunResults
    from gdig.selection.select import SelectionConfig, select_run

    monkeypatch.setattr(clusters, "LARGE", 200)  # 400 candidates count as a large run
    x, truth = _planted(100, 96)
    influence = np.ones((400, 2), np.float32)
    cands = pd.DataFrame({"id": [str(i) for i in range(400)], "loss": np.ones(400), "prompt": "p", "target": "t"})
    run = RunResults(tmp_path, {"settings": {}}, cands, cands.iloc[:2], influence, normalise_rows(x))
    assert run.cluster_features.shape == (400, 64)  # the top principal components, not the 96-d sketches
    sel = select_run(run, SelectionConfig(clusters=4, budget=40))
    assert adjusted_rand_score(truth, sel.labels) == 1.0 and np.bincount(sel.labels[sel.indices]).tolist() == [10] * 4
