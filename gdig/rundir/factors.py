"""factors.safetensors: a run's fitted curvature (gdig.engine.curvature), with the fingerprint that makes it
reusable by another run of the same model, data and settings. Safetensors, never pickle; written atomically."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from gdig.atomic import atomic_path
from gdig.engine.curvature import FACTOR_KEYS, Curvature, ModuleFactors
from gdig.hessians import hessian

SHARED_KEYS = ("q_a", "e_a")  # what modules that read the same input share


def save_factors(cur: Curvature, path: str | Path, fingerprint: str) -> None:
    """Write the factors (every module's, the ones its approximation has) with their fingerprint. A-factors
    that modules share (the same tensors: gdig.engine.curvature_fit.CovarianceFitter) are written once, under
    the first module, and the others named in the metadata ("shared_a")."""
    tensors, owner_of, shared = {}, {}, {}
    for name, f in cur.modules.items():
        first = owner_of.setdefault(id(f.q_a), name) if f.q_a is not None else name
        if first != name:
            shared[name] = first
        for key in FACTOR_KEYS:
            if getattr(f, key) is not None and not (first != name and key in SHARED_KEYS):
                tensors[f"{name}::{key}"] = getattr(f, key).detach().float().contiguous().cpu()
    meta = {
        "kind": cur.kind,
        "fingerprint": fingerprint,
        "n_examples": str(cur.n_examples),
        "n_tokens": str(cur.n_tokens),
        "modules": json.dumps(list(cur.modules)),
        "shared_a": json.dumps(shared),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_factors(path: str | Path, device: torch.device | str = "cpu", names: list[str] | None = None) -> Curvature:
    """Factors written by save_factors, onto `device`: every module's, or those of modules `names` only (one
    group of a run in module partitions; the others are not read). Shared A-factors are read once and shared."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        shared = json.loads(meta.get("shared_a", "{}"))
        cur = Curvature(meta["kind"], n_examples=int(meta["n_examples"]), n_tokens=int(meta["n_tokens"]))
        read: dict[str, torch.Tensor] = {}

        def tensor(key: str) -> torch.Tensor:
            if key not in read:
                read[key] = f.get_tensor(key)
            return read[key]

        for name in json.loads(meta["modules"]):
            if names is None or name in names:
                where = {k: f"{shared.get(name, name) if k in SHARED_KEYS else name}::{k}" for k in FACTOR_KEYS}
                cur.modules[name] = ModuleFactors(**{k: tensor(key) for k, key in where.items() if key in keys})
    return cur


def join_factors(paths: list[Path], out: str | Path, fingerprint: str) -> None:
    """The factors files of a run's module groups joined into the run's one file, in group order, with the run's
    fingerprint. Written tensor by tensor from the groups' bytes (the safetensors layout: a little-endian u64
    header size, the JSON header, the data), since the library's writer holds every tensor in memory at once and
    a 7B model's factors are larger than the memory of most machines."""
    entries: dict[str, dict] = {}
    pieces: list[tuple[Path, int, int]] = []  # (file, start, size) of each tensor's bytes, in the joined order
    modules: list[str] = []
    shared: dict[str, str] = {}
    meta: dict[str, str] = {}
    size = 0
    for path in paths:
        header, data_start = _read_header(Path(path))
        own = header.pop("__metadata__", {})
        meta = meta or own
        modules += json.loads(own["modules"])
        shared |= json.loads(own.get("shared_a", "{}"))
        for key, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = e["data_offsets"]
            entries[key] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [size, size + end - begin]}
            pieces.append((Path(path), data_start + begin, end - begin))
            size += end - begin
    meta = meta | {"fingerprint": fingerprint, "modules": json.dumps(modules), "shared_a": json.dumps(shared)}
    header = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as the library writes it
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for path, start, n in pieces:
            with open(path, "rb") as src:
                src.seek(start)
                while n:
                    block = src.read(min(n, 1 << 24))
                    f.write(block)
                    n -= len(block)


def _read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header and where its data starts."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def run_curvature(
    path: str | Path, kind: str, device: torch.device | str = "cpu", names: list[str] | None = None
) -> Curvature:
    """A run's curvature: its saved factors (of modules `names` only, when given), or none to load when
    approximation `kind` fits nothing."""
    return load_factors(path, device, names) if hessian(kind).fitted else Curvature(kind)
