"""`torchrun -m gdig score` on CPU with gloo: 2 and 3 processes give the same run as one; a run killed in one
rank resumes with another world size to the same matrix; a failing rank ends the whole job with its message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from conftest import make_pairs
from gdig.atomic import write_jsonl
from gdig.engine.distributed import share

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).parents[1] / "dist_worker.py"


@pytest.fixture(scope="module")
def job(tmp_path_factory, tokenizer):
    """A tiny Llama, 30 candidates and 7 seeds on disk (torchrun's processes load them), and the settings."""
    from gdig.demo.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("dist")
    build_tiny_model("llama", tokenizer, root / "model", hidden=16, ffn=32, heads=2)
    write_jsonl(root / "cands.jsonl", make_pairs(30, seed=2))
    write_jsonl(root / "seeds.jsonl", make_pairs(7, seed=3))
    args = ["--model", str(root / "model"), "--candidates", str(root / "cands.jsonl")]
    args += ["--seeds", str(root / "seeds.jsonl"), "--no-umap", "--chunk-size", "4", "--batch-size", "3", "--quiet"]
    return root, args


def gdig(
    nproc: int, args: list[str], fault: str | None = None, extra_env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`gdig` under torchrun with nproc processes (plain python for 1), one thread each, so that the
    arithmetic, and hence the bits, are the same in every process count."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    env |= extra_env or {}
    env.pop("GDIG_TEST_FAULT", None)
    if fault:
        env["GDIG_TEST_FAULT"] = fault
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = (launcher if nproc > 1 else [sys.executable]) + [str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def run(job, name: str, nproc: int, *extra: str, fault: str | None = None, resume: bool = False, record=False):
    """`gdig score` into ROOT/NAME/run (`record`: each rank's fitted module groups into ROOT/NAME/fitted.jsonl)."""
    root, args = job
    out = root / name / "run"  # each run in its own folder: no factors borrowed from a sibling
    env = {"GDIG_TEST_GROUPS": str(out.parent / "fitted.jsonl")} if record else {}
    done = gdig(nproc, ["score", *args, *extra, "--out", str(out)] + (["--resume"] if resume else []), fault, env)
    return out, done


def same_run(a: Path, b: Path, exact: bool) -> None:
    for name in ("influence.npy", "sketch.npy", "index.npy", "index_norms.npy"):  # the index like the scores
        x, y = np.load(a / name), np.load(b / name)
        if exact:
            np.testing.assert_array_equal(x, y, err_msg=name)
        steps = {np.dtype(np.float16): 1e-3, np.dtype(np.int8): 1}  # the index's rows: one storage step at most
        atol = steps.get(x.dtype, 1e-5 * float(np.abs(x).max()))
        np.testing.assert_allclose(y.astype(np.float32), x.astype(np.float32), rtol=1e-5, atol=atol, err_msg=name)
    for table in ("candidates.parquet", "seeds.parquet"):
        x, y = pd.read_parquet(a / table), pd.read_parquet(b / table)
        assert list(x.columns) == list(y.columns) and (x["id"] == y["id"]).all()
        np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-5)
    with np.load(a / "index_seeds.npz") as x, np.load(b / "index_seeds.npz") as y:
        for key in x.files:
            np.testing.assert_allclose(y[key], x[key], rtol=1e-5, atol=1e-6, err_msg=key)
            if exact:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    assert (a / "factors.safetensors").exists() == (b / "factors.safetensors").exists()
    if not (a / "factors.safetensors").exists():  # no curvature fitted (identity)
        return
    fa, fb = load_file(str(a / "factors.safetensors")), load_file(str(b / "factors.safetensors"))
    for k in fa:
        if exact:
            np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_share_balances_costs_and_does_not_depend_on_order_of_calls():
    costs = [10, 1, 1, 1, 7, 3, 3, 2, 9, 4]
    parts = share(costs, 3)
    assert sorted(p for part in parts for p in part) == list(range(len(costs)))
    loads = [sum(costs[p] for p in part) for part in parts]
    assert max(loads) - min(loads) <= max(costs) and max(loads) <= 15
    assert parts == share(costs, 3) and all(part == sorted(part) for part in parts)
    assert share(costs, 1) == [list(range(len(costs)))]
    assert share([], 2) == [[], []]


@pytest.fixture(scope="module")
def reference(job):
    out, done = run(job, "one", 1, "--seed-rank", "3", "--fit-cache-mb", "0")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("nproc", [2, 3])
def test_many_processes_give_the_run_of_one_bit_for_bit(job, reference, nproc):
    out, done = run(job, f"world{nproc}", nproc, "--seed-rank", "3", "--fit-cache-mb", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(reference, out, exact=True)
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == nproc and config["finished"]
    assert config["seed_lowrank_error"] == json.loads((reference / "config.json").read_text())["seed_lowrank_error"]
    status = json.loads((out / "status.json").read_text())
    assert status["stage"] == "done" and status["error"] is None
    assert not (out / "partial").exists()


GROUPS = ("--seed-rank", "3", "--fit-cache-mb", "0", "--module-partitions", "3")


@pytest.mark.parametrize("nproc", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_module_groups_under_torchrun_give_the_run_of_one_bit_for_bit(job, reference, nproc):
    out, done = run(job, f"groups{nproc}", nproc, *GROUPS)
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(reference, out, exact=True)
    assert json.loads((out / "config.json").read_text())["settings"]["module_partitions"] == 3


SHARDED = (*GROUPS, "--shard-factors")


def fitted_groups(out: Path) -> dict[int, list[int]]:
    """Which module groups each rank fitted (dist_worker's record under GDIG_TEST_GROUPS)."""
    fitted: dict[int, list[int]] = {}
    for line in (out.parent / "fitted.jsonl").read_text().splitlines():
        rec = json.loads(line)
        fitted.setdefault(rec["rank"], []).append(rec["group"])
    return fitted


@pytest.mark.parametrize("nproc", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_sharded_factors_under_torchrun_give_the_run_of_one_bit_for_bit_each_rank_its_own_groups(job, reference, nproc):
    out, done = run(job, f"sharded{nproc}", nproc, *SHARDED, record=True)
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(reference, out, exact=True)
    config = json.loads((out / "config.json").read_text())
    assert config["seed_lowrank_error"] == json.loads((reference / "config.json").read_text())["seed_lowrank_error"]
    assert config["module_damping"] == json.loads((reference / "config.json").read_text())["module_damping"]
    assert fitted_groups(out) == {r: [g for g in range(3) if g % nproc == r] for r in range(nproc)}


@pytest.mark.parametrize(
    "kind", [pytest.param("kfac", marks=pytest.mark.slow), pytest.param("identity", marks=pytest.mark.slow), "lora"]
)
def test_sharded_factors_give_the_run_of_one_with_kfac_identity_and_lora_adapters(job, kind):
    extra = ("--hessian", kind) if kind != "lora" else ("--adapter", str(_adapter(job)))
    one, done = run(job, f"one-{kind}", 1, *GROUPS, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    out, done = run(job, f"sharded-{kind}", 2, *SHARDED, *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(one, out, exact=True)


def _adapter(job) -> Path:
    """A LoRA adapter folder for the job's model (conftest.lora_model: B matrices not zero), made once."""
    from transformers import AutoModelForCausalLM

    from conftest import lora_model

    folder = job[0] / "adapter"
    if not (folder / "adapter_config.json").exists():
        lora_model(AutoModelForCausalLM.from_pretrained(job[0] / "model")).save_pretrained(folder)
    return folder


def test_sharded_factors_with_every_default_give_the_run_of_one(job):
    """The seeds' automatic rank (decided by group 0, read by the others), the fit's kept captures scored in a
    one-process world, and the module groups chosen by the plan: one per process."""
    one, done = run(job, "one-defaults", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    out, done = run(job, "sharded-defaults", 2, "--shard-factors")
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(one, out, exact=True)
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["module_partitions"] == 2 and json.loads((one / "config.json").read_text())["finished"]


def test_sharded_factors_need_a_group_per_process_and_say_so_before_writing(job):
    out, done = run(job, "sharded-too-few", 2, "--module-partitions", "1", "--shard-factors")
    assert done.returncode != 0
    assert "--shard-factors with 2 processes needs at least 2 module groups" in done.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "flags", "kept"), [("groups", GROUPS, 0), ("sharded", SHARDED, 1)])
def test_killed_in_a_module_group_a_run_resumes_with_another_world_size(job, reference, name, flags, kept):
    """Rank 1 killed once it has kept a group's sums (data-parallel: group 0's share; sharded: its own group 1)."""
    out, done = run(job, f"{name}-killed", 2, *flags, fault="kill:1:group")
    assert done.returncode != 0
    assert list((out / "partial" / "parts-3").glob(f"group-{kept}/chunk_*")) and not (out / "influence.npy").exists()
    out, done = run(job, f"{name}-killed", 3, *flags, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(reference, out, exact=True)


@pytest.mark.parametrize(("killed", "resume_with"), [(1, 1), (0, 3)])
def test_a_rank_killed_mid_scoring_resumes_with_another_world_size_to_the_same_matrix(
    job, reference, killed, resume_with
):
    name = f"killed{killed}-{resume_with}"
    out, done = run(job, name, 2, "--seed-rank", "3", "--fit-cache-mb", "0", fault=f"kill:{killed}:score")
    assert done.returncode != 0
    chunks = list((out / "partial").glob("chunk_*.npz"))
    assert chunks and not (out / "influence.npy").exists()
    out, done = run(job, name, resume_with, "--seed-rank", "3", "--fit-cache-mb", "0", resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(reference, out, exact=True)  # factors and seeds were reused, the remaining chunks scored alike


def test_a_fit_cancelled_in_two_processes_resumes_in_three_from_every_ranks_sums(job, reference):
    out, done = run(job, "cancelled", 2, "--seed-rank", "3", "--fit-cache-mb", "0", fault="cancel:1:fit")
    assert done.returncode != 0
    saved = {p.name for p in (out / "partial").glob("fit_covariance*.safetensors")}
    assert saved == {"fit_covariance.safetensors", "fit_covariance.rank1.safetensors"}
    assert "cancelled" in json.loads((out / "status.json").read_text())["error"]
    (out / "cancel").unlink()
    out, done = run(job, "cancelled", 3, "--seed-rank", "3", "--fit-cache-mb", "0", resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    same_run(reference, out, exact=False)  # the same sums, added in another order


def test_a_failing_rank_ends_the_whole_job_within_a_minute_with_its_message(job):
    t0 = time.time()
    out, done = run(job, "failing", 2, fault="raise:1:score")
    assert time.time() - t0 < 60
    assert done.returncode != 0
    assert "injected failure on rank 1 in score" in done.stdout + done.stderr
    error = json.loads((out / "status.json").read_text())["error"]
    assert error.startswith("rank 1 of 2: RuntimeError: injected failure on rank 1"), error


def test_finetune_under_torchrun_takes_the_steps_of_one_process(job):
    root, _ = job
    args = ["finetune", "--model", str(root / "model"), "--data", str(root / "cands.jsonl"), "--max-steps", "3"]
    args += ["--batch-size", "2", "--grad-accum", "3", "--lr", "1e-3"]  # 6 examples a step: 3 per rank
    one = gdig(1, [*args, "--out", str(root / "ft1")])
    two = gdig(2, [*args, "--out", str(root / "ft2")])
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(root / "ft1" / "model.safetensors")), load_file(str(root / "ft2" / "model.safetensors"))
    base = load_file(str(root / "model" / "model.safetensors"))
    for k in a:
        moved = np.abs(a[k] - base[k]).max()
        assert np.abs(a[k] - b[k]).max() <= 1e-3 * max(moved, 1e-8), k  # the same steps, up to rounding
    logs = [[json.loads(x) for x in (root / d / "train_log.jsonl").read_text().splitlines()] for d in ("ft1", "ft2")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [3]
    assert abs(logs[0][-1]["loss"] - logs[1][-1]["loss"]) < 1e-4 * logs[0][-1]["loss"]
    assert json.loads((root / "ft2" / "finetune.json").read_text())["processes"] == 2


def test_rank_zero_status_sums_every_ranks_counters_and_takes_the_slowest_eta(tmp_path):
    from types import SimpleNamespace

    from gdig.rundir.status import Status, estimate, read_status

    zero = Status(tmp_path, world=SimpleNamespace(rank=0, size=2))
    one = Status(tmp_path, world=SimpleNamespace(rank=1, size=2))
    zero.set_plan({"score": 1.0})
    zero.update("score", 0, 10, force=True)
    one.update("score", 0, 30, force=True)
    one._stage_started -= 10.0  # rank 1: 3 of 30 in 10 s, the slow one
    one.update("score", 3, 30, force=True)
    zero._stage_started -= 10.0  # rank 0: 8 of 10 in 10 s
    zero.update("score", 8, 10, force=True)
    state = read_status(tmp_path)
    assert (state["done"], state["total"]) == (11, 40)
    assert [r["rank"] for r in state["ranks"]] == [0, 1] and state["ranks"][1]["done"] == 3
    assert estimate(state).stage_seconds > 60  # rank 1 needs about 90 s more; rank 0 alone would say 2.5 s
    one.fail("RuntimeError: out of memory")
    zero.update("score", 9, 10, force=True)  # rank 0 does not overwrite why the job stops
    zero.fail("WorldError: a peer left")
    assert read_status(tmp_path)["error"] == "rank 1 of 2: RuntimeError: out of memory"


def test_torchrun_on_a_run_being_written_is_refused_naming_the_job(job, tmp_path):
    from gdig.rundir.lock import writer_lock

    out = tmp_path / "run"
    out.mkdir()
    with writer_lock(out):
        t0 = time.time()
        done = gdig(2, ["score", *job[1], "--out", str(out), "--resume"], timeout=120)
    assert done.returncode != 0 and time.time() - t0 < 90
    assert f"being written by another job (pid {os.getpid()}" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["writer.lock"]
