"""Where the energy of whitened unit gradients lies, and whether storing the highest-energy coordinates exactly
beats a CountSketch of the same size (issue: the gradient index at SmolLM2's adapter size).

Reads the exact indexes that `bench_index.py --pretrained N --sweep ...` caches (k at least the whitened
dimension, float32: every whitened coordinate of the pool and of the run's own seeds), so it needs no model pass.
The run's own seeds play the new seed set: the exact scores are the unit rows' products. Schemes, at equal
storage per candidate: a CountSketch of all coordinates (a random bucket and sign per coordinate, as the index's
CountSketch; two draws), and the `head` coordinates of highest mean energy over the pool kept exactly with the
rest CountSketched into the remaining k - head buckets.

    python bench/bench_index_energy.py [--ks 16384 65536]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, machine, save_report  # noqa: E402

TOPS = (4096, 16384, 65536, 262144, 1048576)


def exact_indexes() -> list[Path]:
    """The cached exact float32 indexes of the SmolLM2 pools (k equal to the whitened dimension)."""
    found = []
    for folder in sorted((CACHE / "index").glob("lora-*-float32-countsketch-draw0")):
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("exact") and (folder / "index.npy").exists():
            found.append(folder)
    return found


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.array(rows, np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    return rows


def count_sketch(rows: np.ndarray, k: int, cols: np.ndarray, seed: int) -> np.ndarray:
    """rows[:, cols] hashed into k signed buckets (the hash fixed by seed, shared by pool and seeds)."""
    gen = torch.Generator().manual_seed(seed)
    bucket = torch.randint(0, k, (len(cols),), generator=gen)
    sign = torch.randint(0, 2, (len(cols),), generator=gen).float() * 2 - 1
    out = torch.zeros(len(rows), k)
    out.index_add_(1, bucket, torch.from_numpy(np.ascontiguousarray(rows[:, cols])) * sign)
    return out.numpy()


def agreement(exact: np.ndarray, approx: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    per_seed = [spearmanr(exact[:, j], approx[:, j])[0] for j in range(0, exact.shape[1], 8)]
    return {
        "spearman_mean": round(float(spearmanr(exact.mean(1), approx.mean(1))[0]), 4),
        "per_seed_median": round(float(np.median(per_seed)), 3),
    }


def measure(folder: Path, ks: list[int]) -> dict:
    """Energy shares of the top coordinates and the agreement of each scheme for one pool."""
    pool = unit(np.load(folder / "index.npy", mmap_mode="r"))
    seeds = unit(np.load(folder / "index_seeds.npz")["rows"])
    energy = (pool**2).mean(0)
    order = np.argsort(-energy)
    share = np.cumsum(energy[order]) / energy.sum()
    tops = [
        {
            "top": m,
            "pool_energy": round(float(share[m - 1]), 3),
            "seed_energy": round(float((seeds[:, order[:m]] ** 2).sum(1).mean()), 3),
        }
        for m in TOPS
        if m <= len(order)
    ]
    exact = pool @ seeds.T
    every = np.arange(pool.shape[1])
    schemes = []
    for k in ks:
        for draw in (0, 1):
            approx = count_sketch(pool, k, every, draw) @ count_sketch(seeds, k, every, draw).T
            schemes.append({"k": k, "head": 0, "draw": draw} | agreement(exact, approx))
            print(json.dumps(schemes[-1]), flush=True)
        for head in (k // 4, k // 2):
            kept, rest = order[:head], order[head:]
            approx = pool[:, kept] @ seeds[:, kept].T
            approx += count_sketch(pool, k - head, rest, 0) @ count_sketch(seeds, k - head, rest, 0).T
            schemes.append({"k": k, "head": head, "draw": 0} | agreement(exact, approx))
            print(json.dumps(schemes[-1]), flush=True)
    return {
        "run": folder.name,
        "dim": int(pool.shape[1]),
        "candidates": len(pool),
        "seeds": len(seeds),
        "tops": tops,
        "schemes": schemes,
    }


def markdown(report: dict) -> str:
    lines = [f"# Energy of whitened gradients ({report['date']})", "", f"Machine: {report['machine']}", ""]
    for pool in report["pools"]:
        lines += [
            f"## {pool['run']}",
            "",
            f"{pool['dim']:,} whitened coordinates, {pool['candidates']} candidates, {pool['seeds']} seeds.",
            "",
        ]
        lines += ["| top coordinates | share of the pool's energy | share of a seed's |", "|---|---|---|"]
        lines += [f"| {t['top']:,} | {t['pool_energy']:.3f} | {t['seed_energy']:.3f} |" for t in pool["tops"]]
        lines += ["", "| k | exact head | draw | Spearman of mean | per-seed median |", "|---|---|---|---|---|"]
        lines += [
            f"| {s['k']:,} | {s['head']:,} | {s['draw']} | {s['spearman_mean']:.4f} | {s['per_seed_median']:.3f} |"
            for s in pool["schemes"]
        ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[16384, 65536])
    args = parser.parse_args()
    folders = exact_indexes()
    if not folders:
        print("no exact index cached: run bench_index.py --pretrained N --sweep ... first; skipped")
        return
    report = {"date": datetime.date.today().isoformat(), "machine": machine(), "ks": args.ks}
    report["pools"] = [measure(folder, args.ks) for folder in folders]
    print(save_report("index-energy", report, markdown(report)))


if __name__ == "__main__":
    main()
