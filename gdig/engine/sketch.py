"""Gradient sketches for diversity (DESIGN section 1): per module P_out^T grad_W L(z) P_in, concatenated, L2-normed.

Computed from a_t and g_t without forming grad_W, sum_t (P_out^T g_t)(P_in^T a_t)^T, or from grad_W where a capture
holds it (hooks.keeps_gradient).
"""

from __future__ import annotations

import math

import torch

from gdig.engine.curvature import left_multiply
from gdig.engine.hooks import Captured


def module_sketch_shape(d_in: int, d_out: int, per_module: int) -> tuple[int, int]:
    """(k_out, k_in) with k_out * k_in <= per_module, as square as the layer allows."""
    k_in = max(1, min(d_in, int(math.isqrt(max(per_module, 1)))))
    k_out = max(1, min(d_out, per_module // k_in))
    return k_out, k_in


class Sketcher:
    """Fixed random projections per module, applied to captured a_t and g_t in the scoring pass."""

    def __init__(self, dims: dict[str, tuple[int, int]], sketch_dim: int, random_state: int, device: torch.device):
        per_module = max(1, sketch_dim // max(len(dims), 1))
        gen = torch.Generator().manual_seed(random_state)
        self.p_in: dict[str, torch.Tensor] = {}
        self.p_out: dict[str, torch.Tensor] = {}
        for name, (d_in, d_out) in dims.items():
            k_out, k_in = module_sketch_shape(d_in, d_out, per_module)
            self.p_in[name] = (torch.randn(d_in, k_in, generator=gen) / math.sqrt(k_in)).to(device)
            self.p_out[name] = (torch.randn(d_out, k_out, generator=gen) / math.sqrt(k_out)).to(device)
        self.dim = sum(self.p_in[n].shape[1] * self.p_out[n].shape[1] for n in dims)

    def __call__(self, cap: Captured) -> torch.Tensor:
        """The batch's sketches (B, dim), L2-normed."""
        return self.normed(self.parts(cap, list(self.p_in)))

    def parts(self, cap: Captured, names: list[str]) -> torch.Tensor:
        """The columns of modules `names` (consecutive, in module order), not yet normed: a run that captures its
        modules in groups concatenates them, then norms the whole."""
        parts = []
        for name in names:
            grad = cap.gradient(name)
            if grad is not None:  # P_out^T G P_in
                parts.append(left_multiply(self.p_out[name].T, grad @ self.p_in[name]).flatten(1))
                continue
            ga = cap.grads[name] @ self.p_out[name]  # (B, T, k_out)
            aa = cap.acts[name] @ self.p_in[name]  # (B, T, k_in)
            parts.append(torch.bmm(ga.transpose(1, 2), aa).flatten(1))
        return torch.cat(parts, dim=1)

    @staticmethod
    def normed(sketch: torch.Tensor) -> torch.Tensor:
        """Each row divided by its L2 norm."""
        return sketch / sketch.norm(dim=1, keepdim=True).clamp(min=1e-30)
