"""The gradient index (gdig.index, gdig.index_run): exact where nothing is projected, reproducible, the same
whether written by the scoring run or added later."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_pairs
from gdig.atomic import write_jsonl
from gdig.config import ScoreConfig
from gdig.index import IndexProjection, IndexRows, allocate, index_scores
from gdig.index_run import build_index
from gdig.run import score
from gdig.rundir.index import NoIndexError, has_index, load_index

BIG = 1 << 20  # more than every tiny module's d_out * d_in: no projection at all


def scored(tmp_path, model, tokenizer, files, name="run", **settings):
    cands, seeds = files
    cfg = ScoreConfig(
        model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / name), umap=False, **settings
    )
    return score(cfg, model=model, tokenizer=tokenizer)


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("hessian", ["ekfac", "kfac", "identity"])
@pytest.mark.parametrize("normalize", ["none", "unit", "relatif"])
def test_index_equals_exact_scores_without_projection(tmp_path, model, tokenizer, data_files, hessian, normalize):
    out = scored(
        tmp_path,
        model,
        tokenizer,
        data_files,
        hessian=hessian,
        normalize=normalize,
        index_dim=BIG,
        index_dtype="float32",
    )
    idx = load_index(out)
    assert idx.meta["exact"] and idx.dim == sum(d_in * d_out for d_in, d_out in _dims(model).values())
    exact = np.load(out / "influence.npy").astype(np.float64)
    for norms in ("projected", "exact"):
        approx = index_scores(idx.pool, idx.seeds, normalize, norms).astype(np.float64)
        assert rel_err(approx, exact) < 1e-5, (norms, rel_err(approx, exact))
    assert idx.meta["agreement"]["spearman_mean"] > 0.9999


def _dims(model):
    from gdig.model import find_tracked_modules

    return {t.name: (t.d_in, t.d_out) for t in find_tracked_modules(model)}


def test_projected_index_tracks_exact_scores(tmp_path, model, tokenizer, data_files):
    """A real projection (k well under the gradient's dimension) still ranks candidates as the exact run does."""
    out = scored(tmp_path, model, tokenizer, data_files, index_dim=512)
    idx = load_index(out)
    assert not idx.meta["exact"] and idx.dim <= 512 and idx.pool.rows.dtype == np.float16
    assert idx.meta["agreement"]["spearman_mean"] > 0.8
    assert np.allclose(np.linalg.norm(idx.pool.rows.astype(np.float32), axis=1), 1, atol=2e-3)


def test_projection_is_reproducible_from_its_seed():
    dims = {"a": (16, 32), "b": (32, 16), "c": (4, 3)}
    p, q, other = IndexProjection(dims, 64, 3), IndexProjection(dims, 64, 3), IndexProjection(dims, 64, 4)
    for name in ("a", "b"):
        assert torch.equal(p.p_in[name], q.p_in[name]) and torch.equal(p.p_out[name], q.p_out[name])
        assert not torch.equal(p.p_in[name], other.p_in[name])
    assert p.p_in["c"] is None and p.p_out["c"] is None  # 12 values: kept whole
    assert p.dim <= 64 and p.shapes["c"] == (3, 4)


def test_allocation_gives_small_modules_their_whole_size_and_the_rest_to_large_ones():
    shapes = allocate({"small": (2, 3), "big": (100, 100)}, 106)
    assert shapes["small"] == (3, 2) and shapes["big"][0] * shapes["big"][1] == 100


def test_projected_dot_products_are_unbiased():
    """E[<R x, R y>] = <x, y> over projection seeds (Kronecker Gaussian, N(0, 1/k) entries)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 12, 10, generator=gen), torch.randn(1, 12, 10, generator=gen)
    y = y + x  # correlated, so the true product is far from 0
    dots = []
    for seed in range(400):
        p = IndexProjection({"m": (10, 12)}, 30, seed)
        dots.append(float(p.project("m", x) @ p.project("m", y).T))
    truth = float((x * y).sum())
    assert abs(np.mean(dots) - truth) < 4 * np.std(dots) / np.sqrt(len(dots))


def test_index_scores_of_zero_gradient_are_zero():
    pool = IndexRows(np.zeros((2, 3), np.float16), np.zeros(2, np.float32), np.zeros(2, np.float32))
    q = IndexRows(np.ones((1, 3), np.float32) / np.sqrt(3), np.ones(1, np.float32), np.ones(1, np.float32))
    for normalize in ("none", "unit", "relatif"):
        for norms in ("projected", "exact"):
            assert np.all(index_scores(pool, q, normalize, norms) == 0)


def test_index_added_later_equals_the_one_written_by_the_run(tmp_path, model, tokenizer, data_files):
    settings = {"index_dim": 256, "index_dtype": "float32", "hessian": "ekfac"}
    with_index = scored(tmp_path, model, tokenizer, data_files, "a", **settings)
    without = scored(tmp_path, model, tokenizer, data_files, "b", **(settings | {"index_dim": 0}))
    assert not has_index(without)
    with pytest.raises(NoIndexError, match="gdig index"):
        load_index(without)
    build_index(without, index_dim=256, index_dtype="float32", model=model, tokenizer=tokenizer, chunk=7)
    a, b = load_index(with_index), load_index(without)
    assert a.meta["modules"] == b.meta["modules"]
    np.testing.assert_allclose(b.pool.rows, a.pool.rows, atol=2e-5)
    np.testing.assert_allclose(b.pool.norm, a.pool.norm, rtol=1e-4)
    np.testing.assert_allclose(b.seeds.rows, a.seeds.rows, atol=2e-5)
    with pytest.raises(ValueError, match="already has"):
        build_index(without, model=model, tokenizer=tokenizer)


def test_resumed_run_writes_the_same_index(tmp_path, model, tokenizer):
    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(40, seed=5))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(4, seed=6))
    settings = dict(index_dim=200, chunk_size=8, hessian="kfac")
    whole = scored(tmp_path, model, tokenizer, (cands, seeds), "whole", **settings)
    cfg = ScoreConfig(
        model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "part"), umap=False, **settings
    )
    calls = {"n": 0}

    def stop_midway(state):
        if state["stage"] == "score" and state["done"] >= 16:
            calls["n"] += 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(cfg, model=model, tokenizer=tokenizer, on_progress=stop_midway)
    assert calls["n"] == 1 and not has_index(tmp_path / "part")
    score(cfg, resume=True, model=model, tokenizer=tokenizer)
    a, b = load_index(whole), load_index(tmp_path / "part")
    np.testing.assert_array_equal(a.pool.rows, b.pool.rows)
    np.testing.assert_array_equal(a.seeds.rows, b.seeds.rows)
