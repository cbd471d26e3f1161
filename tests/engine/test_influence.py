"""The maths of DESIGN section 1, proven on tiny models against independent references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import lora_model
from gdig.config import ScoreConfig
from gdig.demo.tiny import build_tiny_model
from gdig.engine.hooks import GradientCapture, collate
from gdig.inputs.data import load_dataset, tokenize_dataset
from gdig.inputs.model import find_tracked_modules
from gdig.pipeline.run import score
from gdig.rundir.results import load_run
from gdig.studio.explain import token_influence
from reference import autograd_gradients, dense_inverse, token_statistics


def run(tmp_path, model, tokenizer, files, name="run", **settings):
    cands, seeds = files
    cfg = ScoreConfig(
        model="in-memory",
        candidates=str(cands),
        seeds=str(seeds),
        out=str(tmp_path / name),
        umap=False,
        **({"normalize": "none"} | settings),  # raw I(z, s) unless a test asks for a normalisation
    )
    out = score(cfg, model=model, tokenizer=tokenizer)
    return np.load(out / "influence.npy").astype(np.float64), out


def references(model, tokenizer, files):
    cands, seeds = (load_dataset(f) for f in files)
    c_tok, _ = tokenize_dataset(tokenizer, cands, 512)
    s_tok, _ = tokenize_dataset(tokenizer, seeds, 512)
    tracked = find_tracked_modules(model)
    return tracked, c_tok, s_tok, autograd_gradients(model, tracked, c_tok), autograd_gradients(model, tracked, s_tok)


def rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_identity_equals_dot_product_of_autograd_gradients(tmp_path, model, tokenizer, data_files):
    infl, _ = run(tmp_path, model, tokenizer, data_files, hessian="identity")
    _, _, _, gc, gs = references(model, tokenizer, data_files)
    ref = sum(gc[n].reshape(len(gc[n]), -1) @ gs[n].reshape(len(gs[n]), -1).T for n in gc)
    assert infl.shape == ref.shape == (24, 5)
    assert rel_err(infl, ref) < 1e-5


@pytest.mark.parametrize(
    "kind,damping,relative",
    [
        ("ekfac", 1e-6, None),
        ("kfac", 1e-6, None),
        ("ekfac", None, 0.1),
        ("diagonal", 1e-6, None),
        ("diagonal", None, 0.1),
    ],
)
def test_kfac_and_ekfac_equal_dense_reference(tmp_path, model, tokenizer, data_files, kind, damping, relative):
    infl, _ = run(tmp_path, model, tokenizer, data_files, hessian=kind, damping=damping, damping_relative=relative)
    tracked, c_tok, _, gc, gs = references(model, tokenizer, data_files)
    stats = token_statistics(model, tracked, c_tok)
    ref = 0.0
    for t in tracked:
        h_inv = dense_inverse(stats, gc[t.name], t.name, kind, damping, relative)
        ref = ref + gc[t.name].reshape(24, -1) @ h_inv @ gs[t.name].reshape(5, -1).T
    assert rel_err(infl, ref) < 1e-4
    # the preconditioner matters: the identity-mode scores are far from these
    ident = sum(gc[n].reshape(24, -1) @ gs[n].reshape(5, -1).T for n in gc)
    assert rel_err(ident / np.linalg.norm(ident), ref / np.linalg.norm(ref)) > 1e-2


def test_same_results_for_batch_sizes_and_padding_sides(tmp_path, model, tokenizer, data_files):
    base, _ = run(tmp_path, model, tokenizer, data_files, name="b1", batch_size=1)
    for bs, side in [(3, "right"), (8, "right"), (8, "left"), (3, "left")]:
        other, _ = run(tmp_path, model, tokenizer, data_files, name=f"b{bs}{side}", batch_size=bs, padding_side=side)
        assert rel_err(other, base) < 1e-5, (bs, side)


def test_left_and_right_padding_give_same_per_token_statistics(model, tokenizer, data_files):
    cands = load_dataset(data_files[0])
    toks, _ = tokenize_dataset(tokenizer, cands, 512)
    tracked = find_tracked_modules(model)
    with GradientCapture(model, tracked) as cap:
        right = cap.run(collate(toks[:6], range(6), tokenizer.pad_token_id, "right"))
        left = cap.run(collate(toks[:6], range(6), tokenizer.pad_token_id, "left"))
    torch.testing.assert_close(left.loss, right.loss, rtol=1e-5, atol=1e-6)
    for i, ex in enumerate(toks[:6]):
        n = len(ex.input_ids)
        for name in right.grads:
            torch.testing.assert_close(left.grads[name][i, -n:], right.grads[name][i, :n], rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(left.acts[name][i, -n:], right.acts[name][i, :n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("normalize", "hessian", "seed_batch"),
    [
        ("none", "ekfac", 1),
        ("unit", "ekfac", 1),
        ("relatif", "kfac", 2),
        ("unit", "identity", 1),
        ("unit", "diagonal", 1),
    ],
)
def test_token_contributions_sum_to_the_score(tmp_path, model, tokenizer, data_files, normalize, hessian, seed_batch):
    """Token explanations (one seed column recomputed from its text, or the stored seed mean) sum to the stored
    score in the run's normalisation; the run keeps one seed's worth of bytes, not every seed's gradient."""
    infl, out = run(
        tmp_path,
        model,
        tokenizer,
        data_files,
        hessian=hessian,
        damping=1e-3,
        normalize=normalize,
        seed_batch=seed_batch,
    )
    results = load_run(out)
    for i in (0, 7):
        for column in (0, infl.shape[1] - 1):
            ti = token_influence(results, i, model, tokenizer, column)
            assert len(ti.contributions) == len(ti.tokens) and ti.n_prompt > 0
            assert ti.total == pytest.approx(infl[i, column], rel=1e-4, abs=1e-7)
        assert token_influence(results, i, model, tokenizer, None).total == pytest.approx(
            infl[i].mean(), rel=1e-4, abs=1e-7
        )
    one_seed = sum(t.d_in * t.d_out for t in find_tracked_modules(model)) * 4
    assert (out / "seed_grads.safetensors").stat().st_size < 2 * one_seed + 4096


def test_token_contributions_of_an_older_run_with_every_seed_stored(tmp_path, model, tokenizer, data_files):
    """Runs written before the mean direction was stored keep working: their per-seed file is averaged."""
    from gdig.rundir.seeds import save_seed_gradients

    infl, out = run(tmp_path, model, tokenizer, data_files, damping=1e-3, normalize="none")
    cands, seeds = (load_dataset(f) for f in data_files)
    s_tok, _ = tokenize_dataset(tokenizer, seeds, 512)
    from gdig.engine.hooks import per_example_gradient
    from gdig.engine.seeds import precondition_seeds
    from gdig.rundir.factors import load_factors

    cur = load_factors(out / "factors.safetensors")
    with GradientCapture(model, find_tracked_modules(model)) as cap:
        got = cap.run(collate(s_tok, range(len(s_tok)), tokenizer.pad_token_id))
    grads = {n: per_example_gradient(got.acts[n], got.grads[n]) for n in got.acts}
    old = precondition_seeds(grads, cur, {n: 1e-3 for n in grads}).to_weights(cur)  # as they were stored then
    save_seed_gradients(out / "seed_grads.safetensors", old, "x")
    ti = token_influence(load_run(out), 3, model, tokenizer, None)
    assert ti.total == pytest.approx(infl[3].mean(), rel=1e-4, abs=1e-7)


def test_conv1d_and_linear_give_the_same_influence(tmp_path, tokenizer, data_files):
    gpt2 = build_tiny_model("gpt2", tokenizer, hidden=16, ffn=32, heads=2)
    linear = build_tiny_model("gpt2", tokenizer, hidden=16, ffn=32, heads=2)
    for block in linear.transformer.h:
        for attr in ("c_fc", "c_proj"):
            conv = getattr(block.mlp, attr)
            lin = torch.nn.Linear(conv.weight.shape[0], conv.weight.shape[1])
            with torch.no_grad():
                lin.weight.copy_(conv.weight.T)
                lin.bias.copy_(conv.bias)
            setattr(block.mlp, attr, lin)
    assert any(t.transposed for t in find_tracked_modules(gpt2))
    assert not any(t.transposed for t in find_tracked_modules(linear))
    a, _ = run(tmp_path, gpt2, tokenizer, data_files, name="conv", damping=1e-3)
    b, _ = run(tmp_path, linear, tokenizer, data_files, name="lin", damping=1e-3)
    assert rel_err(b, a) < 1e-5


def test_low_rank_seeds_full_rank_equals_dense_and_error_is_measured(tmp_path, model, tokenizer, data_files):
    dense, _ = run(tmp_path, model, tokenizer, data_files, name="dense", damping=1e-3)
    full, out_full = run(tmp_path, model, tokenizer, data_files, name="full", damping=1e-3, seed_rank=16)
    low, out_low = run(tmp_path, model, tokenizer, data_files, name="low", damping=1e-3, seed_rank=2)
    assert rel_err(full, dense) < 1e-5  # rank 16 is full rank for 16-wide layers: exact
    import json

    err = json.loads((out_low / "config.json").read_text())["seed_lowrank_error"]
    assert err and all(0 < e["max"] < 1 for e in err.values())
    assert rel_err(low, dense) > 1e-4  # truncation is visible, and recorded


def test_unit_normalisation_is_cosine_in_the_preconditioned_metric(tmp_path, model, tokenizer, data_files):
    infl, _ = run(tmp_path, model, tokenizer, data_files, hessian="kfac", damping=1e-3, normalize="unit")
    rel, _ = run(
        tmp_path, model, tokenizer, data_files, name="relatif", hessian="kfac", damping=1e-3, normalize="relatif"
    )
    tracked, c_tok, _, gc, gs = references(model, tokenizer, data_files)
    stats = token_statistics(model, tracked, c_tok)
    raw, self_c, self_s = 0.0, 0.0, 0.0
    for t in tracked:
        h = dense_inverse(stats, gc[t.name], t.name, "kfac", 1e-3, None)
        c, s = gc[t.name].reshape(24, -1), gs[t.name].reshape(5, -1)
        raw = raw + c @ h @ s.T
        self_c = self_c + np.einsum("ip,pq,iq->i", c, h, c)
        self_s = self_s + np.einsum("ip,pq,iq->i", s, h, s)
    cosine = raw / np.sqrt(self_c)[:, None] / np.sqrt(self_s)[None, :]
    assert np.all(np.abs(infl) <= 1 + 1e-6)
    assert rel_err(infl, cosine) < 1e-4
    assert rel_err(rel, raw / np.sqrt(self_c)[:, None]) < 1e-4


def test_seed_batching(tmp_path, model, tokenizer, data_files):
    plain, _ = run(tmp_path, model, tokenizer, data_files, name="k0", damping=1e-3)
    k1, _ = run(tmp_path, model, tokenizer, data_files, name="k1", damping=1e-3, seed_batch=1)
    k5, _ = run(tmp_path, model, tokenizer, data_files, name="k5", damping=1e-3, seed_batch=5)
    k2, _ = run(tmp_path, model, tokenizer, data_files, name="k2", damping=1e-3, seed_batch=2)
    np.testing.assert_array_equal(k1, plain)
    assert k5.shape == (24, 1) and rel_err(k5[:, 0], plain.mean(1)) < 1e-5  # linear in the seed gradient
    assert k2.shape == (24, 3) and rel_err(k2[:, 2], plain[:, 4]) < 1e-5
    assert rel_err(k2[:, 0], plain[:, :2].mean(1)) < 1e-5


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "bloom", "gpt_neox", "gemma"])
def test_labelled_positions_head_equals_full_logits(tokenizer, data_files, arch):
    """The head applied at labelled positions only gives the same losses and gradients as full logits."""
    m = build_tiny_model(arch, tokenizer, hidden=16, ffn=32, heads=2)
    toks, _ = tokenize_dataset(tokenizer, load_dataset(data_files[0]), 512)
    batch = collate(toks[:5], range(5), tokenizer.pad_token_id, "left")
    tracked = find_tracked_modules(m)
    with GradientCapture(m, tracked) as cap:
        assert cap.labelled_head
        fast = cap.run(batch)
        cap.labelled_head = False
        full = cap.run(batch)
    torch.testing.assert_close(fast.loss, full.loss, rtol=1e-5, atol=1e-6)
    for name in full.grads:
        torch.testing.assert_close(fast.grads[name], full.grads[name], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("kind", ["ekfac", "kfac", "diagonal"])
def test_lora_adapter_influence_equals_the_dense_reference(tmp_path, tokenizer, data_files, kind):
    from gdig.config import LORA_MODULES

    model = lora_model(build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2))
    infl, out = run(tmp_path, model, tokenizer, data_files, hessian=kind, damping=1e-6, modules=LORA_MODULES)
    tracked = find_tracked_modules(model, LORA_MODULES)
    assert len(tracked) == 2 * 3 * 2 and all(".lora_" in t.name for t in tracked)  # A and B, 3 modules, 2 layers
    assert {(t.d_in, t.d_out) for t in tracked} >= {(16, 2), (2, 16), (32, 2)}
    cands, seeds = (load_dataset(f) for f in data_files)
    c_tok, _ = tokenize_dataset(tokenizer, cands, 512)
    s_tok, _ = tokenize_dataset(tokenizer, seeds, 512)
    gc, gs = autograd_gradients(model, tracked, c_tok), autograd_gradients(model, tracked, s_tok)
    stats = token_statistics(model, tracked, c_tok)
    ref = 0.0
    for t in tracked:
        h_inv = dense_inverse(stats, gc[t.name], t.name, kind, 1e-6, None)
        ref = ref + gc[t.name].reshape(24, -1) @ h_inv @ gs[t.name].reshape(5, -1).T
    assert rel_err(infl, ref) < 1e-4


def test_an_adapter_folder_is_scored_unmerged_over_its_matrices(tmp_path, tokenizer, data_files, llama_dir):
    from peft import PeftModel

    from gdig.inputs.model import load_model

    adapter = tmp_path / "adapter"
    base, _ = load_model(str(llama_dir), "cpu", "float32")
    lora_model(base).save_pretrained(adapter)
    model, tok = load_model(str(llama_dir), "cpu", "float32", adapter=str(adapter))
    assert isinstance(model, PeftModel)
    cands, seeds = data_files
    cfg = ScoreConfig(
        model=str(llama_dir), adapter=str(adapter), candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "a")
    )
    assert cfg.tracked_modules() != ScoreConfig(model="m", candidates="c", seeds="s", out="o").tracked_modules()
    out = score(ScoreConfig(**(cfg.to_dict() | {"umap": False})))
    config = json.loads((out / "config.json").read_text())
    assert {m["name"].rsplit(".", 2)[-2] for m in config["modules"]} == {"lora_A", "lora_B"}
    again = ScoreConfig(**(cfg.to_dict() | {"umap": False, "out": str(tmp_path / "b")}))
    same = score(again, model=model, tokenizer=tok)
    np.testing.assert_array_equal(np.load(out / "influence.npy"), np.load(same / "influence.npy"))
    with pytest.raises(ValueError, match="adapter_config.json"):
        load_model(str(llama_dir), "cpu", "float32", adapter=str(tmp_path))


def test_seeds_kept_dense_for_some_modules_and_low_rank_for_others_score_every_module():
    """A rank can keep a small module's seeds dense and a large one's factorised: both count in the scores and
    the mean seed direction (the scorer once read only the dense ones)."""
    from gdig.engine.curvature import Curvature
    from gdig.engine.hooks import Captured
    from gdig.engine.influence import Scorer
    from gdig.engine.seeds import SeedGradients, mean_seed_direction

    gen = torch.Generator().manual_seed(0)
    small, big = (
        torch.randn(3, 2, 4, generator=gen),
        (torch.randn(3, 6, 2, generator=gen), torch.randn(3, 5, 2, generator=gen)),
    )
    seeds = SeedGradients(
        dense={"small": small}, left={"big": big[0]}, right={"big": big[1]}, self_influence=torch.ones(3)
    )
    assert seeds.names == ["small", "big"] and seeds.n_seeds == 3
    acts = {"small": torch.randn(2, 7, 4, generator=gen), "big": torch.randn(2, 7, 5, generator=gen)}
    grads = {"small": torch.randn(2, 7, 2, generator=gen), "big": torch.randn(2, 7, 6, generator=gen)}
    cap = Captured([0, 1], torch.zeros(2), torch.full((2,), 7), torch.ones(2, 7), acts, grads)
    dense = {"small": small, "big": torch.einsum("sor,sir->soi", *big)}
    expected = sum(torch.einsum("bto,bti,soi->bs", grads[n], acts[n], dense[n]) for n in dense)
    scored = Scorer(seeds, Curvature("identity"), {"small": 0.0, "big": 0.0}).raw_scores(cap)
    torch.testing.assert_close(scored.scores, expected, rtol=1e-5, atol=1e-5)
    mean = mean_seed_direction(seeds, "none")
    assert set(mean) == {"small", "big"}
    torch.testing.assert_close(mean["big"], dense["big"].mean(0), rtol=1e-5, atol=1e-6)
