"""The real default path's workload for bench_engine.py: SmolLM2-135M-Instruct with its step-1 LoRA adapter
(`gdig finetune --lora` on the candidates), scored by `gdig score --adapter` with every default, against its
floor: one plain forward and backward epoch over the same candidates and seeds through the same model,
gradients on the adapters only, model load included (both sides load the model).

German->English pairs: Tatoeba test as candidates, FLORES-200 dev as seeds (../shared/data); skipped without it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from bench.common import CACHE, flores_pairs, have_shared_data, peak_rss_mb, tatoeba_pairs, write_jsonl

MAX_LENGTH = 128  # the finetune's and the score's default
FINETUNE = {"lora_r": 8, "lora_alpha": 16, "epochs": 1.0, "lr": 1e-3, "batch_size": 8, "seed": 0}


def missing() -> str | None:
    """Why the workload cannot run here, or None."""
    from gdig.inputs.model_source import SMOLLM2_INSTALL, smollm2_gguf

    if not have_shared_data():
        return "../shared/data is not here (Tatoeba and FLORES-200)"
    if smollm2_gguf() is None:
        return f"SmolLM2 is not installed: {SMOLLM2_INSTALL}"
    return None


def _de_en(pairs: list[dict]) -> list[dict]:
    return [{"src_text": p["trg_text"], "trg_text": p["src_text"], "src_lang": "de", "trg_lang": "en"} for p in pairs]


def prepare(n_cand: int, n_seeds: int) -> dict:
    """The base model as a plain folder, the data files and the step-1 adapter, in bench/.cache (made once)."""
    from bench.bench_pretrained import base_model
    from gdig.config import DataConfig
    from gdig.pipeline.finetuning import FinetuneConfig, finetune

    folder = CACHE / f"engine-smollm2-{n_cand}-{n_seeds}"
    done = folder / "done"
    if done.exists():
        return json.loads(done.read_text())
    base = base_model()
    write_jsonl(folder / "candidates.jsonl", _de_en(tatoeba_pairs(n_cand)))
    write_jsonl(folder / "seeds.jsonl", _de_en(flores_pairs(n_seeds)))
    step1 = folder / "step1"
    if not (step1 / "finetune.json").exists():
        shutil.rmtree(step1, ignore_errors=True)
        ft = FinetuneConfig(
            model=str(base),
            data=str(folder / "candidates.jsonl"),
            out=str(step1),
            lora=True,
            device="auto",
            data_config=DataConfig(max_length=MAX_LENGTH),
            **FINETUNE,
        )
        finetune(ft)
    info = {
        "folder": str(folder),
        "base": str(base),
        "adapter": str(step1 / "adapter"),
        "source": "Tatoeba de-en test (candidates), FLORES-200 dev de-en (seeds)",
        "n_candidates": n_cand,
        "n_seeds": n_seeds,
    }
    done.write_text(json.dumps(info))
    return info


def child_floor(info: dict, batch_size: int) -> dict:
    """Load the model with the adapter, then one forward + backward epoch over candidates and seeds, gradients
    on the adapter's matrices only; no optimizer step."""
    from gdig.engine.hooks import make_batches, per_example_loss
    from gdig.inputs.data import load_dataset, tokenize_dataset
    from gdig.inputs.model import load_model
    from gdig.pipeline.context import by_length

    t0 = time.perf_counter()
    model, tok = load_model(info["base"], "auto", "auto", adapter=info["adapter"])
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    load_s = time.perf_counter() - t0
    parts = {}
    for file in ("candidates", "seeds"):
        t1 = time.perf_counter()
        toks, _ = tokenize_dataset(tok, load_dataset(Path(info["folder"]) / f"{file}.jsonl"), MAX_LENGTH)
        for b in make_batches(toks, by_length(toks), tok.pad_token_id, batch_size):
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            loss, _ = per_example_loss(logits, b.labels)
            loss.sum().backward()
        parts[file] = time.perf_counter() - t1
    return {
        "seconds": time.perf_counter() - t0,
        "load_seconds": load_s,
        "candidates_seconds": parts["candidates"],
        "seeds_seconds": parts["seeds"],
        "peak_rss_mb": peak_rss_mb(),
        "n_trainable": n_trainable,
    }


def child_gdig(info: dict, extra: dict) -> dict:
    """`gdig score --model BASE --adapter STEP1` with every default (plus `extra`), timed whole and per stage."""
    from gdig.config import ScoreConfig
    from gdig.pipeline.run import score

    out = Path(info["folder"]) / "run"
    shutil.rmtree(out, ignore_errors=True)
    folder = Path(info["folder"])
    cfg = ScoreConfig(
        model=info["base"],
        adapter=info["adapter"],
        candidates=str(folder / "candidates.jsonl"),
        seeds=str(folder / "seeds.jsonl"),
        out=str(out),
        umap=False,
        **extra,
    )
    t0 = time.perf_counter()
    score(cfg)
    total = time.perf_counter() - t0
    config = json.loads((out / "config.json").read_text())
    factors = (out / "factors.safetensors").stat().st_size if (out / "factors.safetensors").exists() else 0
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": total,
        "timings": config["timings"],
        "peak_rss_mb": peak_rss_mb(),
        "factors_mb": factors / 2**20,
        "n_modules": len(config.get("module_damping", {})),
    }


GOAL = 2.0  # the goal for the whole default run against its floor
STAGES = ("load", "fit_covariance", "fit_eigen", "seeds", "score", "finalize", "signals")


def run(args, script: str) -> dict:
    """Floor and G-DIG in alternating child processes, `args.repeats` times; medians and ratios per stage."""
    import datetime as dt
    import statistics

    from bench.common import machine, run_child

    info = prepare(args.candidates, args.seeds)
    common = [script, "--workload", "smollm2", "--folder", info["folder"], "--batch-size", str(args.batch_size)]
    floors, ours = [], []
    for _ in range(args.repeats):
        floors.append(run_child([*common, "--child", "floor"]))
        ours.append(run_child([*common, "--child", "gdig"]))
    floor = statistics.median(f["seconds"] for f in floors)
    seconds = {k: statistics.median(o["timings"].get(k, 0.0) for o in ours) for k in STAGES}
    total = statistics.median(o["seconds"] for o in ours)
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "workload": "smollm2",
        "data": info["source"],
        "model": f"SmolLM2-135M-Instruct + step-1 LoRA adapter ({floors[0]['n_trainable']:,} adapter weights, "
        f"{ours[0]['n_modules']} tracked matrices)",
        "settings": {
            "candidates": args.candidates,
            "seeds": args.seeds,
            "floor batch size": args.batch_size,
            "repeats": args.repeats,
            "gdig": "every default (gdig score --adapter)",
        },
        "floor_seconds": floor,
        "floor_load_seconds": statistics.median(f["load_seconds"] for f in floors),
        "floor_candidates_seconds": statistics.median(f.get("candidates_seconds", 0.0) for f in floors),
        "floor_seeds_seconds": statistics.median(f.get("seeds_seconds", 0.0) for f in floors),
        "seconds": seconds | {"total": total},
        "per_floor": {k: v / floor for k, v in seconds.items()} | {"total": total / floor},
        "goal": GOAL,
        "factors_mb": ours[0]["factors_mb"],
        "peak_rss_mb": {"floor": max(f["peak_rss_mb"] for f in floors), "gdig": max(o["peak_rss_mb"] for o in ours)},
    }


def markdown(r: dict) -> str:
    """The report's table: each stage's seconds and its share of the floor."""
    lines = [
        f"# Engine benchmark, SmolLM2 default path, {r['date']}",
        "",
        f"Machine: {r['machine']}. Data: {r['data']}. Model: {r['model']}. Settings: {r['settings']}.",
        f"Floor (model load, then one forward+backward epoch over candidates and seeds, gradients on the adapters "
        f"only): {r['floor_seconds']:.1f} s (load {r['floor_load_seconds']:.1f} s, candidates "
        f"{r.get('floor_candidates_seconds', 0):.1f} s, seeds {r.get('floor_seeds_seconds', 0):.1f} s), peak RSS "
        f"{r['peak_rss_mb']['floor']:.0f} MB. G-DIG peak RSS {r['peak_rss_mb']['gdig']:.0f} MB, factors file "
        f"{r['factors_mb']:.0f} MB.",
        "",
        "| stage | seconds | / floor |",
        "|---|---:|---:|",
    ]
    for k, v in r["seconds"].items():
        lines.append(f"| {k} | {v:.1f} | {r['per_floor'][k]:.2f} |")
    staged = sum(v for k, v in r["seconds"].items() if k not in ("total", "signals"))  # finalize holds signals
    other = r["seconds"]["total"] - staged
    lines.insert(
        -1,
        f"| between stages (eigendecompositions, factors written and read back) | {other:.1f} | "
        f"{other / r['floor_seconds']:.2f} |",
    )
    met = "met" if r["per_floor"]["total"] <= r["goal"] else "not met"
    lines += [
        "",
        f"Goal: total <= {r['goal']} x the floor: {met} ({r['per_floor']['total']:.2f} x). "
        "finalize includes signals (language identification).",
    ]
    return "\n".join(lines)
