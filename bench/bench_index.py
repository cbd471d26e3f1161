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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, machine, save_report, timed  # noqa: E402
from gdig.demo import DemoConfig, build_demo  # noqa: E402
from gdig.engine.index import PROJECTIONS  # noqa: E402
from gdig.engine.index_scoring import Anchor, IndexRows, index_scores  # noqa: E402
from gdig.pipeline.metrics import detection_auroc  # noqa: E402
from gdig.rundir.index import INDEX_FILES, has_index, load_index  # noqa: E402
from gdig.rundir.results import load_run  # noqa: E402
from gdig.selection.select import SelectionConfig, apply_rule  # noqa: E402

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
    from gdig.pipeline.index_run import build_index

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
    from gdig.pipeline.index_run import RunModel
    from gdig.pipeline.rescoring import read_seed_file

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
    from gdig.pipeline.index_run import RunModel, measure_agreement, run_anchor
    from gdig.pipeline.rescoring import read_seed_file

    run, truth = load_run(run_dir), load_run(exact_dir)
    examples = read_seed_file(run, new_seeds).examples
    exact = exact_columns(truth, [e.id for e in examples])
    bad = run.candidates[label_column].notna().to_numpy()
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
            approx = index_scores(idx.pool, new, normalize, anchor if anchored else None)
            rows.append(
                {"projection": projection, "dtype": dtype, "draw": draw, "k": idx.dim, "anchored": anchored}
                | compare(truth, exact, approx, bad)
                | {
                    "bytes_per_candidate": idx.dim * idx.pool.rows.dtype.itemsize + 8,
                    "index_seconds": seconds,
                    "in_run": measure_agreement(folder, normalize),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "in_run"}), flush=True)
    return rows


def compare(truth, exact: np.ndarray, approx: np.ndarray, bad: np.ndarray) -> dict:
    """Index scores against the exact run's (same columns): Spearman of the mean, median per-seed Spearman,
    corrupted-pair AUROC of both, and the default rule's kept sets (Jaccard)."""
    from scipy.stats import spearmanr

    approx = np.asarray(approx, np.float64)
    per_seed = [spearmanr(exact[:, j], approx[:, j])[0] for j in range(exact.shape[1])]
    return {
        "spearman_mean": float(spearmanr(exact.mean(1), approx.mean(1))[0]),
        "spearman_seed_median": float(np.median(per_seed)),
        "auroc": detection_auroc(approx.mean(1), bad)["auroc"],
        "auroc_exact": detection_auroc(exact.mean(1), bad)["auroc"],
        "jaccard_kept": jaccard(kept_set(truth, approx), kept_set(truth, exact)),
    }


def sketched_sweep(run_dir: Path, new_seeds: Path, exact_dir: Path, ks: list[int], dtypes, draws: int) -> list[dict]:
    """The agreement at every k with one model pass in all: the run's whitened gradients stored exactly once (an
    index with k at least their dimension, float32), then CountSketched here as a run at that k sketches them
    (the same hash of each coordinate's position; rows, lengths and norms as the run would store them)."""
    from gdig.engine.index import CountSketchProjection
    from gdig.pipeline.index_run import RunModel, run_anchor
    from gdig.pipeline.rescoring import read_seed_file
    from gdig.rundir.index import RunIndex

    run, truth = load_run(run_dir), load_run(exact_dir)
    examples = read_seed_file(run, new_seeds).examples
    exact = exact_columns(truth, [e.id for e in examples])
    bad = run.candidates["corruption"].notna().to_numpy()
    runner = RunModel(run_dir, "cpu")
    dims = {t.name: (t.d_in, t.d_out) for t in runner.tracked}
    full_dir, _ = indexed_copy(run_dir, sum(a * b for a, b in dims.values()), "countsketch", 0, "float32")
    full = load_index(full_dir)
    runner.use_index(full)
    new_full = runner.gradients(examples, "second seed set").rows
    normalize = run.config["settings"]["normalize"]
    seed = int(run.config["settings"]["random_state"])
    rows = []
    for k in ks:
        for draw in range(draws):
            proj = CountSketchProjection(dims, k, seed + draw)
            seeds, new = _sketch(full.seeds, proj, dims, "float32"), _sketch(new_full, proj, dims, "float32")
            for dtype in dtypes:
                idx = RunIndex(_sketch(full.pool, proj, dims, dtype), seeds, full.meta)
                for anchored in (False, True):
                    anchor = run_anchor(run.influence, run.seeds, idx) if anchored else None
                    approx = index_scores(idx.pool, new, normalize, anchor)
                    row = {"projection": "countsketch", "dtype": dtype, "draw": draw, "k": proj.dim}
                    rows.append(row | {"anchored": anchored} | compare(truth, exact, approx, bad))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _sketch(rows: IndexRows, proj, dims: dict[str, tuple[int, int]], dtype: str, block: int = 16) -> IndexRows:
    """Exact whitened rows (unit rows and norms) CountSketched to proj.dim and stored as `dtype`."""
    parts = []
    for start in range(0, len(rows), block):
        part = rows.take(slice(start, start + block))
        w = torch.from_numpy(part.unit_rows() * np.asarray(part.projected_norm, np.float32)[:, None])
        projected = proj.empty(len(w))
        for name, (d_in, d_out) in dims.items():
            at = proj.offsets[name]
            projected += proj.project(name, w[:, at : at + d_in * d_out].reshape(len(w), d_out, d_in))
        parts.append(IndexRows.from_projected(projected, torch.from_numpy(np.asarray(part.norm, np.float64)) ** 2))
    cat = [np.concatenate([getattr(p, f) for p in parts]) for f in ("rows", "projected_norm", "norm")]
    return IndexRows(*cat).stored(dtype)


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
    from gdig.pipeline.run import score

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
    from gdig.pipeline.rescoring import SeedEdit, read_seed_file, rescore

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


def pretrained_pool(
    seed: int, ks: list[int], draws: int, sweep: list[int] | None = None, dtypes=("int8",), second: bool = True
) -> dict:
    """One of bench_pretrained.py's SmolLM2 pools (its step-1 LoRA model, its default run: 256 seeds of the
    pool's domains): a second set of 256 other domain pairs scored exactly and from the index at each k."""
    from bench.bench_pretrained import PretrainedConfig, base_model, lora_finetune, make_pool, score_config, score_pool
    from bench.common import write_jsonl
    from gdig.pipeline.run import score

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
    out = {"pool": seed, "n_pool": load_run(run_dir).n, "spec": spec}
    if sweep:
        out["sweep"] = sketched_sweep(run_dir, seeds, exact_dir, sweep, dtypes, draws)
    rows = agreement_rows(run_dir, seeds, exact_dir, ks, ["countsketch"], label_column="corruption", draws=draws)
    if not second:
        return out | {"agreement": rows}
    exact_seconds = json.loads((exact_dir / "seconds.json").read_text())["seconds"]
    second = second_seed_set(run_dir, seeds, exact_dir, exact_seconds, max(ks), f"second-from-index-pool{seed}")
    print(json.dumps(second), flush=True)
    return out | {"agreement": rows, "second_seed_set": second}


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


def synthetic_index(n: int, k: int, folder: Path, dtype: str = "int8") -> IndexRows:
    """n unit rows of k values stored as `dtype`, memory-mapped from disk (written once, in blocks), and an exact
    influence matrix (n, 256) beside it for the anchor."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rows-{n}-{k}-{dtype}.npy"
    if not path.exists():
        rows = np.lib.format.open_memmap(path.with_suffix(".tmp"), mode="w+", dtype=np.dtype(dtype), shape=(n, k))
        scale = np.zeros(n, np.float32)
        rng = np.random.default_rng(0)
        step = max(1, (256 << 20) // (4 * k))  # 256 MB of float32 at a time
        for start in range(0, n, step):
            block = rng.standard_normal((min(step, n - start), k), dtype=np.float32)
            unit = IndexRows(block / np.linalg.norm(block, axis=1, keepdims=True), scale[:1], scale[:1])
            stored = unit.stored(dtype)
            rows[start : start + len(block)] = stored.rows
            if stored.scale is not None:
                scale[start : start + len(block)] = stored.scale
        rows.flush()
        del rows
        np.save(folder / f"scale-{n}-{k}-{dtype}.npy", scale)
        path.with_suffix(".tmp").rename(path)
    rows = np.load(path, mmap_mode="r")
    scale = np.load(folder / f"scale-{n}-{k}-{dtype}.npy") if dtype == "int8" else None
    return IndexRows(rows, np.ones(n, np.float32), np.ones(n, np.float32), scale)


def synthetic_influence(n: int, m: int, folder: Path) -> np.ndarray:
    """An (n, m) float32 influence matrix on disk, memory-mapped: what the anchor reads."""
    path = folder / f"influence-{n}-{m}.npy"
    if not path.exists():
        out = np.lib.format.open_memmap(path.with_suffix(".tmp"), mode="w+", dtype=np.float32, shape=(n, m))
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            out[start:stop] = np.random.default_rng(start).standard_normal((stop - start, m), dtype=np.float32)
        out.flush()
        del out
        path.with_suffix(".tmp").rename(path)
    return np.load(path, mmap_mode="r")


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (POSIX_FADV_DONTNEED): the next read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def speed(k: int, dtypes: list[str]) -> list[dict]:
    """Per storage dtype: rescoring 100,000 candidates against 256 seeds; a query (one pair, anchored on the run's
    256 exact columns, as `gdig query` scores it) at 100,000 and at 1,000,000 candidates, the latter from the disk
    (its files evicted from the page cache first) and again."""
    rng = np.random.default_rng(1)
    seeds = rng.standard_normal((256, k), dtype=np.float32)
    seeds = IndexRows(seeds / np.linalg.norm(seeds, axis=1, keepdims=True), np.ones(256, np.float32), np.ones(256))
    query = seeds.take(slice(0, 1))
    query.rows = (query.rows + rng.standard_normal((1, k), dtype=np.float32) / np.sqrt(k)) / np.sqrt(2)
    folder = INDEX_CACHE / "synthetic"
    out = []
    for dtype in dtypes:
        row = {"k": k, "dtype": dtype}
        for n, name in ((100_000, "100k"), (1_000_000, "1m")):
            pool = synthetic_index(n, k, folder, dtype)
            anchor = Anchor(synthetic_influence(n, 256, folder), seeds)
            if n == 100_000:
                row["rescore_100k_x256_seconds"] = timed(lambda p=pool: index_scores(p, seeds, "unit"))
            else:
                for f in folder.glob(f"*-{n}-*.npy"):
                    evict(f)
                t0 = time.perf_counter()
                index_scores(pool, query, "unit", anchor)
                row["query_1m_from_disk_seconds"] = time.perf_counter() - t0
            row[f"query_{name}_seconds"] = timed(lambda p=pool, a=anchor: index_scores(p, query, "unit", a))
            row[f"index_{name}_gib"] = pool.rows.nbytes / 2**30
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def writing_cost(cfg: DemoConfig, repeats: int = 3) -> dict:
    """The demo's scoring run (factors and seeds' model reused from the demo) with and without the index,
    alternated `repeats` times: each stage's median seconds, and what the index adds to the stages it touches
    and to a whole `gdig score` (the demo run's own fitting included)."""
    from gdig.pipeline.run import score

    cache = cfg.cache_dir()
    times: dict[str, list[dict]] = {"without": [], "with": []}
    for _ in range(repeats):
        for name, changes in (("without", {"index_dim": 0}), ("with", {})):
            out = ROOT_CACHE / f"score-0-index-{name}"
            shutil.rmtree(out, ignore_errors=True)
            sc = cfg.score_config(cache / "model", cache / "pool.jsonl", cache / "seeds.jsonl", out)
            score(dataclasses.replace(sc, **changes))
            times[name].append(json.loads((out / "config.json").read_text())["timings"])
    stages = ("seeds", "score", "index_finalize", "signals", "finalize")
    med = {n: {s: float(np.median([t.get(s, 0.0) for t in ts])) for s in stages} for n, ts in times.items()}
    added = sum(med["with"].values()) - sum(med["without"].values())
    fit = load_run(ROOT_CACHE / f"run-{cfg.seed}").config["timings"]
    whole = sum(fit.get(s, 0.0) for s in ("load", "fit_covariance", "fit_eigen")) + sum(med["without"].values())
    return {
        "repeats": repeats,
        "median_seconds": med,
        "added_seconds": added,
        "added_fraction_of_these_stages": added / sum(med["without"].values()),
        "added_fraction_of_score_stage": (med["with"]["score"] - med["without"]["score"]) / med["without"]["score"],
        "added_fraction_of_whole_run": added / whole,
        "whole_run_seconds_without": whole,
    }


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
        f"Machine: {report['machine']}. Command: `{report.get('command', 'python bench/bench_index.py')}`.",
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
    if report.get("sweep"):
        lines += [
            "",
            "### By k, sketched from the run's exact whitened gradients (one pass; the same hash as a run at that k)",
            "",
            *agreement_table(report["sweep"]),
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
    for sp in report.get("speed", []):
        lines += [
            "",
            f"## Speed at real sizes ({sp['dtype']} index, k = {sp['k']}, synthetic rows, memory-mapped)",
            "",
            f"- rescoring 100,000 candidates against 256 seeds: {sp['rescore_100k_x256_seconds']:.2f} s",
            f"- a query (anchored on 256 exact columns) at 100,000 candidates: {sp['query_100k_seconds']:.2f} s",
            f"- a query at 1,000,000 ({sp['index_1m_gib']:.1f} GiB of rows): {sp['query_1m_from_disk_seconds']:.2f} s "
            f"from the disk, {sp['query_1m_seconds']:.2f} s again",
        ]
    w = report.get("writing")
    if w:
        m = w["median_seconds"]
        lines += [
            "",
            f"## What writing the index costs (the demo, median of {w['repeats']} alternated runs)",
            "",
            "| stage | without the index (s) | with it (s) |",
            "|---|---:|---:|",
            *[f"| {s} | {m['without'][s]:.1f} | {m['with'][s]:.1f} |" for s in m["without"]],
            "",
            f"Added: {w['added_seconds']:.1f} s, {100 * w['added_fraction_of_score_stage']:+.1f}% of the scoring "
            f"stage alone, {100 * w['added_fraction_of_these_stages']:+.1f}% of the stages after fitting, "
            f"{100 * w['added_fraction_of_whole_run']:+.1f}% of a whole `gdig score` "
            f"({w['whole_run_seconds_without']:.0f} s with its fitting).",
        ]
    return "\n".join(lines) + "\n"


def pretrained_main(
    report: dict, pools: list[int], ks: list[int], draws: int, sweep=None, dtypes=("int8",), second: bool = True
) -> None:
    """The SmolLM2 pools of bench_pretrained.py (skipped without the shared data or SmolLM2)."""
    from bench.bench_pretrained import missing_requirements

    missing = missing_requirements()
    if missing:
        print(f"skipped: {missing}")
        return
    report["pretrained"] = [pretrained_pool(p, ks, draws, sweep, dtypes, second) for p in pools]
    name = "index-pretrained-" + "-".join(map(str, pools)) + ("-sweep" if sweep else "")
    print(save_report(name, report, pretrained_markdown(report)))


def pretrained_markdown(report: dict) -> str:
    lines = [f"# Gradient index on SmolLM2 pools ({report['date']})", "", f"Machine: {report['machine']}.", ""]
    lines += [f"Command: `{report['command']}`.", ""] if "command" in report else []
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
        if pool.get("sweep"):
            lines += [
                "By k, sketched from the run's exact whitened gradients (one pass; the same hash as a run at that k):",
                "",
                *agreement_table(pool["sweep"]),
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
    ap.add_argument("--speed-dtypes", nargs="+", default=["int8"], help="storage dtypes timed (float16: a 33 GB file)")
    ap.add_argument("--report", default="index", help="the report's name in bench/reports (dated)")
    ap.add_argument("--pretrained", type=int, nargs="*", metavar="POOL", help="bench_pretrained.py's pools only")
    ap.add_argument("--sweep", type=int, nargs="+", help="ks sketched from the run's exact whitened gradients")
    a = ap.parse_args()
    from gdig.config import ScoreConfig

    report = {"date": datetime.date.today().isoformat(), "machine": machine()}
    report["command"] = " ".join(["python bench/bench_index.py", *sys.argv[1:]])
    if a.pretrained is not None:
        return pretrained_main(
            report, a.pretrained or [0], a.ks, a.draws, a.sweep, tuple(a.dtypes), second=not a.skip_second
        )
    cfg, run_dir = demo()
    seeds = other_seeds(cfg, 256)
    exact_dir, exact_seconds = exact_second_run(cfg, seeds)
    if a.sweep:
        report["sweep"] = sketched_sweep(run_dir, seeds, exact_dir, a.sweep, tuple(a.dtypes), a.draws)
    if not a.skip_agreement:
        report["agreement"] = agreement_rows(
            run_dir, seeds, exact_dir, a.ks, a.projections, draws=a.draws, dtypes=tuple(a.dtypes)
        )
    k = a.speed_k or ScoreConfig.__dataclass_fields__["index_dim"].default
    if not a.skip_second:
        report["second_seed_set"] = second_seed_set(run_dir, seeds, exact_dir, exact_seconds, k)
        print(json.dumps(report["second_seed_set"]), flush=True)
    if not a.skip_speed:
        report["speed"] = speed(k, a.speed_dtypes)
        report["writing"] = writing_cost(cfg)
        print(json.dumps(report["writing"]), flush=True)
    print(save_report(a.report, report, markdown(report)))


if __name__ == "__main__":
    main()
