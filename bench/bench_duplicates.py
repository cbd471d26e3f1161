"""Duplicates (gdig.selection.duplicates): how fast exact and near groups are found at 1,000,000 pairs; how many
the real pools in ../shared/data hold (OpenNMT's noisy mix, Tatoeba, WMT21's system outputs), with examples of near-only
groups to judge the near key by; and on the three SmolLM2 de->en pools of bench_pretrained.py, the AUROC of the
duplicate flag for corrupted pairs and the effect of "keep one per group" on the default rule.

    python bench/bench_duplicates.py [--n 1000000] [--repeats 3]

Writes bench/reports/duplicates-<date>.{md,json}; the real-data parts are skipped without ../shared/data."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    CACHE,
    SHARED_DATA,
    have_shared_data,
    machine,
    read_lines,
    save_report,
    synthetic_pairs,
)
from gdig.selection.duplicates import LEVELS, find_duplicates, one_per_group  # noqa: E402

PRETRAINED = CACHE / "pretrained"
POOL = "p-150-150-40-0.2-64-64-{seed}"  # bench_pretrained.py's pools (PretrainedConfig.key) and default run
RUN = "lora8-16-1.0-0.001-8-128/runs/lora-ekfac-domain-s=256-fit128"


def real_pairs() -> dict[str, tuple[list[str], list[str]]]:
    """The real pools of ../shared/data as (sources, targets)."""
    o, t = SHARED_DATA / "opennmt-ende", SHARED_DATA / "tatoeba" / "deu-eng"
    segs = [json.loads(x) for x in read_lines(SHARED_DATA / "wmt21-da-deen" / "segments.jsonl")]
    return {
        "OpenNMT en-de (train)": (read_lines(o / "src-train.txt"), read_lines(o / "tgt-train.txt")),
        "Tatoeba de-en": tuple(read_lines(t / f"tatoeba-test-v2021-08-07.{lang}") for lang in ("deu", "eng")),
        "WMT21 de-en system outputs": ([s["src_text"] for s in segs], [s["trg_text"] for s in segs]),
    }


def _letters(i: int) -> str:
    out = ""
    while True:
        out, i = chr(97 + i % 26) + out, i // 26
        if i == 0:
            return out


def big_pool(n: int) -> tuple[list[str], list[str]]:
    """n pairs of real length: the real pools' pairs made unique by a letter tag, then 1% exact copies (case
    changed) and 1% near copies (a mark added) of their neighbours; synthetic words without ../shared/data."""
    if have_shared_data():
        pairs = [p for src, trg in list(real_pairs().values())[:2] for p in zip(src, trg, strict=True)]
    else:  # the pairs made unique: only the planted copies are duplicates
        pairs = list(dict.fromkeys((r["src_text"], r["trg_text"]) for r in synthetic_pairs(10_000, 0)))
    src, trg = [], []
    for i in range(n):
        if i % 100 == 1:
            s, t = src[-1].upper(), trg[-1].upper()
        elif i % 100 == 2:
            s, t = src[-2] + " !", trg[-2] + "!"
        else:
            s, t = pairs[i % len(pairs)]
            tag = _letters(i // len(pairs))
            s, t = f"{s} {tag}", f"{t} {tag}"
        src.append(s)
        trg.append(t)
    return src, trg


def speed(n: int, repeats: int) -> dict:
    src, trg = big_pool(n)
    times, found = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = find_duplicates(src, trg)
        times.append(time.perf_counter() - t0)
    score = np.random.default_rng(0).random(n)
    t0 = time.perf_counter()
    one_per_group(np.ones(n, bool), found.near, score)
    rule_s = time.perf_counter() - t0
    return {"n": n, "seconds": times, "median_s": float(np.median(times)), "counts": found.counts()} | {
        "one_per_group_s": rule_s
    }


def pool_counts() -> list[dict]:
    rows = []
    for name, (src, trg) in real_pairs().items():
        d = find_duplicates(src, trg)
        near_only = np.flatnonzero((d.near >= 0) & (d.exact < 0))
        examples = []
        for g in list(dict.fromkeys(d.near[near_only].tolist()))[:3]:
            members = np.flatnonzero(d.near == g)[:3]
            examples.append([f"{src[i][:60]} ||| {trg[i][:60]}" for i in members])
        rows.append({"pool": name, "pairs": len(src)} | d.counts() | {"near_only_examples": examples})
    return rows


def human_judgements() -> dict:
    """WMT21 de-en system outputs with human direct assessment: does the duplicate flag (another system wrote the
    same output) pick the outputs judged worse (z-score below the median)? AUROC above 0.5: duplicates are worse."""
    segs = [json.loads(x) for x in read_lines(SHARED_DATA / "wmt21-da-deen" / "segments.jsonl")]
    d = find_duplicates([s["src_text"] for s in segs], [s["trg_text"] for s in segs])
    z = np.array([s["da_z"] for s in segs], np.float64)
    better = z >= np.median(z)
    out = {"outputs": len(segs)}
    for level in LEVELS:
        out[level] = _auroc(better, -(d.groups(level) >= 0).astype(float))
    return out


def _auroc(clean: np.ndarray, good: np.ndarray, n_boot: int = 200) -> dict:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, len(clean), len(clean))
        if clean[i].all() or not clean[i].any():
            continue
        boot.append(roc_auc_score(clean[i], good[i]))
    return {"auroc": float(roc_auc_score(clean, good)), "ci95": [float(np.percentile(boot, q)) for q in (2.5, 97.5)]}


def pretrained_pools() -> list[dict]:
    """Per pool: the duplicate flag's AUROC for corrupted pairs (labelled pairs: all but OpenNMT's), and where a
    scored run is cached, the default rule with dedupe off / exact / near."""
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, rule_decisions

    rows = []
    for seed in (0, 1, 2):
        folder = PRETRAINED / POOL.format(seed=seed)
        if not (folder / "pool.jsonl").exists():
            continue
        pool = [json.loads(x) for x in read_lines(folder / "pool.jsonl")]
        d = find_duplicates([r["src_text"] for r in pool], [r["trg_text"] for r in pool])
        lab = np.array([r["origin"] != "opennmt" for r in pool])
        clean = np.array([r["corruption"] is None for r in pool])
        row = {"pool": seed, "pairs": len(pool)} | d.counts()
        for level in LEVELS:
            flag = d.groups(level) >= 0
            row[f"{level}_flag"] = _auroc(clean[lab], -flag[lab].astype(float)) if flag[lab].any() else None
        run_dir = folder / RUN
        if (run_dir / "config.json").exists():
            run = load_run(run_dir)
            ids = [r["id"] for r in pool]
            order = np.array([run.id_index[i] for i in ids])  # the run's rows in pool order
            for dedupe in ("off", *LEVELS):
                cfg = SelectionConfig(dedupe=dedupe)
                kept, combined, dropped = rule_decisions(
                    run.frac_helped, run.mean_influence, run.id_index, cfg, run.signals, run.quality, run.duplicates
                )
                kept, combined = kept[order], combined[order]
                good = combined - 10.0 * (~kept)  # rejected pairs below every kept one
                row[f"rule_{dedupe}"] = {
                    "kept": int(kept.sum()),
                    "dropped_as_duplicates": dropped,
                    "corrupted_share_of_kept": float((~clean[lab & kept]).mean()),
                } | _auroc(clean[lab], good[lab])
        rows.append(row)
    return rows


def markdown(r: dict) -> str:
    s = r["speed"]
    lines = [
        f"# Duplicates, {r['date']}",
        "",
        f"Machine: {r['machine']}.",
        "",
        f"**Speed**: exact and near groups of {s['n']:,} pairs (texts of real length) in {s['median_s']:.1f} s "
        f"(median of {len(s['seconds'])}: {', '.join(f'{t:.1f}' for t in s['seconds'])}); keeping one per group "
        f"{s['one_per_group_s']:.2f} s. Found: {s['counts']}.",
        "",
    ]
    if r["real_pools"]:
        head = "| pool | pairs | exact dup. rows | beyond one per group | near dup. rows | beyond one per group |"
        lines += ["## Real pools", "", head, "|---|---:|---:|---:|---:|---:|"]
        for p in r["real_pools"]:
            lines.append(
                f"| {p['pool']} | {p['pairs']:,} | {p['exact_duplicates']:,} | {p['exact_extra']:,} | "
                f"{p['near_duplicates']:,} | {p['near_extra']:,} |"
            )
        lines += ["", "Near-only groups (the first three of each pool, up to three members):", ""]
        for p in r["real_pools"]:
            for g in p["near_only_examples"]:
                lines.append(f"- {p['pool']}: " + " / ".join(f"`{m}`" for m in g))
        lines.append("")
    h = r.get("human_judgements")
    if h:
        lines += [
            f"WMT21 de-en, {h['outputs']:,} system outputs judged by humans: AUROC of the duplicate flag for the "
            "outputs below the median z-score (0.5: unrelated; above: duplicates are worse): "
            + ", ".join(f"{lv} {h[lv]['auroc']:.3f} [{h[lv]['ci95'][0]:.3f}, {h[lv]['ci95'][1]:.3f}]" for lv in LEVELS)
            + ".",
            "",
        ]
    if r["pretrained_pools"]:
        lines += ["## The SmolLM2 de->en pools (bench_pretrained.py): corrupted pairs", ""]
        for p in r["pretrained_pools"]:
            flags = ", ".join(
                f"{lv}: " + (f"{p[f'{lv}_flag']['auroc']:.3f}" if p[f"{lv}_flag"] else "no duplicate, 0.5")
                for lv in LEVELS
            )
            lines.append(
                f"- pool {p['pool']} ({p['pairs']} pairs): {p['exact_duplicates']} exact and "
                f"{p['near_duplicates']} near duplicate rows; AUROC of the flag {flags}."
            )
            for dedupe in ("off", *LEVELS):
                rr = p.get(f"rule_{dedupe}")
                if rr:
                    lines.append(
                        f"  - default rule, dedupe {dedupe}: kept {rr['kept']}, dropped as duplicates "
                        f"{rr['dropped_as_duplicates']}, corrupted share of kept {rr['corrupted_share_of_kept']:.3f}, "
                        f"AUROC {rr['auroc']:.3f} [{rr['ci95'][0]:.3f}, {rr['ci95'][1]:.3f}]"
                    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--report", default="duplicates")
    a = ap.parse_args()
    r = {"date": dt.date.today().isoformat(), "machine": machine(), "speed": speed(a.n, a.repeats)}
    r["real_pools"] = pool_counts() if have_shared_data() else []
    r["pretrained_pools"] = pretrained_pools() if have_shared_data() else []
    r["human_judgements"] = human_judgements() if have_shared_data() else None
    text = markdown(r)
    save_report(a.report, r, text)
    print(text)


if __name__ == "__main__":
    main()
