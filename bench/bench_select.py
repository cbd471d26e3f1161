"""Selection speed at scale: 100,000 candidates x 256 seeds, 1,024-d sketches (synthetic, clustered).

    python bench/bench_select.py [--n 100000] [--seeds 256] [--dim 1024] [--k 20] [--no-umap]

Reports the time to re-apply a new tau, to re-cluster with a new K, a full select (cluster + resample), and
to compute UMAP once. Writes bench/reports/select-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, save_report, timed  # noqa: E402
from gdig.selection.clusters import GradientClusterer  # noqa: E402
from gdig.selection.select import SelectionConfig, quality_mask, select  # noqa: E402


def synthetic(n: int, m: int, d: int, centres: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    quality = rng.normal(0.3, 1.0, size=(n, 1)).astype(np.float32)
    infl = (quality + rng.normal(size=(n, m)).astype(np.float32)) * 1e-3
    mu = rng.normal(size=(centres, d)).astype(np.float32)
    sketch = mu[rng.integers(0, centres, n)] + 0.7 * rng.normal(size=(n, d)).astype(np.float32)
    return infl, sketch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--no-umap", action="store_true")
    args = ap.parse_args()
    infl, sketch = synthetic(args.n, args.seeds, args.dim)
    ids = [str(i) for i in range(args.n)]
    t0 = time.perf_counter()
    frac = (infl > 0).mean(1, dtype=np.float64).astype(np.float32)
    mean = infl.mean(1, dtype=np.float64).astype(np.float32)
    stats_s = time.perf_counter() - t0  # once per run (cached by the app)
    taus = iter(np.linspace(0.5, 0.9, 100))
    tau_s = timed(lambda: quality_mask(frac, mean, float(next(taus)), None), repeats=5)
    kept = quality_mask(frac, mean, 0.6, None)
    kept_rows = np.flatnonzero(kept)
    ks = iter([args.k, args.k + 5, args.k - 5])
    cluster_kept_s = timed(lambda: GradientClusterer(next(ks), 0).fit(sketch[kept_rows]))
    ks_all = iter([args.k, args.k + 5, args.k - 5])
    cluster_all_s = timed(lambda: GradientClusterer(next(ks_all), 0).fit(sketch))
    cfg = SelectionConfig(rule="fraction", tau=0.6, clusters=args.k, budget=10_000)
    select_s = timed(lambda: select(frac, mean, sketch, ids, cfg), repeats=1)
    umap_s = None
    if not args.no_umap:
        from gdig.pipeline.umap_map import compute_umap

        compute_umap(sketch[:200])  # compile numba once; that cost is per process, not per run
        t0 = time.perf_counter()
        compute_umap(sketch)
        umap_s = time.perf_counter() - t0
    r = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "settings": {"n": args.n, "seeds": args.seeds, "dim": args.dim, "k": args.k, "kept_at_tau_0.6": len(kept_rows)},
        "seconds": {
            "per_run_stats": stats_s,
            "reapply_tau": tau_s,
            "recluster_kept": cluster_kept_s,
            "recluster_all": cluster_all_s,
            "select_cluster_resample": select_s,
            "umap_once": umap_s,
        },
    }
    s = r["seconds"]
    lines = [
        f"# Selection benchmark, {r['date']}",
        "",
        f"Machine: {r['machine']}. Settings: {r['settings']}.",
        "",
        "| operation | seconds | target |",
        "|---|---:|---:|",
        f"| fraction helped + mean influence, once per run | {s['per_run_stats']:.3f} | |",
        f"| re-apply a new tau | {s['reapply_tau']:.6f} | < 0.2 |",
        f"| re-cluster with a new K, kept set ({len(kept_rows):,}) | {s['recluster_kept']:.2f} | < 5 |",
        f"| re-cluster with a new K, all {args.n:,} | {s['recluster_all']:.2f} | < 5 |",
        f"| full select: rule + K-means + resample to 10,000 | {s['select_cluster_resample']:.2f} | |",
        f"| UMAP once (fit on 20,000, transform the rest) | {'skipped' if umap_s is None else f'{umap_s:.1f}'} | |",
    ]
    save_report("select", r, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
