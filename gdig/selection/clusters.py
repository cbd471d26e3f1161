"""Diversity (DESIGN section 1): K-means on L2-normalised gradient sketches, then resampling across clusters
to a budget."""

from __future__ import annotations

import numpy as np

LARGE = 50_000  # above this many rows, clustering works on a sample and a reduced space (see below)


class GradientClusterer:
    """K-means (k-means++, fixed random_state) on L2-normalised gradient sketches; scikit-learn style.

    The k-means++ seeding, which dominates the cost, runs on a random sample of `init_sample` rows. Up to
    `fit_sample` rows Lloyd's iterations use every row (exact K-means); above, they run on a fixed random sample
    of `fit_sample` rows and every row is then assigned to its nearest centre: re-clustering 1,000,000 rows
    costs the sample's K-means plus one assignment pass."""

    def __init__(
        self,
        n_clusters: int,
        random_state: int = 0,
        max_iter: int = 100,
        init_sample: int = 20_000,
        fit_sample: int | None = None,
    ):
        self.n_clusters, self.random_state, self.max_iter = n_clusters, random_state, max_iter
        self.init_sample, self.fit_sample = init_sample, LARGE if fit_sample is None else fit_sample

    def fit(self, sketches: np.ndarray) -> GradientClusterer:
        """Cluster the sketches (rows are L2-normalised first, so K-means works on cosine similarity)."""
        from sklearn.cluster import KMeans, kmeans_plusplus

        if self.n_clusters > len(sketches):
            raise ValueError(
                f"K = {self.n_clusters} clusters is more than the {len(sketches)} kept candidates; "
                "lower K or loosen the quality threshold"
            )
        sampled = len(sketches) > self.fit_sample
        rows = _sample_rows(len(sketches), self.fit_sample, self.random_state) if sampled else slice(None)
        x = normalise_rows(sketches[rows])
        init = "k-means++"
        if len(x) > self.init_sample:
            sample = x[_sample_rows(len(x), self.init_sample, self.random_state)]
            init, _ = kmeans_plusplus(sample, self.n_clusters, random_state=self.random_state)
        self.kmeans_ = KMeans(
            self.n_clusters, init=init, n_init=1, max_iter=self.max_iter, copy_x=False, random_state=self.random_state
        ).fit(x)
        labels = self.kmeans_.labels_ if not sampled else self.predict(sketches)
        self.labels_ = labels.astype(np.int64)
        return self

    def predict(self, sketches: np.ndarray) -> np.ndarray:
        """The nearest fitted centre of each row (normalised like the fit), a block of rows at a time."""
        out = np.empty(len(sketches), np.int64)
        for start in range(0, len(sketches), BLOCK):
            out[start : start + BLOCK] = self.kmeans_.predict(normalise_rows(sketches[start : start + BLOCK]))
        return out

    def fit_predict(self, sketches: np.ndarray) -> np.ndarray:
        """fit, then the cluster label of each row."""
        return self.fit(sketches).labels_


BLOCK = 1 << 16  # rows converted to float32 at once


def _sample_rows(n: int, size: int, random_state: int) -> np.ndarray:
    return np.sort(np.random.default_rng(random_state).choice(n, size, replace=False))


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


def best_first(rows: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """The k of the (ascending) `rows` with the highest `score`, best first, ties in row order: the first k of
    a stable sort, found by a partition when k is small (a budget of 5,000 from 1,000,000 rows)."""
    s = np.asarray(score[rows], np.float64)
    if k <= 0:
        return rows[:0]
    if 4 * k >= len(rows) or np.isnan(s).any():
        return rows[np.argsort(-s, kind="stable")][:k]
    kth = -np.partition(-s, k - 1)[k - 1]  # the k-th highest score
    above = rows[s > kth]
    top = np.concatenate([above, rows[s == kth][: k - len(above)]])
    top.sort()
    return top[np.argsort(-score[top], kind="stable")]


def cluster_space(sketches: np.ndarray, n_components: int = 64, large: int | None = None, random_state: int = 0):
    """Where K-means runs for a run's candidates: the sketches themselves up to `large` rows (exact); above, the
    top `n_components` principal components of the normalised sketches (PCA fitted on a sample of 20,000 rows,
    applied a block at a time, float32). Why: assigning 1,000,000 x 1,024 rows to K centres costs seconds per
    K on a CPU, 64 columns a tenth of it; the K-means optimum lies near the span of the top K - 1 principal
    components (Ding and He, 2004), so K up to about 64 loses little. Computed once per run."""
    large = LARGE if large is None else large
    if len(sketches) <= large:
        return sketches
    if sketches.shape[1] <= n_components:  # already as narrow as the reduction would make it
        return sketches
    from sklearn.decomposition import PCA

    sample = normalise_rows(sketches[_sample_rows(len(sketches), min(large, 20_000), random_state)])
    pca = PCA(n_components, svd_solver="covariance_eigh", random_state=random_state).fit(sample)
    basis = _tensor(pca.components_.T.astype(np.float32))
    shift = (_tensor(pca.mean_.astype(np.float32)) @ basis).numpy()
    out = np.empty((len(sketches), n_components), np.float32)
    for rows, block, norms in _float_blocks(sketches):
        out[rows] = ((block @ basis) / norms[:, None]).numpy() - shift  # (x/|x| - mean) @ basis
    return out


def cosine_to(sketches: np.ndarray, index: int) -> np.ndarray:
    """Cosine similarity of every row to row `index`. `gdig score` stores unit rows (float16): then one
    matrix-vector product in the stored dtype, 0.2 s for 1,000,000 x 1,024 on 2 cores (about 1e-3 absolute
    error); other rows are normalised a block at a time in float32."""
    query = _tensor(sketches[index : index + 1]).float()[0]
    query = query / query.norm().clamp_min(1e-12)
    if unit_rows(sketches):
        return torch_mv(sketches, query)
    out = np.empty(len(sketches), np.float32)
    for rows, block, norms in _float_blocks(sketches):
        out[rows] = ((block @ query) / norms).numpy()
    return out


def _float_blocks(sketches: np.ndarray):
    """(rows, float32 tensor of those rows, their L2 norms floored at 1e-12), a block of rows at a time."""
    for start in range(0, len(sketches), BLOCK):
        rows = slice(start, min(start + BLOCK, len(sketches)))
        block = _tensor(sketches[rows]).float()
        yield rows, block, block.norm(dim=1).clamp_min(1e-12)


def unit_rows(sketches: np.ndarray, sample: int = 1000, atol: float = 2e-3) -> bool:
    """Whether the rows are L2-normalised (zero rows allowed), judged on a fixed sample of rows."""
    rows = sketches[_sample_rows(len(sketches), min(sample, len(sketches)), 0)]
    norms = np.linalg.norm(np.asarray(rows, np.float32), axis=1)
    return bool(np.all((np.abs(norms - 1) <= atol) | (norms == 0)))


def torch_mv(matrix: np.ndarray, vector) -> np.ndarray:
    """matrix @ vector in the matrix's dtype (no float32 copy of a float16 matrix), as float32."""
    m = _tensor(matrix)
    return (m @ vector.to(m.dtype)).float().numpy()


def _tensor(x: np.ndarray):
    """A torch view of an array, read-only memory maps included (torch only warns that it could write)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(x))
