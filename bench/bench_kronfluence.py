"""G-DIG Studio against kronfluence: same tiny Llama, tracked modules, data and EK-FAC definition (empirical
Fisher, damping 0.1 x mean eigenvalue per module, fitted on the whole pool); end-to-end time, peak memory and
Spearman correlation of the two influence matrices. Each side runs in its own process; repetitions alternate.

    pip install -r requirements-bench.txt && pip install --no-deps kronfluence==1.0.1
    python bench/bench_kronfluence.py [--candidates 2000] [--seeds 64] [--repeats 1]

Writes bench/reports/kronfluence-<date>.{md,json}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import MODEL_SIZES, child_gdig, prepare  # noqa: E402
from bench.common import add_workload_args, machine, peak_rss_mb, run_child, save_report  # noqa: E402


def child_kronfluence(folder: Path, batch_size: int, max_length: int, out: Path) -> dict:
    import torch
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    from gdig.engine.hooks import collate, per_example_loss
    from gdig.inputs.data import load_dataset, tokenize_dataset
    from gdig.inputs.model import find_tracked_modules, load_model
    from gdig.pipeline.context import by_length

    t0 = time.perf_counter()
    model, tok = load_model(str(folder / "model"), "cpu", "float32")
    tracked = [t.name for t in find_tracked_modules(model)]
    cands, _ = tokenize_dataset(tok, load_dataset(folder / "candidates.jsonl"), max_length)
    seeds, _ = tokenize_dataset(tok, load_dataset(folder / "seeds.jsonl"), max_length)
    order_c, order_s = by_length(cands), by_length(seeds)  # the same length-sorted batches as G-DIG

    class Examples(torch.utils.data.Dataset):
        def __init__(self, toks, order):
            self.toks, self.order = toks, order

        def __len__(self):
            return len(self.order)

        def __getitem__(self, i):
            return self.toks[self.order[i]]

    def collate_fn(items):
        b = collate(items, list(range(len(items))), tok.pad_token_id)
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "labels": b.labels}

    class GDIGLoss(Task):  # the sum over the batch of each example's mean target-token loss
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return per_example_loss(logits, batch["labels"])[0].sum()

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return tracked

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    task = GDIGLoss()
    model = prepare_model(model, task)
    shutil.rmtree(out, ignore_errors=True)
    analyzer = Analyzer("bench", model=model, task=task, cpu=True, disable_tqdm=True, output_dir=str(out))
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0, collate_fn=collate_fn))
    train, query = Examples(cands, order_c), Examples(seeds, order_s)
    analyzer.fit_all_factors(
        "f",
        dataset=train,
        per_device_batch_size=batch_size,
        overwrite_output_dir=True,
        factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
    )
    t_fit = time.perf_counter()
    analyzer.compute_pairwise_scores(
        "s",
        factors_name="f",
        query_dataset=query,
        train_dataset=train,
        per_device_query_batch_size=len(seeds),
        per_device_train_batch_size=batch_size,
        score_args=ScoreArguments(damping_factor=None),
        overwrite_output_dir=True,
    )
    scores = analyzer.load_pairwise_scores("s")["all_modules"].float().numpy()  # (seeds, candidates), sorted order
    total = time.perf_counter() - t0
    infl = np.zeros((len(cands), len(seeds)), np.float32)
    infl[np.ix_(order_c, order_s)] = scores.T
    np.save(folder / "kronfluence_influence.npy", infl)
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": total, "fit_seconds": t_fit - t0, "peak_rss_mb": peak_rss_mb()}


def compare(folder: Path) -> dict:
    from scipy.stats import spearmanr

    ours = np.load(folder / "gdig_influence.npy").astype(np.float64)
    kf = np.load(folder / "kronfluence_influence.npy").astype(np.float64)
    per_seed = [spearmanr(ours[:, j], kf[:, j])[0] for j in range(ours.shape[1])]
    return {
        "spearman_all": float(spearmanr(ours.ravel(), kf.ravel())[0]),
        "spearman_per_seed_mean": float(np.mean(per_seed)),
        "spearman_per_seed_min": float(np.min(per_seed)),
        "spearman_mean_influence": float(spearmanr(ours.mean(1), kf.mean(1))[0]),
        "relative_difference": float(np.linalg.norm(ours - kf) / np.linalg.norm(kf)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap, repeats=1)
    ap.add_argument("--child", choices=["kronfluence", "gdig"])
    ap.add_argument("--folder")
    a = ap.parse_args()
    if a.child == "kronfluence":
        print(json.dumps(child_kronfluence(Path(a.folder), a.batch_size, a.max_length, Path(a.folder) / "kf")))
        return
    if a.child == "gdig":
        folder = Path(a.folder)
        res = child_gdig(
            folder, a.batch_size, a.max_length, "ekfac", folder / "run", keep=folder / "gdig_influence.npy"
        )
        print(json.dumps(res))
        return
    info = prepare(a.candidates, a.seeds, a.vocab)
    common = ["--folder", info["folder"], "--batch-size", str(a.batch_size), "--max-length", str(a.max_length)]
    kf, ours = [], []
    for _ in range(a.repeats):
        ours.append(run_child([__file__, "--child", "gdig", *common]))
        kf.append(run_child([__file__, "--child", "kronfluence", *common]))
    fid = compare(Path(info["folder"]))
    t_ours, t_kf = statistics.median(o["seconds"] for o in ours), statistics.median(k["seconds"] for k in kf)
    r = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "data": info["source"],
        "model": f"llama {MODEL_SIZES}, vocab {a.vocab}",
        "settings": {
            "candidates": info["n_candidates"],
            "seeds": info["n_seeds"],
            "batch_size": a.batch_size,
            "max_length": a.max_length,
            "repeats": a.repeats,
        },
        "seconds": {
            "gdig": t_ours,
            "kronfluence": t_kf,
            "kronfluence_fit": statistics.median(k["fit_seconds"] for k in kf),
        },
        "ratio_gdig_over_kronfluence": t_ours / t_kf,
        "peak_rss_mb": {"gdig": max(o["peak_rss_mb"] for o in ours), "kronfluence": max(k["peak_rss_mb"] for k in kf)},
        "fidelity": fid,
    }
    rss = r["peak_rss_mb"]
    lines = [
        f"# G-DIG Studio vs kronfluence, {r['date']}",
        "",
        f"Machine: {r['machine']}. Data: {r['data']}. Model: {r['model']}. Settings: {r['settings']}.",
        "",
        "| | seconds | peak RSS (MB) |",
        "|---|---:|---:|",
        f"| G-DIG Studio (EK-FAC fit + seeds + scores + sketches) | {t_ours:.1f} | {rss['gdig']:.0f} |",
        f"| kronfluence 1.0.1 (EK-FAC fit + pairwise scores) | {t_kf:.1f} | {rss['kronfluence']:.0f} |",
        "",
        f"Time ratio G-DIG / kronfluence: **{r['ratio_gdig_over_kronfluence']:.2f}** (target <= 0.5).",
        f"Spearman of the two N x M matrices: **{fid['spearman_all']:.4f}** (target >= 0.95); per seed: mean "
        f"{fid['spearman_per_seed_mean']:.4f}, min {fid['spearman_per_seed_min']:.4f}; of the mean influence: "
        f"{fid['spearman_mean_influence']:.4f}; relative difference {fid['relative_difference']:.2e}.",
    ]
    save_report("kronfluence", r, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
