"""factors.safetensors: a run's fitted curvature (gdig.engine.curvature), with the fingerprint that makes it
reusable by another run of the same model, data and settings. Safetensors, never pickle; written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gdig.atomic import atomic_path
from gdig.engine.curvature import FACTOR_KEYS, Curvature, ModuleFactors
from gdig.hessians import hessian


def save_factors(cur: Curvature, path: str | Path, fingerprint: str) -> None:
    """Write the factors (every module's, the ones its approximation has) with their fingerprint."""
    tensors = {}
    for name, f in cur.modules.items():
        for key in FACTOR_KEYS:
            if getattr(f, key) is not None:
                tensors[f"{name}::{key}"] = getattr(f, key).detach().float().contiguous().cpu()
    meta = {
        "kind": cur.kind,
        "fingerprint": fingerprint,
        "n_examples": str(cur.n_examples),
        "n_tokens": str(cur.n_tokens),
        "modules": json.dumps(list(cur.modules)),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_factors(path: str | Path, device: torch.device | str = "cpu") -> Curvature:
    """Factors written by save_factors, onto `device`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path), device=str(device))
    cur = Curvature(meta["kind"], n_examples=int(meta["n_examples"]), n_tokens=int(meta["n_tokens"]))
    for name in json.loads(meta["modules"]):
        cur.modules[name] = ModuleFactors(**{k: tensors.get(f"{name}::{k}") for k in FACTOR_KEYS})
    return cur


def run_curvature(path: str | Path, kind: str, device: torch.device | str = "cpu") -> Curvature:
    """A run's curvature: its saved factors, or none to load when approximation `kind` fits nothing."""
    return load_factors(path, device) if hessian(kind).fitted else Curvature(kind)
