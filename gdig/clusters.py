"""Diversity (DESIGN section 1): K-means on L2-normalised gradient sketches, then resampling across clusters
to a budget."""

from __future__ import annotations

import numpy as np


class GradientClusterer:
    """K-means (k-means++, fixed random_state) on L2-normalised gradient sketches; scikit-learn style.

    For large sets the k-means++ seeding, which dominates the cost, runs on a random sample of `init_sample`
    rows; Lloyd iterations then use every row."""

    def __init__(self, n_clusters: int, random_state: int = 0, max_iter: int = 100, init_sample: int = 20_000):
        self.n_clusters, self.random_state = n_clusters, random_state
        self.max_iter, self.init_sample = max_iter, init_sample

    def fit(self, sketches: np.ndarray) -> GradientClusterer:
        """Cluster the sketches (rows are L2-normalised first, so K-means works on cosine similarity)."""
        from sklearn.cluster import KMeans, kmeans_plusplus

        x = normalise_rows(sketches)
        if self.n_clusters > len(x):
            raise ValueError(
                f"K = {self.n_clusters} clusters is more than the {len(x)} kept candidates; "
                "lower K or loosen the quality threshold"
            )
        init = "k-means++"
        if len(x) > self.init_sample:
            rng = np.random.default_rng(self.random_state)
            sample = x[np.sort(rng.choice(len(x), self.init_sample, replace=False))]
            init, _ = kmeans_plusplus(sample, self.n_clusters, random_state=self.random_state)
        self.kmeans_ = KMeans(
            self.n_clusters, init=init, n_init=1, max_iter=self.max_iter, copy_x=False, random_state=self.random_state
        ).fit(x)
        self.labels_ = self.kmeans_.labels_.astype(np.int64)
        return self

    def fit_predict(self, sketches: np.ndarray) -> np.ndarray:
        """fit, then the cluster label of each row."""
        return self.fit(sketches).labels_


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): cosine geometry for K-means and neighbours."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_quotas(sizes: np.ndarray, budget: int, strategy: str) -> np.ndarray:
    """How many to take from each cluster. uniform: about budget/K each, what small clusters cannot give goes
    to the others (largest first); proportional: follows the sizes (largest remainders)."""
    sizes = np.asarray(sizes, np.int64)
    budget = min(budget, int(sizes.sum()))
    if strategy == "proportional":
        exact = budget * sizes / max(sizes.sum(), 1)
        quota = np.floor(exact).astype(np.int64)
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[: budget - quota.sum()]] += 1
        return quota
    quota = np.zeros_like(sizes)
    remaining = budget
    open_ = sizes > 0
    while remaining > 0 and open_.any():  # water-filling: equal shares, capped by cluster size
        share = max(remaining // int(open_.sum()), 1)
        for k in np.argsort(-sizes, kind="stable"):
            if remaining == 0:
                break
            if open_[k]:
                take = min(share, sizes[k] - quota[k], remaining)
                quota[k] += take
                remaining -= take
                open_[k] = quota[k] < sizes[k]
    return quota


def resample(
    labels: np.ndarray, rows: np.ndarray, quality: np.ndarray, budget: int, strategy: str, within: str, seed: int
) -> np.ndarray:
    """Take each cluster's quota, best quality first (or at random), from `rows` with cluster `labels`."""
    rng = np.random.default_rng(seed)
    if len(labels) == 0 or budget <= 0:
        return np.zeros(0, np.int64)
    sizes = np.bincount(labels)
    k = len(sizes)
    quota = cluster_quotas(sizes, budget, strategy)
    picked = []
    for c in range(k):
        members = rows[labels == c]
        if within == "quality":
            members = members[np.argsort(-quality[members], kind="stable")]
        else:
            members = rng.permutation(members)
        picked.append(members[: quota[c]])
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return out[np.argsort(-quality[out], kind="stable")] if within == "quality" else out
