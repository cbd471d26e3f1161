"""The time a run's plan gives each stage: the model's passes from a probe's seconds per token, the tracked
modules' algebra from its floating-point operations at a probed rate, the eigendecompositions at a probed rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gdig.config import ScoreConfig
from gdig.engine.curvature_fit import gram_block_rows
from gdig.engine.memory import keeps_dense
from gdig.hessians import hessian
from gdig.hessians.base import COVARIANCE_PASS, EIGENVALUE_PASS

if TYPE_CHECKING:  # the plan calls this module
    from gdig.planning.plan import Workload


def stage_seconds(
    cfg: ScoreConfig, w: Workload, tokens: int, fit_tokens: int, reused: bool, rank: int | None
) -> dict[str, float]:
    """Seconds per stage: the model's passes from the probe's seconds per padded token, plus the per-module
    algebra of each stage (floating-point operations per token, module_flops) at the probe's rate,
    plus the factors' eigendecompositions (about 9 n^3 each, at the probe's eigh rate: on a CPU they, not the
    passes, were most of a SmolLM2 fit)."""
    if not w.seconds_per_token:
        return {}
    one_pass = w.seconds_per_token * tokens
    fit_pass = w.seconds_per_token * fit_tokens
    rate = w.flops_per_second or float("inf")
    flops = module_flops(cfg, w, rank)
    out = {}
    h = hessian(cfg.hessian)
    if h.eigendecomposes:
        eigh = sum(9 * (d_in**3 + d_out**3) for d_in, d_out in w.dims.values()) / (w.eigh_flops_per_second or rate)
        out[COVARIANCE_PASS] = fit_pass + flops["covariance"] * fit_tokens / rate + eigh
    if EIGENVALUE_PASS in h.passes:
        replay = 0.1 * fit_pass if reused and h.passes[0] != EIGENVALUE_PASS else fit_pass
        out[EIGENVALUE_PASS] = replay + flops["rotation"] * fit_tokens / rate
    seed_math = (flops["rotation"] * w.seed_tokens + flops["factorisation"] * w.n_seeds) / rate
    out["seeds"] = w.seconds_per_token * w.seed_tokens * 1.5 + seed_math
    score_pass = 0.3 * one_pass if reused and len(w.fit_set) == w.n_candidates else one_pass
    per_example = flops["score per example"] * w.n_candidates
    out["score"] = score_pass + (flops["score per token"] * tokens + per_example) / rate
    if cfg.adequacy:  # three forward passes of each candidate: about one forward and backward
        out["adequacy"] = one_pass
    return out


def module_flops(cfg: ScoreConfig, w: Workload, rank: int | None) -> dict[str, float]:
    """Floating-point operations of the tracked modules' algebra, summed over modules: per token for the
    covariance sums (a a^T, g g^T), for a rotation into the eigenbasis (EK-FAC's eigenvalue pass, the seeds'
    preconditioning, a candidate's self-influence), and for scoring against S seed columns (low rank r:
    2 S r (d_in + d_out) per token; dense: the per-example gradient per token and 2 S d_in d_out per example);
    per seed, the randomised factorisation at rank r."""
    columns = w.n_columns(cfg.seed_batch)
    h = hessian(cfg.hessian)
    out = dict.fromkeys(["covariance", "rotation", "score per token", "score per example", "factorisation"], 0.0)
    for d_in, d_out in w.dims.values():
        out["covariance"] += 2 * sum((hi - lo) * hi for d in (d_in, d_out) for lo, hi in gram_block_rows(d))
        out["rotation"] += h.rotation_flops(d_in, d_out)
        if keeps_dense(rank, d_in, d_out):
            out["score per token"] += 2 * d_in * d_out
            out["score per example"] += 2 * columns * d_in * d_out
        else:
            out["score per token"] += 2 * columns * rank * (d_in + d_out)
            out["factorisation"] += 12 * d_in * d_out * (rank + 8)  # range finder, 2 power iterations, SVD
    if cfg.normalize != "none":
        out["score per token"] += out["rotation"]
    return out
