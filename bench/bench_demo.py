"""The built-in demo's figures: how well the G-DIG score separates corrupted from clean pool pairs (AUROC), over
corpus and model seeds, against the number of seeds, and per scoring variant. Needs no shared data.

    python bench/bench_demo.py            # corpus seeds 0-3, seed counts 16-1024, five variants (~15 min, 2 cores)
    python bench/bench_demo.py --quick    # corpus seed 0, seed counts 16-256 from the demo run itself

Seed counts need one scoring run only: with `--seed-batch 1` each seed is its own column of the influence matrix
and no setting depends on the other seeds, so a run with n seeds is a column subset of a run with more. Each count
is reported for the demo's own first n seeds and as mean ± sd over random subsets of all scored seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, machine, save_report  # noqa: E402
from gdig.config import DEFAULT_MODULES  # noqa: E402
from gdig.demo import REPORT, DemoConfig, build_demo  # noqa: E402
from gdig.pipeline.metrics import detection_auroc  # noqa: E402

ROOT_CACHE = CACHE / "demo"
VARIANTS = {  # cache folder name: (label, changes to the demo's ScoreConfig)
    "identity": ("identity Hessian", {"hessian": "identity"}),
    "kfac": ("K-FAC", {"hessian": "kfac"}),
    "diagonal": ("diagonal Hessian", {"hessian": "diagonal"}),
    "raw": ("raw scores (--normalize none)", {"normalize": "none"}),
    "damping0.01": ("relative damping 0.01", {"damping_relative": 0.01}),
    "damping1": ("relative damping 1.0", {"damping_relative": 1.0}),
    "attention": ("MLP + attention projections", {"modules": DEFAULT_MODULES + r"|(^|\.)self_attn\.[a-z_]+_proj$"}),
}


def demo_cfg(seed: int) -> DemoConfig:
    return DemoConfig(out=str(ROOT_CACHE / f"run-{seed}"), cache=str(ROOT_CACHE), seed=seed)


def influence_and_labels(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A finished run's influence matrix and which pool rows are corrupted (read by gdig.results.load_run)."""
    from gdig.rundir.results import load_run

    run = load_run(run_dir)
    return run.influence.astype(np.float64), run.candidates["corruption"].notna().to_numpy()


def auroc(influence: np.ndarray, corrupted: np.ndarray) -> float:
    """AUROC of the mean influence (high = clean) for corrupted vs clean pairs."""
    return detection_auroc(influence.mean(1), corrupted)["auroc"]


def corpus_seeds(seeds: list[int]) -> list[dict]:
    rows = []
    for s in seeds:
        cached = (Path(demo_cfg(s).out) / REPORT).exists()
        _, rep = build_demo(demo_cfg(s))
        rows.append(
            {
                "seed": s,
                "chrf": rep["chrf"],
                "bleu": rep["bleu"],
                **rep["auroc"],
                "per_kind": rep["auroc_mean_influence_per_kind"],
                "build_seconds": rep["total_seconds"],
                "fresh": not cached,
            }
        )
        print(f"corpus seed {s}: AUROC {rep['auroc']['mean_influence']:.3f}", flush=True)
    return rows


def extra_seeds(cfg: DemoConfig, n_extra: int) -> Path:
    """The demo's seeds followed by n_extra more clean pairs from the generator (another seed), disjoint from the
    pool, the test set and each other."""

    cache = cfg.cache_dir()
    own = [json.loads(line) for line in (cache / "seeds.jsonl").read_text(encoding="utf-8").splitlines()]
    more = unseen_clean_pairs(cfg, n_extra, 1000 + cfg.seed, "extra")
    path = ROOT_CACHE / f"seeds-{cfg.seed}-{len(own)}+{n_extra}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in own + more), "utf-8")
    return path


def unseen_clean_pairs(cfg: DemoConfig, n: int, seed: int, prefix: str) -> list[dict]:
    """n clean pairs from the demo's generator (another seed), none in the demo's pool, test set or seeds."""
    from gdig.demo.corpus import make_corpus

    cache = cfg.cache_dir()
    taken = {
        json.loads(line)["src_text"]
        for name in ("pool", "test", "seeds")
        for line in (cache / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    }
    _, more, _ = make_corpus(0, 2 * n + 100, 0, 0.0, seed=seed)
    fresh = (x for x in more if x["src_text"] not in taken)
    return [r | {"id": f"{prefix}-{i:04d}"} for i, r in enumerate(fresh)][:n]


def scored(cfg: DemoConfig, name: str, seeds: Path | None = None, **changes) -> Path:
    """A finished scoring run of the demo's model and pool with the demo's settings plus `changes` (cached)."""
    from gdig.pipeline.run import score

    cache, out = cfg.cache_dir(), ROOT_CACHE / f"score-{cfg.seed}-{name}"
    sc = cfg.score_config(cache / "model", cache / "pool.jsonl", seeds or cache / "seeds.jsonl", out)
    config = out / "config.json"
    if not (config.exists() and json.loads(config.read_text()).get("finished")):
        score(dataclasses.replace(sc, **changes), resume=config.exists())
    return out


def seed_counts(cfg: DemoConfig, counts: list[int], draws: int) -> list[dict]:
    n_own = cfg.n_seeds
    run = (
        Path(cfg.out)
        if max(counts) <= n_own
        else scored(cfg, f"seeds{max(counts)}", extra_seeds(cfg, max(counts) - n_own))
    )
    m, bad = influence_and_labels(run)
    rng = np.random.default_rng(0)
    rows = []
    for n in counts:
        subsets = [auroc(m[:, rng.choice(m.shape[1], n, replace=False)], bad) for _ in range(draws)]
        rows.append(
            {
                "seeds": n,
                "demo_first_n": auroc(m[:, :n], bad) if n <= n_own else None,
                "random_mean": float(np.mean(subsets)),
                "random_sd": float(np.std(subsets)),
                "pool": m.shape[1],
            }
        )
        print(f"{n} seeds: AUROC {rows[-1]['random_mean']:.3f} ± {rows[-1]['random_sd']:.3f}", flush=True)
    return rows


def variants(cfg: DemoConfig) -> list[dict]:
    rows = [
        {"variant": "the demo (EK-FAC, unit, damping 0.1, MLP)", "auroc": auroc(*influence_and_labels(Path(cfg.out)))}
    ]
    for name, (label, changes) in VARIANTS.items():
        rows.append({"variant": label, "auroc": auroc(*influence_and_labels(scored(cfg, name, **changes)))})
        print(f"{label}: AUROC {rows[-1]['auroc']:.3f}", flush=True)
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# Demo figures, {report['date']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; {report['seconds']:.0f} s",
        "",
        "## Over corpus and model seeds (`DemoConfig.seed`)",
        "",
        "| seed | chrF | BLEU | AUROC mean influence | fraction helped | low loss | misaligned | repeated | "
        "truncated | untranslated | wrong language | build s |",
        "|---|" + "---:|" * 11,
    ]
    for r in report["corpus_seeds"]:
        k = r["per_kind"]
        build = f"{r['build_seconds']:.0f}" + ("" if r["fresh"] else " (cached)")
        kinds = " | ".join(
            f"{k[c]:.3f}" for c in ("misaligned", "repeated", "truncated", "untranslated", "wrong_language")
        )
        lines.append(
            f"| {r['seed']} | {r['chrf']:.1f} | {r['bleu']:.1f} | **{r['mean_influence']:.3f}** | "
            f"{r['fraction_helped']:.3f} | {r['low_loss']:.3f} | {kinds} | {build} |"
        )
    lines += [
        "",
        "## Number of seeds (corpus seed 0's model)",
        "",
        "| seeds | the demo's first n | random subsets, mean ± sd |",
        "|---:|---:|---:|",
    ]
    for r in report["seed_counts"]:
        first = "" if r["demo_first_n"] is None else f"{r['demo_first_n']:.3f}"
        lines.append(f"| {r['seeds']} | {first} | {r['random_mean']:.3f} ± {r['random_sd']:.3f} |")
    if report["variants"]:
        lines += [
            "",
            "## Scoring variants (corpus seed 0's model, the demo's seeds)",
            "",
            "| variant | AUROC |",
            "|---|---:|",
        ] + [f"| {r['variant']} | {r['auroc']:.3f} |" for r in report["variants"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--corpus-seeds", type=int, nargs="+")
    ap.add_argument("--seed-counts", type=int, nargs="+")
    ap.add_argument("--draws", type=int, default=20, help="random seed subsets per count")
    a = ap.parse_args()
    t0 = time.time()
    seeds = a.corpus_seeds or ([0] if a.quick else [0, 1, 2, 3])
    counts = a.seed_counts or ([16, 32, 64, 128, 256] if a.quick else [16, 32, 64, 128, 256, 512, 1024])
    rows = corpus_seeds(sorted(set(seeds) | {0}))
    report = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "corpus_seeds": rows,
        "seed_counts": seed_counts(demo_cfg(0), counts, a.draws),
        "variants": [] if a.quick else variants(demo_cfg(0)),
    }
    report["seconds"] = time.time() - t0
    stem = save_report("demo", report, markdown(report))
    print(f"wrote {stem}.md")


if __name__ == "__main__":
    main()
