"""The memory and time plan against reality on a real model: SmolLM2-135M-Instruct with the default modules (all
90 MLP projections), 2,000 real de->en candidates (bench_pretrained's pool recipe: WMT22 + Tatoeba, 20% injected
corruptions) and 256 FLORES dev seeds. The plan (`gdig score --plan`, its probe included) and the run each go in
a fresh process; the run's resident memory is sampled every millisecond per stage.

    python bench/bench_plan.py [--candidates 2000] [--seeds 256] [--fit-examples 128] [--seed-rank 8]
                               [--module-partitions P]

    python bench/bench_plan.py --one-b [--layers 16] [--candidates 48] [--seeds 8] [--memory-gb G]

Needs SmolLM2 (see bench/README.md) and ../shared/data; skips cleanly without them. `--one-b` needs neither: a
random Llama of Llama-3.2-1B's shape (hidden 2,048, MLP 8,192, 16 layers; every MLP projection tracked, the
default) on synthetic pairs, with the module groups the plan chooses (`--module-partitions 0`): a model whose
fit does not fit this machine's memory in one group (`--layers L`: a slice of it, for a quicker check). Writes
bench/reports/plan-<date>.{md,json} (plan-one-b-... for --one-b, plan-one-b-lL-... for a slice): planned and
measured peak per stage, planned and measured seconds, the seeds' rank and low-rank error per module."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pretrained import PretrainedConfig, base_model, make_pool  # noqa: E402
from bench.common import CACHE, ONE_B, have_shared_data, machine, save_report, synthetic_pairs, write_jsonl  # noqa: E402

STAGES = ("load", "fit_covariance", "fit_eigen", "seeds", "score", "finalize")
GiB = 2**30


def one_b(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The 1B-shaped random Llama and synthetic candidates and seeds (cached)."""
    from gdig.demo.tiny import build_tiny_model, train_tokenizer

    cands, seeds = synthetic_pairs(args.candidates, 0), synthetic_pairs(args.seeds, 1)
    model = folder / "one-b"
    if not (model / "config.json").exists():
        tok = train_tokenizer([r["src_text"] + "\n" + r["trg_text"] for r in cands + seeds], vocab_size=500)
        build_tiny_model("llama", tok, model, **(ONE_B | {"layers": args.layers}))
    return {
        "model": model,
        "pool": write_jsonl(folder / "c.jsonl", cands),
        "seeds": write_jsonl(folder / "s.jsonl", seeds),
    }


def real_pool(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """SmolLM2 and bench_pretrained's pool of real pairs (cached)."""
    half = args.candidates // 2
    pool_cfg = PretrainedConfig(n_wmt=half, n_tatoeba=args.candidates - half, n_opennmt=0, n_seeds=args.seeds)
    return make_pool(pool_cfg, folder / pool_cfg.key()) | {"model": base_model()}


def settings(args: argparse.Namespace, folder: Path) -> Path:
    """The run's ScoreConfig as JSON (tests/stage_peaks.py reads it)."""
    from gdig.config import DataConfig, ScoreConfig

    files = (one_b if args.one_b else real_pool)(args, folder)
    cfg = ScoreConfig(
        model=str(files["model"]),
        candidates=str(files["pool"]),
        seeds=str(files["seeds"]),
        out=str(folder / "run"),
        fit_examples=args.fit_examples,
        seed_rank=args.seed_rank,
        module_partitions=args.module_partitions,
        memory_gb=args.memory_gb,
        umap=False,
        device="cpu",
        data=DataConfig(max_length=args.max_length),
    )
    path = folder / "settings.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def child(mode: str, path: Path) -> dict:
    """`tests/stage_peaks.py MODE`: the plan, or the run with its measured peaks, in a fresh process; a run that
    fails gives the peaks of the stages it reached and its error (`failed`)."""
    env = os.environ | {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    command = [sys.executable, str(ROOT / "tests" / "stage_peaks.py"), mode, str(path)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 and not (mode == "measure" and lines):
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    got = json.loads(lines[-1])
    return got | ({"failed": out.stderr.strip().splitlines()[-1]} if out.returncode != 0 else {})


def markdown(r: dict) -> str:
    plan, run = r["plan"], r["measured"]
    lines = [
        f"# The plan against a real run, {r['date']}",
        "",
        f"Machine: {r['machine']}. {r['workload']}.",
        "",
        "| stage | planned peak GiB | measured peak GiB | planned s | measured s |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in STAGES:
        if s in plan["peaks"] or s in run["peaks"]:
            cells = [plan["peaks"].get(s, 0) / GiB, run["peaks"].get(s, 0) / GiB]
            cells += [plan["seconds"].get(s, float("nan")), run["seconds"].get(s, float("nan"))]
            lines.append(f"| {s} | {cells[0]:.2f} | {cells[1]:.2f} | {cells[2]:.0f} | {cells[3]:.0f} |")
    lines += [
        "",
        f"Job peak: planned {r['planned_peak'] / GiB:.2f} GiB, measured {r['measured_peak'] / GiB:.2f} GiB "
        f"(measured / planned = {r['measured_peak'] / r['planned_peak']:.3f}; the acceptance asks <= 1.15).",
        f"Total: planned {sum(plan['seconds'].values()):.0f} s, measured {sum(run['seconds'].values()):.0f} s.",
        f"Seeds kept at rank {r['seed_rank']}; low-rank relative error over the modules: max "
        f"{r['lowrank_error']['max']:.3f}, mean {r['lowrank_error']['mean']:.3f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one-b", action="store_true", help="a random 1B-shaped Llama on synthetic pairs")
    ap.add_argument("--layers", type=int, default=ONE_B["layers"], help="--one-b: its layers (fewer: a quick slice)")
    ap.add_argument("--candidates", type=int, help="default 2000 (--one-b: 48)")
    ap.add_argument("--seeds", type=int, help="default 256 (--one-b: 8)")
    ap.add_argument("--fit-examples", type=int, default=128)
    ap.add_argument("--seed-rank", type=int, default=8, help="none: the rank the memory budget allows")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument(
        "--module-partitions", type=int, help="the modules in P groups (0: as the plan says; default 1, --one-b: 0)"
    )
    ap.add_argument("--memory-gb", type=float, help="the run's memory limit (default: the machine's available)")
    args = ap.parse_args()
    args.candidates = args.candidates or (48 if args.one_b else 2000)
    args.seeds = args.seeds or (8 if args.one_b else 256)
    if args.module_partitions is None:
        args.module_partitions = 0 if args.one_b else 1
    from gdig.inputs.model_source import smollm2_gguf

    if not args.one_b and (not have_shared_data() or smollm2_gguf() is None):
        print("skipped: needs ../shared/data and SmolLM2 (see bench/README.md)")
        return
    key = f"{args.candidates}-{args.seeds}-{args.fit_examples}-{args.seed_rank}-{args.max_length}"
    key += f"-m{args.memory_gb:g}" if args.memory_gb else ""
    key += f"-l{args.layers}" if args.one_b and args.layers != ONE_B["layers"] else ""
    key = (
        ("one-b-" if args.one_b else "") + key + (f"-p{args.module_partitions}" if args.module_partitions != 1 else "")
    )
    folder = CACHE / ("plan-" + key)
    folder.mkdir(parents=True, exist_ok=True)
    path = settings(args, folder)
    planned = child("plan", path)
    print(json.dumps(planned, indent=1), flush=True)
    if (folder / "run").exists():
        import shutil

        shutil.rmtree(folder / "run")
    measured = child("measure", path)
    written = folder / "run" / "config.json"  # a run refused or failed before its first stage writes none
    config = json.loads(written.read_text()) if written.exists() else {"settings": {"module_partitions": None}}
    errors = config.get("seed_lowrank_error") or {}
    r = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "workload": (
            (
                f"a random Llama of Llama-3.2-1B's shape, {args.layers} layers (float32, all {3 * args.layers} MLP "
                "projections, synthetic pairs)"
                if args.one_b
                else "SmolLM2-135M-Instruct (float32, all 90 MLP projections)"
            )
            + f", {args.candidates} candidates, {args.seeds} "
            f"seeds, curvature fitted on {args.fit_examples}, seed rank {args.seed_rank or 'by memory'}, max length "
            f"{args.max_length}, module groups {args.module_partitions or 'as the plan chooses'}"
            + (f", memory limit {args.memory_gb} GiB" if args.memory_gb else "")
        ),
        "settings": vars(args),
        "plan": planned,
        "measured": measured,
        "planned_peak": max(planned["peaks"].values()),
        "measured_peak": max(measured["peaks"].values(), default=0),
        "seed_rank": planned.get("seed_rank"),
        "lowrank_error": {
            "max": max((e["max"] for e in errors.values()), default=0.0),
            "mean": sum(e["mean"] for e in errors.values()) / max(len(errors), 1),
        },
        "lowrank_error_per_module": errors,
    }
    text = markdown(r)
    r["module_groups_run"] = config["settings"]["module_partitions"]
    text += f"\nModule groups the run used: {r['module_groups_run']}."
    if "failed" in measured:
        text += f"\n\n**The run failed** (the peaks above are those of the stages it reached): {measured['failed']}"
    slice_ = f"-l{args.layers}" if args.layers != ONE_B["layers"] else ""
    save_report(f"plan-one-b{slice_}" if args.one_b else "plan", r, text)
    print(text)


if __name__ == "__main__":
    main()
