"""Influence of candidates on seeds (DESIGN section 1): I(z, s) = <grad L(s), (F + lambda)^-1 grad L(z)>.

Seeds are preconditioned once and kept in memory, dense (in the curvature's eigenbasis) or as a low-rank
factorisation (gdig.engine.seeds); candidates are then scored batch by batch from their captured a_t and g_t, rotated
into the eigenbasis once for the dense seeds' scores, the self-influence and the index together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gdig.engine.curvature import Curvature, squared_norms
from gdig.engine.hooks import Captured, per_example_gradient
from gdig.engine.seeds import SeedGradients


@dataclass
class ScoredBatch:
    """What scoring one captured batch gives: (B, S) scores, (B,) self-influence when it was needed, and the
    batch's projected whitened gradients (B, k) when the run keeps an index."""

    scores: torch.Tensor
    self_influence: torch.Tensor | None = None
    index: torch.Tensor | None = None


def needs_self_influence(normalize: str, indexing: bool) -> bool:
    """Whether scoring needs each candidate's self-influence (normalising, or indexing): then it rotates every
    candidate into the eigenbasis and the seeds stay there; else the Scorer turns the seeds back once."""
    return normalize != "none" or indexing


class Scorer:
    """Scores captured candidate batches against preconditioned seeds, with optional normalisation, and projects
    their whitened gradients into the index. Where self-influence is needed (normalising or indexing) each
    candidate's gradient is rotated into the eigenbasis once and contracted there with seeds kept in it; otherwise
    the seeds are turned back to the weights' coordinates once (in place) and no candidate is rotated."""

    def __init__(
        self,
        seeds: SeedGradients,
        curvature: Curvature,
        dampings: dict[str, float],
        normalize: str = "none",
        projection=None,
        modules: list[str] | None = None,
    ):
        """`modules`: the order of the sums over modules (the model's; default, the seeds' stored order)."""
        self.seeds = seeds
        self.curvature = curvature
        self.dampings = dampings
        self.normalize = normalize
        self.projection = projection
        self.modules = modules or seeds.names
        self.needs_self_influence = needs_self_influence(normalize, projection is not None)
        if not self.needs_self_influence:
            seeds.to_weights(curvature)

    def raw_scores(self, cap: Captured, carried: ScoredBatch | None = None) -> ScoredBatch:
        """(B, S) raw influence; self-influence (B,) when normalising or indexing; the index rows when indexing.
        `carried`: the sums over the modules before these (a run in module groups), added to in module order,
        so that the sums are the same, bit for bit, as one pass over every module."""
        return self.raw_scores_of([cap], [carried])[0]

    def raw_scores_of(self, caps: list[Captured], carried: list[ScoredBatch | None]) -> list[ScoredBatch]:
        """raw_scores of several captured batches, module by module: a module's seeds, read from memory for the
        first batch, are still in the CPU's cache for the others (one batch at a time reads all the seeds, 2.5 GB
        for SmolLM2's adapters, per batch). Each batch gets the same products, summed in the same order: the same
        bits as alone."""
        outs = [c or ScoredBatch(scores=None) for c in carried]
        for cap, out in zip(caps, outs, strict=True):
            if self.projection is not None and out.index is None:
                out.index = self.projection.empty(len(cap.index), cap.loss.device)
        for name in self.modules:
            for cap, out in zip(caps, outs, strict=True):
                self._add_module(name, cap, out)
        return outs

    def _add_module(self, name: str, cap: Captured, out: ScoredBatch) -> None:
        """Module `name`'s scores, self-influence and index rows of one batch added to `out`."""
        rot = self.curvature.rotated(name, cap) if self.needs_self_influence else None
        s = self._module_scores(name, cap, rot)
        out.scores = s if out.scores is None else out.scores + s
        if rot is not None:
            si = self._self_influence(name, rot, out.index)
            out.self_influence = si if out.self_influence is None else out.self_influence + si

    def _module_scores(self, name: str, cap: Captured, rot: torch.Tensor | None) -> torch.Tensor:
        """Module `name`'s (B, S) scores: dense seeds kept in the eigenbasis against the candidates' rotated
        gradients `rot`; otherwise from the candidates' gradients or tokens. Low-rank seeds, kept in the weights'
        coordinates, meet a module that works from its gradient through `rot` turned back when `rot` is there
        (the one route for a fresh capture and for one that keeps only its rotation: the same bits; B d_out d_in
        (d_out + d_in) a batch, where rotating the seeds' factors would cost S r (d_out^2 + d_in^2)), and its
        tokens where it works from them."""
        if name in self.seeds.dense:
            in_basis = self.seeds.eigenbasis or not self.curvature.preconditions  # no curvature: the same coordinates
            grad = rot if rot is not None and in_basis else cap.gradient(name)
            grad = per_example_gradient(cap.acts[name], cap.grads[name]) if grad is None else grad
            return grad.flatten(1) @ self.seeds.dense[name].flatten(1).T
        left, right = self.seeds.left[name], self.seeds.right[name]
        if rot is not None and cap.works_from_gradient(name):
            return low_rank_scores_from_gradient(self.curvature.rotate_back(name, rot), left, right)
        grad = cap.gradient(name)
        if grad is not None:
            return low_rank_scores_from_gradient(grad, left, right)
        return self._low_rank_scores(name, cap.acts[name], cap.grads[name])

    def _self_influence(self, name: str, rot: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """<G, (F + lambda)^-1 G> per example from its gradient in the eigenbasis; the whitened G projected into
        `index` on the way when given."""
        whitened = self.curvature.whitened(name, rot, self.dampings[name])
        if index is not None:
            index += self.projection.project(name, whitened)
        return squared_norms(whitened)

    def _low_rank_scores(self, name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """sum_t (g_t^T U_s)(W_s^T a_t) over rank and tokens: 2 S r (d_in + d_out) a token, no dense gradient."""
        u, w = self.seeds.left[name], self.seeds.right[name]  # (S, d_out, r), (S, d_in, r)
        n_s, _, r = u.shape
        gu = g @ u.permute(1, 0, 2).reshape(u.shape[1], n_s * r)  # (B, T, S*r)
        aw = a @ w.permute(1, 0, 2).reshape(w.shape[1], n_s * r)
        return (gu * aw).sum(1).view(-1, n_s, r).sum(-1)

    def scale(self, self_inf: torch.Tensor | None) -> torch.Tensor | None:
        """Per-(candidate, seed) divisor of the chosen normalisation, or None for raw scores."""
        if self.normalize == "none":
            return None
        return normalisation_divisor(self_inf, self.seeds.self_influence.to(self_inf.device), self.normalize)

    def __call__(self, cap: Captured, carried: ScoredBatch | None = None) -> ScoredBatch:
        """Normalised scores (B, S), self-influence (B,) and index rows of one captured batch (`carried`: see
        raw_scores)."""
        return self.normalised(self.raw_scores(cap, carried))

    def normalised(self, out: ScoredBatch) -> ScoredBatch:
        """Raw scores divided by the chosen normalisation (in place)."""
        div = self.scale(out.self_influence)
        if div is not None:
            out.scores = torch.where(div > 0, out.scores / div.clamp(min=1e-30), torch.zeros_like(out.scores))
        return out


def low_rank_scores_from_gradient(grad: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """<G, U_s W_s^T> = sum over rank of U_s^T G W_s from per-example gradients G (B, d_out, d_in) and seed factors
    U (S, d_out, r), W (S, d_in, r), both in one basis: S r d_out d_in an example, cheaper than the tokens' route
    where G is smaller than the tokens."""
    n_s, d_out, r = u.shape
    gw = grad @ w.permute(1, 0, 2).reshape(w.shape[1], n_s * r)  # (B, d_out, S*r)
    return (gw * u.permute(1, 0, 2).reshape(d_out, n_s * r)).sum(1).view(-1, n_s, r).sum(-1)


def normalisation_divisor(cand_self, seed_self, normalize: str):
    """What raw influence is divided by, per (candidate, seed), from the self-influences <g, (F + lambda)^-1 g>
    (torch tensors or numpy arrays): unit, both norms (a cosine in the preconditioned metric); relatif, the
    candidate's norm (RelatIF); none, nothing (None). A zero divisor means a zero gradient: its score is 0."""
    if normalize == "none":
        return None
    cand = _norm(cand_self)[:, None]
    if normalize == "relatif":
        return cand
    return cand * _norm(seed_self)[None, :]


def _norm(self_influence):
    if isinstance(self_influence, torch.Tensor):
        return self_influence.clamp(min=0).sqrt()
    return np.sqrt(np.clip(self_influence, 0, None))


def token_contributions(cap: Captured, directions: dict[str, torch.Tensor]) -> torch.Tensor:
    """c_t = sum_modules g_t^T V a_t for the first example of `cap`, with V the preconditioned direction per
    module (one seed's, or a mean over seeds); sums to that example's raw score. Returns (T,) (padding gives 0)."""
    total = None
    for name, v in directions.items():
        a, g = cap.acts[name][0], cap.grads[name][0]  # (T, d_in), (T, d_out)
        c = ((g @ v.to(a.device)) * a).sum(-1)
        total = c if total is None else total + c
    return total
