"""Engine speed against the floor: one plain forward+backward epoch over the candidates (all weight gradients),
versus G-DIG's curvature fit and scoring pass, same model, data, batch size and batch order.

    python bench/bench_engine.py [--candidates 2000] [--seeds 64] [--repeats 2] [--hessian ekfac]

Each measurement runs in its own process (clean peak memory); repetitions alternate floor and G-DIG.
Writes bench/reports/engine-<date>.{md,json}.
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

    from gdig.context import by_length
    from gdig.data import load_dataset, tokenize_dataset
    from gdig.hooks import make_batches, per_example_loss
    from gdig.model import load_model

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
    folder: Path, batch_size: int, max_length: int, hessian: str, out: Path, keep: Path | None = None
) -> dict:
    from gdig.config import DataConfig, ScoreConfig
    from gdig.run import score

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
    ap.add_argument("--child", choices=["floor", "gdig"])
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.child == "floor":
        print(json.dumps(child_floor(Path(args.folder), args.batch_size, args.max_length)))
        return
    if args.child == "gdig":
        out = Path(args.folder) / "run"
        print(json.dumps(child_gdig(Path(args.folder), args.batch_size, args.max_length, args.hessian, out)))
        return
    print(json.dumps(run(args), indent=2))


def run(args) -> dict:
    info = prepare(args.candidates, args.seeds, args.vocab)
    common = [
        "--folder",
        info["folder"],
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--hessian",
        args.hessian,
    ]
    floors, ours = [], []
    for _ in range(args.repeats):  # alternate, so drift hits both alike
        floors.append(run_child([__file__, "--child", "floor", *common]))
        ours.append(run_child([__file__, "--child", "gdig", *common]))
    floor = statistics.median(f["seconds"] for f in floors)
    med = lambda key: statistics.median(o["timings"].get(key, 0.0) for o in ours)  # noqa: E731
    fit = med("fit_covariance") + med("fit_eigen")
    scoring = med("score")
    total = statistics.median(o["seconds"] for o in ours)
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
        "seconds": {
            "floor": floor,
            "fit": fit,
            "fit_covariance": med("fit_covariance"),
            "fit_eigen": med("fit_eigen"),
            "seeds": med("seeds"),
            "score": scoring,
            "load": med("load"),
            "finalize": med("finalize"),
            "total": total,
        },
        "ratios": {"score/floor": scoring / floor, "fit/floor": fit / floor, "total/floor": total / floor},
        "peak_rss_mb": {"floor": max(f["peak_rss_mb"] for f in floors), "gdig": max(o["peak_rss_mb"] for o in ours)},
    }
    write_report(result)
    return result


def write_report(r: dict) -> None:
    s, q = r["seconds"], r["ratios"]
    lines = [
        f"# Engine benchmark, {r['date']}",
        "",
        f"Machine: {r['machine']}. Data: {r['data']}. Model: {r['model']}.",
        f"Settings: {r['settings']}.",
        "",
        "| stage | seconds | / floor |",
        "|---|---:|---:|",
        f"| floor: forward+backward epoch, all weight grads | {s['floor']:.2f} | 1.00 |",
        f"| curvature fit (covariances + eigen-correction) | {s['fit']:.2f} | {q['fit/floor']:.2f} |",
        f"| seed gradients | {s['seeds']:.2f} | {s['seeds'] / s['floor']:.2f} |",
        f"| scoring (influence + losses + sketches) | {s['score']:.2f} | {q['score/floor']:.2f} |",
        f"| total, end to end (load and write included; UMAP off) | {s['total']:.2f} | {q['total/floor']:.2f} |",
        "",
        f"Peak RSS: floor {r['peak_rss_mb']['floor']:.0f} MB, G-DIG {r['peak_rss_mb']['gdig']:.0f} MB.",
    ]
    save_report("engine", r, "\n".join(lines))


if __name__ == "__main__":
    main()
