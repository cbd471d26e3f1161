"""Selection quality on real translation data from ../shared/data: noise detection and downstream quality.

Pool: Tatoeba en->de pairs with a share of injected, labelled corruptions of the demo's five kinds, plus
genuinely noisy OpenNMT WMT-style pairs. Seeds: FLORES-200 dev. Model: a small Llama trained from scratch on the
pool by `gdig finetune` (G-DIG's step 1).
(1) Noise detection: AUROC (clean vs corrupted Tatoeba pairs) and precision at the tau = 1 rule for every score
    variant (K-FAC / EK-FAC x none / unit / RelatIF x fraction helped / mean influence), per corruption kind,
    beside the loss, length-ratio and random heuristics.
(2) Downstream: fresh models fine-tuned on equal budgets chosen by G-DIG (best variant, and the paper's raw
    setting), random and the best heuristic; chrF / BLEU (sacrebleu, greedy) on FLORES devtest and on held-out
    Tatoeba pairs, over several seeds.

    python bench/bench_quality.py            # full (about 45 min on 2 CPU cores)
    python bench/bench_quality.py --quick    # smaller pool, 64 seeds, one downstream seed (a few minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, SHARED_DATA, have_shared_data, machine, read_lines, save_report, write_jsonl  # noqa: E402
from gdig.engine.influence import normalisation_divisor  # noqa: E402
from gdig.selection.select import quality_score, rank01  # noqa: E402


@dataclass
class QualityConfig:
    n_tatoeba: int = 3000
    n_opennmt: int = 500
    noise: float = 0.2
    n_seeds: int = 256
    n_test: int = 300  # FLORES devtest pairs for downstream chrF / BLEU
    n_tatoeba_test: int = 300
    vocab: int = 4000
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 352
    epochs: float = 6.0
    lr: float = 3e-3
    batch_size: int = 32
    max_length: int = 160
    # G-DIG runs on the pool: "HESSIAN [d=RELATIVE_DAMPING] [+head]" (+head: the LM head tracked too)
    runs: tuple[str, ...] = ("ekfac", "kfac", "identity", "ekfac d=0.01", "ekfac d=1.0", "ekfac +head")
    budget: int = 1000
    clusters: int = 10
    downstream_seeds: int = 3
    downstream_epochs: float = 6.0
    seed: int = 0

    def key(self) -> str:
        return f"q-{self.n_tatoeba}-{self.n_opennmt}-{self.noise}-{self.n_seeds}-{self.seed}"

    def model_key(self) -> str:
        return f"m-{self.vocab}-{self.hidden}x{self.layers}x{self.ffn}-{self.epochs}-{self.lr}-{self.batch_size}"


QUICK = {
    "n_tatoeba": 1000,
    "n_opennmt": 150,
    "n_seeds": 64,
    "n_test": 100,
    "n_tatoeba_test": 100,
    "vocab": 2000,
    "epochs": 6.0,
    "budget": 500,
    "downstream_seeds": 1,
    "runs": ("ekfac", "identity"),
}


# -- data --------------------------------------------------------------------------------------------------------


def make_pool(cfg: QualityConfig, folder: Path) -> dict[str, Path]:
    """pool.jsonl (with `origin` and `corruption`), seeds.jsonl, test-flores.jsonl, test-tatoeba.jsonl."""
    from gdig.demo.corpus import CORRUPTIONS, corrupt_target, translation_record

    files = {n: folder / f"{n}.jsonl" for n in ("pool", "seeds", "test-flores", "test-tatoeba")}
    if all(p.exists() for p in files.values()):
        return files
    rng = random.Random(cfg.seed)
    d = SHARED_DATA / "tatoeba" / "deu-eng"
    en, de = read_lines(d / "tatoeba-test-v2021-08-07.eng"), read_lines(d / "tatoeba-test-v2021-08-07.deu")
    by_src: dict[str, str] = {}
    for s, t in zip(en, de, strict=True):
        if s.strip() and t.strip():
            by_src.setdefault(s.strip(), t.strip())  # one translation per English sentence: pool/test disjoint
    pairs = sorted(by_src.items())
    rng.shuffle(pairs)
    pool_pairs, test_pairs = pairs[: cfg.n_tatoeba], pairs[cfg.n_tatoeba : cfg.n_tatoeba + cfg.n_tatoeba_test]
    fl = SHARED_DATA / "flores200" / "dev"
    fl_en, fl_de = read_lines(fl / "eng_Latn.dev"), read_lines(fl / "deu_Latn.dev")
    wrong_lang = read_lines(fl / "zho_Hans.dev")[cfg.n_seeds :]  # Chinese lines of non-seed sentences
    n_bad = int(round(cfg.noise * cfg.n_tatoeba))
    bad = rng.sample(range(cfg.n_tatoeba), n_bad)
    kind_of = {i: CORRUPTIONS[j % len(CORRUPTIONS)] for j, i in enumerate(bad)}
    pool = []
    for i, (s, t) in enumerate(pool_pairs):
        kind = kind_of.get(i)
        if kind is not None:
            other = pool_pairs[(i + 1 + rng.randrange(cfg.n_tatoeba - 1)) % cfg.n_tatoeba][1]
            wrong = rng.choice(wrong_lang)[: max(4, round(0.35 * len(t)))]  # Chinese of a plausible length
            t = corrupt_target(kind, s, t, other, wrong, rng)
        pool.append(translation_record(f"tatoeba-{i:05d}", s, t) | {"origin": "tatoeba", "corruption": kind})
    o = SHARED_DATA / "opennmt-ende"
    o_pairs = [
        (s, t)
        for s, t in zip(read_lines(o / "src-train.txt"), read_lines(o / "tgt-train.txt"), strict=True)
        if s.strip() and t.strip() and len(s.split()) <= 40
    ]  # the loader refuses empty sides
    for i, (s, t) in enumerate(o_pairs[: cfg.n_opennmt]):
        pool.append(translation_record(f"opennmt-{i:05d}", s, t) | {"origin": "opennmt", "corruption": None})
    rng.shuffle(pool)
    seeds = [translation_record(f"flores-dev-{i:04d}", s, t) for i, (s, t) in enumerate(zip(fl_en, fl_de, strict=True))]
    dt = SHARED_DATA / "flores200" / "devtest"
    test = zip(read_lines(dt / "eng_Latn.devtest"), read_lines(dt / "deu_Latn.devtest"), strict=True)
    write_jsonl(files["pool"], pool)
    write_jsonl(files["seeds"], seeds[: cfg.n_seeds])
    flores_test = [translation_record(f"flores-devtest-{i:04d}", s, t) for i, (s, t) in enumerate(test)]
    write_jsonl(files["test-flores"], flores_test[: cfg.n_test])
    tatoeba_test = [translation_record(f"tatoeba-test-{i:04d}", s, t) for i, (s, t) in enumerate(test_pairs)]
    write_jsonl(files["test-tatoeba"], tatoeba_test)
    return files


def _texts(*files: Path) -> list[str]:
    from gdig.config import DataConfig

    out = [DataConfig().prompt_template.format(trg_lang="German", src_text="")]
    for p in files:
        out += [r["src_text"] + "\n" + r["trg_text"] for r in map(json.loads, p.read_text().splitlines())]
    return out


# -- models ------------------------------------------------------------------------------------------------------


def train_model(cfg: QualityConfig, data: Path, out: Path, init: Path, seed: int, epochs: float) -> tuple[Path, float]:
    """`gdig finetune` from the initial weights in `init`; cached. Returns the folder and training seconds."""
    from gdig.config import DataConfig
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    if not (out / "finetune.json").exists():
        ft = FinetuneConfig(
            model=str(init),
            data=str(data),
            out=str(out),
            epochs=epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            warmup_ratio=0.05,
            seed=seed,
            device="auto",
            log_every=50,
            data_config=DataConfig(max_length=cfg.max_length),
        )
        finetune(ft, resume=(out / "checkpoint" / "state.json").exists())
    return out, json.loads((out / "finetune.json").read_text())["seconds"]


def evaluate_cached(model: Path, test: Path, max_new_tokens: int = 64) -> dict:
    """gdig.pipeline.metrics.evaluate_model, remembered in the model folder."""
    from gdig.pipeline.metrics import evaluate_model

    path = model / f"eval-{test.stem}-{max_new_tokens}.json"
    if not path.exists():
        path.write_text(json.dumps(evaluate_model(model, test, max_new_tokens=max_new_tokens)))
    return json.loads(path.read_text())


def init_model(cfg: QualityConfig, files: dict[str, Path], folder: Path, seed: int) -> Path:
    """Random initial weights with the pool's tokenizer (trained once, on pool + seeds)."""
    from transformers import AutoTokenizer

    from gdig.demo.tiny import build_tiny_model, init_scratch_model

    first = folder / "init-0"
    sizes = {"hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads, "ffn": cfg.ffn, "max_positions": 512}
    if not (first / "config.json").exists():
        init_scratch_model(_texts(files["pool"], files["seeds"]), first, cfg.vocab, seed=0, **sizes)
    if seed == 0:
        return first
    out = folder / f"init-{seed}"
    if not (out / "config.json").exists():
        build_tiny_model("llama", AutoTokenizer.from_pretrained(first), out, seed=seed, **sizes)
    return out


# -- scores ------------------------------------------------------------------------------------------------------


def parse_run(spec: str) -> dict:
    """ "ekfac d=0.01 +head" -> hessian, relative damping, tracked modules, cache folder name."""
    from gdig.config import DEFAULT_MODULES

    words = spec.split()
    damping = next((float(w[2:]) for w in words if w.startswith("d=")), 0.1)
    head = "+head" in words
    modules = DEFAULT_MODULES + ("|^lm_head$" if head else "")
    return {
        "hessian": words[0],
        "damping": damping,
        "modules": modules,
        "folder": f"{words[0]}-d{damping}" + ("-head" if head else ""),
    }


def score_pool(cfg: QualityConfig, model: Path, files: dict[str, Path], runs: Path, spec: str) -> Path:
    """One G-DIG run with unit normalisation (it also stores the self-influences that give the other variants)."""
    from gdig.config import DataConfig, ScoreConfig
    from gdig.pipeline.run import score

    p = parse_run(spec)
    out = runs / p["folder"]
    cfg_file = out / "config.json"
    if not (cfg_file.exists() and json.loads(cfg_file.read_text()).get("finished")):
        sc = ScoreConfig(
            model=str(model),
            candidates=str(files["pool"]),
            seeds=str(files["seeds"]),
            out=str(out),
            hessian=p["hessian"],
            normalize="unit",
            damping_relative=p["damping"],
            modules=p["modules"],
            batch_size=16,
            sketch_dim=256,
            device="auto",
            umap=False,
            data=DataConfig(max_length=cfg.max_length),
        )
        score(sc, resume=cfg_file.exists())
    return out


def variant_matrices(run_dir: Path) -> dict[str, np.ndarray]:
    """none / unit / relatif (N, S) influence from one unit-normalised run: raw = unit * |c| * |s|,
    RelatIF = raw / |c|, where |x| is the square root of the self-influence in the preconditioned metric."""
    import pandas as pd
    from safetensors import safe_open

    unit = np.load(run_dir / "influence.npy").astype(np.float64)
    cand = pd.read_parquet(run_dir / "candidates.parquet")["self_influence"].to_numpy()
    with safe_open(str(run_dir / "seed_grads.safetensors"), framework="pt") as f:
        seed = f.get_tensor("self_influence").double().numpy()
    raw = unit * normalisation_divisor(cand, seed, "unit")
    relatif = normalisation_divisor(cand, seed, "relatif")
    return {"none": raw, "unit": unit, "relatif": np.divide(raw, relatif, out=np.zeros_like(raw), where=relatif > 0)}


def aggregates(m: np.ndarray) -> dict[str, np.ndarray]:
    """The per-candidate scores a curator ranks by (higher = better)."""
    mean = m.mean(1)
    frac = (m > 0).mean(1)
    return {"fraction helped": quality_score(frac, mean), "mean influence": mean}


def heuristics(pool: list[dict], loss: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    """The scores a curator would use instead (higher = better): loss, length ratio, language identification,
    the rank average of the last two (gdig.selection.signals), and random."""
    from gdig.selection.signals import candidate_signals, length_score, rank_average

    src, tgt = [r["src_text"] for r in pool], [r["trg_text"] for r in pool]
    sig = candidate_signals(src, tgt, [r.get("src_lang") for r in pool], [r.get("trg_lang") for r in pool])
    length = length_score(sig["length_ratio"])
    out = {} if loss is None else {"low loss": -loss}
    out |= {"length ratio": length, "language id": sig["language_score"]}
    out["length + language (rank average)"] = rank_average([length, sig["language_score"]])
    return out | {"random": np.random.default_rng(seed).random(len(pool))}


def signals_only(cfg: QualityConfig, command: str) -> dict:
    """The signals beside influence alone on the real pool (no model): AUROC overall and per kind, with a
    bootstrap 95% interval over the pool's pairs."""
    from gdig.pipeline.metrics import detection_auroc

    pool = [json.loads(x) for x in make_pool(cfg, CACHE / "quality" / cfg.key())["pool"].read_text().splitlines()]
    tat = np.array([r["origin"] == "tatoeba" for r in pool])
    kinds = np.array([r["corruption"] or "" for r in pool])[tat]
    rng = np.random.default_rng(cfg.seed)
    boots = [rng.integers(0, int(tat.sum()), int(tat.sum())) for _ in range(200)]
    rows = []
    for name, good in heuristics(pool, None, cfg.seed).items():
        row = detection_row(name, good, pool)
        g = np.nan_to_num(good[tat], nan=float(np.nanmedian(good[tat])))
        aucs = [detection_auroc(g[b], kinds[b] != "")["auroc"] for b in boots]
        row["auroc_ci95"] = [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]
        rows.append(row)
    report = {"date": date.today().isoformat(), "command": command, "n_pool": len(pool), "detection": rows}
    kinds_all = sorted(rows[0]["per_kind"])
    lines = [f"# Signals alone on the real pool, {report['date']}", "", f"`{command}`; {len(pool)} pairs.", ""]
    lines += ["| score | AUROC (95% CI) | " + " | ".join(kinds_all) + " |", "|---" * (len(kinds_all) + 2) + "|"]
    for r in rows:
        ci = r["auroc_ci95"]
        cells = " | ".join(f"{r['per_kind'][k]:.3f}" for k in kinds_all)
        lines.append(f"| {r['score']} | {r['auroc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f}) | {cells} |")
    save_report("quality-signals", report, "\n".join(lines))
    print("\n".join(lines))
    return report


def detection_row(name: str, good: np.ndarray, pool: list[dict], frac: np.ndarray | None = None) -> dict:
    """AUROC on the labelled pairs (all but OpenNMT's), per kind; precision at tau = 1 (G-DIG) and at the clean
    share."""
    from gdig.pipeline.metrics import detection_auroc

    tat = np.array([r["origin"] != "opennmt" for r in pool])
    kinds = np.array([r["corruption"] or "" for r in pool])[tat]
    corrupted = kinds != ""
    g = good[tat]
    row = {"score": name} | detection_auroc(g, corrupted, kinds)
    n_clean = int((~corrupted).sum())
    top = np.argsort(-g, kind="stable")[:n_clean]
    row["precision_at_clean_share"] = float((~corrupted[top]).mean())
    if frac is not None:
        kept = frac[tat] >= 1
        row["kept_tau_1"] = int(kept.sum())
        row["precision_tau_1"] = float((~corrupted[kept]).mean()) if kept.any() else None
    onmt = ~tat
    if onmt.any():  # where the genuinely noisy OpenNMT pairs land: mean percentile (0 worst, 1 best)
        row["opennmt_percentile"] = float(rank01(good)[onmt].mean())
    return row


def detection(cfg: QualityConfig, runs: dict[str, Path], pool: list[dict]) -> tuple[list[dict], dict]:
    import pandas as pd

    rows, scores = [], {}
    first = next(iter(runs.values()))
    loss = pd.read_parquet(first / "candidates.parquet")["loss"].to_numpy()
    for name, good in heuristics(pool, loss, cfg.seed).items():
        rows.append(detection_row(name, good, pool) | {"kind": "heuristic"})
        scores[name] = good
    for label, run in runs.items():
        for variant, m in variant_matrices(run).items():
            frac = (m > 0).mean(1)
            for agg, good in aggregates(m).items():
                name = f"{label} {variant} {agg}"
                rows.append(
                    detection_row(name, good, pool, frac)
                    | {"kind": "gdig", "run": label, "normalize": variant, "aggregate": agg}
                )
                scores[name] = good
    return rows, scores


# -- downstream --------------------------------------------------------------------------------------------------


def gdig_selection(
    m: np.ndarray, aggregate: str, sketch: np.ndarray, ids: list[str], cfg: QualityConfig, seed: int
) -> np.ndarray:
    """G-DIG alone: the quality rule (tau on the fraction of seeds helped, or a floor on the mean influence,
    whichever the variant ranks by) set to keep 1.25 x budget, then K-means diversity resampling to the budget."""
    from gdig.selection.select import SelectionConfig, select

    frac, mean = (m > 0).mean(1), m.mean(1)
    keep = int(min(len(m), 1.25 * cfg.budget))
    if aggregate == "fraction helped":
        taus = np.unique(frac)[::-1]
        tau = next((float(t) for t in taus if (frac >= t).sum() >= keep), float(taus[-1]))
        rule = {"rule": "fraction", "tau": tau}
    else:
        rule = {"rule": "mean", "min_mean": float(np.sort(mean)[::-1][keep - 1])}
    sel = SelectionConfig(
        method="gdig", combine="influence", clusters=cfg.clusters, budget=cfg.budget, seed=seed, **rule
    )
    return select(frac, mean, sketch, ids, sel).indices


def downstream(cfg: QualityConfig, files, folder: Path, methods: dict[str, dict], pool: list[dict]) -> list[dict]:
    """Fresh models trained on each method's selection; chrF / BLEU on FLORES devtest and held-out Tatoeba."""

    rows = []
    for seed in range(cfg.downstream_seeds):
        init = init_model(cfg, files, folder, seed)
        for name, m in methods.items():
            idx = m["select"](seed)
            sub = folder / "downstream" / f"{_slug(name)}-s{seed}"
            data = write_jsonl(sub / "train.jsonl", [pool[i] for i in idx])
            model, secs = train_model(cfg, data, sub / "model", init, seed, cfg.downstream_epochs)
            rec = {
                "method": name,
                "seed": seed,
                "n_train": len(idx),
                "train_seconds": secs,
                "corrupted_share": float(np.mean([pool[i]["corruption"] is not None for i in idx])),
                "opennmt_share": float(np.mean([pool[i]["origin"] == "opennmt" for i in idx])),
            }
            for test in ("test-flores", "test-tatoeba"):
                q = evaluate_cached(model, files[test], max_new_tokens=96)
                rec |= {f"{test}-{k}": q[k] for k in ("chrf", "bleu", "loss")}
            print(json.dumps(rec), flush=True)
            rows.append(rec)
    return rows


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == name]
        agg = {"method": name, "seeds": len(rs), "corrupted_share": rs[0]["corrupted_share"]}
        for k in ("test-flores-chrf", "test-flores-bleu", "test-tatoeba-chrf", "test-tatoeba-bleu"):
            v = np.array([r[k] for r in rs])
            agg[k] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]
        out.append(agg)
    return out


# -- report ------------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    c = report["config"]
    kinds = sorted({k for r in report["detection"] for k in r["per_kind"]})
    lines = [
        f"# Selection quality on real data ({report['date']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}",
        "",
        f"Pool: {c['n_tatoeba']} Tatoeba en-de pairs ({c['noise']:.0%} injected corruptions, labelled) + "
        f"{c['n_opennmt']} OpenNMT WMT-style pairs; seeds: {c['n_seeds']} FLORES-200 dev pairs. Model: Llama "
        f"{c['hidden']}x{c['layers']} (MLP {c['ffn']}, vocab {c['vocab']}) trained from scratch on the pool for "
        f"{c['epochs']} epochs ({report['model']['train_seconds']:.0f} s): held-out Tatoeba loss "
        f"{report['model']['tatoeba_loss']:.2f}, chrF {report['model']['tatoeba_chrf']:.1f}; FLORES devtest "
        f"chrF {report['model']['flores_chrf']:.1f}.",
        "",
        "## Noise detection (AUROC clean vs corrupted Tatoeba pairs; higher is better)",
        "",
        "| score | AUROC | " + " | ".join(kinds) + " | precision at clean share | kept at tau=1 | precision at "
        "tau=1 | OpenNMT percentile |",
        "|---|---:|" + "---:|" * (len(kinds) + 4),
    ]
    for r in sorted(report["detection"], key=lambda r: -r["auroc"]):
        prec = "" if r.get("precision_tau_1") is None else f"{r['precision_tau_1']:.3f}"
        lines.append(
            f"| {r['score']} | **{r['auroc']:.3f}** | "
            + " | ".join(f"{r['per_kind'][k]:.3f}" for k in kinds)
            + f" | {r['precision_at_clean_share']:.3f} | {r.get('kept_tau_1', '')} | {prec} | "
            f"{r.get('opennmt_percentile', float('nan')):.2f} |"
        )
    if report.get("downstream"):
        lines += [
            "",
            f"## Downstream (budget {c['budget']} of {c['n_tatoeba'] + c['n_opennmt']}; fresh models, "
            f"{c['downstream_epochs']} epochs; mean ± sd over {c['downstream_seeds']} seeds)",
            "",
            "| selection | corrupted share | FLORES chrF | FLORES BLEU | Tatoeba chrF | Tatoeba BLEU |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["downstream"]:
            cells = " | ".join(
                f"{r[k][0]:.2f} ± {r[k][1]:.2f}"
                for k in ("test-flores-chrf", "test-flores-bleu", "test-tatoeba-chrf", "test-tatoeba-bleu")
            )
            lines.append(f"| {r['method']} | {r['corrupted_share']:.3f} | {cells} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items())]
    return "\n".join(lines) + "\n"


def run(cfg: QualityConfig, command: str) -> dict:

    t0 = time.time()
    timings: dict[str, float] = {}
    folder = CACHE / "quality" / cfg.key()
    files = make_pool(cfg, folder)
    pool = [json.loads(x) for x in files["pool"].read_text().splitlines()]
    t = time.time()
    init = init_model(cfg, files, folder / cfg.model_key(), 0)
    model, train_s = train_model(
        cfg, files["pool"], folder / cfg.model_key() / "pool-model", init, cfg.seed, cfg.epochs
    )
    timings["pool model"] = time.time() - t
    t = time.time()
    q_t, q_f = evaluate_cached(model, files["test-tatoeba"]), evaluate_cached(model, files["test-flores"], 96)
    timings["pool model eval"] = time.time() - t
    runs = {}
    for spec in cfg.runs:
        t = time.time()
        runs[spec] = score_pool(cfg, model, files, folder / cfg.model_key() / "runs", spec)
        timings[f"score {spec}"] = time.time() - t
    rows, scores = detection(cfg, runs, pool)
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "machine": machine(),
        "config": dataclasses.asdict(cfg),
        "detection": rows,
        "model": {
            "train_seconds": train_s,
            "tatoeba_loss": q_t["loss"],
            "tatoeba_chrf": q_t["chrf"],
            "flores_chrf": q_f["chrf"],
            "flores_bleu": q_f["bleu"],
            "samples": q_t["samples"],
        },
    }
    if cfg.downstream_seeds:
        t = time.time()
        report["downstream_raw"] = downstream(
            cfg, files, folder / cfg.model_key(), _methods(cfg, rows, scores, runs, pool), pool
        )
        report["downstream"] = summarise(report["downstream_raw"])
        timings["downstream"] = time.time() - t
    report["timings"] = timings | {"total": time.time() - t0}
    save_report("quality", report, markdown(report))
    print(markdown(report))
    return report


def _methods(cfg: QualityConfig, rows: list[dict], scores: dict, runs: dict[str, Path], pool: list[dict]) -> dict:
    """G-DIG with its best variant and with the paper's raw setting, random, and the best heuristic."""
    from gdig.rundir.results import load_run

    ids = [r["id"] for r in pool]
    gd = [r for r in rows if r["kind"] == "gdig"]
    best = max(gd, key=lambda r: r["auroc"])
    paper = next(
        r for r in gd if r["normalize"] == "none" and r["aggregate"] == "fraction helped" and r["run"] == "ekfac"
    )
    heur = max((r for r in rows if r["kind"] == "heuristic" and r["score"] != "random"), key=lambda r: r["auroc"])
    out = {}
    for label, r in ((f"G-DIG best: {best['score']}", best), (f"G-DIG paper: {paper['score']}", paper)):
        m = variant_matrices(runs[r["run"]])[r["normalize"]]
        sketch = load_run(runs[r["run"]]).sketch
        out[label] = {"select": lambda s, m=m, a=r["aggregate"], sk=sketch: gdig_selection(m, a, sk, ids, cfg, s)}
    top = lambda good: lambda s: np.argsort(-good, kind="stable")[: cfg.budget]  # noqa: E731
    out[f"heuristic: {heur['score']}"] = {"select": top(scores[heur["score"]])}
    out["random"] = {"select": lambda s: np.random.default_rng(1000 + s).permutation(len(pool))[: cfg.budget]}
    return out


SWEEP = (
    {"hidden": 64, "layers": 2, "heads": 4, "ffn": 176, "epochs": 6.0},
    {"hidden": 128, "layers": 4, "heads": 4, "ffn": 352, "epochs": 1.5},
    {"hidden": 128, "layers": 4, "heads": 4, "ffn": 352, "epochs": 3.0},
    {"hidden": 128, "layers": 4, "heads": 4, "ffn": 352, "epochs": 6.0},
    {"hidden": 128, "layers": 4, "heads": 4, "ffn": 352, "epochs": 12.0},
    {"hidden": 256, "layers": 4, "heads": 4, "ffn": 704, "epochs": 6.0},
)


def sweep_models(base: QualityConfig, command: str) -> dict:
    """Model size and training length against held-out loss / chrF / training time and the detection AUROC of
    the scores taken with that model (EK-FAC), to pick the setting the demo and benchmarks use."""

    rows = []
    for sizes in SWEEP:
        cfg = dataclasses.replace(base, runs=("ekfac",), downstream_seeds=0, **sizes)
        folder = CACHE / "quality" / cfg.key()
        files = make_pool(cfg, folder)
        pool = [json.loads(x) for x in files["pool"].read_text().splitlines()]
        init = init_model(cfg, files, folder / cfg.model_key(), 0)
        model, train_s = train_model(
            cfg, files["pool"], folder / cfg.model_key() / "pool-model", init, cfg.seed, cfg.epochs
        )
        q_t, q_f = evaluate_cached(model, files["test-tatoeba"]), evaluate_cached(model, files["test-flores"], 96)
        run_dir = score_pool(cfg, model, files, folder / cfg.model_key() / "runs", "ekfac")
        timings = json.loads((run_dir / "config.json").read_text())["timings"]
        score_s = sum(v for k, v in timings.items() if k != "factors_reused")
        det, _ = detection(cfg, {"ekfac": run_dir}, pool)
        best = max((r for r in det if r["kind"] == "gdig"), key=lambda r: r["auroc"])
        row = sizes | {
            "train_seconds": train_s,
            "score_seconds": score_s,
            "tatoeba_loss": q_t["loss"],
            "tatoeba_chrf": q_t["chrf"],
            "flores_chrf": q_f["chrf"],
            "best_variant": best["score"],
            "best_auroc": best["auroc"],
            "aurocs": {r["score"]: r["auroc"] for r in det},
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "machine": machine(),
        "config": dataclasses.asdict(base),
        "models": rows,
    }
    lines = [
        f"# Model size and training length ({report['date']})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {report['machine']}",
        "",
        "| model | epochs | train s | Tatoeba loss | Tatoeba chrF | "
        "FLORES chrF | EK-FAC none mean | EK-FAC unit mean | low loss | length ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = r["aurocs"]
        lines.append(
            f"| {r['hidden']}x{r['layers']} (MLP {r['ffn']}) | {r['epochs']:g} | {r['train_seconds']:.0f} | "
            f"{r['tatoeba_loss']:.2f} | {r['tatoeba_chrf']:.1f} | {r['flores_chrf']:.1f} | "
            f"{a['ekfac none mean influence']:.3f} | {a['ekfac unit mean influence']:.3f} | "
            f"{a['low loss']:.3f} | {a['length ratio']:.3f} |"
        )
    save_report("models", report, "\n".join(lines))
    print("\n".join(lines))
    return report


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small pool, 64 seeds, one downstream seed")
    ap.add_argument("--no-downstream", action="store_true")
    ap.add_argument("--sweep-models", action="store_true", help="model size / epochs sweep instead of the report")
    ap.add_argument("--signals-only", action="store_true", help="the signals beside influence alone (no model)")
    ap.add_argument("--runs", nargs="+", help='G-DIG runs, e.g. "ekfac" "kfac d=0.01" "ekfac +head"')
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override a QualityConfig field")
    args = ap.parse_args()
    if not have_shared_data():
        print(f"skipped: no real data at {SHARED_DATA} (see ../shared/data/SOURCES.md)")
        return
    cfg = QualityConfig(**(QUICK if args.quick else {}))
    if args.quick:
        os.environ.setdefault("GDIG_BENCH_TAG", "quick")  # never overwrite the full report
    if args.no_downstream:
        cfg.downstream_seeds = 0
    if args.runs:
        cfg.runs = tuple(args.runs)
    for kv in args.set:
        k, v = kv.split("=", 1)
        setattr(cfg, k, type(getattr(cfg, k))(json.loads(v)))
    command = "python bench/bench_quality.py " + " ".join(sys.argv[1:])
    if args.sweep_models:
        sweep_models(cfg, command)
        return
    if args.signals_only:
        signals_only(cfg, command)
        return
    run(cfg, command)


if __name__ == "__main__":
    main()
