"""Preconditioned seed gradients (DESIGN section 1): each seed's V_s = (F + lambda)^-1 grad L(s), built one (module,
seed chunk) at a time, dense or as a low-rank factorisation. Where the curvature has an eigenbasis, dense seeds are
kept there, X_s = Q_G^T V_s Q_A (DESIGN section 7: scoring contracts candidates in the eigenbasis), which spares
rotating every seed back (four products a column where a low-rank seed's factors take r columns each);
`SeedGradients.to_weights` turns them back when a consumer needs the weights' coordinates.
Scoring candidates against them is gdig.engine.influence."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdig.engine.curvature import Curvature
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
    eigenbasis: bool = False  # dense seeds stored as X_s = Q_G^T V_s Q_A, in their curvature's basis (never factors)

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

    def to_weights(self, curvature: Curvature) -> SeedGradients:
        """The dense seeds rotated back to the weights' coordinates, in place (a block of columns at a time), when
        they are kept in the eigenbasis of `curvature`; itself."""
        if not self.eigenbasis:
            return self
        for name, v in self.dense.items():
            for block in column_blocks(*v.shape):
                v[block] = curvature.rotate_back(name, v[block])
        self.eigenbasis = False
        return self

    def matrix(self, name: str, seed: int | None = None) -> torch.Tensor:
        """Dense V for one seed (column) or, with seed=None, the mean over seeds (seeds in the weights'
        coordinates; see to_weights)."""
        if self.eigenbasis:
            raise ValueError("these seeds are kept in the eigenbasis: turn them back with to_weights(curvature)")
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
        """Seed columns start .. start + len(grads) of module `name`: their gradients (c, d_out, d_in),
        preconditioned in the eigenbasis (add_gradients) or, with no curvature, kept as they are."""
        if self.curvature.preconditions:
            self.add_gradients(name, start, grads)
            return
        cols = slice(start, start + grads.shape[0])
        self.out.self_influence[cols] += (grads * grads).sum((-2, -1))
        if self.projection is not None:
            self.out.index[cols] += self.projection.project(name, grads)
        self._store(name, cols, grads)

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
        """Seed columns from their gradients already in the eigenbasis (c, d_out, d_in), preconditioned there,
        X = rot / (Lambda + lambda): a dense module's kept there; a low-rank module's factorised there and only
        its factors rotated back."""
        cols = slice(start, start + rot.shape[0])
        x = rot / (self.curvature.modules[name].lam.to(rot.device) + self.dampings[name])
        self.out.self_influence[cols] += (rot * x).sum((-2, -1))
        if self.projection is not None:  # (F + lambda)^(-1/2) G = sqrt(Lambda + lambda) X in the eigenbasis
            whitened = x * (self.curvature.modules[name].lam.to(x.device) + self.dampings[name]).sqrt()
            self.out.index[cols] += self.projection.project(name, whitened)
        self._store(name, cols, x, self.curvature)

    def _store(self, name: str, cols: slice, v: torch.Tensor, basis: Curvature | None = None) -> None:
        """Columns `cols` of module `name`: dense, or their best rank-r factors (the error recorded), turned
        from the eigenbasis of `basis` to the weights' coordinates."""
        if name in self.out.dense:
            self.out.dense[name][cols] = v
            return
        u, s, w = low_rank(v, self.ranks[name])
        left, right = u * s[..., None, :], w
        if basis is not None:
            left, right = basis.rotate_back_factors(name, left, right)
        self.out.left[name][cols], self.out.right[name][cols] = left, right
        self._record_loss(name, cols, v, s)

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
        self.out.eigenbasis = self.curvature.preconditions
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


def mean_seed_direction(
    seeds: SeedGradients, normalize: str, curvature: Curvature | None = None
) -> dict[str, torch.Tensor]:
    """Per module the mean over seed columns of V_s (each divided by its seed's norm under unit normalisation, so
    that its contraction with a candidate is the candidate's mean score), in the weights' coordinates (seeds kept
    in the eigenbasis of `curvature`: the mean taken there, then rotated back once): what token explanations keep
    of the seeds, one seed's worth of bytes; a single column is recomputed on demand."""
    if seeds.eigenbasis and curvature is None:
        raise ValueError("seeds kept in the eigenbasis need their curvature to give their mean direction")
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
        if seeds.eigenbasis and name in seeds.dense:
            out[name] = curvature.rotate_back(name, out[name])
    return out
