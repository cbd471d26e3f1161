"""K-FAC / EK-FAC / identity curvature of DESIGN section 1, fitted from streamed (a_t, g_t) captures.

A = sum a a^T / n_tokens,  G = sum g g^T / N,  eigendecomposed;
KFAC Lambda = e_G e_A^T;  EK-FAC Lambda = mean_z (Q_G^T grad_W L(z) Q_A)^2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gdig.atomic import atomic_path
from gdig.distributed import SINGLE, World
from gdig.hooks import Captured, per_example_gradient
from gdig.rundir.checkpoint import FitCheckpoint
from gdig.rundir.status import Cancelled


@dataclass
class ModuleFactors:
    """One module's EK-FAC / K-FAC factors: eigenbases of A and G and the eigenvalues in their Kronecker basis."""

    q_a: torch.Tensor  # (d_in, d_in) eigenvectors of A
    e_a: torch.Tensor  # (d_in,)
    q_g: torch.Tensor  # (d_out, d_out) eigenvectors of G
    e_g: torch.Tensor  # (d_out,)
    lam: torch.Tensor  # (d_out, d_in) eigenvalues in the Kronecker eigenbasis


@dataclass
class Curvature:
    """The fitted curvature of every tracked module, and (F + lambda)^-1 applied to gradients."""

    kind: str  # ekfac | kfac | identity
    modules: dict[str, ModuleFactors] = field(default_factory=dict)
    n_examples: int = 0
    n_tokens: int = 0

    def damping(self, name: str, absolute: float | None, relative: float | None) -> float:
        """lambda for a module: absolute, or relative * mean(Lambda)."""
        if self.kind == "identity":
            return 0.0
        if absolute is not None:
            return float(absolute)
        return float(relative) * float(self.modules[name].lam.mean())

    def precondition(self, name: str, v: torch.Tensor, damping: float) -> torch.Tensor:
        """(F + lambda)^-1 v for gradients v of shape (..., d_out, d_in)."""
        if self.kind == "identity":
            return v
        f = self.modules[name]
        q_g, q_a = f.q_g.to(v.device), f.q_a.to(v.device)
        rot = q_g.T @ v @ q_a
        rot = rot / (f.lam.to(v.device) + damping)
        return q_g @ rot @ q_a.T

    def precondition_rotated(self, name: str, a: torch.Tensor, g: torch.Tensor, damping: float):
        """(F + lambda)^-1 G for G = sum_t g_t a_t^T, kept in the eigenbasis (the caller rotates back: Q_G X Q_A^T),
        rotated by the cheaper route (tokens first for short examples: T (d_in^2 + d_out^2) instead of
        d_out d_in (d_in + d_out)). a: (c, T, d_in), g: (c, T, d_out). Returns X (c, d_out, d_in) and
        <G, (F + lambda)^-1 G> (c,)."""
        f = self.modules[name]
        rot = self.rotated_gradient(name, a, g)
        x = rot / (f.lam.to(rot.device) + damping)
        return x, (rot * x).sum((-2, -1))

    def rotate(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """Q_G^T V Q_A: gradients in the module's Kronecker eigenbasis."""
        f = self.modules[name]
        return f.q_g.T.to(v.device) @ v @ f.q_a.to(v.device)

    def rotate_tokens(self, name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Q_G^T G Q_A per example for G = sum_t g_t a_t^T, rotating the T tokens before the sum."""
        f = self.modules[name]
        return per_example_gradient(a @ f.q_a.to(a.device), g @ f.q_g.to(g.device))

    def rotated_gradient(self, name: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Q_G^T G Q_A per example, by whichever route is cheaper (tokens first, or the dense gradient)."""
        if tokens_cheaper(a.shape[1], a.shape[-1], g.shape[-1]):
            return self.rotate_tokens(name, a, g)
        return self.rotate(name, per_example_gradient(a, g))

    def whiten(self, name: str, v: torch.Tensor, damping: float) -> torch.Tensor:
        """(F + lambda)^(-1/2) v in the module's eigenbasis, (Q_G^T v Q_A) / sqrt(Lambda + lambda), for gradients
        (..., d_out, d_in): two whitened gradients' dot product is their raw influence (DESIGN: the index). With no
        curvature, the gradient itself."""
        if self.kind == "identity":
            return v
        return self.rotate(name, v) / (self.modules[name].lam.to(v.device) + damping).sqrt()

    def whiten_tokens(self, name: str, a: torch.Tensor, g: torch.Tensor, damping: float) -> torch.Tensor:
        """`whiten` of G = sum_t g_t a_t^T per example, from the tokens (B, T, d_in), (B, T, d_out), rotated by the
        cheaper route."""
        if self.kind == "identity":
            return per_example_gradient(a, g)
        rot = self.rotated_gradient(name, a, g)
        return rot / (self.modules[name].lam.to(rot.device) + damping).sqrt()

    def self_influence(self, name: str, v: torch.Tensor, damping: float) -> torch.Tensor:
        """<v, (F + lambda)^-1 v> for a batch of gradients (..., d_out, d_in)."""
        if self.kind == "identity":
            return (v * v).sum((-2, -1))
        f = self.modules[name]
        rot = self.rotate(name, v)
        return (rot * rot / (f.lam.to(v.device) + damping)).sum((-2, -1))

    def self_influence_tokens(self, name: str, a: torch.Tensor, g: torch.Tensor, damping: float) -> torch.Tensor:
        """<G, (F + lambda)^-1 G> per example for G = sum_t g_t a_t^T, from the tokens (B, T, d_in), (B, T, d_out):
        the rotation is applied to the tokens when that is cheaper than to the dense gradient."""
        if self.kind == "identity":
            return self.self_influence(name, per_example_gradient(a, g), damping)
        rot = self.rotated_gradient(name, a, g)
        return (rot * rot / (self.modules[name].lam.to(rot.device) + damping)).sum((-2, -1))

    # -- persistence (safetensors, never pickle) ---------------------------------------------------------------
    def save(self, path: str | Path, fingerprint: str) -> None:
        """Write the factors as safetensors (never pickle) with the fingerprint that makes them reusable."""
        tensors = {}
        for name, f in self.modules.items():
            for key in ("q_a", "e_a", "q_g", "e_g", "lam"):
                tensors[f"{name}::{key}"] = getattr(f, key).detach().float().contiguous().cpu()
        meta = {
            "kind": self.kind,
            "fingerprint": fingerprint,
            "n_examples": str(self.n_examples),
            "n_tokens": str(self.n_tokens),
            "modules": json.dumps(list(self.modules)),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Curvature:
        """Factors written by save, onto `device`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
        cur = cls(meta["kind"], n_examples=int(meta["n_examples"]), n_tokens=int(meta["n_tokens"]))
        for name in json.loads(meta["modules"]):
            cur.modules[name] = ModuleFactors(
                **{k: tensors[f"{name}::{k}"] for k in ("q_a", "e_a", "q_g", "e_g", "lam")}
            )
        return cur


class CovarianceFitter:
    """Accumulates A and G over captured batches (first pass)."""

    def __init__(self, dims: dict[str, tuple[int, int]], device: torch.device):
        self.a = {n: torch.zeros(di, di, dtype=torch.float64, device=device) for n, (di, do) in dims.items()}
        self.g = {n: torch.zeros(do, do, dtype=torch.float64, device=device) for n, (di, do) in dims.items()}
        self.n_tokens = 0
        self.n_examples = 0
        self._device = device

    def update(self, cap: Captured) -> None:
        """Add one captured batch's a a^T (per target token) and g g^T (per example)."""
        self.n_tokens += int(cap.mask.sum())
        self.n_examples += len(cap.index)
        for name in self.a:
            a = cap.acts[name].reshape(-1, cap.acts[name].shape[-1])
            g = cap.grads[name].reshape(-1, cap.grads[name].shape[-1])
            self.a[name] += (a.T @ a).double()
            self.g[name] += (g.T @ g).double()

    def state(self) -> dict[str, torch.Tensor]:
        """The partial sums and counts, for a checkpoint (exact: float64 as accumulated)."""
        return (
            {f"a::{n}": v for n, v in self.a.items()}
            | {f"g::{n}": v for n, v in self.g.items()}
            | {"counts": torch.tensor([self.n_tokens, self.n_examples], dtype=torch.int64, device=self._device)}
        )

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from sums saved by a checkpoint."""
        for n in self.a:
            self.a[n].copy_(state[f"a::{n}"])
            self.g[n].copy_(state[f"g::{n}"])
        self.n_tokens, self.n_examples = (int(x) for x in state["counts"].tolist())

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Add sums over other batches (another rank's checkpoint)."""
        for n in self.a:
            self.a[n] += state[f"a::{n}"].to(self.a[n].device)
            self.g[n] += state[f"g::{n}"].to(self.g[n].device)
        tokens, examples = (int(x) for x in state["counts"].tolist())
        self.n_tokens, self.n_examples = self.n_tokens + tokens, self.n_examples + examples

    def eigendecompose(self, kind: str, names=None, release: bool = False) -> Curvature:
        """A and G from the sums, eigendecomposed (all modules, or `names`; the others get empty factors of their
        shapes): K-FAC, or the basis of EK-FAC's second pass. `release`: drop each module's float64 sums once
        its factors are made (the fit no longer needs them), so the peak is the sums, not sums plus factors."""
        cur = Curvature(kind, n_examples=self.n_examples, n_tokens=self.n_tokens)
        for name in list(self.a):
            a_sum, g_sum = (self.a.pop(name), self.g.pop(name)) if release else (self.a[name], self.g[name])
            if names is not None and name not in names:
                d_in, d_out = a_sum.shape[0], g_sum.shape[0]
                z = lambda *shape: torch.empty(*shape, device=self._device)  # noqa: E731
                cur.modules[name] = ModuleFactors(z(d_in, d_in), z(d_in), z(d_out, d_out), z(d_out), z(d_out, d_in))
                continue
            e_a, q_a = torch.linalg.eigh(a_sum / max(self.n_tokens, 1))
            e_g, q_g = torch.linalg.eigh(g_sum / max(self.n_examples, 1))
            del a_sum, g_sum
            e_a, e_g = e_a.clamp(min=0), e_g.clamp(min=0)
            lam = torch.outer(e_g, e_a)  # K-FAC eigenvalues; EK-FAC replaces them in a second pass
            # eigh's vectors come column-major: made contiguous, so every consumer (a broadcast too) sees one layout
            factors = (t.float().contiguous() for t in (q_a, e_a, q_g, e_g, lam))
            cur.modules[name] = ModuleFactors(*factors)
        return cur


def tokens_cheaper(tokens: int, d_in: int, d_out: int) -> bool:
    """Whether rotating T tokens into the eigenbasis (T (d_in^2 + d_out^2)) costs less than rotating the dense
    gradient (d_out d_in (d_in + d_out)): true for long layers and short examples, e.g. LLM MLPs."""
    return tokens * (d_out * d_out + d_in * d_in) < d_out * d_in * (d_out + d_in)


class EigenCorrectionFitter:
    """Second pass of EK-FAC: Lambda = mean over examples of the squared rotated per-example gradient."""

    def __init__(self, curvature: Curvature):
        self.cur = curvature
        self.sums = {n: torch.zeros_like(f.lam, dtype=torch.float64) for n, f in curvature.modules.items()}
        self.n_examples = 0

    def update(self, cap: Captured) -> None:
        """Add one batch's squared per-example gradients in the eigenbasis."""
        self.n_examples += len(cap.index)
        for name in self.cur.modules:
            rot = self.cur.rotated_gradient(name, cap.acts[name], cap.grads[name])
            self.sums[name] += (rot * rot).sum(0).double()

    def state(self) -> dict[str, torch.Tensor]:
        """The running sums, for a checkpoint."""
        device = next(iter(self.sums.values())).device
        counts = torch.tensor([self.n_examples], device=device)
        return {f"lam::{n}": v for n, v in self.sums.items()} | {"counts": counts}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from sums saved by a checkpoint."""
        for n in self.sums:
            self.sums[n].copy_(state[f"lam::{n}"])
        self.n_examples = int(state["counts"][0])

    def merge(self, state: dict[str, torch.Tensor]) -> None:
        """Add sums over other batches (another rank's checkpoint)."""
        for n in self.sums:
            self.sums[n] += state[f"lam::{n}"].to(self.sums[n].device)
        self.n_examples += int(state["counts"][0])

    def finish(self) -> Curvature:
        """EK-FAC: the eigenvalues replaced by the mean squared gradient in the eigenbasis."""
        for name, f in self.cur.modules.items():
            f.lam = (self.sums[name] / max(self.n_examples, 1)).float()
        return self.cur


def _run_pass(stage: str, fitter, passes: Callable, costs: Sequence[float], checkpoint, world: World, waiting) -> None:
    """One pass over the fit set into `fitter`: this rank's share (by cost) of the batches no checkpoint covers,
    resumable through `checkpoint`, then the sums of every rank added up (float64) on every rank."""
    covered = checkpoint.restore(stage, fitter, len(costs)) if checkpoint else np.zeros(len(costs), bool)
    todo = [b for b in range(len(costs)) if not covered[b]]
    mine = [todo[p] for p in world.mine([costs[b] for b in todo])]
    restored = np.flatnonzero(covered).tolist() if world.is_main else []
    if not world.is_main:
        covered = np.zeros(len(costs), bool)  # rank 0 holds the restored sums; the others only their own
    try:
        for batch, cap in passes(stage, mine, restored):
            fitter.update(cap)
            covered[batch] = True
            if checkpoint:
                checkpoint.maybe_save(stage, fitter, covered)
    except Cancelled:  # raised between batches: the sums are whole, keep them for --resume
        if checkpoint:
            checkpoint.save(stage, fitter, covered)
        raise
    if checkpoint and world.active:  # this rank's share is done: keep it, whoever fails while the others finish
        checkpoint.save(stage, fitter, covered)
    state = fitter.state()
    world.all_reduce(state.values(), f"adding up the {stage} sums", waiting)
    fitter.restore(state)


def fit_curvature(
    kind: str,
    dims: dict[str, tuple[int, int]],
    passes: Callable[[str, list[int], list[int]], Iterable[tuple[int, Captured]]],
    costs: Sequence[float],
    device: torch.device,
    checkpoint: FitCheckpoint | None = None,
    world: World = SINGLE,
    waiting: Callable[[], None] | None = None,
) -> Curvature:
    """Fit from `passes(stage, batches, restored)`, which yields (batch, Captured) for the listed batches of the
    fit set (`costs`: one per batch, e.g. its tokens; `restored`: those a checkpoint already covers); it is
    called once per pass needed ("fit_covariance", then "fit_eigen" for EK-FAC). With several processes each
    fits its share of the batches, the float64 sums are added up, and each module is eigendecomposed once (by
    one rank, the modules shared by cost) and broadcast, so every rank preconditions with the same bases
    (`waiting` is called while a rank waits for the others)."""
    if kind == "identity":
        return Curvature("identity")
    cov = CovarianceFitter(dims, device)
    _run_pass("fit_covariance", cov, passes, costs, checkpoint, world, waiting)
    if checkpoint and kind == "ekfac" and world.is_main:  # the second pass builds on it: keep it whole
        checkpoint.save("fit_covariance", cov, np.ones(len(costs), bool))
        checkpoint.remove_others("fit_covariance")
    cur = _shared_eigendecomposition(cov, kind, dims, world)
    if kind == "ekfac":
        corr = EigenCorrectionFitter(cur)
        _run_pass("fit_eigen", corr, passes, costs, checkpoint, world, waiting)
        cur = corr.finish()
        world.broadcast([f.lam for f in cur.modules.values()], 0, "sharing the EK-FAC eigenvalues")
    return cur


def _shared_eigendecomposition(cov: CovarianceFitter, kind: str, dims: dict[str, tuple[int, int]], world: World):
    """Each module's eigendecomposition made by one rank (the modules shared by their cost, d^3 per side) and
    broadcast from it: once per module, in parallel across ranks."""
    names = list(dims)
    owners = world.owners([d_in**3 + d_out**3 for d_in, d_out in dims.values()])
    cur = cov.eigendecompose(kind, {n for n, r in zip(names, owners, strict=True) if r == world.rank}, release=True)
    for name, owner in zip(names, owners, strict=True):
        f = cur.modules[name]
        world.broadcast([f.q_a, f.e_a, f.q_g, f.e_g, f.lam], owner, "sharing the eigendecomposition")
    return cur
