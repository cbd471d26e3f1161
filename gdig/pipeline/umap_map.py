"""2-D UMAP of the gradient sketches (cosine), computed once per run and cached in umap.npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gdig.rundir.map import read_map, read_sketch, write_map

FIT_SAMPLE = 20_000  # larger runs: fit on a random sample of this size, transform the rest


def compute_umap(sketch: np.ndarray, random_state: int = 0, fit_sample: int = FIT_SAMPLE) -> np.ndarray:
    """(N, 2) cosine UMAP of the sketches; above `fit_sample` rows, fitted on a fixed sample and the rest
    transformed, so a large pool takes minutes rather than hours."""
    import umap

    x = sketch  # may be memory-mapped: only the fitted sample and one block at a time are read
    n = len(x)
    if n < 4:  # UMAP needs a few neighbours; a tiny run gets a trivial layout
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    reducer = umap.UMAP(
        n_components=2,
        metric="cosine",
        n_neighbors=min(15, n - 1),
        random_state=random_state,
        init="random" if n < 50 else "spectral",
        n_jobs=1,
    )
    if n <= fit_sample:
        return reducer.fit_transform(np.asarray(x, np.float32)).astype(np.float32)
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n, fit_sample, replace=False))
    emb = np.zeros((n, 2), np.float32)
    emb[sample] = reducer.fit_transform(np.asarray(x[sample], np.float32))
    rest = np.setdiff1d(np.arange(n), sample)
    for start in range(0, len(rest), 20_000):
        part = rest[start : start + 20_000]
        emb[part] = reducer.transform(np.asarray(x[part], np.float32))
    return emb


def ensure_umap(run_dir: str | Path, random_state: int = 0) -> np.ndarray:
    """umap.npy of the run, computing and caching it (atomically) the first time."""
    emb = read_map(run_dir)
    if emb is None:
        emb = compute_umap(read_sketch(run_dir), random_state)
        write_map(run_dir, emb)
    return emb
