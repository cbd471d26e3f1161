"""Influence of candidates on seeds (DESIGN section 1): I(z, s) = <grad L(s), (F + lambda)^-1 grad L(z)>.

Seeds are preconditioned once and kept in memory, dense or as a low-rank factorisation; candidates are then
scored batch by batch from their captured a_t and g_t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gdig.engine.curvature import Curvature
from gdig.engine.hooks import Captured, per_example_gradient
from gdig.engine.memory import column_blocks, keeps_dense


@dataclass
class SeedGradients:
    """Preconditioned seed gradients V_s per module: dense (S, d_out, d_in) or U (S, d_out, r), W (S, d_in, r)."""

    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    left: dict[str, torch.Tensor] = field(default_factory=dict)
    right: dict[str, torch.Tensor] = field(default_factory=dict)
    self_influence: torch.Tensor | None = None  # (S,) <grad L(s), (F + lambda)^-1 grad L(s)>
    lowrank_error: dict[str, dict[str, float]] = field(default_factory=dict)
    index: torch.Tensor | None = None  # (S, k) projected whitened gradients (gdig.engine.index), when the run keeps one

    @property
    def names(self) -> list[str]:
        """The modules the seeds are stored for, dense and low-rank (a rank can keep small modules dense)."""
        return [*self.dense, *self.left]

    @property
    def n_seeds(self) -> int:
        """Number of seed columns (seeds, or seed groups with --seed-batch)."""
        if self.self_influence is not None:
            return self.self_influence.shape[0]
        return next(iter((self.dense or self.left).values())).shape[0]

    def matrix(self, name: str, seed: int | None = None) -> torch.Tensor:
        """Dense V for one seed (column) or, with seed=None, the mean over seeds."""
        if name in self.dense:
            v = self.dense[name]
            return v.mean(0) if seed is None else v[seed]
        u, w = self.left[name], self.right[name]
        if seed is None:
            return torch.einsum("sor,sir->oi", u, w) / u.shape[0]
        return u[seed] @ w[seed].T


def group_seed_gradients(grads: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Average consecutive seeds in groups of k (the official G-DIG code's seed batches)."""
    if k == 1:
        return grads
    out = {}
    for name, g in grads.items():
        out[name] = torch.stack([chunk.mean(0) for chunk in torch.split(g, k, dim=0)])
    return out


class SeedBuilder:
    """Preconditioned seed gradients built one (module, seed chunk) at a time: each chunk is preconditioned,
    added to the seeds' self-influence and, where the module is kept at low rank, factorised at once, so the
    seeds are never all held dense. Storage is allocated once, at its final size."""

    def __init__(
        self,
        dims: dict[str, tuple[int, int]],
        n_columns: int,
        curvature: Curvature,
        dampings: dict[str, float],
        ranks: dict[str, int | None],
        device: torch.device | str = "cpu",
        projection=None,
        carried: SeedGradients | None = None,
    ):
        """`carried`: the seeds of the modules before these (a run in module groups), whose self-influence and
        index rows are added to in module order, as one pass over every module would."""
        self.curvature, self.dampings, self.ranks, self.projection = curvature, dampings, ranks, projection
        self.out = SeedGradients(self_influence=torch.zeros(n_columns, device=device))
        if projection is not None:
            self.out.index = projection.empty(n_columns, device)
        if carried is not None:
            self.out.self_influence.copy_(carried.self_influence)
            if projection is not None:
                self.out.index.copy_(carried.index)
        self._lost = {}  # per low-rank module: squared norm truncated away, and the whole squared norm, per seed
        for name, (d_in, d_out) in dims.items():
            r = ranks.get(name)
            if keeps_dense(r, d_in, d_out):
                self.out.dense[name] = torch.zeros(n_columns, d_out, d_in, device=device)
            else:
                self.out.left[name] = torch.zeros(n_columns, d_out, r, device=device)
                self.out.right[name] = torch.zeros(n_columns, d_in, r, device=device)
                self._lost[name] = (
                    torch.zeros(n_columns, dtype=torch.float64, device=device),
                    torch.zeros(n_columns, dtype=torch.float64, device=device),
                )

    def add(self, name: str, start: int, grads: torch.Tensor) -> None:
        """Seed columns start .. start + len(grads) of module `name`: their gradients (c, d_out, d_in)."""
        cols = slice(start, start + grads.shape[0])
        v = self.curvature.precondition(name, grads, self.dampings[name])
        self.out.self_influence[cols] += (grads * v).sum((-2, -1))
        if self.projection is not None:
            whitened = self.curvature.whiten(name, grads, self.dampings[name])
            self.out.index[cols] += self.projection.project(name, whitened)
        if name in self.out.dense:
            self.out.dense[name][cols] = v
            return
        u, s, w = low_rank(v, self.ranks[name])
        self.out.left[name][cols] = u * s[..., None, :]
        self.out.right[name][cols] = w
        self._record_loss(name, cols, v, s)

    def add_tokens(self, name: str, start: int, a: torch.Tensor, g: torch.Tensor) -> None:
        """Seed columns from their tokens (a: (c, T, d_in), g: (c, T, d_out)), rotated into the eigenbasis by the
        cheaper route and preconditioned there (add_rotated), a block of columns at a time (column_blocks)."""
        for block in column_blocks(a.shape[0], g.shape[-1], a.shape[-1]):
            self.add_rotated(name, start + block.start, self.curvature.rotated_gradient(name, a[block], g[block]))

    def add_gradients(self, name: str, start: int, grads: torch.Tensor) -> None:
        """Seed columns from their gradients (c, d_out, d_in), rotated once and preconditioned in the eigenbasis
        (add_rotated): the route of a module that keeps its per-example gradient (hooks.keeps_gradient); a block
        of columns at a time (column_blocks)."""
        for block in column_blocks(*grads.shape):
            self.add_rotated(name, start + block.start, self.curvature.rotate(name, grads[block]))

    def add_rotated(self, name: str, start: int, rot: torch.Tensor) -> None:
        """Seed columns from their gradients already in the eigenbasis (c, d_out, d_in), preconditioned there: a
        dense module's columns are rotated back (two products a column instead of four); a low-rank module's are
        factorised there and only the factors rotated back."""
        cols = slice(start, start + rot.shape[0])
        x = rot / (self.curvature.modules[name].lam.to(rot.device) + self.dampings[name])
        self.out.self_influence[cols] += (rot * x).sum((-2, -1))
        if self.projection is not None:  # (F + lambda)^(-1/2) G = sqrt(Lambda + lambda) X in the eigenbasis
            whitened = x * (self.curvature.modules[name].lam.to(x.device) + self.dampings[name]).sqrt()
            self.out.index[cols] += self.projection.project(name, whitened)
        if name in self.out.dense:
            self.out.dense[name][cols] = self.curvature.rotate_back(name, x)
            return
        u, s, w = low_rank(x, self.ranks[name])
        left, right = self.curvature.rotate_back_factors(name, u * s[..., None, :], w)
        self.out.left[name][cols], self.out.right[name][cols] = left, right
        self._record_loss(name, cols, x, s)

    def _record_loss(self, name: str, cols: slice, v: torch.Tensor, s: torch.Tensor) -> None:
        whole = v.double().square_().sum((-2, -1))  # Frobenius norms do not change with the rotation
        kept = (s.double() ** 2).sum(-1)
        self._lost[name][0][cols] = (whole - kept).clamp(min=0)
        self._lost[name][1][cols] = whole

    def column_views(self, cols: slice) -> list[torch.Tensor]:
        """Every stored tensor's rows for seed columns `cols` (views, contiguous: what a broadcast fills in)."""
        views = [self.out.self_influence[cols]] + ([self.out.index[cols]] if self.out.index is not None else [])
        for store in (self.out.dense, self.out.left, self.out.right):
            views += [store[name][cols] for name in sorted(store)]
        return views + [part[cols] for name in sorted(self._lost) for part in self._lost[name]]

    def takes_tokens(self, name: str) -> bool:
        """Whether module `name`'s columns are preconditioned in the eigenbasis, from their tokens (add_tokens)
        or from the per-example gradients their capture keeps (add_gradients): with any curvature; with none,
        preconditioning is nothing and the per-example gradient is what is kept (add)."""
        return self.curvature.preconditions

    def finish(self) -> SeedGradients:
        """The seeds, with each low-rank module's relative truncation error (Frobenius, max and mean over seeds)."""
        for name, (lost, whole) in self._lost.items():
            rel = (lost / whole.clamp(min=1e-30)).sqrt()
            self.out.lowrank_error[name] = {"max": float(rel.max()), "mean": float(rel.mean())}
        return self.out


def low_rank(v: torch.Tensor, rank: int, oversample: int = 8, power_iterations: int = 2):
    """Best rank-r factors (U, S, W) of each matrix in v (..., m, n), V ~ U diag(S) W^T, by a randomised SVD
    (Halko et al.: a Gaussian range finder with power iterations, batched, a fixed seed so a run is
    reproducible). Exact when r + oversample covers the smaller side. U diag(S) W^T is the orthogonal projection
    of V on U's span, so the truncation error is exactly ||V||^2 - ||S||^2. (torch.linalg.svd and
    torch.svd_lowrank on a batch of 1536 x 576 matrices took 30-50 times longer on CPU: the old seed stage's cost.)"""
    q = min(rank + oversample, *v.shape[-2:])
    gen = torch.Generator(device=v.device).manual_seed(0)
    omega = torch.randn(v.shape[-1], q, generator=gen, device=v.device, dtype=v.dtype)
    basis, _ = torch.linalg.qr(v @ omega)
    for _ in range(power_iterations):
        right, _ = torch.linalg.qr(v.transpose(-2, -1) @ basis)
        basis, _ = torch.linalg.qr(v @ right)
    u_small, s, vh = torch.linalg.svd(basis.transpose(-2, -1) @ v, full_matrices=False)
    return (basis @ u_small)[..., :rank], s[..., :rank], vh[..., :rank, :].transpose(-2, -1)


def precondition_seeds(
    grads: dict[str, torch.Tensor], curvature: Curvature, dampings: dict[str, float], rank: int | None = None
) -> SeedGradients:
    """V_s = (F + lambda)^-1 grad L(s) per module for seed gradients already in memory (S, d_out, d_in);
    optionally truncated to rank r (error recorded)."""
    some = next(iter(grads.values()))
    dims = {name: (g.shape[-1], g.shape[-2]) for name, g in grads.items()}
    builder = SeedBuilder(dims, some.shape[0], curvature, dampings, dict.fromkeys(grads, rank), some.device)
    for name, g in grads.items():
        builder.add(name, 0, g)
    return builder.finish()


@dataclass
class ScoredBatch:
    """What scoring one captured batch gives: (B, S) scores, (B,) self-influence when it was needed, and the
    batch's projected whitened gradients (B, k) when the run keeps an index."""

    scores: torch.Tensor
    self_influence: torch.Tensor | None = None
    index: torch.Tensor | None = None


class Scorer:
    """Scores captured candidate batches against preconditioned seeds, with optional normalisation, and projects
    their whitened gradients into the index from the same rotation that self-influence needs."""

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

    def raw_scores(self, cap: Captured, carried: ScoredBatch | None = None) -> ScoredBatch:
        """(B, S) raw influence; self-influence (B,) when normalising or indexing; the index rows when indexing.
        `carried`: the sums over the modules before these (a run in module groups), added to in module order,
        so that the sums are the same, bit for bit, as one pass over every module."""
        out = carried or ScoredBatch(scores=None)
        if self.projection is not None and out.index is None:
            out.index = self.projection.empty(len(cap.index), cap.loss.device)
        for name in self.modules:
            grad = cap.gradient(name)
            if name in self.seeds.dense:
                grad = per_example_gradient(cap.acts[name], cap.grads[name]) if grad is None else grad
                s = grad.flatten(1) @ self.seeds.dense[name].flatten(1).T
            elif grad is not None:
                s = self._low_rank_scores_from_gradient(name, grad)
            else:
                s = self._low_rank_scores(name, cap.acts[name], cap.grads[name])
            out.scores = s if out.scores is None else out.scores + s
            if self.normalize != "none" or self.projection is not None:
                si = self._self_influence(name, cap, out.index)
                out.self_influence = si if out.self_influence is None else out.self_influence + si
        return out

    def _self_influence(self, name: str, cap: Captured, index: torch.Tensor | None):
        """<G, (F + lambda)^-1 G> per example; the whitened G projected into `index` on the way when given."""
        damping = self.dampings[name]
        if index is None:
            return self.curvature.self_influence_captured(name, cap, damping)
        whitened = self.curvature.whiten_captured(name, cap, damping)
        index += self.projection.project(name, whitened)
        return (whitened * whitened).sum((-2, -1))

    def _low_rank_scores(self, name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """sum_t (g_t^T U_s)(W_s^T a_t) over rank and tokens: 2 S r (d_in + d_out) a token, no dense gradient."""
        u, w = self.seeds.left[name], self.seeds.right[name]  # (S, d_out, r), (S, d_in, r)
        n_s, _, r = u.shape
        gu = g @ u.permute(1, 0, 2).reshape(u.shape[1], n_s * r)  # (B, T, S*r)
        aw = a @ w.permute(1, 0, 2).reshape(w.shape[1], n_s * r)
        return (gu * aw).sum(1).view(-1, n_s, r).sum(-1)

    def _low_rank_scores_from_gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """<G, U_s W_s^T> = sum over rank of U_s^T G W_s from the per-example gradient G (B, d_out, d_in):
        S r d_out d_in an example, cheaper than the tokens' route where G is smaller than the tokens."""
        u, w = self.seeds.left[name], self.seeds.right[name]  # (S, d_out, r), (S, d_in, r)
        n_s, d_out, r = u.shape
        gw = grad @ w.permute(1, 0, 2).reshape(w.shape[1], n_s * r)  # (B, d_out, S*r)
        return (gw * u.permute(1, 0, 2).reshape(d_out, n_s * r)).sum(1).view(-1, n_s, r).sum(-1)

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


def mean_seed_direction(seeds: SeedGradients, normalize: str) -> dict[str, torch.Tensor]:
    """Per module the mean over seed columns of V_s (each divided by its seed's norm under unit normalisation, so
    that its contraction with a candidate is the candidate's mean score): what token explanations keep of the
    seeds, one seed's worth of bytes; a single column is recomputed on demand."""
    self_inf = seeds.self_influence.double()
    weight = self_inf.clamp(min=0).sqrt().reciprocal() if normalize == "unit" else torch.ones_like(self_inf)
    weight = torch.where(torch.isfinite(weight), weight, torch.zeros_like(weight)) / seeds.n_seeds
    out = {}
    for name in seeds.names:
        w = weight.to(device=seeds.self_influence.device, dtype=torch.float32)
        if name in seeds.dense:
            out[name] = torch.einsum("soi,s->oi", seeds.dense[name], w)
        else:  # weights first: two operands contract as one product, three made (S, d_out, d_in) (0.9 GB at S=256)
            out[name] = torch.einsum("sor,sir->oi", seeds.left[name] * w[:, None, None], seeds.right[name])
    return out


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
