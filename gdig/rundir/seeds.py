"""Preconditioned seed gradients on disk (safetensors, never pickle): all seeds while a run is in progress
(partial/, reused on resume), and the mean seed direction kept with a finished run for token explanations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gdig.atomic import atomic_path, save_npz_atomic
from gdig.rundir.chunks import partial_dir

if TYPE_CHECKING:
    import torch

    from gdig.engine.seeds import SeedGradients


def seeds_path(run_dir: str | Path, part: str = "") -> Path:
    """All preconditioned seed gradients of a run in progress (`part`: of one module group, gdig.rundir.chunks)."""
    return partial_dir(run_dir) / part / "seeds.safetensors"


def seeds_meta_path(run_dir: str | Path, part: str = "") -> Path:
    """Each seed's loss and token count, and the rank used, beside seeds_path."""
    return partial_dir(run_dir) / part / "seeds_meta.npz"


def save_seed_gradients(path: Path, seeds: SeedGradients, fingerprint: str) -> None:
    """Every seed's V_s, dense (in the eigenbasis where SeedGradients.eigenbasis) or as low-rank factors, with
    their self-influence and truncation error."""
    from safetensors.torch import save_file

    tensors = {f"dense::{k}": v.contiguous().cpu() for k, v in seeds.dense.items()}
    tensors |= {f"left::{k}": v.contiguous().cpu() for k, v in seeds.left.items()}
    tensors |= {f"right::{k}": v.contiguous().cpu() for k, v in seeds.right.items()}
    tensors["self_influence"] = seeds.self_influence.contiguous().cpu()
    if seeds.index is not None:
        tensors["index"] = seeds.index.contiguous().cpu()
    meta = {"fingerprint": fingerprint, "lowrank_error": json.dumps(seeds.lowrank_error)}
    meta["eigenbasis"] = json.dumps(seeds.eigenbasis)  # absent in older files: the weights' coordinates
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_seed_gradients(path: Path, device: torch.device | str = "cpu") -> tuple[SeedGradients, str | None]:
    """The seeds saved by save_seed_gradients, and the fingerprint they were saved with."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from gdig.engine.seeds import SeedGradients

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    t = load_file(str(path), device=str(device))
    seeds = SeedGradients(
        self_influence=t.pop("self_influence"),
        lowrank_error=json.loads(meta["lowrank_error"]),
        index=t.pop("index", None),
        eigenbasis=json.loads(meta.get("eigenbasis", "false")),
    )
    for key, v in t.items():
        kind, name = key.split("::", 1)
        getattr(seeds, kind)[name] = v
    return seeds, meta.get("fingerprint")


def load_seed_sums(path: Path, device: torch.device | str = "cpu") -> SeedGradients:
    """Of the seeds saved by save_seed_gradients, only their sums over modules (self-influence, index rows) and
    low-rank errors: what the next module group carries on, without this group's seed gradients."""
    from safetensors import safe_open

    from gdig.engine.seeds import SeedGradients

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta, keys = f.metadata() or {}, set(f.keys())
        index = f.get_tensor("index") if "index" in keys else None
        self_influence = f.get_tensor("self_influence")
    return SeedGradients(self_influence=self_influence, lowrank_error=json.loads(meta["lowrank_error"]), index=index)


def save_seed_meta(
    run_dir: str | Path, loss: np.ndarray, n_tokens: np.ndarray, rank: int | None, part: str = ""
) -> None:
    """What a resumed run needs of the seed stage besides the gradients."""
    save_npz_atomic(seeds_meta_path(run_dir, part), loss=loss, n_tokens=n_tokens, rank=np.int64(rank or 0))


def load_seed_meta(run_dir: str | Path, part: str = "") -> tuple[np.ndarray, np.ndarray, int | None] | None:
    """(loss, n_tokens, rank) saved by save_seed_meta, or None when the seed stage has not finished."""
    path = seeds_meta_path(run_dir, part)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["loss"], z["n_tokens"], int(z["rank"]) or None


def save_mean_direction(
    path: Path, mean: dict[str, torch.Tensor], seeds: SeedGradients, normalize: str, fingerprint: str
) -> None:
    """The mean seed direction per module (see gdig.engine.seeds.mean_seed_direction) and each column's
    self-influence: one seed's worth of bytes instead of all seeds."""
    extra = {"fingerprint": fingerprint, "lowrank_error": json.dumps(seeds.lowrank_error)}
    save_mean_direction_tensors(path, mean, seeds.self_influence, normalize, extra)


def save_mean_direction_tensors(
    path: Path, mean: dict[str, torch.Tensor], self_influence: torch.Tensor, normalize: str, extra: dict | None = None
) -> None:
    """seed_grads.safetensors from the mean direction per module and each column's self-influence."""
    from safetensors.torch import save_file

    tensors = {f"mean::{name}": v.contiguous().cpu() for name, v in mean.items()}
    tensors["self_influence"] = self_influence.contiguous().cpu()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"normalize": normalize} | (extra or {}))


def load_mean_direction(path: Path, device) -> dict:
    """{"mean": {module: V}, "self_influence": (S,) array} from seed_grads.safetensors (older runs stored every
    seed's V; their mean is taken here)."""
    from safetensors.torch import load_file

    t = load_file(str(path), device=str(device))
    self_inf = t.pop("self_influence").double().cpu().numpy()
    mean = {k.split("::", 1)[1]: v for k, v in t.items() if k.startswith("mean::")}
    if not mean:  # a run written before the mean was stored: every seed's V, dense or low rank
        seeds, _ = load_seed_gradients(path, device)
        mean = {name: seeds.matrix(name) for name in seeds.names}
    return {"mean": mean, "self_influence": self_inf}
