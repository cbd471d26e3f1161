"""The gradient index against exact runs (issue: ask the pool anything in seconds).

1. Agreement as a function of k and of the projection: the demo's pool indexed at k = 1,024 .. 32,768
   (`gdig index` on copies of the demo run); a second seed set (256 other clean pairs of the demo's domains)
   scored from each index, plain or anchored on the run's own exact columns, against an exact `gdig score` with
   that seed set: Spearman of the per-candidate mean, the median per-seed Spearman, the corrupted-pair AUROC
   and the default rule's kept set (Jaccard).
2. The same second seed set through `gdig rescore` at the default k: AUROC and time, against the exact run's.
3. Speed on this machine at real sizes, on synthetic unit rows (the product does not depend on the values):
   rescoring 100,000 candidates against 256 seeds, a query at 100,000 and 1,000,000 (memory-mapped), and what
   writing the index adds to the demo's scoring stage.

    python bench/bench_index.py [--ks 1024 2048 ...] [--skip-speed]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, machine, save_report, timed  # noqa: E402
from gdig.demo import DemoConfig, build_demo  # noqa: E402
from gdig.demo.evaluate import detection_auroc  # noqa: E402
from gdig.index import PROJECTIONS, IndexRows, index_scores  # noqa: E402
from gdig.rundir.index import INDEX_FILES, has_index, load_index  # noqa: E402
from gdig.rundir.results import load_run  # noqa: E402
from gdig.select import SelectionConfig, apply_rule  # noqa: E402

ROOT_CACHE = CACHE / "demo"
INDEX_CACHE = CACHE / "index"
KS = (1024, 2048, 4096, 8192, 16384, 32768)


def demo() -> tuple[DemoConfig, Path]:
    cfg = DemoConfig(out=str(ROOT_CACHE / "run-0"), cache=str(ROOT_CACHE), seed=0)
    run_dir, _ = build_demo(cfg)
    return cfg, Path(run_dir)


def indexed_copy(
    run_dir: Path, k: int, projection: str, draw: int = 0, dtype: str = "float16"
) -> tuple[Path, float | None]:
    """The run's files (hard links) with an index of k dimensions added by `gdig index` (projection seed: the
    run's random_state + draw); its seconds. The run itself (seconds None) when its scoring pass wrote that index."""
    from gdig.index_run import build_index

    seed = int(load_run(run_dir).config["settings"]["random_state"]) + draw
    if _has_this_index(run_dir, k, projection, dtype, seed):  # the one the scoring run wrote: no extra pass
        return run_dir, None
    where = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]  # runs of other pools share names
    dest = INDEX_CACHE / f"{run_dir.name}-{where}-k{k}-{dtype}-{projection}-draw{draw}"
    if has_index(dest):
        return dest, float(json.loads((dest / "seconds.json").read_text())["seconds"])
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in run_dir.iterdir():
        if f.is_file() and f.name not in INDEX_FILES:
            os.link(f, dest / f.name)
    t0 = time.time()
    build_index(dest, index_dim=k, index_dtype=dtype, device="cpu", projection=projection, projection_seed=seed)
    seconds = time.time() - t0
    (dest / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return dest, seconds


def _has_this_index(run_dir: Path, k: int, projection: str, dtype: str, seed: int) -> bool:
    if not has_index(run_dir):
        return False
    meta = load_index(run_dir).meta
    wanted = {"requested_k": k, "projection": projection, "dtype": dtype, "random_state": seed}
    return all(meta.get(key) == value for key, value in wanted.items())


def exact_columns(truth, ids: list[str]) -> np.ndarray:
    """The exact run's influence columns of these seeds, in their order (the index refuses a seed longer than the
    run's max length, which the exact run scored truncated: those columns are left out of both)."""
    where = {str(i): j for j, i in enumerate(truth.seeds["id"].astype(str))}
    return np.asarray(truth.influence, np.float64)[:, [where[i] for i in ids]]


def fitting_pairs(run_dir: Path, seeds: Path) -> Path:
    """`seeds` without the pairs longer than the run's max length (as `gdig rescore` would refuse them)."""
    from gdig.index_run import RunModel
    from gdig.rescore import read_seed_file

    run = load_run(run_dir)
    examples = read_seed_file(run, seeds).examples
    tokens = RunModel(run_dir, "cpu").tokenize(examples, "seeds", strict=False)
    fit = {e.id for e, t in zip(examples, tokens, strict=True) if not t.truncated and t.n_target_tokens}
    lines = [line for line in seeds.read_text("utf-8").splitlines() if json.loads(line)["id"] in fit]
    out = seeds.with_name(seeds.stem + "-fit.jsonl")
    out.write_text("".join(line + "\n" for line in lines), "utf-8")
    print(f"{seeds.name}: {len(examples) - len(fit)} pair(s) longer than the run's max length left out", flush=True)
    return out


def kept_set(run, matrix: np.ndarray) -> np.ndarray:
    """The default rule's kept set with this influence matrix (signals as the run has them)."""
    frac, mean = (matrix > 0).mean(1), matrix.mean(1)
    kept, _ = apply_rule(frac, mean, run.id_index, SelectionConfig(), run.signals)
    return kept


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def agreement_rows(
    run_dir: Path,
    new_seeds: Path,
    exact_dir: Path,
    ks: list[int],
    projections: list[str],
    label_column: str = "corruption",
    draws: int = 1,
    dtypes: tuple[str, ...] = ("float16",),
):
    """The second seed set scored from each index (plain, and anchored on the run's own 256 seeds) against the
    exact run with that seed set."""
    from scipy.stats import spearmanr

    from gdig.index_run import RunModel, measure_agreement, run_anchor
    from gdig.rescore import read_seed_file

    run, truth = load_run(run_dir), load_run(exact_dir)
    examples = read_seed_file(run, new_seeds).examples
    exact = exact_columns(truth, [e.id for e in examples])
    bad = run.candidates[label_column].notna().to_numpy()
    exact_auroc = detection_auroc(exact.mean(1), bad)["auroc"]
    exact_kept = kept_set(truth, exact)
    runner = RunModel(run_dir, "cpu")
    normalize = run.config["settings"]["normalize"]
    rows = []
    plan = [
        (p, k, d, t)
        for p in projections
        for k in ks
        for d in range(draws if p == "countsketch" else 1)
        for t in (dtypes if p == "countsketch" else dtypes[:1])
    ]
    for projection, k, draw, dtype in plan:  # the alternative projection: one draw, one dtype
        folder, seconds = indexed_copy(run_dir, k, projection, draw, dtype)
        idx = load_index(folder)
        runner.use_index(idx)
        new = runner.gradients(examples, "second seed set").rows
        anchor = run_anchor(run.influence, run.seeds, idx)
        for anchored in (False, True):
            approx = index_scores(idx.pool, new, normalize, anchor if anchored else None).astype(np.float64)
            per_seed = [spearmanr(exact[:, j], approx[:, j])[0] for j in range(exact.shape[1])]
            rows.append(
                {
                    "projection": projection,
                    "dtype": dtype,
                    "draw": draw,
                    "k": idx.dim,
                    "anchored": anchored,
                    "spearman_mean": float(spearmanr(exact.mean(1), approx.mean(1))[0]),
                    "spearman_seed_median": float(np.median(per_seed)),
                    "auroc": detection_auroc(approx.mean(1), bad)["auroc"],
                    "auroc_exact": exact_auroc,
                    "jaccard_kept": jaccard(kept_set(truth, approx), exact_kept),
                    "bytes_per_candidate": idx.dim * idx.pool.rows.dtype.itemsize + 8,
                    "index_seconds": seconds,
                    "in_run": measure_agreement(folder, normalize),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "in_run"}), flush=True)
    return rows


def other_seeds(cfg: DemoConfig, n: int) -> Path:
    """n clean pairs of the demo's domains from the generator (another seed), disjoint from the pool, the test
    set and the demo's seeds."""
    from bench.bench_demo import unseen_clean_pairs

    more = unseen_clean_pairs(cfg, n, 2000 + cfg.seed, "second")
    path = INDEX_CACHE / f"second-seeds-{cfg.seed}-{n}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in more), "utf-8")
    return path


def exact_second_run(cfg: DemoConfig, seeds: Path) -> tuple[Path, float]:
    """The demo's pool scored exactly against the second seed set (a whole `gdig score`, factors fitted afresh),
    cached; its seconds."""
    from gdig.run import score

    out = INDEX_CACHE / f"second-exact-{seeds.stem}"
    if (out / "seconds.json").exists():
        return out, float(json.loads((out / "seconds.json").read_text())["seconds"])
    shutil.rmtree(out, ignore_errors=True)
    cache = cfg.cache_dir()
    sc = cfg.score_config(cache / "model", cache / "pool.jsonl", seeds, out)
    t0 = time.time()
    score(dataclasses.replace(sc, device="cpu", index_dim=0))
    seconds = time.time() - t0
    (out / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return out, seconds


def second_seed_set(
    run_dir: Path, seeds: Path, exact_dir: Path, exact_seconds: float, k: int, out_name: str = "second-from-index"
) -> dict:
    """The second seed set from the index at k (`gdig rescore`, timed) against the exact run."""
    from gdig.rescore import SeedEdit, read_seed_file, rescore

    folder, _ = indexed_copy(run_dir, k, "countsketch")
    out = INDEX_CACHE / out_name
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    rescore(folder, out, SeedEdit(add=read_seed_file(load_run(folder), seeds), replace=True), device="cpu")
    index_seconds = time.time() - t0
    ex, ix = load_run(exact_dir), load_run(out)
    bad = ex.candidates["corruption"].notna().to_numpy()
    exact = exact_columns(ex, ix.seeds["id"].astype(str).tolist())
    return {
        "seeds": len(ix.seeds),
        "auroc_exact": detection_auroc(exact.mean(1), bad)["auroc"],
        "auroc_index": detection_auroc(np.asarray(ix.influence).mean(1), bad)["auroc"],
        "exact_seconds": exact_seconds,
        "index_seconds": index_seconds,
        "index_seconds_parts": ix.config["scored_from_index"]["seconds"],
        "ratio": index_seconds / exact_seconds,
        "k": ix.config["scored_from_index"]["k"],
    }


def pretrained_pool(seed: int, ks: list[int], draws: int) -> dict:
    """One of bench_pretrained.py's SmolLM2 pools (its step-1 LoRA model, its default run: 256 seeds of the
    pool's domains): a second set of 256 other domain pairs scored exactly and from the index at each k."""
    from bench.bench_pretrained import PretrainedConfig, base_model, lora_finetune, make_pool, score_config, score_pool
    from bench.common import write_jsonl
    from gdig.run import score

    cfg = PretrainedConfig(seed=seed, downstream_seeds=0)
    folder = CACHE / "pretrained" / cfg.key()
    files = make_pool(cfg, folder)
    base = base_model()
    tuned = folder / cfg.model_key() / "step1"
    lora_finetune(cfg, base, files["pool"], tuned, cfg.seed, cfg.epochs)
    runs = folder / cfg.model_key() / "runs"
    spec = cfg.runs[0]
    run_dir = score_pool(cfg, spec, base, tuned, files, runs)
    seeds = write_jsonl(folder / "seeds-domain-second-256.jsonl", second_domain_pairs(cfg, 256))
    exact_dir = runs / "second-seeds-exact"
    if not (exact_dir / "seconds.json").exists():
        shutil.rmtree(exact_dir, ignore_errors=True)
        sc = dataclasses.replace(score_config(cfg, spec, base, tuned, files, exact_dir), seeds=str(seeds), index_dim=0)
        t0 = time.time()
        score(sc)  # the curvature is reused from the default run (same model, pool and settings)
        (exact_dir / "seconds.json").write_text(json.dumps({"seconds": time.time() - t0}))
    seeds = fitting_pairs(run_dir, seeds)
    rows = agreement_rows(run_dir, seeds, exact_dir, ks, ["countsketch"], label_column="corruption", draws=draws)
    exact_seconds = json.loads((exact_dir / "seconds.json").read_text())["seconds"]
    second = second_seed_set(run_dir, seeds, exact_dir, exact_seconds, max(ks), f"second-from-index-pool{seed}")
    print(json.dumps(second), flush=True)
    return {"pool": seed, "n_pool": load_run(run_dir).n, "spec": spec, "agreement": rows, "second_seed_set": second}


def second_domain_pairs(cfg, n: int) -> list[dict]:
    """n clean pairs of the pool's domains after those bench_pretrained.domain_seeds takes (half WMT22, half
    Tatoeba), none in the pool, the test sets or the first seed set."""
    import random

    from bench.bench_pretrained import _record, _shuffled_sources

    wmt, tat = _shuffled_sources(random.Random(cfg.seed))
    start = cfg.n_wmt + cfg.n_test + n // 2  # after the pool, the held-out WMT22 pairs and the first seeds
    held = [("wmt", p) for p in wmt[start : start + n // 2]]
    first = cfg.n_tatoeba + n - n // 2
    held += [("tatoeba", p) for p in tat[first : first + n - len(held)]]
    return [_record(f"{o}-seed2-{i:04d}", d, e) for i, (o, (d, e)) in enumerate(held)]


def synthetic_index(n: int, k: int, folder: Path) -> IndexRows:
    """n unit rows of k float16 values, memory-mapped from disk (written once, in blocks)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rows-{n}-{k}.npy"
    if not path.exists():
        rows = np.lib.format.open_memmap(path.with_suffix(".tmp"), mode="w+", dtype=np.float16, shape=(n, k))
        rng = np.random.default_rng(0)
        step = max(1, (256 << 20) // (4 * k))  # 256 MB of float32 at a time
        for start in range(0, n, step):
            block = rng.standard_normal((min(step, n - start), k), dtype=np.float32)
            rows[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        rows.flush()
        del rows
        path.with_suffix(".tmp").rename(path)
    rows = np.load(path, mmap_mode="r")
    return IndexRows(rows, np.ones(n, np.float32), np.ones(n, np.float32))


def speed(k: int) -> dict:
    rng = np.random.default_rng(1)
    seeds = rng.standard_normal((256, k), dtype=np.float32)
    seeds = IndexRows(seeds / np.linalg.norm(seeds, axis=1, keepdims=True), np.ones(256, np.float32), np.ones(256))
    query = IndexRows(seeds.rows[:1], seeds.projected_norm[:1], seeds.norm[:1])
    small = synthetic_index(100_000, k, INDEX_CACHE / "synthetic")
    large = synthetic_index(1_000_000, k, INDEX_CACHE / "synthetic")
    out = {"k": k}
    out["rescore_100k_x256_seconds"] = timed(lambda: index_scores(small, seeds, "unit"))
    out["query_100k_seconds"] = timed(lambda: index_scores(small, query, "unit"))
    t0 = time.perf_counter()
    index_scores(large, query, "unit")
    out["query_1m_first_seconds"] = time.perf_counter() - t0
    out["query_1m_seconds"] = timed(lambda: index_scores(large, query, "unit"))
    out["index_1m_gib"] = large.rows.nbytes / 2**30
    print(json.dumps(out), flush=True)
    return out


def writing_cost(cfg: DemoConfig, run_dir: Path) -> dict:
    """The demo's scoring stage with and without the index (factors and seeds are reused from the demo)."""
    from gdig.run import score

    cache = cfg.cache_dir()
    rows = {}
    for name, changes in (("without", {"index_dim": 0}), ("with", {})):
        out = ROOT_CACHE / f"score-0-index-{name}"
        shutil.rmtree(out, ignore_errors=True)
        sc = cfg.score_config(cache / "model", cache / "pool.jsonl", cache / "seeds.jsonl", out)
        score(dataclasses.replace(sc, **changes))
        t = json.loads((out / "config.json").read_text())["timings"]
        rows[name] = {"score": t["score"], "index_finalize": t.get("index_finalize", 0.0), "finalize": t["finalize"]}
    added = rows["with"]["score"] + rows["with"]["index_finalize"] - rows["without"]["score"]
    return rows | {"added_fraction_of_score_stage": added / rows["without"]["score"]}


METRICS = ("spearman_mean", "spearman_seed_median", "auroc", "auroc_delta", "jaccard_kept")


def agreement_table(rows: list[dict]) -> list[str]:
    """One line per projection, k and anchoring: each metric's mean (± sd) over the projection draws."""
    out = [
        "| projection | dtype | k | anchored | draws | Spearman of mean | per-seed median | AUROC | vs exact "
        "| Jaccard kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["projection"], r.get("dtype", "float16"), r["k"], r["anchored"]), []).append(
            r | {"auroc_delta": r["auroc"] - r["auroc_exact"]}
        )
    for (projection, dtype, k, anchored), rs in groups.items():
        cells = []
        for m in METRICS:
            v = np.array([r[m] for r in rs])
            cells.append(f"{v.mean():+.4f}" if m == "auroc_delta" else f"{v.mean():.4f}")
            if len(v) > 1:
                cells[-1] += f" ± {v.std(ddof=1):.4f}"
        head = f"| {projection} | {dtype} | {k:,} | {'yes' if anchored else 'no'} | {len(rs)} | "
        out.append(head + " | ".join(cells) + " |")
    return out


def markdown(report: dict) -> str:
    lines = [
        f"# Gradient index against exact runs ({report['date']})",
        "",
        f"Machine: {report['machine']}. Command: `python bench/bench_index.py`.",
        "",
        "## A new seed set from the index against an exact run with it, by k",
        "",
        "The demo (3,000 candidates, EK-FAC on 12 MLP modules, 540,672 whitened dimensions); 256 other clean "
        "pairs of its domains scored from the index of the demo run (seeds' own passes only), plain or anchored "
        "on the run's 256 exact seed columns, against `gdig score` with those seeds.",
        "",
        "Each figure: the mean over the projection seeds drawn (± their sd when more than one; `draws`).",
        "",
        *agreement_table(report.get("agreement", [])),
    ]
    s = report.get("second_seed_set")
    if s:
        lines += [
            "",
            f"## A second seed set ({s['seeds']} other clean pairs of the demo's domains)",
            "",
            f"AUROC exact {s['auroc_exact']:.4f}, from the index (k = {s['k']}) {s['auroc_index']:.4f} "
            f"(difference {s['auroc_index'] - s['auroc_exact']:+.4f}); time: exact run {s['exact_seconds']:.1f} s, "
            f"from the index {s['index_seconds']:.1f} s ({100 * s['ratio']:.1f}% of it; the seeds' own passes "
            f"and model load {s['index_seconds_parts']['seed_passes']:.1f} s, the product and files "
            f"{s['index_seconds_parts']['index_product']:.1f} s).",
        ]
    sp = report.get("speed")
    if sp:
        lines += [
            "",
            f"## Speed at real sizes (synthetic float16 index, k = {sp['k']}, memory-mapped)",
            "",
            f"- rescoring 100,000 candidates against 256 seeds: {sp['rescore_100k_x256_seconds']:.2f} s",
            f"- a query at 100,000 candidates: {sp['query_100k_seconds']:.2f} s",
            f"- a query at 1,000,000 ({sp['index_1m_gib']:.1f} GiB): first {sp['query_1m_first_seconds']:.2f} s, "
            f"then {sp['query_1m_seconds']:.2f} s",
        ]
    w = report.get("writing")
    if w:
        lines += [
            "",
            "## What writing the index costs (the demo's scoring stage)",
            "",
            f"score stage without the index {w['without']['score']:.1f} s, with it {w['with']['score']:.1f} s "
            f"+ {w['with']['index_finalize']:.1f} s to finish its files: "
            f"{100 * w['added_fraction_of_score_stage']:+.1f}% of the scoring stage.",
        ]
    return "\n".join(lines) + "\n"


def pretrained_main(report: dict, pools: list[int], ks: list[int], draws: int) -> None:
    """The SmolLM2 pools of bench_pretrained.py (skipped without the shared data or SmolLM2)."""
    from bench.bench_pretrained import missing_requirements

    missing = missing_requirements()
    if missing:
        print(f"skipped: {missing}")
        return
    report["pretrained"] = [pretrained_pool(p, ks, draws) for p in pools]
    name = "index-pretrained-" + "-".join(map(str, pools))
    print(save_report(name, report, pretrained_markdown(report)))


def pretrained_markdown(report: dict) -> str:
    lines = [f"# Gradient index on SmolLM2 pools ({report['date']})", "", f"Machine: {report['machine']}.", ""]
    for pool in report["pretrained"]:
        lines += [
            f"## Pool {pool['pool']} ({pool['n_pool']} pairs, `{pool['spec']}`, EK-FAC on the LoRA adapters)",
            "",
            "256 other pairs of the pool's domains, from the index of the default run against an exact run.",
            "",
            f"Exact AUROC {pool['agreement'][0]['auroc_exact']:.4f}.",
            "",
            *agreement_table(pool["agreement"]),
            "",
        ]
        if "second_seed_set" in pool:
            s = pool["second_seed_set"]
            lines += [
                f"`gdig rescore` with that seed set: AUROC {s['auroc_index']:.4f} against the exact run's "
                f"{s['auroc_exact']:.4f}; {s['index_seconds']:.0f} s against {s['exact_seconds']:.0f} s for the exact "
                f"run's seeds and scoring stages (its factors reused), {100 * s['ratio']:.1f}%: the seeds' own passes "
                f"{s['index_seconds_parts']['seed_passes']:.0f} s, the product and files "
                f"{s['index_seconds_parts']['index_product']:.1f} s.",
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS))
    ap.add_argument("--projections", nargs="+", default=list(PROJECTIONS))
    ap.add_argument("--dtypes", nargs="+", default=["float16"], help="storage dtypes of the CountSketch index")
    ap.add_argument("--draws", type=int, default=3, help="projection seeds per k (the spread of the figures)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-second", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true", help="only the timings (second seed set, speed)")
    ap.add_argument("--speed-k", type=int, default=None, help="k of the speed test (default: the default k)")
    ap.add_argument("--pretrained", type=int, nargs="*", metavar="POOL", help="bench_pretrained.py's pools only")
    a = ap.parse_args()
    from gdig.config import ScoreConfig

    report = {"date": datetime.date.today().isoformat(), "machine": machine()}
    if a.pretrained is not None:
        return pretrained_main(report, a.pretrained or [0], a.ks, a.draws)
    cfg, run_dir = demo()
    seeds = other_seeds(cfg, 256)
    exact_dir, exact_seconds = exact_second_run(cfg, seeds)
    if not a.skip_agreement:
        report["agreement"] = agreement_rows(
            run_dir, seeds, exact_dir, a.ks, a.projections, draws=a.draws, dtypes=tuple(a.dtypes)
        )
    k = a.speed_k or ScoreConfig.__dataclass_fields__["index_dim"].default
    if not a.skip_second:
        report["second_seed_set"] = second_seed_set(run_dir, seeds, exact_dir, exact_seconds, k)
        print(json.dumps(report["second_seed_set"]), flush=True)
    if not a.skip_speed:
        report["speed"] = speed(k)
        report["writing"] = writing_cost(cfg, run_dir)
        print(json.dumps(report["writing"]), flush=True)
    print(save_report("index", report, markdown(report)))


if __name__ == "__main__":
    main()
