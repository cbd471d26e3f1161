"""Engine speed against the floor: one plain forward+backward epoch over the candidates (all weight gradients),
versus G-DIG's curvature fit and scoring pass, same model, data, batch size and batch order, in three regimes:
the fit's captures kept and reused (the default where they fit), recomputed (`--fit-cache-mb 0`, the regime of
real models), and the curvature fitted on a quarter of the pool (`--fit-examples N/4`).

    python bench/bench_engine.py [--candidates 2000] [--seeds 64] [--repeats 2] [--hessian ekfac]
                                 [--regimes reuse recompute quarter]
    python bench/bench_engine.py --workload smollm2 --candidates 600 --seeds 256 --batch-size 8 --repeats 1

Each measurement runs in its own process (clean peak memory); repetitions alternate floor and G-DIG. The
language identification of the candidates (lingua, at finalize) is reported apart: it is text work, not the
influence engine. Writes bench/reports/engine-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    CACHE,
    add_workload_args,
    flores_pairs,
    have_shared_data,
    machine,
    peak_rss_mb,
    run_child,
    save_report,
    synthetic_pairs,
    tatoeba_pairs,
    write_jsonl,
)

MODEL_SIZES = {"hidden": 256, "ffn": 704, "layers": 4, "heads": 4}
REGIMES = {  # settings of each regime, and the goal for its total / floor
    "reuse": ({}, 1.8),
    "recompute": ({"fit_cache_mb": 0}, 3.0),
    "quarter": ({"fit_examples": "quarter"}, 1.6),
}


def prepare(n_cand: int, n_seeds: int, vocab: int) -> dict:
    """Data files and a tiny Llama (random weights, tokenizer trained on the data) in bench/.cache."""
    from gdig.demo.tiny import build_tiny_model, train_tokenizer

    key = f"engine-{n_cand}-{n_seeds}-{vocab}"
    folder = CACHE / key
    if (folder / "done").exists():
        return json.loads((folder / "done").read_text())
    if have_shared_data():
        cands, seeds, source = tatoeba_pairs(n_cand), flores_pairs(n_seeds), "tatoeba en-de + flores dev"
    else:
        cands, seeds, source = synthetic_pairs(n_cand, 0), synthetic_pairs(n_seeds, 1), "synthetic"
    write_jsonl(folder / "candidates.jsonl", cands)
    write_jsonl(folder / "seeds.jsonl", seeds)
    tok = train_tokenizer([r["src_text"] + "\n" + r["trg_text"] for r in cands + seeds], vocab_size=vocab)
    build_tiny_model("llama", tok, folder / "model", **MODEL_SIZES)
    info = {"folder": str(folder), "source": source, "n_candidates": len(cands), "n_seeds": len(seeds)}
    (folder / "done").write_text(json.dumps(info))
    return info


def child_floor(folder: Path, batch_size: int, max_length: int) -> dict:
    """A plain training epoch's compute: forward + backward with every weight gradient, no optimizer step."""

    from gdig.engine.hooks import make_batches, per_example_loss
    from gdig.inputs.data import load_dataset, tokenize_dataset
    from gdig.inputs.model import load_model
    from gdig.pipeline.context import by_length

    model, tok = load_model(str(folder / "model"), "auto", "auto")
    toks, _ = tokenize_dataset(tok, load_dataset(folder / "candidates.jsonl"), max_length)
    for p in model.parameters():
        p.requires_grad_(True)
    batches = list(make_batches(toks, by_length(toks), tok.pad_token_id, batch_size))
    t0 = time.perf_counter()
    for b in batches:
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        loss, _ = per_example_loss(logits, b.labels)
        loss.sum().backward()
    _sync()
    return {
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "n_batches": len(batches),
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def child_gdig(
    folder: Path,
    batch_size: int,
    max_length: int,
    hessian: str,
    out: Path,
    keep: Path | None = None,
    extra: dict | None = None,
) -> dict:
    from gdig.config import DataConfig, ScoreConfig
    from gdig.pipeline.run import score

    shutil.rmtree(out, ignore_errors=True)
    cfg = ScoreConfig(
        model=str(folder / "model"),
        candidates=str(folder / "candidates.jsonl"),
        seeds=str(folder / "seeds.jsonl"),
        out=str(out),
        hessian=hessian,
        batch_size=batch_size,
        normalize="none",
        umap=False,
        data=DataConfig(max_length=max_length),
        **(extra or {}),
    )
    t0 = time.perf_counter()
    score(cfg)
    total = time.perf_counter() - t0
    timings = json.loads((out / "config.json").read_text())["timings"]
    if keep is not None:  # the influence matrix, for a comparison against another implementation
        shutil.copyfile(out / "influence.npy", keep)
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": total, "timings": timings, "peak_rss_mb": peak_rss_mb()}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap, repeats=2)
    ap.add_argument("--hessian", default="ekfac")
    ap.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    ap.add_argument("--child", choices=["floor", "gdig"])
    ap.add_argument("--folder")
    ap.add_argument("--extra", default="{}", help="child: ScoreConfig fields as JSON")
    ap.add_argument("--workload", choices=["tiny", "smollm2"], default="tiny", help=WORKLOADS)
    args = ap.parse_args()
    if args.workload == "smollm2":
        smollm2(args)
        return
    if args.child == "floor":
        print(json.dumps(child_floor(Path(args.folder), args.batch_size, args.max_length)))
        return
    if args.child == "gdig":
        out = Path(args.folder) / "run"
        extra = json.loads(args.extra)
        found = child_gdig(Path(args.folder), args.batch_size, args.max_length, args.hessian, out, extra=extra)
        print(json.dumps(found))
        return
    print(json.dumps(run(args), indent=2))


WORKLOADS = (
    "tiny: a random tiny Llama, every weight tracked, three regimes; smollm2: SmolLM2-135M-Instruct with its "
    "step-1 LoRA adapter, `gdig score --adapter` with every default against its floor (bench/engine_smollm2.py)"
)


def smollm2(args) -> None:
    """The SmolLM2 default path (bench/engine_smollm2.py): a child's measurement, or the whole report."""
    from bench import engine_smollm2 as w

    if args.child:
        info = json.loads((Path(args.folder) / "done").read_text())
        found = (
            w.child_floor(info, args.batch_size)
            if args.child == "floor"
            else w.child_gdig(info, json.loads(args.extra))
        )
        print(json.dumps(found))
        return
    why = w.missing()
    if why:
        print(f"skipped: {why}")
        return
    result = w.run(args, __file__)
    save_report("engine-smollm2", result, w.markdown(result))
    print(w.markdown(result))


def run(args) -> dict:
    info = prepare(args.candidates, args.seeds, args.vocab)
    common = ["--folder", info["folder"], "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    common += ["--hessian", args.hessian]
    floors: list[dict] = []
    ours: dict[str, list[dict]] = {name: [] for name in args.regimes}
    for _ in range(args.repeats):  # alternate, so drift hits every measurement alike
        floors.append(run_child([__file__, "--child", "floor", *common]))
        for name in args.regimes:
            extra = regime_settings(name, info["n_candidates"])
            ours[name].append(run_child([__file__, "--child", "gdig", *common, "--extra", json.dumps(extra)]))
    floor = statistics.median(f["seconds"] for f in floors)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "data": info["source"],
        "model": f"llama {MODEL_SIZES}, vocab {args.vocab}, {floors[0]['n_params']:,} params",
        "settings": {
            "candidates": info["n_candidates"],
            "seeds": info["n_seeds"],
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "hessian": args.hessian,
            "repeats": args.repeats,
        },
        "floor_seconds": floor,
        "regimes": {name: summarise(runs, floor, REGIMES[name][1]) for name, runs in ours.items()},
        "peak_rss_mb": {"floor": max(f["peak_rss_mb"] for f in floors)},
    }
    write_report(result)
    return result


def regime_settings(name: str, n_candidates: int) -> dict:
    """ScoreConfig fields of a regime (the quarter is of this pool)."""
    extra = dict(REGIMES[name][0])
    if extra.get("fit_examples") == "quarter":
        extra["fit_examples"] = max(1, n_candidates // 4)
    return extra


def summarise(runs: list[dict], floor: float, goal: float) -> dict:
    """Median seconds per stage of one regime's runs, and its ratios to the floor (with and without the
    language identification at finalize)."""
    med = lambda key: statistics.median(o["timings"].get(key, 0.0) for o in runs)  # noqa: E731
    total = statistics.median(o["seconds"] for o in runs)
    seconds = {k: med(k) for k in ("load", "fit_covariance", "fit_eigen", "seeds", "score", "finalize", "signals")}
    seconds |= {"fit": seconds["fit_covariance"] + seconds["fit_eigen"], "total": total}
    return {
        "seconds": seconds,
        "total/floor": total / floor,
        "engine/floor": (total - seconds["signals"]) / floor,
        "goal": goal,
        "peak_rss_mb": max(o["peak_rss_mb"] for o in runs),
    }


def write_report(r: dict) -> None:
    floor = r["floor_seconds"]
    lines = [
        f"# Engine benchmark, {r['date']}",
        "",
        f"Machine: {r['machine']}. Data: {r['data']}. Model: {r['model']}.",
        f"Settings: {r['settings']}. Floor (forward+backward epoch, all weight gradients): {floor:.2f} s, peak RSS "
        f"{r['peak_rss_mb']['floor']:.0f} MB.",
        "",
        "| regime | fit | seeds | score | load | finalize (language ID) | total | total / floor | engine / floor "
        "(no language ID) | goal | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in r["regimes"].items():
        s = g["seconds"]
        lines.append(
            f"| {name} | {s['fit']:.2f} | {s['seeds']:.2f} | {s['score']:.2f} | {s['load']:.2f} | "
            f"{s['finalize']:.2f} ({s['signals']:.2f}) | {s['total']:.2f} | {g['total/floor']:.2f} | "
            f"{g['engine/floor']:.2f} | <= {g['goal']} | {g['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Regimes: reuse = the fit's captures kept and replayed (EK-FAC's second pass and scoring); recompute = "
        "`--fit-cache-mb 0` (three model passes); quarter = `--fit-examples` a quarter of the pool (its captures "
        "kept for the second pass; scoring runs the model again).",
    ]
    save_report("engine", r, "\n".join(lines))


if __name__ == "__main__":
    main()
