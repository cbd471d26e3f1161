"""The memory and time plan (`gdig score --plan`): its figures against the peaks measured on two tiny models,
7B plans built on the meta device, and a run that would not fit refused before it starts."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_pairs
from gdig.atomic import write_jsonl
from gdig.config import DataConfig, ScoreConfig
from gdig.demo.tiny import build_tiny_model
from gdig.engine.hooks import padded_batches
from gdig.planning.plan import GiB, Plan, plan_run
from gdig.planning.report import advice, format_plan

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bench" / "configs"
MEASURED_STAGES = ("load", "fit_covariance", "fit_eigen", "seeds", "score")  # finalize: after the peak


def _helper(mode: str, settings: Path, *extra: str) -> dict:
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, str(ROOT / "tests" / "stage_peaks.py"), mode, str(settings), *extra]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measured_per_rank(settings: Path, nproc: int) -> list[dict]:
    """stage_peaks.py's measure under torchrun (gloo), one thread per process: each rank's peaks."""
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [*launcher, str(ROOT / "tests" / "stage_peaks.py"), "measure", str(settings)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{"peaks"')]


def _settings(tmp_path: Path, tokenizer, arch: str, sizes: dict, n_cands: int, n_seeds: int, extra: dict) -> Path:
    """A tiny model, its candidates and seeds on disk, and the run's settings as JSON (for stage_peaks.py)."""
    model_dir = tmp_path / "model"
    build_tiny_model(arch, tokenizer, out=model_dir, **sizes)
    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(n_cands, seed=1, max_words=40))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(n_seeds, seed=2, max_words=40))
    cfg = ScoreConfig(
        model=str(model_dir),
        candidates=str(cands),
        seeds=str(seeds),
        out=str(tmp_path / "run"),
        batch_size=16,
        sketch_dim=64,
        umap=False,
        device="cpu",
        **extra,
    )
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(cfg.to_dict()))
    return settings


def _compare(plan: dict, measured: dict) -> None:
    """The job's planned peak within 15% of the measured one, and each stage's plausible."""
    stages = [s for s in MEASURED_STAGES if s in plan]
    peak_planned, peak_measured = max(plan[s] for s in stages), max(measured[s] for s in stages)
    assert peak_planned == pytest.approx(peak_measured, rel=0.15), (plan, measured)  # the job's peak
    highest = 0.0  # freed CPU memory often stays resident: a stage may still hold an earlier stage's peak
    for stage in stages:
        highest = max(highest, plan[stage])
        assert plan[stage] <= 1.25 * measured[stage] and highest >= measured[stage] / 1.25, (stage, plan, measured)


WIDE = {"hidden": 128, "ffn": 1536, "layers": 4, "heads": 4}  # wide MLPs: factors and sums outweigh the rest


@pytest.mark.parametrize(
    ("arch", "sizes", "n_cands", "n_seeds", "extra"),
    [
        ("llama", {"hidden": 96, "ffn": 384, "layers": 3, "heads": 4}, 300, 64, {}),
        ("llama", {"hidden": 96, "ffn": 384, "layers": 3, "heads": 4}, 300, 64, {"fit_examples": 75}),
        ("llama", {"hidden": 96, "ffn": 384, "layers": 3, "heads": 4}, 300, 64, {"hessian": "diagonal"}),
        # wide MLPs, whose factors and float64 sums outweigh the rest, in four module groups (2-5 minutes)
        pytest.param(
            "llama",
            WIDE,
            200,
            32,
            {"module_partitions": 4},
            marks=pytest.mark.slow,
        ),
        (
            "gpt2",
            {"hidden": 128, "ffn": 512, "layers": 2, "heads": 4},
            400,
            64,
            {"hessian": "kfac", "seed_rank": 8, "fit_cache_mb": 0, "data": DataConfig(max_length=256)},
        ),
    ],
)
def test_plan_is_within_15_percent_of_the_measured_peaks(tmp_path, tokenizer, arch, sizes, n_cands, n_seeds, extra):
    settings = _settings(tmp_path, tokenizer, arch, sizes, n_cands, n_seeds, extra)
    _compare(_helper("plan", settings)["peaks"], _helper("measure", settings)["peaks"])


@pytest.mark.slow
def test_a_sharded_plan_is_within_15_percent_of_each_processs_measured_peak(tmp_path, tokenizer):
    extra = {"module_partitions": 4, "shard_factors": True}
    settings = _settings(tmp_path, tokenizer, "llama", WIDE, 200, 32, extra)
    plan = _helper("plan", settings, "2")  # each process's, with its share of this machine's memory
    ranks = _measured_per_rank(settings, 2)
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    for measured in ranks:
        _compare(plan["peaks"], measured["peaks"])


@pytest.mark.parametrize(("name", "params_gib"), [("llama-2-7b", 12.55), ("qwen2.5-7b", 14.19), ("llama-3-8b", 14.96)])
def test_a_7b_plan_is_built_on_the_meta_device_for_one_80_gb_gpu(tmp_path, name, params_gib, capsys):
    from gdig.__main__ import main

    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(50, seed=1))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(8, seed=2))
    argv = [
        "score",
        "--model",
        str(CONFIGS / name),
        "--candidates",
        str(cands),
        "--seeds",
        str(seeds),
        "--out",
        str(tmp_path / "run"),
        "--plan",
        "--device",
        "cuda",
        "--dtype",
        "bfloat16",
        "--plan-memory-gb",
        "80",
    ]
    assert main([*argv, "--module-partitions", "1"]) == 0  # every module at once
    text = capsys.readouterr().out
    assert "memory available: 80.00 GiB" in text and f"model {params_gib:.2f} GiB".replace(" ", "") in text.replace(
        " ", ""
    )
    for stage in ("load", "fit_covariance", "fit_eigen", "seeds", "score", "finalize"):
        assert any(line.startswith(stage) for line in text.splitlines()), stage
    assert "DOES NOT FIT" in text and "--modules tracking half of the layers" in text  # the default modules' factors
    groups = int(re.search(r"--module-partitions (\d+) \(or 0, the default, which chooses it\): fits", text)[1])
    assert main(argv) == 0  # the default: the fewest module groups that fit
    text = capsys.readouterr().out
    assert f"--module-partitions 0 (auto): {groups} group(s)" in text and re.search(r"GiB at \w+: fits", text)
    assert 2 <= groups <= 5
    assert not (tmp_path / "run").exists()  # a plan writes nothing


def test_a_config_only_plan_without_a_gpu_plans_for_this_machine_or_asks_for_the_gpus_memory(
    tmp_path, capsys, monkeypatch
):
    """Device auto on a machine without CUDA plans a CPU run (float32, this machine's memory), as the run would
    be; --device cuda there needs --plan-memory-gb (it once planned for 0 bytes and said nothing fits)."""
    import torch

    from gdig.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(20, seed=1))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(4, seed=2))
    argv = ["score", "--model", str(CONFIGS / "llama-2-7b"), "--candidates", str(cands), "--seeds", str(seeds)]
    argv += ["--out", str(tmp_path / "run"), "--plan"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    available = float(re.search(r"memory available: ([\d.]+) GiB", text)[1])
    assert available > 0.5 and "in torch.float32" in text
    assert main([*argv, "--device", "cuda"]) == 2
    assert "give its memory with --plan-memory-gb" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_that_will_not_fit_is_refused_before_it_starts(tmp_path, tokenizer, data_files, monkeypatch):
    from gdig.pipeline import run as run_module
    from gdig.pipeline.run import MemoryPlanError, score

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    monkeypatch.setattr(run_module, "memory_for_plan", lambda *args: 1e6)  # 1 MB
    cfg = ScoreConfig(
        model="m", candidates=str(data_files[0]), seeds=str(data_files[1]), out=str(tmp_path / "r"), umap=False
    )
    with pytest.raises(MemoryPlanError, match=r"needs about .* GiB at .* but 0.0 GiB is available; nothing was comp"):
        score(cfg, model=model, tokenizer=tokenizer)
    assert not (tmp_path / "r" / "factors.safetensors").exists() and not (tmp_path / "r" / "config.json").exists()
    out = score(cfg, model=model, tokenizer=tokenizer, resume=True, memory_check=False)
    assert (out / "influence.npy").exists()


def test_a_memory_limit_bounds_the_check_the_plan_and_the_seeds_budget_and_not_the_results(
    tmp_path, tokenizer, data_files
):
    """--memory-gb: the memory check and the plan use it instead of the free memory, the seeds' automatic rank
    keeps within it; a run resumed without it is the same run (the limit paces the work, it does not score)."""
    from gdig.pipeline.run import MemoryPlanError, make_plan, score

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    cfg = ScoreConfig(
        model="m", candidates=str(data_files[0]), seeds=str(data_files[1]), out=str(tmp_path / "r"), umap=False
    )
    assert (
        make_plan(dataclasses.replace(cfg, memory_gb=3.5), model=model, tokenizer=tokenizer).available_bytes
        == 3.5 * GiB
    )
    with pytest.raises(MemoryPlanError, match=r"but 0.0 GiB is available"):  # 1 MB: nothing fits
        score(dataclasses.replace(cfg, memory_gb=1e-3), model=model, tokenizer=tokenizer)
    assert not (tmp_path / "r" / "config.json").exists()
    out = score(dataclasses.replace(cfg, memory_gb=1e-3), model=model, tokenizer=tokenizer, memory_check=False)
    assert json.loads((out / "config.json").read_text())["seed_rank_kept"] == 1  # no memory left for the seeds
    score(cfg, resume=True, model=model, tokenizer=tokenizer)  # the same settings' fingerprint without the limit


def test_advice_names_the_knobs_largest_saving_first():
    plan = Plan(
        {
            "score": {
                "model": 10.0,
                "activations (one batch)": 40.0,
                "captures (one batch)": 20.0,
                "seeds": 8.0,
                "factors": 2.0,
            }
        },
        {},
        available_bytes=50.0,
        seed_rank=None,
    )
    tips = advice(plan, ScoreConfig(model="m", candidates="c", seeds="s", out="o", batch_size=8))
    assert tips[0].startswith("--batch-size 4") and "saves about" in tips[0]
    assert any(t.startswith("--seed-rank") for t in tips) and not plan.fits
    assert "DOES NOT FIT" in format_plan(plan)


def test_padded_batches_follow_the_batching_rule():
    assert padded_batches([5, 4, 3, 1], batch_size=2, token_budget=None) == [10, 6]
    assert padded_batches([5, 4, 3, 1], batch_size=99, token_budget=9) == [5, 8, 1]


def test_module_flops_count_each_stage_algebra():
    from gdig.planning.plan import Workload
    from gdig.planning.timing import module_flops

    w = Workload({"m": (4, 6)}, 0, 0, cand_lengths=[3], seed_lengths=[2] * 8, activation_bytes_per_token=0.0)
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o")  # EK-FAC, unit normalisation
    dense = module_flops(cfg, w, rank=None)
    assert dense["covariance"] == 2 * (16 + 36) and dense["rotation"] == 2 * (16 + 36 + 24)
    assert dense["score per token"] == 2 * 24 + dense["rotation"]  # per-example gradient + self-influence
    assert dense["score per example"] == 2 * 8 * 24 and dense["factorisation"] == 0
    low = module_flops(cfg, w, rank=2)
    assert low["score per token"] == 2 * 8 * 2 * (4 + 6) + low["rotation"] and low["score per example"] == 0
    assert low["factorisation"] == 12 * 24 * (2 + 8)
    raw = module_flops(ScoreConfig(model="m", candidates="c", seeds="s", out="o", normalize="none", seed_batch=2), w, 2)
    assert raw["score per token"] == 2 * 4 * 2 * (4 + 6)  # 8 seeds in 4 columns, no self-influence


def test_the_eigendecomposition_peak_counts_sums_left_and_factors_made():
    from gdig.planning.plan import _eigendecomposition_peak

    # sums 8 (4 + 9) = 104 and 8 (1 + 1) = 16; factors 4 (4 + 9 + 6) = 76 and 4 (1 + 1 + 1) = 12; eigh's own work
    # (eigenvectors and LAPACK's workspace) 24 d^2 for a module's wider side
    assert _eigendecomposition_peak({"m": (2, 3), "n": (1, 1)}) == 120 + 24 * 9  # all sums, m's G being decomposed
    assert _eigendecomposition_peak({"m": (1, 1), "n": (6, 2)}) == 320 + 12 + 24 * 36  # n's sums, m's factors, n's A
    assert _eigendecomposition_peak({"m": (60, 1), "n": (1, 1)}) == 8 * 3601 + 16 + 24 * 3600


def test_the_plan_keeps_only_the_fit_sets_captures_and_drops_them_after_the_fit():
    from gdig.planning.plan import Workload, plan_run

    dims = {"m": (400, 600)}
    per_token = 4 * (400 + 600)
    w = Workload(dims, 0, 0, cand_lengths=[50] * 100, seed_lengths=[5] * 4, activation_bytes_per_token=0.0)
    w.fit_lengths = [50] * 10
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o", fit_examples=10, batch_size=5)
    budget = 2 * per_token * 500 * 3  # the fit set's captures fit a third of it; the whole pool's do not
    plan = plan_run(cfg, w, available_bytes=budget + 2**20)
    assert plan.stages["fit_eigen"]["reused captures"] == per_token * 500
    assert plan.stages["seeds"]["reused captures"] == 0 and plan.stages["score"]["reused captures"] == 0
    everyone = plan_run(
        dataclasses.replace(cfg, fit_examples=None), Workload(**{**vars(w), "fit_lengths": None}), budget
    )
    assert "reused captures" not in everyone.stages["fit_eigen"]  # 100 examples' captures exceed the budget


def test_the_plans_fit_set_is_the_runs(tmp_path):
    from gdig.pipeline.context import fit_subset
    from gdig.planning.probe import fit_lengths

    lengths = list(range(1, 41))
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o", fit_examples=7, random_state=3)
    chosen = fit_subset(40, 7, 3)
    assert len(set(chosen)) == 7 and fit_lengths(cfg, lengths) == sorted((lengths[i] for i in chosen), reverse=True)
    assert fit_lengths(dataclasses.replace(cfg, fit_examples=None), lengths) is None


def test_the_adequacy_signals_have_a_stage_in_the_plan_and_its_time():
    """Three forward passes per candidate: the memory of a scoring batch at most, and one pass's time."""
    from gdig.planning.plan import Workload, plan_run

    w = Workload({"m": (40, 60)}, 10**6, 10**6, [50] * 100, [5] * 4, 1000.0, seconds_per_token=1e-4)
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o", batch_size=5)
    plain, asked = plan_run(cfg, w, 2**34), plan_run(dataclasses.replace(cfg, adequacy=True), w, 2**34)
    assert "adequacy" not in plain.stages and "adequacy" not in plain.seconds
    parts = {"runtime", "model", "activations (one batch)", "captures (one batch)", "factors", "seeds"}
    assert set(asked.stages["adequacy"]) == parts  # a batch beside what the run still holds
    assert asked.seconds["adequacy"] == pytest.approx(1e-4 * 50 * 100)  # one pass over the padded pool


def test_module_groups_plan_the_largest_group_and_auto_takes_the_fewest_that_fit():
    from gdig.planning.plan import Workload, fewest_partitions, plan_run

    dims = {f"layers.{i}.mlp": (300, 1200) for i in range(6)}
    w = Workload(dims, 10**8, 0, cand_lengths=[40] * 64, seed_lengths=[20] * 8, activation_bytes_per_token=1e4)
    w.seconds_per_token, w.flops_per_second, w.eigh_flops_per_second = 1e-4, 1e10, 1e9
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o", module_partitions=1, fit_cache_mb=0)
    one = plan_run(cfg, w, 1e12)
    sums = one.stages["fit_covariance"]["factor sums (float64)"]
    assert sums == 8 * 6 * (300**2 + 1200**2)
    peaks = {p: plan_run(dataclasses.replace(cfg, module_partitions=p), w, 1e12) for p in (2, 3, 6)}
    for parts, plan in peaks.items():
        assert plan.partitions == parts
        assert plan.stages["fit_covariance"]["factor sums (float64)"] == sums / parts  # one group's at a time
        pass_seconds = 1e-4 * 64 * 40  # the model's pass over the pool; the modules' algebra is split, not repeated
        assert plan.seconds["score"] == pytest.approx(one.seconds["score"] + (parts - 1) * pass_seconds)
    assert one.worst[1] > peaks[2].worst[1] > peaks[3].worst[1] > peaks[6].worst[1]
    available = (peaks[2].worst[1] + peaks[3].worst[1]) / 2  # two groups do not fit, three do
    assert fewest_partitions(cfg, w, available) == 3
    assert fewest_partitions(cfg, w, peaks[6].worst[1] - 1) is None
    auto = plan_run(dataclasses.replace(cfg, module_partitions=0), w, available)
    assert auto.partitions == 3 and auto.fits and any("(auto): 3 group(s)" in n for n in auto.notes)
    refused = plan_run(cfg, w, available)
    assert not refused.fits and refused.partitions_to_fit == 3
    assert advice(refused, cfg)[0].startswith("--module-partitions 3 (or 0, the default, which chooses it): fits")


def test_a_sharded_plan_is_each_processs_its_groups_one_at_a_time_and_its_share_of_the_time():
    from gdig.pipeline.sharding import least_groups
    from gdig.planning.plan import Workload, plan_run

    dims = {f"layers.{i}.mlp": (300, 1200) for i in range(6)}
    w = Workload(dims, 10**8, 0, cand_lengths=[40] * 64, seed_lengths=[20] * 8, activation_bytes_per_token=1e4)
    w.seconds_per_token, w.flops_per_second, w.eigh_flops_per_second = 1e-4, 1e10, 1e9
    cfg = ScoreConfig(model="m", candidates="c", seeds="s", out="o", module_partitions=0, fit_cache_mb=0)
    sharded = dataclasses.replace(cfg, shard_factors=True)
    assert plan_run(sharded, w, 1e12, processes=1).partitions == plan_run(cfg, w, 1e12).partitions == 1
    for processes, parts in ((3, 3), (4, 4), (8, 6)):  # a group per process at least; never more than the modules
        plan = plan_run(sharded, w, 1e12, processes)
        groups = plan_run(dataclasses.replace(cfg, module_partitions=parts), w, 1e12)
        assert plan.partitions == parts and plan.stages == groups.stages  # each process: one group at a time
        assert plan.seconds["fit_covariance"] == pytest.approx(groups.seconds["fit_covariance"] / min(processes, 6))
        assert plan.seconds["seeds"] == groups.seconds["seeds"]  # one group after another
        assert any(f"--shard-factors over {processes} processes: per process" in n for n in plan.notes)
    assert plan_run(dataclasses.replace(sharded, module_partitions=6), w, 1e12, 3).partitions == 6
    assert least_groups(True, 0, 4) == least_groups(True, 5, 4) == 4 and least_groups(False, 1, 4) == 1
    with pytest.raises(ValueError, match="--shard-factors with 4 processes needs at least 4 module groups"):
        least_groups(True, 2, 4)


def test_a_run_takes_the_module_groups_its_plan_chooses(tmp_path, tokenizer, data_files, monkeypatch):
    from gdig.pipeline import run as run_module
    from gdig.pipeline.run import score

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    choose = run_module.plan_run

    def three_groups(cfg, w, available, processes=1):
        plan = choose(dataclasses.replace(cfg, module_partitions=3), w, available, processes)
        assert cfg.module_partitions == 0  # auto, the default
        return plan

    monkeypatch.setattr(run_module, "plan_run", three_groups)
    cfg = ScoreConfig(model="m", candidates=str(data_files[0]), seeds=str(data_files[1]), out=str(tmp_path / "r"))
    seen = []
    out = score(dataclasses.replace(cfg, umap=False), model=model, tokenizer=tokenizer, on_progress=seen.append)
    assert json.loads((out / "config.json").read_text())["settings"]["module_partitions"] == 3
    assert {"score [1/3]", "score [3/3]"} <= {s["stage"] for s in seen}
    assert {"fit_covariance [1/3]", "score [3/3]"} <= set(json.loads((out / "status.json").read_text())["plan"])


def test_a_lora_adapter_is_planned_on_the_meta_device_from_its_config_alone(tmp_path):
    """`--adapter` with a folder that holds only adapter_config.json (bench/configs/lora-r8): the plan tracks the
    adapter's A and B matrices; at 7B their EK-FAC factors on the wide side need module groups on 80 GB."""
    import torch

    from gdig.planning.probe import meta_workload

    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(50, seed=1))
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(8, seed=2))
    cfg = ScoreConfig(
        model=str(CONFIGS / "llama-2-7b"),
        adapter=str(CONFIGS / "lora-r8"),
        candidates=str(cands),
        seeds=str(seeds),
        out=str(tmp_path / "run"),
        module_partitions=1,
    )
    w, _ = meta_workload(cfg, cfg.model, torch.bfloat16)
    assert len(w.dims) == 32 * 7 * 2  # every linear layer of the 32 blocks, A and B
    gate_a = next(d for n, d in w.dims.items() if n.endswith("mlp.gate_proj.lora_A.default"))
    gate_b = next(d for n, d in w.dims.items() if n.endswith("mlp.gate_proj.lora_B.default"))
    assert gate_a == (4096, 8) and gate_b == (8, 11008)
    assert not plan_run(cfg, w, 80 * GiB).fits
    auto = plan_run(dataclasses.replace(cfg, module_partitions=0), w, 80 * GiB)
    assert auto.fits and 2 <= auto.partitions <= 4
    with pytest.raises(ValueError, match="no adapter_config.json"):
        meta_workload(dataclasses.replace(cfg, adapter=str(tmp_path)), cfg.model, torch.bfloat16)
