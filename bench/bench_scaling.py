"""How G-DIG scoring scales: time and peak memory for 1k, 2k, 4k, 8k candidates (64 seeds) and for 16, 64, 256
seeds (2k candidates), EK-FAC fitted on the whole pool; each point in its own process. Reports the fitted
log-log slopes (time ~ N^a). Writes bench/reports/scaling-<date>.{md,json}.

    python bench/bench_scaling.py [--candidates 1000 2000 4000 8000] [--seeds 16 64 256]"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import prepare  # noqa: E402
from bench.common import machine, run_child, save_report  # noqa: E402

ENGINE = str(Path(__file__).with_name("bench_engine.py"))


def point(n: int, m: int, vocab: int) -> dict:
    info = prepare(n, m, vocab)
    res = run_child(
        [
            ENGINE,
            "--child",
            "gdig",
            "--folder",
            info["folder"],
            "--batch-size",
            "16",
            "--max-length",
            "128",
            "--hessian",
            "ekfac",
        ]
    )
    return {
        "candidates": n,
        "seeds": m,
        "seconds": res["seconds"],
        "score_seconds": res["timings"]["score"],
        "peak_rss_mb": res["peak_rss_mb"],
    }


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--vocab", type=int, default=8000)
    a = ap.parse_args()
    by_n = [point(n, 64, a.vocab) for n in a.candidates]
    by_m = [point(2000, m, a.vocab) for m in a.seeds]
    r = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "by_candidates": by_n,
        "by_seeds": by_m,
        "slopes": {
            "total_vs_candidates": slope(a.candidates, [p["seconds"] for p in by_n]),
            "memory_vs_candidates": slope(a.candidates, [p["peak_rss_mb"] for p in by_n]),
            "total_vs_seeds": slope(a.seeds, [p["seconds"] for p in by_m]),
            "score_vs_seeds": slope(a.seeds, [p["score_seconds"] for p in by_m]),
            "memory_vs_seeds": slope(a.seeds, [p["peak_rss_mb"] for p in by_m]),
        },
    }
    rows = [
        f"| {p['candidates']:,} | {p['seeds']} | {p['seconds']:.1f} | {p['score_seconds']:.1f} | "
        f"{p['peak_rss_mb']:.0f} |"
        for p in by_n + by_m
    ]
    lines = [
        f"# Scaling, {r['date']}",
        "",
        f"Machine: {r['machine']}.",
        "",
        "| candidates | seeds | total s | scoring s | peak RSS MB |",
        "|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Fitted log-log slopes: " + ", ".join(f"{k} {v:.2f}" for k, v in r["slopes"].items()) + ".",
    ]
    save_report("scaling", r, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
