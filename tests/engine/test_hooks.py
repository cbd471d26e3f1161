"""Captures that hold a module's per-example gradient instead of its tokens (hooks.keeps_gradient): every pass
over candidates computes the same bits from a fresh capture and from its kept, compact copy, and the gradient's
route agrees with the tokens' route."""

from __future__ import annotations

import pytest
import torch

from gdig.engine import hooks
from gdig.engine.curvature import Curvature, ModuleFactors
from gdig.engine.curvature_fit import CovarianceFitter, EigenCorrectionFitter
from gdig.engine.hooks import Captured, keeps_gradient, per_example_gradient
from gdig.engine.index import make_projection
from gdig.engine.influence import Scorer
from gdig.engine.seeds import precondition_seeds
from gdig.engine.sketch import Sketcher

DIMS = {"lora_a": (12, 2), "wide": (40, 30)}  # (d_in, d_out): at 9 tokens the first keeps its gradient


def capture(seed: int = 0, batch: int = 3, tokens: int = 9) -> Captured:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens)
    mask[-1, tokens - 3 :] = 0  # a shorter example: padding is zero in a and g
    acts = {n: torch.randn(batch, tokens, d_in, generator=gen) * mask[..., None] for n, (d_in, _) in DIMS.items()}
    grads = {n: torch.randn(batch, tokens, d_out, generator=gen) * mask[..., None] for n, (_, d_out) in DIMS.items()}
    return Captured(list(range(batch)), torch.zeros(batch), mask.sum(1), mask, acts, grads)


def test_a_module_keeps_its_gradient_where_it_is_smaller_than_its_tokens():
    assert keeps_gradient(64, 576, 8) and keeps_gradient(64, 8, 1536)  # LoRA A and B matrices
    assert not keeps_gradient(128, 4096, 11008)  # an LLM's MLP projection: its tokens are smaller
    assert not keeps_gradient(3, 6, 6) and keeps_gradient(4, 6, 6)  # 36 numbers against 3 * 12 and 4 * 12
    cap = capture()
    small = cap.compact()
    assert set(small.weight_grads) == {"lora_a"} and set(small.acts) == set(small.grads) == {"wide"}
    assert torch.equal(small.weight_grads["lora_a"], per_example_gradient(cap.acts["lora_a"], cap.grads["lora_a"]))
    assert cap.gradient("lora_a") is cap.gradient("lora_a")  # formed once per batch
    assert cap.gradient("wide") is None
    again = small.compact()  # a kept capture compacted again keeps its gradients
    assert again.weight_grads.keys() == small.weight_grads.keys() and set(again.acts) == {"wide"}


def fitted(kind: str):
    fit = CovarianceFitter(DIMS, torch.device("cpu"))
    for seed in range(3):
        fit.update(capture(seed))
    cur = fit.eigendecompose(kind)
    if kind == "ekfac":
        corr = EigenCorrectionFitter(cur)
        for seed in range(3):
            corr.update(capture(seed))
        cur = corr.finish()
    return cur


def everything(cap: Captured, cur, rank: int | None) -> list[torch.Tensor]:
    """What a pass over candidates computes from a capture: scores, self-influence, index rows, sketch and the
    eigenvalue sums."""
    dampings = dict.fromkeys(DIMS, 0.1)
    seed_cap = capture(seed=7, batch=4)
    seed_grads = {n: per_example_gradient(seed_cap.acts[n], seed_cap.grads[n]) for n in DIMS}
    seeds = precondition_seeds(seed_grads, cur, dampings, rank)
    projection = make_projection("kronecker", DIMS, 8, 0)
    scored = Scorer(seeds, cur, dampings, "unit", projection, list(DIMS))(cap)
    sketch = Sketcher(DIMS, 16, 0, torch.device("cpu"))(cap)
    corr = EigenCorrectionFitter(cur)
    corr.update(cap)
    return [scored.scores, scored.self_influence, scored.index, sketch, *corr.sums.values()]


@pytest.mark.parametrize("kind", ["ekfac", "kfac", "diagonal", "identity"])
@pytest.mark.parametrize("rank", [None, 1])
def test_a_kept_compact_capture_gives_the_bits_of_a_fresh_one(kind, rank):
    cur = {"diagonal": _diagonal, "identity": lambda: Curvature("identity")}.get(kind, lambda: fitted(kind))()
    fresh, kept = everything(capture(), cur, rank), everything(capture().compact(), cur, rank)
    for a, b in zip(fresh, kept, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("rank", [None, 1])
def test_the_gradients_route_agrees_with_the_tokens_route(monkeypatch, rank):
    cur = fitted("ekfac")
    by_gradient = everything(capture(), cur, rank)
    monkeypatch.setattr(hooks, "keeps_gradient", lambda *_: False)
    by_tokens = everything(capture(), cur, rank)
    assert capture().gradient("lora_a") is None  # the patch took: every module works from its tokens
    for a, b in zip(by_gradient, by_tokens, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _diagonal():
    return Curvature("diagonal", {n: ModuleFactors(lam=torch.ones(d_out, d_in)) for n, (d_in, d_out) in DIMS.items()})
