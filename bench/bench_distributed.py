"""torchrun scale-out on this machine, and a scaling model for real sizes.

    python bench/bench_distributed.py [--candidates 2000] [--seeds 64] [--repeats 1]

On the engine benchmark's workload (bench_engine.py: tiny Llama, Tatoeba candidates, FLORES seeds), the same
`gdig score` as one process with 2 threads (captures reused, and not) and as 2 torchrun ranks with 1 thread each:
the wall time of each stage (rank 0's status.json, waits included) and the bytes each collective moved. Then
the scaling model: per stage, the compute and the communication of a 7B model with every MLP projection tracked,
and the predicted efficiency at 8 GPUs and at 4 x 8 GPUs (assumptions in ASSUMPTIONS, printed with it).
Writes bench/reports/distributed-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_engine import MODEL_SIZES, prepare  # noqa: E402
from bench.common import ROOT, add_workload_args, machine, save_report  # noqa: E402

STAGES = ("load", "fit_covariance", "fit_eigen", "seeds", "score", "finalize")
SETUPS = {  # name: (processes, threads each, extra flags)
    "1 rank x 2 threads": (1, 2, []),
    "1 rank x 2 threads, no capture reuse": (1, 2, ["--fit-cache-mb", "0"]),
    "2 ranks x 1 thread": (2, 1, []),
}


def run_setup(folder: Path, processes: int, threads: int, extra: list[str], args) -> dict:
    """One `gdig score` job; its wall time, rank 0's seconds per stage and the bytes moved by collectives."""
    out = folder / "dist-run"
    shutil.rmtree(out, ignore_errors=True)
    flags = ["--model", str(folder / "model"), "--candidates", str(folder / "candidates.jsonl")]
    flags += ["--seeds", str(folder / "seeds.jsonl"), "--out", str(out), "--batch-size", str(args.batch_size)]
    flags += ["--max-length", str(args.max_length), "--normalize", "none", "--no-umap", "--quiet", *extra]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd = (launcher if processes > 1 else [sys.executable]) + ["-m", "gdig", "score", *flags]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    status = json.loads((out / "status.json").read_text())
    config = json.loads((out / "config.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "stages": status["stage_seconds"], "bytes": config.get("collective_bytes", {})}


# -- the scaling model ---------------------------------------------------------------------------------------
ASSUMPTIONS = {
    "model": "Llama-2-7B (bench/configs/llama-2-7b): 32 layers, hidden 4096, MLP 11008, 6.7e9 parameters",
    "tracked": "gate_proj, up_proj, down_proj of every layer (96 modules, the default)",
    "pool": "200,000 candidates x 128 tokens, 256 seeds kept at rank 64",
    "gpu_flops": 2.0e14,  # sustained FLOP/s of one H100 on these matmuls (TF32/bf16 mix), about 1/3 of peak
    "eigh_seconds": {4096: 1.5, 11008: 15.0},  # one float64 eigendecomposition on one GPU (cuSOLVER), assumed
    "nvlink_bus_bytes": 3.0e11,  # NCCL all-reduce bus bandwidth inside an 8-GPU NVLink node
    "network_bus_bytes": 2.5e10,  # the same across nodes: one 200 Gb/s NIC per GPU
    "load_seconds": 60.0,  # every rank loads the 13 GB model and tokenizes the pool: not divided
    "finalize_seconds": 300.0,  # rank 0 alone: the 200,000 x 256 matrix, tables, and the UMAP of the sketches
    "score_chunks": 782,  # 200,000 candidates in chunks of 256, shared by tokens: the last chunk is the imbalance
}


def scaling_model(gpus: int, nodes: int) -> dict:
    """Seconds per stage of `gdig score` for the 7B job above on `gpus` GPUs in `nodes` nodes: compute divided
    among the ranks, the collectives by the ring model (all-reduce 2 (n-1)/n S / bus, broadcast S / bus), and the
    eigendecompositions shared by module."""
    h, f, layers, params = 4096, 11008, 32, 6.7e9
    modules = [(h, f), (h, f), (f, h)] * layers  # (d_in, d_out)
    tokens, seeds, rank = 200_000 * 128, 256, 64
    model_pass = 4 * params  # forward + backward to the inputs (no weight gradients), per token
    flops = {
        "fit_covariance": model_pass + sum(2 * (i * i + o * o) for i, o in modules),
        "fit_eigen": model_pass + sum(2 * (i * i + o * o + i * o) for i, o in modules),
        "score": model_pass + sum(2 * rank * (i + o) * seeds for i, o in modules),
    }
    bus = ASSUMPTIONS["nvlink_bus_bytes"] if nodes == 1 else ASSUMPTIONS["network_bus_bytes"]
    ring = 2 * (gpus - 1) / gpus if gpus > 1 else 0.0
    bcast = 1.0 if gpus > 1 else 0.0
    sent = {
        "fit_covariance": ring * sum(8 * (i * i + o * o) for i, o in modules),  # float64 A and G sums
        "fit_eigen": bcast * sum(4 * (i * i + o * o + o * i) for i, o in modules)  # bases and K-FAC eigenvalues
        + ring * sum(8 * i * o for i, o in modules),  # float64 EK-FAC sums
        "score": bcast * sum(4 * seeds * rank * (i + o) for i, o in modules),  # the seeds' factors, once
    }
    eigh = sum(ASSUMPTIONS["eigh_seconds"][i] + ASSUMPTIONS["eigh_seconds"][o] for i, o in modules)
    chunks = ASSUMPTIONS["score_chunks"]
    imbalance = 1.0 / max(chunks // gpus, 1) if gpus > 1 else 0.0  # one chunk more than the mean, at most
    out = {"load": {"compute_s": 0.0, "bytes": 0.0, "comm_s": 0.0, "serial_s": ASSUMPTIONS["load_seconds"]}}
    for stage in flops:
        compute = flops[stage] * tokens / ASSUMPTIONS["gpu_flops"] / gpus * (1 + imbalance)
        out[stage] = {"compute_s": compute, "bytes": sent[stage], "comm_s": sent[stage] / bus, "serial_s": 0.0}
    out["fit_covariance"]["serial_s"] = eigh / min(gpus, len(modules))  # the modules shared by the ranks
    out["finalize"] = {"compute_s": 0.0, "bytes": 0.0, "comm_s": 0.0, "serial_s": ASSUMPTIONS["finalize_seconds"]}
    return out


def predicted_efficiency(gpus: int, nodes: int) -> float:
    """Time on one GPU over (gpus x the time on gpus), from scaling_model."""
    one = sum(sum(v for k, v in s.items() if k.endswith("_s")) for s in scaling_model(1, 1).values())
    many = sum(sum(v for k, v in s.items() if k.endswith("_s")) for s in scaling_model(gpus, nodes).values())
    return one / (gpus * many)


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap, repeats=1)
    args = ap.parse_args()
    info = prepare(args.candidates, args.seeds, args.vocab)
    folder = Path(info["folder"])
    measured: dict[str, list[dict]] = {name: [] for name in SETUPS}
    for _ in range(args.repeats):  # alternate, so drift hits every setup alike
        for name, (processes, threads, extra) in SETUPS.items():
            measured[name].append(run_setup(folder, processes, threads, extra, args))
    result = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "data": info["source"],
        "model": f"llama {MODEL_SIZES}, vocab {args.vocab}",
        "settings": {"candidates": info["n_candidates"], "seeds": info["n_seeds"], "repeats": args.repeats},
        "measured": {name: _median(runs) for name, runs in measured.items()},
        "model_7b": {
            "assumptions": ASSUMPTIONS,
            "stages_8": scaling_model(8, 1),
            "stages_32": scaling_model(32, 4),
            "efficiency": {"8 GPUs": predicted_efficiency(8, 1), "4 x 8 GPUs": predicted_efficiency(32, 4)},
        },
    }
    save_report("distributed", result, report_text(result))
    print(report_text(result))


def _median(runs: list[dict]) -> dict:
    stages = {s: statistics.median(r["stages"].get(s, 0.0) for r in runs) for s in STAGES}
    return {"wall": statistics.median(r["wall"] for r in runs), "stages": stages, "bytes": runs[0]["bytes"]}


def report_text(r: dict) -> str:
    names = list(r["measured"])
    lines = [
        f"# Distributed benchmark, {r['date']}",
        "",
        f"Machine: {r['machine']}. Data: {r['data']}. Model: {r['model']}. Settings: {r['settings']}.",
        "",
        "Seconds per stage (rank 0's status.json, waits for the other rank included) and whole-process wall time:",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for stage in STAGES:
        lines.append(f"| {stage} | " + " | ".join(f"{r['measured'][n]['stages'][stage]:.1f}" for n in names) + " |")
    lines.append("| wall | " + " | ".join(f"{r['measured'][n]['wall']:.1f}" for n in names) + " |")
    moved = r["measured"]["2 ranks x 1 thread"]["bytes"]
    lines += ["", "Bytes moved by the 2-rank job's collectives (tensor sizes, by purpose):", ""]
    lines += [f"- {what}: {size / 2**20:.2f} MiB" for what, size in moved.items()]
    m = r["model_7b"]
    lines += ["", "## Scaling model: a 7B model, every MLP projection tracked", ""]
    lines += [f"- {k}: {v}" for k, v in m["assumptions"].items()]
    for label, key in (("8 GPUs, one node", "stages_8"), ("4 x 8 GPUs", "stages_32")):
        head = "| stage | compute s | bytes sent per GPU | communication s | not divided s |"
        lines += ["", f"{label}:", "", head, "|---|---|---|---|---|"]
        for stage, v in m[key].items():
            lines.append(
                f"| {stage} | {v['compute_s']:.0f} | {v['bytes'] / 2**30:.1f} GiB | {v['comm_s']:.1f} | "
                f"{v['serial_s']:.0f} |"
            )
    eff = m["efficiency"]
    lines += ["", f"Predicted efficiency: {eff['8 GPUs']:.2f} at 8 GPUs, {eff['4 x 8 GPUs']:.2f} at 4 x 8 GPUs."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
