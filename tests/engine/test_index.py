"""The gradient index (gdig.engine.index, gdig.pipeline.index_run): exact where nothing is projected, reproducible,
the same whether written by the scoring run or added later."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_pairs
from gdig.atomic import write_jsonl
from gdig.config import ScoreConfig
from gdig.engine.index import PROJECTIONS, CountSketchProjection, KroneckerProjection, allocate
from gdig.engine.index_scoring import HALF_PRODUCT_QUERIES, Anchor, IndexRows, index_scores, quantize
from gdig.pipeline.index_run import build_index
from gdig.pipeline.run import score
from gdig.rundir.index import NoIndexError, has_index, load_index
from gdig.rundir.results import load_run

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
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_index_equals_exact_scores_without_projection(
    tmp_path, model, tokenizer, data_files, hessian, normalize, projection
):
    settings = dict(hessian=hessian, normalize=normalize, index_projection=projection)
    out = scored(tmp_path, model, tokenizer, data_files, index_dim=BIG, index_dtype="float32", **settings)
    idx = load_index(out)
    assert idx.meta["exact"] and idx.dim == sum(d_in * d_out for d_in, d_out in _dims(model).values())
    exact = np.load(out / "influence.npy").astype(np.float64)
    approx = index_scores(idx.pool, idx.seeds, normalize).astype(np.float64)
    assert rel_err(approx, exact) < 1e-5
    half = Anchor(exact, idx.seeds, np.arange(0, exact.shape[1], 2))  # anchored on some columns: still exact
    assert rel_err(index_scores(idx.pool, idx.seeds, normalize, half).astype(np.float64), exact) < 1e-5
    assert idx.meta["agreement"]["spearman_mean"] > 0.9999


def _dims(model):
    from gdig.inputs.model import find_tracked_modules

    return {t.name: (t.d_in, t.d_out) for t in find_tracked_modules(model)}


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_projected_index_tracks_exact_scores(tmp_path, model, tokenizer, data_files, projection):
    """A real projection (k well under the gradient's dimension) still ranks candidates as the exact run does."""
    out = scored(tmp_path, model, tokenizer, data_files, index_dim=512, index_projection=projection)
    idx = load_index(out)
    assert not idx.meta["exact"] and idx.dim <= 512 and idx.pool.rows.dtype == np.int8  # the default
    assert idx.projection == projection and idx.meta["agreement"]["spearman_mean"] > 0.8
    assert np.allclose(np.linalg.norm(idx.pool.unit_rows(), axis=1), 1, atol=2e-2)


@pytest.mark.parametrize("cls", [CountSketchProjection, KroneckerProjection])
def test_projections_are_reproducible_from_their_seed(cls):
    dims = {"a": (16, 32), "b": (32, 16), "c": (4, 3)}
    gen = torch.Generator().manual_seed(1)
    w = {n: torch.randn(2, d_out, d_in, generator=gen) for n, (d_in, d_out) in dims.items()}
    p, q, other = cls(dims, 64, 3), cls(dims, 64, 3), cls(dims, 64, 4)
    for name in dims:
        assert torch.equal(p.project(name, w[name]), q.project(name, w[name]))
    assert not torch.equal(p.project("a", w["a"]), other.project("a", w["a"]))
    assert p.dim == 64 if cls is CountSketchProjection else p.dim <= 64


def test_countsketch_equals_its_dense_sketch_matrix_with_and_without_kept_hashes():
    """Every coordinate lands, with its sign, in its hashed bucket: the same as the dense (k, d) matrix of signs,
    whether the module's hashes are kept or recomputed (beyond CACHED_COORDINATES)."""
    dims = {"a": (16, 32), "b": (32, 16)}
    w = torch.randn(3, 32, 16, generator=torch.Generator().manual_seed(2))
    kept, recomputed = CountSketchProjection(dims, 64, 5), CountSketchProjection(dims, 64, 5)
    recomputed._cache_left = 0
    bucket, sign = kept.hash("a", "cpu")
    dense = torch.zeros(64, 512).index_put_((bucket, torch.arange(512)), sign.float())
    expected = w.reshape(3, -1) @ dense.T
    torch.testing.assert_close(kept.project("a", w), expected)
    torch.testing.assert_close(recomputed.project("a", w), expected)
    assert "a" in kept._cache and not recomputed._cache


def test_kronecker_keeps_small_modules_whole_and_gives_the_rest_to_large_ones():
    p = KroneckerProjection({"a": (16, 32), "b": (32, 16), "c": (4, 3)}, 64, 3)
    assert p.p_in["c"] is None and p.p_out["c"] is None and p.shapes["c"] == (3, 4)  # 12 values: kept whole
    shapes = allocate({"small": (2, 3), "big": (100, 100)}, 106)
    assert shapes["small"] == (3, 2) and shapes["big"][0] * shapes["big"][1] == 100


@pytest.mark.parametrize("cls", [CountSketchProjection, KroneckerProjection])
def test_projected_dot_products_are_unbiased(cls):
    """E[<R x, R y>] = <x, y> over projection seeds."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 12, 10, generator=gen), torch.randn(1, 12, 10, generator=gen)
    y = y + x  # correlated, so the true product is far from 0
    dots = [float(p.project("m", x) @ p.project("m", y).T) for p in (cls({"m": (10, 12)}, 30, s) for s in range(400))]
    truth = float((x * y).sum())
    assert abs(np.mean(dots) - truth) < 4 * np.std(dots) / np.sqrt(len(dots))


def test_countsketch_error_is_a_dense_projections_and_below_kronecker_on_rank_one_gradients():
    """The measured reason for the default: on rank-one matrices (a one-token gradient) the Kronecker
    projection's error is far above 1/sqrt(k), the CountSketch's is not."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 1, generator=gen) @ torch.randn(1, 64, generator=gen))[None]
    y = x + 0.5 * (torch.randn(64, 1, generator=gen) @ torch.randn(1, 64, generator=gen))[None]
    truth, scale = float((x * y).sum()), float(x.norm() * y.norm())

    def error(cls) -> float:
        dots = [
            float(p.project("m", x) @ p.project("m", y).T) for p in (cls({"m": (64, 64)}, 256, s) for s in range(200))
        ]
        return float(np.sqrt(np.mean((np.array(dots) - truth) ** 2)) / scale)

    assert error(CountSketchProjection) < 2.0 / np.sqrt(256) < error(KroneckerProjection)


def test_the_anchor_scores_what_the_runs_seeds_explain_exactly_and_cuts_the_error():
    """Pool and seeds sharing a few directions (as real gradients do): a new seed scored from a 64-column sketch
    of 2,000 dimensions, with and without the anchor on 40 known seeds whose exact scores are given."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((8, 2000))
    draw = lambda n: rng.standard_normal((n, 8)) @ shared + 0.3 * rng.standard_normal((n, 2000))  # noqa: E731
    pool, known, new = draw(500), draw(40), draw(20)
    proj = CountSketchProjection({"m": (2000, 1)}, 64, 0)

    def rows(x):
        t = torch.from_numpy(x).float()
        return IndexRows.from_projected(proj.project("m", t[:, :, None]), (t * t).sum(1))

    exact_known, truth = pool @ known.T, pool @ new.T
    anchor = Anchor(exact_known.astype(np.float32), rows(known))
    plain = index_scores(rows(pool), rows(new), "none")
    anchored = index_scores(rows(pool), rows(new), "none", anchor)
    assert rel_err(anchored, truth) < 0.5 * rel_err(plain, truth)


def test_index_scores_of_zero_gradient_are_zero():
    pool = IndexRows(np.zeros((2, 3), np.float16), np.zeros(2, np.float32), np.zeros(2, np.float32))
    q = IndexRows(np.ones((1, 3), np.float32) / np.sqrt(3), np.ones(1, np.float32), np.ones(1, np.float32))
    for normalize in ("none", "unit", "relatif"):
        assert np.all(index_scores(pool, q, normalize) == 0)


def test_an_anchor_of_zero_rows_leaves_the_plain_scores():
    """Seeds with no target token within the max length have zero gradients: an anchor of only those explains
    nothing (it made the ridge system singular and failed the run at its very end)."""
    rng = np.random.default_rng(1)
    pool = IndexRows.from_projected(torch.from_numpy(rng.standard_normal((6, 4))).float(), torch.ones(6))
    new = IndexRows.from_projected(torch.from_numpy(rng.standard_normal((2, 4))).float(), torch.ones(2))
    zero = IndexRows(np.zeros((3, 4), np.float16), np.zeros(3, np.float32), np.zeros(3, np.float32))
    anchor = Anchor(np.zeros((6, 3), np.float32), zero)
    np.testing.assert_allclose(index_scores(pool, new, "none", anchor), index_scores(pool, new, "none"), atol=1e-6)


def test_int8_rows_quantize_within_half_a_step_and_zero_rows_stay_zero():
    x = torch.randn(5, 300, generator=torch.Generator().manual_seed(3))
    x[2] = 0
    rows, scale = quantize(x)
    assert rows.dtype == torch.int8 and scale[2] == 0 and torch.all(rows[2] == 0)
    assert torch.all((rows.float() * scale[:, None] - x).abs() <= scale[:, None] / 2 + 1e-7)
    assert torch.all(rows.abs().amax(1)[[0, 1, 3, 4]] == 127)


@pytest.mark.parametrize("n_queries", [1, HALF_PRODUCT_QUERIES, HALF_PRODUCT_QUERIES + 1])
@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_stored_rows_score_as_their_float32_originals(dtype, n_queries):
    """Every product route (int8 integer product, float16 per query, float32 conversion) gives the float32
    rows' scores up to the storage's rounding (int8: about 1% of a random pair's score, far below the
    projection's own error of about 100% of it), in every normalisation, with and without an anchor."""
    gen = np.random.default_rng(4)
    unit = gen.standard_normal((300, 512)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    lengths, norms = gen.uniform(0.5, 2, 300).astype(np.float32), gen.uniform(1, 3, 300).astype(np.float32)
    exact_rows = IndexRows(unit, lengths, norms)
    stored = exact_rows.stored(dtype)
    assert stored.rows.dtype == np.dtype(dtype) and (stored.scale is not None) == (dtype == "int8")
    q = IndexRows(unit[:n_queries] + 0.3 * unit[-n_queries:], lengths[:n_queries], norms[:n_queries])
    q = IndexRows(q.rows / np.linalg.norm(q.rows, axis=1, keepdims=True), q.projected_norm, q.norm)
    anchor = Anchor(gen.standard_normal((300, 4)).astype(np.float32), exact_rows.take(slice(0, 4)))
    for normalize in ("none", "unit", "relatif"):
        for a in (None, anchor):
            want = index_scores(exact_rows, q, normalize, a)
            got = index_scores(stored, q, normalize, a, block_bytes=1 << 14)  # several blocks
            assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()
            assert rel_err(got, want) < (2e-2 if dtype == "int8" else 2e-3)


def test_index_added_later_equals_the_one_written_by_the_run(tmp_path, model, tokenizer, data_files):
    settings = {"index_dim": 256, "index_dtype": "float32", "hessian": "ekfac"}
    with_index = scored(tmp_path, model, tokenizer, data_files, "a", **settings)
    without = scored(tmp_path, model, tokenizer, data_files, "b", **(settings | {"index_dim": 0}))
    assert not has_index(without)
    with pytest.raises(NoIndexError, match="gdig index"):
        load_index(without)
    build_index(without, index_dim=256, index_dtype="float32", model=model, tokenizer=tokenizer, chunk=7)
    assert load_index(without).projection == "countsketch"
    a, b = load_index(with_index), load_index(without)
    assert a.meta["modules"] == b.meta["modules"]
    np.testing.assert_allclose(b.pool.rows, a.pool.rows, atol=2e-5)
    np.testing.assert_allclose(b.pool.norm, a.pool.norm, rtol=1e-4)
    np.testing.assert_allclose(b.seeds.rows, a.seeds.rows, atol=2e-5)
    with pytest.raises(ValueError, match="already has"):
        build_index(without, model=model, tokenizer=tokenizer)


def test_an_int8_index_is_written_read_added_later_and_rescored_like_a_float_one(
    tmp_path, model, tokenizer, data_files
):
    from gdig.pipeline.rescoring import SeedEdit, rescore

    settings = {"index_dim": 256, "index_dtype": "int8", "hessian": "ekfac"}
    run = scored(tmp_path, model, tokenizer, data_files, "a", **settings)
    idx = load_index(run)
    assert idx.pool.rows.dtype == np.int8 and np.load(run / "index_norms.npy").shape == (len(idx.pool), 3)
    assert np.allclose(np.linalg.norm(idx.pool.unit_rows(), axis=1), 1, atol=2e-2)
    assert idx.meta["dtype"] == "int8" and idx.meta["agreement"]["spearman_mean"] > 0.8
    later = scored(tmp_path, model, tokenizer, data_files, "b", **(settings | {"index_dim": 0}))
    build_index(later, index_dim=256, index_dtype="int8", model=model, tokenizer=tokenizer, chunk=7)
    np.testing.assert_allclose(load_index(later).pool.unit_rows(), idx.pool.unit_rows(), atol=2e-3)
    edit = SeedEdit(drop=[str(load_run(run).seeds["id"].iloc[0])])
    out = rescore(run, tmp_path / "dropped", edit, model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(np.load(out / "influence.npy"), np.load(run / "influence.npy")[:, 1:])


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


def test_a_one_seed_run_reports_its_agreement(tmp_path, model, tokenizer):
    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(10, seed=5))
    one = write_jsonl(tmp_path / "s.jsonl", make_pairs(1, seed=6))
    idx = load_index(scored(tmp_path, model, tokenizer, (cands, one), index_dim=64))
    assert {"spearman_mean", "without_anchor"} <= set(idx.meta["agreement"])


def test_kronecker_shapes_fit_their_budget():
    for d_out, d_in, budget in [(5, 5, 24), (3, 40, 30), (40, 3, 30), (64, 64, 100)]:
        k_out, k_in = KroneckerProjection({"m": (d_in, d_out)}, budget, 0).shapes["m"]
        assert k_out <= d_out and k_in <= d_in and k_out * k_in <= budget


def test_a_run_begun_before_the_index_resumes_and_finishes_without_one(tmp_path, model, tokenizer, data_files):
    import json

    out = scored(tmp_path, model, tokenizer, data_files, index_dim=0)
    config = json.loads((out / "config.json").read_text())
    for key in ("index_dim", "index_dtype", "index_projection"):  # as an older version wrote it
        config["settings"].pop(key)
    (out / "config.json").write_text(json.dumps(config))
    cands, seeds = data_files
    cfg = ScoreConfig(model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(out), umap=False)
    score(cfg, resume=True, model=model, tokenizer=tokenizer)  # the default index_dim: no "other settings"
    assert not has_index(out)
