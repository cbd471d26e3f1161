"""Adequacy errors that keep the language and the fluency: can a signal tell a translation from its damaged copy?

The WMT21 DA file cannot rank outputs (bench_adequacy.py's label check), so this measures adequacy on errors we
make ourselves, on clean FLORES-200 dev German->English pairs. Each source appears with its reference and with
damaged copies of it, each fluent English a language identifier and a length filter mostly pass:

- omission: a contiguous third of the target's words removed (what a truncation does inside the sentence);
- addition: half of another pair's target appended (a hallucinated continuation);
- entity: the target's numbers changed and its capitalised words (past the first) swapped for another pair's;
- negation: "not" put after the first auxiliary verb, or taken out where there is one;
- neighbour: the target of the pair of nearest length (a misaligned pair: gross noise, the reference point).

For every signal (higher = better): pairwise accuracy per kind (the share of sources whose reference scores
above its damaged copy; ties half) with a 95% bootstrap interval over sources. The model: SmolLM2-135M-Instruct
as it is (`--adapter` for another adapter folder).

    python bench/bench_adequacy_errors.py [--pairs 200] [--gdig SEEDS]
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, flores_pairs, have_shared_data, machine, save_report  # noqa: E402

AUXILIARIES = r"\b(is|are|was|were|can|could|will|would|should|has|have|had|does|do|did|must|may|might)\b"


def omission(words: list[str], other: list[str], rng: random.Random) -> str | None:
    if len(words) < 6:
        return None
    n = max(2, round(len(words) / 3))
    start = rng.randrange(1, len(words) - n)
    return " ".join(words[:start] + words[start + n :])


def addition(words: list[str], other: list[str], rng: random.Random) -> str | None:
    half = other[: max(3, len(other) // 2)]
    return " ".join(words).rstrip(".") + ", " + " ".join(half).rstrip(".,;") + "."


def entity(words: list[str], other: list[str], rng: random.Random) -> str | None:
    names = [w for w in other[1:] if w[:1].isupper() and w.isalpha()] or ["Smith", "Berlin", "March"]
    changed, out = False, []
    for i, w in enumerate(words):
        if re.fullmatch(r"\d+([.,]\d+)?", w.strip(".,;:")):
            w, changed = str(int(re.sub(r"\D", "", w) or 0) + rng.randint(2, 90)) + w[len(w.rstrip(".,;:")) :], True
        elif i and w[:1].isupper() and w.strip(".,;:").isalpha():
            tail = w[len(w.rstrip(".,;:")) :]
            w, changed = rng.choice(names) + tail, True
        out.append(w)
    return " ".join(out) if changed else None


def negation(words: list[str], other: list[str], rng: random.Random) -> str | None:
    text = " ".join(words)
    if re.search(r"\bnot\b", text):
        return re.sub(r"\s*\bnot\b", "", text, count=1)
    if re.search(r"n't\b", text):  # can't -> can, won't -> will, isn't -> is
        whole = {"can't": "can", "won't": "will", "shan't": "shall"}
        return re.sub(r"\b(\w+)n't\b", lambda m: whole.get(m[0].lower(), m[1]), text, count=1)
    out, n = re.subn(AUXILIARIES, r"\1 not", text, count=1)
    return out if n else None


KINDS = {"omission": omission, "addition": addition, "entity": entity, "negation": negation}


def make_pool(n: int, seed: int = 0) -> list[dict]:
    """References and their damaged copies, one record each, `source` linking them."""
    pairs = [{"src_text": p["trg_text"], "trg_text": p["src_text"]} for p in flores_pairs(n)]  # German->English
    rng = random.Random(seed)
    by_length = sorted(range(len(pairs)), key=lambda i: len(pairs[i]["trg_text"]))
    records = []
    for i, pair in enumerate(pairs):
        base = {"src_text": pair["src_text"], "src_lang": "de", "trg_lang": "en", "source": i}
        records.append(base | {"id": f"{i}-reference", "trg_text": pair["trg_text"], "kind": "reference"})
        words = pair["trg_text"].split()
        other = pairs[rng.choice([j for j in range(len(pairs)) if j != i])]["trg_text"].split()
        for kind, damage in KINDS.items():
            text = damage(words, other, rng)
            if text and text != pair["trg_text"]:
                records.append(base | {"id": f"{i}-{kind}", "trg_text": text, "kind": kind})
        at = by_length.index(i)
        near = by_length[at - 1] if at else by_length[1]
        records.append(base | {"id": f"{i}-neighbour", "trg_text": pairs[near]["trg_text"], "kind": "neighbour"})
    return records


def signals_of(records: list[dict], adapter: str | None) -> tuple[dict[str, np.ndarray], float]:
    """The adequacy signals, the loss, the length ratio's and language identification's scores."""
    from bench.bench_pretrained import base_model
    from gdig.config import DEFAULT_PROMPT
    from gdig.engine.adequacy import adequacy_signals, token_losses
    from gdig.inputs.data import build_example
    from gdig.inputs.model import load_model
    from gdig.selection.signals import candidate_signals, length_score

    model, tok = load_model(str(base_model()), "cpu", "float32", adapter=adapter)
    examples = [build_example("pool", i, r) for i, r in enumerate(records)]
    t0 = time.perf_counter()
    forward = token_losses(model, tok, examples, 256, batch_size=16)
    out, _ = adequacy_signals(model, tok, examples, DEFAULT_PROMPT, 256, batch_size=16, forward=forward)
    seconds = time.perf_counter() - t0
    src, tgt = [r["src_text"] for r in records], [r["trg_text"] for r in records]
    cols = candidate_signals(src, tgt, ["de"] * len(records), ["en"] * len(records))
    out |= {"loss": -np.array([f.mean() for f in forward]), "length": length_score(cols["length_ratio"])}
    if "language_score" in cols:
        out["language"] = np.asarray(cols["language_score"], np.float64)
    return out, seconds


def gdig_scores(records: list[dict], pool: Path, seeds: int, folder: Path) -> tuple[dict[str, np.ndarray], float]:
    """G-DIG in the paper's setting on this pool: SmolLM2 with a LoRA step 1 on it (bench_pretrained's), scored
    over the adapters with EK-FAC against `seeds` clean FLORES devtest pairs (the pool's domain); the mean
    influence and the default rule's order (G-DIG and the signals by the weakest link)."""
    from bench.bench_pretrained import PretrainedConfig, base_model, lora_finetune
    from gdig.config import DataConfig, ScoreConfig
    from gdig.pipeline.run import score
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, apply_rule

    cfg = PretrainedConfig()
    base, tuned = base_model(), folder / "step1"
    t0 = time.perf_counter()
    lora_finetune(cfg, base, pool, tuned, seed=0, epochs=1.0)
    seed_pairs = [{"src_text": p["trg_text"], "trg_text": p["src_text"]} for p in flores_pairs(seeds, "devtest")]
    seed_file = folder / f"seeds-{seeds}.jsonl"
    seed_file.write_text("".join(json.dumps(r | {"src_lang": "de", "trg_lang": "en"}) + "\n" for r in seed_pairs))
    out = folder / f"run-{seeds}"
    if not (out / "config.json").exists() or not json.loads((out / "config.json").read_text()).get("finished"):
        score(
            ScoreConfig(
                model=str(base),
                adapter=str(tuned / "adapter"),
                candidates=str(pool),
                seeds=str(seed_file),
                out=str(out),
                fit_examples=cfg.fit_examples,
                sketch_dim=256,
                umap=False,
                data=DataConfig(max_length=cfg.max_length),
            ),
            resume=(out / "config.json").exists(),
        )
    run = load_run(out)
    order = apply_rule(run.frac_helped, run.mean_influence, None, SelectionConfig(), run.signals)[1]
    at = {str(i): n for n, i in enumerate(run.candidates["id"].astype(str))}
    rows = np.array([at[r["id"]] for r in records])
    return {"G-DIG mean": run.mean_influence[rows], "default rule": order[rows]}, time.perf_counter() - t0


def pairwise(score: np.ndarray, records: list[dict], kind: str, n_boot: int = 1000) -> dict:
    """The share of sources whose reference scores above its `kind` copy, with a bootstrap interval."""
    ref = {r["source"]: score[i] for i, r in enumerate(records) if r["kind"] == "reference"}
    wins = np.array(
        [
            float(ref[r["source"]] > score[i]) + 0.5 * float(ref[r["source"]] == score[i])
            for i, r in enumerate(records)
            if r["kind"] == kind and np.isfinite(score[i]) and np.isfinite(ref[r["source"]])
        ]
    )
    rng = np.random.default_rng(0)
    boot = [wins[rng.integers(0, len(wins), len(wins))].mean() for _ in range(n_boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "value": round(float(wins.mean()), 3),
        "low": round(float(lo), 3),
        "high": round(float(hi), 3),
        "n": len(wins),
    }


def markdown(report: dict) -> str:
    kinds = [*KINDS, "neighbour"]
    lines = [
        f"# Adequacy errors on FLORES-200 de->en ({report['date']})",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Model: {report['model']}; "
        f"{report['records']:,} records ({report['pairs']} references and their damaged copies); the model's "
        f"passes took {report['model_seconds']:.0f} s.",
        "",
        "Pairwise accuracy (the reference above its damaged copy), 95% bootstrap interval over sources:",
        "",
        "| signal | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for name, row in report["signals"].items():
        cells = [f"{row[k]['value']:.3f} ({row[k]['low']:.2f}-{row[k]['high']:.2f})" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("gdig_seeds"):
        lines += [
            "",
            f"G-DIG: SmolLM2 with a LoRA step 1 on this pool, EK-FAC over the adapters, {report['gdig_seeds']} clean "
            f"FLORES devtest seeds; step 1 and the run took {report['gdig_seconds']:.0f} s. The default rule's row "
            "is its quality order (G-DIG and the signals by the weakest link).",
        ]
    counts = next(iter(report["signals"].values()))
    lines += ["", "Copies per kind: " + ", ".join(f"{k} {counts[k]['n']}" for k in kinds) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--adapter", help="a LoRA adapter folder on SmolLM2 (default: the model as it is)")
    ap.add_argument("--gdig", type=int, metavar="SEEDS", help="also G-DIG: step 1 on the pool, this many seeds")
    args = ap.parse_args()
    if not have_shared_data():
        print("../shared/data not found: skipped (benchmarks need it)")
        return
    records = make_pool(args.pairs)
    folder = CACHE / "adequacy-errors"
    folder.mkdir(parents=True, exist_ok=True)
    pool = folder / f"pool-{args.pairs}.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    signals, seconds = signals_of(records, args.adapter)
    gdig_seconds = None
    if args.gdig:
        more, gdig_seconds = gdig_scores(records, pool, args.gdig, folder / f"gdig-{args.pairs}")
        signals |= more
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": "python bench/bench_adequacy_errors.py " + " ".join(sys.argv[1:]),
        "model": "SmolLM2-135M-Instruct" + (f" + adapter {args.adapter}" if args.adapter else ""),
        "pairs": args.pairs,
        "records": len(records),
        "model_seconds": seconds,
        "gdig_seconds": gdig_seconds,
        "gdig_seeds": args.gdig,
        "signals": {
            name: {k: pairwise(score, records, k) for k in [*KINDS, "neighbour"]} for name, score in signals.items()
        },
    }
    text = markdown(report)
    print(text)
    print(save_report("adequacy-errors" + ("-gdig" if args.gdig else ""), report, text))


if __name__ == "__main__":
    main()
