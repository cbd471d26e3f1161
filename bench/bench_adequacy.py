"""Real translation quality: which of two system outputs of the same source human judges scored higher.

WMT21 news German->English (`../shared/data/wmt21-da-deen/segments.jsonl`: every system output with its
segment-level direct assessment). A pool of `--per-segment` system outputs (the best- and the worst-judged,
others at random) of `--segments` random source segments among the 193 whose human translation was scored too
(the human translations left out of the pool, kept as a reference); SmolLM2-135M-Instruct as it is, or with a
LoRA step-1 fine-tune on the pool (`--step1`, as a G-DIG run would). For every signal (higher = better):

- pairwise accuracy: over the pairs of outputs of one source whose DA scores differ by at least 10 (20) points,
  the share the signal orders as the judges did (ties count half);
- Spearman with the judges' z-scores over the whole pool;

each with a 95% bootstrap interval over source segments. Signals: the adequacy signals of `gdig.engine.adequacy`
(conditional information, dual conditional cross-entropy), the model's loss, the length ratio, language id,
and, with `--gdig-run RUN` (a `gdig score` run on the pool file this writes), G-DIG's mean and fraction. Two
anchors that no curation signal has: chrF against the human translation, and consensus with the other outputs.

    python bench/bench_adequacy.py [--segments 150] [--step1] [--gdig-run RUN]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, SHARED_DATA, machine, save_report  # noqa: E402

DATA = SHARED_DATA / "wmt21-da-deen" / "segments.jsonl"
GAPS = (10, 20)
MAX_LENGTH = 256


def pool(segments: int, per_segment: int, seed: int = 0) -> tuple[list[dict], dict[int, str]]:
    """System outputs of `segments` random sources among those with a scored human translation: of each, the
    best- and the worst-judged output and `per_segment - 2` others at random; as translation records with their
    DA scores. And the human translation of each source (the reference-based anchor)."""
    by_source, human = collections.defaultdict(list), {}
    for line in DATA.read_text("utf-8").splitlines():
        r = json.loads(line)
        if r["system"] == "HUMAN":
            human[r["sid"]] = r["trg_text"]
        else:
            by_source[r["sid"]].append(r)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(sorted(human), min(segments, len(human))))
    records = []
    for sid in chosen:
        outputs = sorted(by_source[sid], key=lambda r: (r["da_raw"], r["system"]))
        middle = outputs[1:-1]
        picked = [outputs[0], outputs[-1]] + rng.sample(middle, min(max(per_segment - 2, 0), len(middle)))
        records += [
            {"id": f"{r['sid']}-{r['system']}", "src_lang": "de", "trg_lang": "en"}
            | {k: r[k] for k in ("sid", "system", "src_text", "trg_text", "da_raw", "da_z")}
            for r in sorted(picked, key=lambda r: r["system"])
        ]
    return records, {sid: human[sid] for sid in chosen}


def anchors(records: list[dict], human: dict[int, str]) -> dict[str, np.ndarray]:
    """What no curation signal can use, as the scale's anchors: sentence chrF against the human translation
    (a reference-based metric), and the mean chrF against the other systems' outputs of the same source
    (consensus, as minimum-Bayes-risk decoding uses it)."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    outputs = collections.defaultdict(list)
    for r in records:
        outputs[r["sid"]].append(r["trg_text"])
    ref = [chrf.sentence_score(r["trg_text"], [human[r["sid"]]]).score for r in records]
    consensus = [
        np.mean([chrf.sentence_score(r["trg_text"], [o]).score for o in outputs[r["sid"]] if o is not r["trg_text"]])
        for r in records
    ]
    return {"anchor: chrF vs the human translation": np.array(ref), "anchor: consensus chrF": np.array(consensus)}


def label_check() -> dict:
    """Whether the file's DA scores can rank outputs at all: the outputs without a letter (placeholders) and their
    mean DA against the others; and the mean DA difference of two identical outputs of one source against two
    different ones (scores that follow the text differ less for identical texts)."""
    rows = [json.loads(line) for line in DATA.read_text("utf-8").splitlines()]
    placeholder = np.array([not any(c.isalpha() for c in r["trg_text"]) for r in rows])
    da = np.array([r["da_raw"] for r in rows])
    by_source = collections.defaultdict(list)
    for r in rows:
        if r["system"] != "HUMAN":
            by_source[r["sid"]].append(r)
    same, other = [], []
    for outputs in by_source.values():
        for i, a in enumerate(outputs):
            for b in outputs[i + 1 :]:
                (same if a["trg_text"].strip() == b["trg_text"].strip() else other).append(
                    abs(a["da_raw"] - b["da_raw"])
                )
    single = float(np.mean([r["n_judgements"] == 1 for r in rows]))
    return {
        "placeholder_rows": int(placeholder.sum()),
        "placeholder_systems": sorted({r["system"] for r, p in zip(rows, placeholder, strict=True) if p}),
        "placeholder_mean_da": round(float(da[placeholder].mean()), 1) if placeholder.any() else None,
        "other_mean_da": round(float(da[~placeholder].mean()), 1),
        "identical_pairs": len(same),
        "identical_mean_gap": round(float(np.mean(same)), 2),
        "different_pairs": len(other),
        "different_mean_gap": round(float(np.mean(other)), 2),
        "single_judgement_share": round(single, 3),
    }


def write_pool(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def step1(base: Path, data: Path, out: Path) -> Path:
    """A LoRA fine-tune of one epoch on the pool, as bench_pretrained's step 1 (cached)."""
    from bench.bench_pretrained import PretrainedConfig, lora_finetune

    lora_finetune(PretrainedConfig(), base, data, out, seed=0, epochs=1.0)
    return out


def model_signals(model_dir: Path, adapter: Path | None, data: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The adequacy signals and the loss of every pool record, with the seconds they took."""
    import torch

    from gdig.config import DEFAULT_PROMPT
    from gdig.engine.adequacy import adequacy_signals, token_losses
    from gdig.inputs.data import load_dataset
    from gdig.inputs.model import load_model

    torch.manual_seed(0)
    model, tok = load_model(str(model_dir), "cpu", "float32", adapter=str(adapter) if adapter else None)
    examples = load_dataset(data).examples
    t0 = time.perf_counter()
    forward = token_losses(model, tok, examples, MAX_LENGTH, batch_size=16)
    signals, reasons = adequacy_signals(
        model, tok, examples, DEFAULT_PROMPT, MAX_LENGTH, batch_size=16, forward=forward
    )
    seconds = time.perf_counter() - t0
    signals["loss"] = -np.array([f.mean() for f in forward])
    print(f"model signals: {seconds:.0f} s for {len(examples)} records (3 forward passes each)", flush=True)
    return signals, {"seconds": seconds, "reasons": reasons}


def surface_signals(records: list[dict]) -> dict[str, np.ndarray]:
    from gdig.selection.signals import candidate_signals, length_score

    src, tgt = [r["src_text"] for r in records], [r["trg_text"] for r in records]
    cols = candidate_signals(src, tgt, ["de"] * len(records), ["en"] * len(records))
    out = {"length": length_score(cols["length_ratio"])}
    if "language_score" in cols:
        out["language"] = np.asarray(cols["language_score"], np.float64)
    return out


def gdig_signals(run_dir: Path, records: list[dict]) -> dict[str, np.ndarray]:
    """G-DIG's mean influence and fraction of seeds helped, and the default rule's quality order, by record id."""
    from gdig.rundir.results import load_run

    run = load_run(run_dir)
    at = {str(i): n for n, i in enumerate(run.candidates["id"].astype(str))}
    rows = np.array([at[r["id"]] for r in records])
    m = np.asarray(run.influence, np.float64)[rows]
    return {"gdig_mean": m.mean(1), "gdig_fraction": (m > 0).mean(1)}


def pairwise(score: np.ndarray, da: np.ndarray, sid: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Per source segment: agreements (ties half) and the number of pairs at least `gap` DA points apart."""
    agree, count = [], []
    for s in np.unique(sid):
        rows = np.flatnonzero(sid == s)
        d = da[rows][:, None] - da[rows][None, :]
        x = score[rows][:, None] - score[rows][None, :]
        pairs = d >= gap
        agree.append(float(((x > 0) + 0.5 * (x == 0))[pairs].sum()))
        count.append(int(pairs.sum()))
    return np.array(agree), np.array(count)


def measure(score: np.ndarray, records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Pairwise accuracies and Spearman, each with a bootstrap interval over source segments."""
    from scipy.stats import spearmanr

    score = np.nan_to_num(np.asarray(score, np.float64), nan=-np.inf)
    sid = np.array([r["sid"] for r in records])
    da, z = np.array([r["da_raw"] for r in records]), np.array([r["da_z"] for r in records])
    segments = np.unique(sid)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(segments), len(segments)) for _ in range(n_boot)]
    out = {}
    for gap in GAPS:
        agree, count = pairwise(score, da, sid, gap)
        boot = [agree[d].sum() / count[d].sum() for d in draws]
        out[f"pairwise_{gap}"] = _with_interval(agree.sum() / count.sum(), boot) | {"pairs": int(count.sum())}
    rows_of = {s: np.flatnonzero(sid == s) for s in segments}
    finite = np.where(np.isfinite(score), score, np.nanmin(score[np.isfinite(score)]) - 1)
    boot = []
    for d in draws[:200]:
        rows = np.concatenate([rows_of[segments[i]] for i in d])
        boot.append(spearmanr(finite[rows], z[rows])[0])
    out["spearman_z"] = _with_interval(spearmanr(finite, z)[0], boot)
    return out


def _with_interval(value: float, boot) -> dict:
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"value": round(float(value), 4), "low": round(float(lo), 4), "high": round(float(hi), 4)}


NOISE_RUN = "lora8-16-1.0-0.001-8-128/runs/lora-ekfac-domain-s=256-fit128"  # bench_pretrained's default run


def noise_pool(index: int) -> dict | None:
    """On bench_pretrained's injected-noise pool `index` (its default run cached: SmolLM2 + the step-1 adapter,
    EK-FAC, 256 domain seeds): the corrupted-pair AUROC of each adequacy signal alone and of the default rule
    with and without them, with paired bootstrap intervals of the change."""
    from gdig.engine.adequacy import adequacy_signals
    from gdig.inputs.data import load_dataset
    from gdig.inputs.model import load_model
    from gdig.pipeline.metrics import detection_auroc
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, apply_rule

    run_dir = next((CACHE / "pretrained").glob(f"p-*-{index}"), Path("-")) / NOISE_RUN
    if not (run_dir / "config.json").exists():
        print(f"pool {index}: no cached default run ({run_dir}); run bench_pretrained.py first; skipped")
        return None
    run = load_run(run_dir)
    st = run.config["settings"]
    model, tok = load_model(st["model"], "cpu", "float32", adapter=st["adapter"])
    examples = load_dataset(st["candidates"]).examples
    t0 = time.perf_counter()
    data = st["data"]
    adequacy, _ = adequacy_signals(model, tok, examples, data["prompt_template"], data["max_length"], batch_size=16)
    seconds = time.perf_counter() - t0
    names = {"conditional_information": "adequacy", "dual_xent": "dual"}
    extra = {names[k]: v.astype(np.float64) for k, v in adequacy.items()}
    records = [json.loads(line) for line in Path(st["candidates"]).read_text("utf-8").splitlines()]
    labelled = np.array([r["origin"] != "opennmt" for r in records])
    corrupted = np.array([r["corruption"] is not None for r in records])[labelled]
    base = dict(run.signals)
    variants = {"default rule": base} | {f"default rule + {k}": base | {k: v} for k, v in extra.items()}
    variants["default rule + both"] = base | extra
    orders = {
        name: apply_rule(run.frac_helped, run.mean_influence, None, SelectionConfig(), sig)[1]
        for name, sig in variants.items()
    }
    orders |= {f"{k} alone": v for k, v in extra.items()}
    rng = np.random.default_rng(0)
    boots = [rng.integers(0, int(labelled.sum()), int(labelled.sum())) for _ in range(500)]

    def aurocs(score: np.ndarray) -> np.ndarray:
        good = np.nan_to_num(score[labelled], nan=float(np.nanmedian(score)))
        return np.array([detection_auroc(good[b], corrupted[b])["auroc"] for b in boots])

    reference = aurocs(orders["default rule"])
    rows = {}
    for name, order in orders.items():
        good = np.nan_to_num(order[labelled], nan=float(np.nanmedian(order)))
        boot = aurocs(order)
        rows[name] = {
            "auroc": round(detection_auroc(good, corrupted)["auroc"], 4),
            "interval": [round(float(x), 4) for x in np.percentile(boot, [2.5, 97.5])],
            "minus_default": [round(float(x), 4) for x in np.percentile(boot - reference, [2.5, 50, 97.5])],
        }
        print(f"pool {index}: {name}: {rows[name]}", flush=True)
    return {"pool": index, "candidates": len(records), "labelled": int(labelled.sum()), "seconds": seconds} | {
        "rows": rows
    }


def noise_markdown(report: dict) -> str:
    lines = [
        f"# Adequacy signals on the injected-noise pools ({report['date']})",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        "bench_pretrained.py's pools and default runs (SmolLM2 + the step-1 LoRA adapter, EK-FAC, 256 domain seeds);",
        "the adequacy signals computed with the run's own model; AUROC over the labelled pairs (clean against",
        "corrupted), 95% bootstrap intervals; the change against the default rule on the same resamples (2.5%,",
        "median, 97.5%).",
        "",
    ]
    for pool in report["pools"]:
        lines += [
            f"## Pool {pool['pool']} ({pool['candidates']} candidates, {pool['labelled']} labelled; the three "
            f"forward passes took {pool['seconds']:.0f} s)",
            "",
            "| order | AUROC | interval | change against the default rule |",
            "|---|---|---|---|",
        ]
        for name, r in pool["rows"].items():
            lo, mid, hi = r["minus_default"]
            lines.append(
                f"| {name} | {r['auroc']:.4f} | {r['interval'][0]:.3f} to {r['interval'][1]:.3f} | "
                f"{mid:+.4f} ({lo:+.4f} to {hi:+.4f}) |"
            )
        lines.append("")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    lines = [
        f"# Adequacy on WMT21 de->en human judgements ({report['date']})",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`.",
        f"Pool: {report['records']} system outputs of {report['segments']} source segments; model: {report['model']}.",
        f"Model signals took {report['model_seconds']:.0f} s (three forward passes per record).",
        "",
        "| signal | pairwise, gap >= 10 | pairwise, gap >= 20 | Spearman with DA z |",
        "|---|---|---|---|",
    ]
    for name, m in report["signals"].items():
        cells = [_cell(m[f"pairwise_{g}"]) for g in GAPS] + [_cell(m["spearman_z"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    c = report["label_check"]
    lines += [
        "",
        "Can these labels rank outputs at all (`label_check`, the whole file): "
        f"{c['placeholder_rows']:,} outputs without a letter ({', '.join(c['placeholder_systems'])}: `####`) have a "
        f"mean DA of {c['placeholder_mean_da']} against {c['other_mean_da']} for the rest; two identical outputs "
        f"of one source differ by {c['identical_mean_gap']} DA points on average ({c['identical_pairs']:,} pairs), "
        f"two different ones by {c['different_mean_gap']} ({c['different_pairs']:,}); "
        f"{c['single_judgement_share']:.0%} of the scores are one judge's.",
    ]
    pairs = next(iter(report["signals"].values()))
    lines += ["", f"Pairs: {pairs['pairwise_10']['pairs']:,} at gap 10, {pairs['pairwise_20']['pairs']:,} at gap 20."]
    if report.get("reasons"):
        lines.append(f"Records without a signal: {report['reasons']}.")
    return "\n".join(lines) + "\n"


def _cell(m: dict) -> str:
    return f"{m['value']:.3f} ({m['low']:.3f} to {m['high']:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=193, help="source segments (of the 193 with a human translation)")
    ap.add_argument("--per-segment", type=int, default=4, help="outputs per source: the best, the worst, others")
    ap.add_argument("--step1", action="store_true", help="LoRA fine-tune on the pool first (as a G-DIG run)")
    ap.add_argument("--gdig-run", type=Path, help="a gdig score run on the pool file, for G-DIG's scores")
    ap.add_argument("--noise-pools", type=int, nargs="*", help="instead: bench_pretrained's injected-noise pools")
    args = ap.parse_args()
    if args.noise_pools is not None:
        report = {"date": datetime.date.today().isoformat(), "machine": machine()}
        report["command"] = "python bench/bench_adequacy.py " + " ".join(sys.argv[1:])
        report["pools"] = [r for r in (noise_pool(i) for i in args.noise_pools or [0, 1, 2]) if r]
        if report["pools"]:
            print(save_report("adequacy-noise", report, noise_markdown(report)))
        return
    if not DATA.exists():
        print(f"{DATA} not found: skipped (benchmarks need ../shared/data)")
        return
    from bench.bench_pretrained import base_model

    records, human = pool(args.segments, args.per_segment)
    folder = CACHE / "adequacy" / f"segments-{args.segments}-{args.per_segment}"
    data = write_pool(records, folder / "pool.jsonl")
    base = base_model()
    adapter = step1(base, data, folder / "step1") / "adapter" if args.step1 else None
    cached = folder / ("signals-step1.npz" if args.step1 else "signals.npz")
    if cached.exists():
        with np.load(cached) as z:
            signals, info = {k: z[k] for k in z.files if k != "info"}, json.loads(str(z["info"]))
    else:
        signals, info = model_signals(base, adapter, data)
        np.savez(cached, info=np.array(json.dumps(info)), **signals)
    signals |= surface_signals(records)
    if args.gdig_run:
        signals |= gdig_signals(args.gdig_run, records)
    signals |= anchors(records, human)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python bench/bench_adequacy.py " + " ".join(sys.argv[1:]),
        "records": len(records),
        "segments": args.segments,
        "per_segment": args.per_segment,
        "model": "SmolLM2-135M-Instruct" + (" + LoRA step 1 on the pool" if args.step1 else ""),
        "model_seconds": info["seconds"],
        "label_check": label_check(),
        "reasons": info["reasons"],
        "signals": {name: measure(score, records) for name, score in signals.items()},
    }
    text = markdown(report)
    print(text)
    print(save_report("adequacy" + ("-step1" if args.step1 else ""), report, text))


if __name__ == "__main__":
    main()
