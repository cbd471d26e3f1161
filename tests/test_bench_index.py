"""The index benchmark's sweep over k (bench/bench_index.py): sketching a run's exact whitened gradients gives the
index a run at that k writes, so one pass measures every k."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_index import _sketch
from gdig.config import ScoreConfig
from gdig.engine.index import CountSketchProjection
from gdig.inputs.model import find_tracked_modules
from gdig.pipeline.run import score
from gdig.rundir.index import load_index


def scored(tmp_path, model, tokenizer, files, name, **settings):
    cands, seeds = files
    cfg = ScoreConfig(
        model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / name), umap=False, **settings
    )
    return score(cfg, model=model, tokenizer=tokenizer)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_sketching_the_exact_index_gives_the_index_written_at_that_k(tmp_path, model, tokenizer, data_files, dtype):
    exact = load_index(
        scored(tmp_path, model, tokenizer, data_files, "exact", index_dim=1 << 20, index_dtype="float32")
    )
    at_k = load_index(scored(tmp_path, model, tokenizer, data_files, "k", index_dim=64, index_dtype=dtype))
    dims = {t.name: (t.d_in, t.d_out) for t in find_tracked_modules(model)}
    got = _sketch(exact.pool, CountSketchProjection(dims, 64, 0), dims, dtype)
    assert got.rows.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got.unit_rows(), at_k.pool.unit_rows(), atol=1e-5 if dtype == "float32" else 2e-3)
    np.testing.assert_allclose(got.projected_norm, at_k.pool.projected_norm, rtol=1e-4)
    np.testing.assert_allclose(got.norm, at_k.pool.norm, rtol=1e-5)
