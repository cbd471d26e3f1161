"""Seeds are never held dense: built one (module, chunk) at a time, kept at the rank a memory budget allows,
their truncation error measured; at full rank, the same seeds as preconditioning all of them at once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_influence import rel_err, run

from gdig.engine.curvature import Curvature
from gdig.engine.seeds import SeedBuilder, low_rank, precondition_seeds


def test_chunked_building_equals_all_at_once_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(7, 5, 4, generator=gen), "b": torch.randn(7, 3, 6, generator=gen)}
    cur = Curvature("identity")
    whole = precondition_seeds(grads, cur, {"a": 0.0, "b": 0.0})
    builder = SeedBuilder({"a": (4, 5), "b": (6, 3)}, 7, cur, {"a": 0.0, "b": 0.0}, {"a": None, "b": None})
    for start, stop in ((0, 3), (3, 7)):
        for name, g in grads.items():
            builder.add(name, start, g[start:stop])
    chunked = builder.finish()
    assert torch.equal(chunked.dense["a"], whole.dense["a"]) and torch.equal(chunked.dense["b"], whole.dense["b"])
    assert torch.allclose(chunked.self_influence, whole.self_influence, rtol=1e-6)


def test_randomised_low_rank_is_as_good_as_the_exact_one_and_its_error_is_exact():
    gen = torch.Generator().manual_seed(1)
    u, v = torch.randn(3, 300, 8, generator=gen), torch.randn(3, 8, 200, generator=gen)
    m = (u @ v + 0.05 * torch.randn(3, 300, 200, generator=gen)).double()  # rank 8 plus noise
    us, s, w = low_rank(m, 8)
    assert us.shape == (3, 300, 8) and s.shape == (3, 8) and w.shape == (3, 200, 8)
    approx = (us * s[..., None, :]) @ w.transpose(-2, -1)
    best = torch.linalg.svdvals(m)
    optimal = (best[..., 8:] ** 2).sum(-1).sqrt()
    got = torch.linalg.norm(m - approx, dim=(-2, -1))
    assert torch.all(got <= 1.001 * optimal)  # as good as the exact truncation
    claimed = ((m**2).sum((-2, -1)) - (s**2).sum(-1)).sqrt()
    assert torch.allclose(claimed, got, rtol=1e-6)  # the error recorded is the error made
    assert torch.equal(low_rank(m, 8)[1], s)  # reproducible
    full = low_rank(m[:, :20, :12], 12)  # the whole space: exact
    assert torch.allclose((full[0] * full[1][..., None, :]) @ full[2].transpose(-2, -1), m[:, :20, :12])


def test_seeds_fit_the_budget_dense_and_chunking_changes_nothing(tmp_path, model, tokenizer, data_files, monkeypatch):
    from gdig.pipeline import seed_stage

    dense, _ = run(tmp_path, model, tokenizer, data_files, name="dense", damping=1e-3)
    same, out = run(tmp_path, model, tokenizer, data_files, name="fits", damping=1e-3, seed_memory_mb=1)
    assert np.array_equal(same, dense)  # 5 seeds of a tiny model fit in 1 MiB: dense, exact
    assert json.loads((out / "config.json").read_text())["seed_rank_kept"] is None
    monkeypatch.setattr(seed_stage, "SEED_WORK_BYTES", 1)  # one seed per chunk
    chunked, _ = run(tmp_path, model, tokenizer, data_files, name="chunked", damping=1e-3)
    assert rel_err(chunked, dense) < 1e-6


@pytest.mark.parametrize(("budget_mb", "expected"), [(1000, None), (1, 2), (0.01, 1)])
def test_seed_ranks_follow_the_budget(budget_mb, expected):
    from types import SimpleNamespace

    from gdig.engine.distributed import SINGLE
    from gdig.pipeline.seed_stage import seed_ranks

    dims = {"m1": (64, 128), "m2": (128, 64)}  # dense: 2 * 8192 * 4 bytes per seed = 64 KiB
    cfg = SimpleNamespace(seed_rank=None, seed_memory_mb=budget_mb, memory_gb=None)
    ctx = SimpleNamespace(cfg=cfg, dims=dims, device=torch.device("cpu"), world=SINGLE)
    ranks = seed_ranks(ctx, n_columns=256)  # dense 16 MiB; rank r costs 256 * 2 * 192 * 4 * r bytes = 384 KiB * r
    assert ranks == dict.fromkeys(dims, expected)


@pytest.mark.parametrize(("seed_batch", "rank"), [(1, None), (2, None), (1, 15), (2, 15), (1, 3), (2, 3)])
def test_seeds_from_tokens_equal_preconditioning_the_whole_gradient(
    tmp_path, model, tokenizer, data_files, monkeypatch, seed_batch, rank
):
    settings = {"damping": 1e-3, "seed_rank": rank, "seed_batch": seed_batch, "hessian": "ekfac"}
    tokens, out = run(tmp_path, model, tokenizer, data_files, name="tokens", **settings)
    monkeypatch.setattr(SeedBuilder, "takes_tokens", lambda self, name: False)  # the dense-gradient route
    whole, _ = run(tmp_path, model, tokenizer, data_files, name="whole", **settings)
    assert rel_err(tokens, whole) < (1e-3 if rank == 3 else 1e-5)
    errors = json.loads((out / "config.json").read_text())["seed_lowrank_error"]
    assert (not errors) if rank is None else (errors and all(0 < e["max"] < 1 for e in errors.values()))


@pytest.mark.parametrize(("rank", "route"), [(None, "tokens"), (3, "tokens"), (3, "gradients")])
def test_seed_columns_preconditioned_a_block_at_a_time_give_the_same_seeds(
    tmp_path, model, tokenizer, data_files, monkeypatch, rank, route
):
    from gdig.engine import hooks, memory

    if route == "tokens":  # else the tiny model's captures keep their per-example gradients (add_gradients)
        monkeypatch.setattr(hooks, "keeps_gradient", lambda *_: False)
    settings = {"damping": 1e-3, "seed_rank": rank, "hessian": "ekfac"}
    calls = []
    monkeypatch.setattr(SeedBuilder, "add_rotated", _counting(SeedBuilder.add_rotated, calls))
    whole, out = run(tmp_path, model, tokenizer, data_files, name="whole", **settings)
    per_module = len(calls)
    monkeypatch.setattr(memory, "SEED_BLOCK_BYTES", 1)  # one column a block
    calls.clear()
    blocks, out_blocks = run(tmp_path, model, tokenizer, data_files, name="blocks", **settings)
    assert len(calls) == 5 * per_module  # the five seeds' columns one at a time
    assert rel_err(blocks, whole) < 1e-6
    errors = [json.loads((o / "config.json").read_text())["seed_lowrank_error"] for o in (out, out_blocks)]
    assert errors[0].keys() == errors[1].keys()
    for name, e in errors[0].items():
        assert e == pytest.approx(errors[1][name], rel=1e-5)


@pytest.mark.parametrize(("seed_batch", "rank"), [(1, None), (2, None), (2, 3)])
def test_seeds_from_kept_gradients_equal_seeds_from_tokens(
    tmp_path, tokenizer, data_files, monkeypatch, seed_batch, rank
):
    from conftest import lora_model
    from gdig.config import LORA_MODULES
    from gdig.demo.tiny import build_tiny_model
    from gdig.engine import hooks

    model = lora_model(build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2))
    settings = {"damping": 1e-3, "seed_rank": rank, "seed_batch": seed_batch, "modules": LORA_MODULES}
    calls = []
    monkeypatch.setattr(SeedBuilder, "add_gradients", _counting(SeedBuilder.add_gradients, calls))
    kept, _ = run(tmp_path, model, tokenizer, data_files, name="kept", **settings)
    assert calls  # the LoRA matrices' seeds came from their kept gradients
    monkeypatch.setattr(hooks, "keeps_gradient", lambda *_: False)
    calls.clear()
    tokens, _ = run(tmp_path, model, tokenizer, data_files, name="tokens", **settings)
    assert not calls  # ... and here from their tokens
    assert rel_err(kept, tokens) < (1e-3 if rank == 3 else 1e-5)


def _counting(method, calls: list):
    def counted(self, *args):
        calls.append(args[0])
        return method(self, *args)

    return counted


def test_the_mean_seed_direction_weights_each_low_rank_seed_by_its_norm():
    from gdig.engine.seeds import SeedGradients, mean_seed_direction

    gen = torch.Generator().manual_seed(0)
    left, right = torch.randn(5, 6, 2, generator=gen), torch.randn(5, 4, 2, generator=gen)
    self_inf = torch.rand(5, generator=gen) + 0.5
    seeds = SeedGradients(left={"m": left}, right={"m": right}, self_influence=self_inf)
    expected = sum(left[s] @ right[s].T / self_inf[s].sqrt() for s in range(5)) / 5
    assert torch.allclose(mean_seed_direction(seeds, "unit")["m"], expected, atol=1e-5)
    plain = sum(left[s] @ right[s].T for s in range(5)) / 5
    assert torch.allclose(mean_seed_direction(seeds, "none")["m"], plain, atol=1e-5)


@pytest.mark.parametrize(("seed_batch", "budget", "sizes"), [(1, 47_104, [4, 4, 4]), (3, 94_208, [6, 6])])
def test_seed_chunks_hold_what_compacted_captures_keep_in_whole_groups(monkeypatch, seed_batch, budget, sizes):
    """Each module of a compacted capture keeps its per-example gradient or its tokens, whichever is smaller: a
    LoRA-shaped pair always its r x d gradient, a 64 x 64 layer its tokens for a short seed and its gradient for a
    long one. Chunks are sized by that (by tokens alone, or by gradients alone, they come out smaller), each a whole
    number of --seed-batch groups, in order."""
    from types import SimpleNamespace

    from gdig.pipeline import seed_stage

    dims = {"lora_a": (64, 2), "lora_b": (2, 64), "wide": (64, 64)}
    short, long = 4 * (2 * 128 + 10 * 128), 4 * (2 * 128 + 64 * 64)  # 6,144 and 17,408 bytes kept
    assert budget == {1: 2 * (short + long), 3: 4 * (short + long)}[seed_batch]
    monkeypatch.setattr(seed_stage, "SEED_WORK_BYTES", budget)
    seeds = [SimpleNamespace(input_ids=[0] * (10 if i % 2 == 0 else 100)) for i in range(12)]
    ctx = SimpleNamespace(cfg=SimpleNamespace(seed_batch=seed_batch), dims=dims, seed_tok=seeds)
    chunks = seed_stage.seed_chunks(ctx)
    assert [i for c in chunks for i in c] == list(range(12))
    assert all(len(c) % seed_batch == 0 for c in chunks)
    assert [len(c) for c in chunks] == sizes
