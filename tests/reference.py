"""Independent references for the maths tests: one example at a time, plain autograd, dense float64 matrices."""

from __future__ import annotations

import numpy as np
import torch

from gdig.inputs.data import IGNORE_INDEX
from gdig.inputs.model import TrackedModule


def tiny_layer_setup(tokenizer, folder, n: int, seed: int):
    """A tiny Llama, its tracked MLP projections and n tokenized pairs: the per-layer tests' ground."""
    from conftest import make_pairs
    from gdig.atomic import write_jsonl
    from gdig.demo.tiny import build_tiny_model
    from gdig.inputs.data import load_dataset, tokenize_dataset
    from gdig.inputs.model import find_tracked_modules

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=24, heads=2)
    toks, _ = tokenize_dataset(tokenizer, load_dataset(write_jsonl(folder / "cands.jsonl", make_pairs(n, seed))), 512)
    return model, find_tracked_modules(model), toks


def example_loss(model, ids: list[int], labels: list[int]) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens of one unpadded example."""
    x = torch.tensor([ids])
    y = torch.tensor([labels])
    logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1].double()
    tgt = y[0, 1:]
    keep = tgt != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep], tgt[keep])


def autograd_gradients(model, tracked: list[TrackedModule], toks) -> dict[str, np.ndarray]:
    """Per-example weight gradients (N, d_out, d_in) by plain backward, one example at a time."""
    for p in model.parameters():
        p.requires_grad_(False)
    for t in tracked:
        t.module.weight.requires_grad_(True)
    out = {t.name: [] for t in tracked}
    for ex in toks:
        model.zero_grad()
        for t in tracked:
            t.module.weight.grad = None
        example_loss(model, ex.input_ids, ex.labels).backward()
        for t in tracked:
            g = t.module.weight.grad
            out[t.name].append((g.T if t.transposed else g).double().numpy())
    for t in tracked:
        t.module.weight.requires_grad_(False)
    return {k: np.stack(v) for k, v in out.items()}


def token_statistics(model, tracked: list[TrackedModule], toks):
    """Per-example lists of a_t (T, d_in) and g_t (T, d_out), each example alone (no padding, no batching)."""
    acts, outs = {}, {}

    def keep(name):
        def hook(module, inputs, output):
            acts[name], outs[name] = inputs[0], output

        return hook

    hooks = [t.module.register_forward_hook(keep(t.name)) for t in tracked]
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    hooks.append(emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
    res = []
    try:
        for ex in toks:
            loss = example_loss(model, ex.input_ids, ex.labels)
            names = [t.name for t in tracked]
            grads = torch.autograd.grad(loss, [outs[n] for n in names])
            pairs = zip(names, grads, strict=True)
            res.append({n: (acts[n][0].double().detach().numpy(), g[0].double().numpy()) for n, g in pairs})
    finally:
        for h in hooks:
            h.remove()
    return res


def dense_inverse(stats, grads: np.ndarray, name: str, kind: str, damping: float | None, relative: float | None):
    """Explicit (F + lambda)^-1 (P x P) for one module from the DESIGN formulas, in float64."""
    if kind == "diagonal":  # diag(mean squared per-example gradient), no rotation
        lam = (grads**2).mean(0).reshape(-1)
        lmb = damping if damping is not None else relative * lam.mean()
        return np.diag(1.0 / (lam + lmb))
    a_sum = sum(s[name][0].T @ s[name][0] for s in stats)
    g_sum = sum(s[name][1].T @ s[name][1] for s in stats)
    n_tokens = sum(s[name][0].shape[0] for s in stats)
    e_a, q_a = np.linalg.eigh(a_sum / n_tokens)
    e_g, q_g = np.linalg.eigh(g_sum / len(stats))
    e_a, e_g = np.clip(e_a, 0, None), np.clip(e_g, 0, None)
    if kind == "kfac":
        lam = np.outer(e_g, e_a)
    else:
        rot = np.einsum("ko,nkl,lj->noj", q_g, grads, q_a)
        lam = (rot**2).mean(0)
    lmb = damping if damping is not None else relative * lam.mean()
    q = np.kron(q_g, q_a)  # vec(W) row-major: (Q_G^T W Q_A) = unvec(kron(Q_G, Q_A)^T vec W)
    return q @ np.diag(1.0 / (lam.reshape(-1) + lmb)) @ q.T
