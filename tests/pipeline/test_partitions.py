"""--module-partitions: a run in module groups equals the run in one group bit for bit (every file's arrays and
tensors), for every approximation, low-rank seeds, adapters, and after a kill and resume."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from conftest import lora_model
from gdig.config import LORA_MODULES, ScoreConfig
from gdig.demo.tiny import build_tiny_model
from gdig.engine.curvature import FACTOR_KEYS
from gdig.engine.memory import tracked_groups
from gdig.inputs.model import find_tracked_modules
from gdig.pipeline import seed_stage
from gdig.pipeline.run import score
from gdig.rundir.factors import load_factors
from gdig.rundir.layout import PARTIAL

ARRAYS = ("influence.npy", "sketch.npy", "index.npy", "index_norms.npy")
TENSORS = ("seed_grads.safetensors",)
RECORDED = ("module_damping", "seed_rank_kept", "seed_lowrank_error", "n_seed_columns", "sketch_dim", "factors")


def _cfg(tmp_path, files, name, **kw) -> ScoreConfig:
    cands, seeds = files
    settings = {"umap": False, "index_dim": 64, "chunk_size": 7, "batch_size": 4} | kw
    return ScoreConfig(model="m", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / name), **settings)


def assert_same_run(a, b) -> None:
    """Every result file of run b equals run a's, bit for bit."""
    for name in ARRAYS:
        if (a / name).exists() or (b / name).exists():
            np.testing.assert_array_equal(np.load(b / name), np.load(a / name), err_msg=name)
    assert (a / "index_seeds.npz").exists() == (b / "index_seeds.npz").exists()
    if (a / "index_seeds.npz").exists():
        with np.load(a / "index_seeds.npz") as x, np.load(b / "index_seeds.npz") as y:
            assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    for name in TENSORS:
        if (a / name).exists() or (b / name).exists():
            x, y = load_file(str(a / name)), load_file(str(b / name))
            assert x.keys() == y.keys(), name
            assert all(torch.equal(x[k], y[k]) for k in x), name
    if (a / "factors.safetensors").exists() or (b / "factors.safetensors").exists():
        _assert_same_factors(a / "factors.safetensors", b / "factors.safetensors")
    assert pq.read_table(b / "candidates.parquet").equals(pq.read_table(a / "candidates.parquet"))
    ca, cb = (json.loads((r / "config.json").read_text()) for r in (a, b))
    assert {k: cb[k] for k in RECORDED} == {k: ca[k] for k in RECORDED}
    assert not (b / PARTIAL).exists()


def _assert_same_factors(a, b) -> None:
    """Every module's factors equal, bit for bit (an A factor that modules reading one input share is written
    once: a group that holds only one of them writes its own copy, of the same bits)."""
    x, y = load_factors(a), load_factors(b)
    assert list(x.modules) == list(y.modules) and (x.n_examples, x.n_tokens) == (y.n_examples, y.n_tokens)
    for name, f in x.modules.items():
        for key in FACTOR_KEYS:
            mine, theirs = getattr(f, key), getattr(y.modules[name], key)
            assert (mine is None) == (theirs is None) and (mine is None or torch.equal(mine, theirs)), (name, key)


def test_groups_are_consecutive_balanced_and_never_empty(model):
    tracked = find_tracked_modules(model, ScoreConfig(model="m", candidates="c", seeds="s", out="o").modules)
    assert len(tracked) == 6
    for parts in (1, 2, 3, 6, 10):
        groups = tracked_groups(tracked, parts)
        assert [t for g in groups for t in g] == tracked and all(groups)
        assert len(groups) == min(parts, len(tracked))
    assert [len(g) for g in tracked_groups(tracked, 2)] == [3, 3]  # two layers of equal modules


@pytest.mark.parametrize(
    "settings",
    [
        {"hessian": "ekfac"},
        {"hessian": "kfac", "seed_rank": 4, "normalize": "relatif", "index_projection": "kronecker"},
        {"hessian": "diagonal", "seed_batch": 2},
        {"hessian": "identity", "normalize": "none", "index_dim": 0},
        {"hessian": "ekfac", "normalize": "none", "index_dim": 0},  # the seeds turned back before their mean
    ],
    ids=["ekfac", "kfac-lowrank", "diagonal", "identity", "ekfac-raw"],
)
def test_a_run_in_module_groups_equals_the_run_in_one(tmp_path, tokenizer, data_files, model, settings):
    whole = score(_cfg(tmp_path, data_files, "whole", **settings), model=model, tokenizer=tokenizer)
    for parts in (2, 3):
        cfg = _cfg(tmp_path, data_files, f"parts{parts}", module_partitions=parts, **settings)
        assert_same_run(whole, score(cfg, model=model, tokenizer=tokenizer))


def test_a_groups_fit_checkpoints_go_once_its_factors_are_saved(tmp_path, tokenizer, data_files, model):
    """The fit's float64 checkpoints are not kept to the end of the run (twice the factors' disk at 7B): each
    group's go as soon as its factors are written, and a whole run's likewise."""
    left = []

    def look(state):
        if state["stage"].startswith("seeds"):
            left.extend(str(p) for p in (tmp_path / state["out"] / PARTIAL).rglob("fit_*.safetensors"))

    for name, parts in (("whole", 1), ("parts", 2)):
        cfg = _cfg(tmp_path, data_files, name, module_partitions=parts, checkpoint_seconds=0.0)
        score(cfg, model=model, tokenizer=tokenizer, on_progress=lambda s, n=name: look(s | {"out": n}))
    assert not left, left


def test_lora_adapters_in_module_groups(tmp_path, tokenizer, data_files):
    model = lora_model(build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2))
    whole = score(_cfg(tmp_path, data_files, "whole", modules=LORA_MODULES), model=model, tokenizer=tokenizer)
    cfg = _cfg(tmp_path, data_files, "parts", modules=LORA_MODULES, module_partitions=5)
    assert_same_run(whole, score(cfg, model=model, tokenizer=tokenizer))


def test_killed_in_its_second_group_a_run_resumes_and_equals_the_whole(
    tmp_path, tokenizer, data_files, model, monkeypatch
):
    whole = score(_cfg(tmp_path / "elsewhere", data_files, "whole"), model=model, tokenizer=tokenizer)
    cfg = _cfg(tmp_path, data_files, "killed", module_partitions=3)

    def kill_in_the_second_group(state):
        if state["stage"] == "score [2/3]" and state["done"] >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score(cfg, model=model, tokenizer=tokenizer, on_progress=kill_in_the_second_group)
    kept = tmp_path / "killed" / PARTIAL / "parts-3"
    assert len(list(kept.glob("group-0/chunk_*"))) == 4 and len(list(kept.glob("group-1/chunk_*"))) == 1
    assert not (kept / "group-2").exists()
    seen = []
    # free memory now would allow a rank of 1 only: the rank decided by the first job (dense) must be kept
    monkeypatch.setattr(seed_stage, "usable_memory_mb", lambda device, limit: 1e-4)
    score(cfg, resume=True, model=model, tokenizer=tokenizer, on_progress=seen.append)
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["seed_rank_kept"] is None
    stages = [s["stage"] for s in seen]
    fits = [i for i, s in enumerate(stages) if s.startswith("fit")]
    assert fits and min(fits) > stages.index("score [2/3]")  # the first two groups' factors kept, the third fitted
    assert [s["done"] for s in seen if s["stage"].startswith("score")][:2] == [24, 7]  # chunks kept: 4, then 1
    assert {s["stage"] for s in seen} >= {"fit_covariance [3/3]", "seeds [3/3]", "score [2/3]", "finalize"}
    assert_same_run(whole, tmp_path / "killed")
    monkeypatch.undo()  # a new run decides its own rank
    sibling = score(_cfg(tmp_path, data_files, "sibling", module_partitions=2), model=model, tokenizer=tokenizer)
    assert json.loads((sibling / "config.json").read_text())["timings"]["factors_reused"] == 1.0  # the joined file
    assert_same_run(whole, sibling)


HEAD_TOO = r"(^|\.)(mlp\.[a-z_]+|lm_head)$"  # the output head tracked too: every forward computes the full logits


@pytest.mark.parametrize("modules", [None, HEAD_TOO], ids=["mlp", "mlp-and-head"])
def test_a_run_in_module_groups_rescores_queries_indexes_and_explains_one_group_at_a_time(
    tmp_path, tokenizer, data_files, model, monkeypatch, modules
):
    """New pairs put through a finished run in groups (gdig rescore, query, index; a seed's token explanation)
    read one group's factors at a time when they do not fit the free memory, and give the one-group run's figures
    bit for bit; when they fit, every factor is read once."""
    from gdig.pipeline import index_run
    from gdig.pipeline.index_run import RunModel, build_index
    from gdig.pipeline.rescoring import SeedEdit, read_seed_file, rescore
    from gdig.rundir import factors
    from gdig.rundir.index import load_index
    from gdig.rundir.results import load_run
    from gdig.studio.explain import token_influence

    extra = {} if modules is None else {"modules": modules}
    runs = {
        p: score(_cfg(tmp_path, data_files, f"p{p}", module_partitions=p, **extra), model=model, tokenizer=tokenizer)
        for p in (1, 3)
    }
    read = []
    load = factors.load_factors

    def spy(path, device="cpu", names=None):
        read.append(names)
        return load(path, device, names)

    monkeypatch.setattr(factors, "load_factors", spy)
    every = [m["name"] for m in json.loads((runs[3] / "config.json").read_text())["modules"]]
    RunModel(runs[3], model=model, tokenizer=tokenizer)
    assert read == [every]  # the factors fit the free memory: read once, whole
    monkeypatch.setattr(index_run, "usable_memory_mb", lambda device, limit: 0)  # they no longer do
    new = read_seed_file(load_run(runs[1]), data_files[0])
    got = {}
    for p, run in runs.items():
        read.clear()
        runner = RunModel(run, model=model, tokenizer=tokenizer)
        runner.use_index(load_index(run))
        hows = ("unit", "none", "relatif")
        got[p] = {how: runner.gradients(new.examples[:9], "seeds", directions=how) for how in hows}
        # one group: every factor read once; three: a group at a time, twice for unit directions, once otherwise
        groups = [read[0]] if p == 1 else read[:3]
        assert [n for g in groups for n in g] == every and read == groups * (1 if p == 1 else 4), read
        rescored = rescore(run, tmp_path / f"r{p}", SeedEdit(add=new, replace=True), model=model, tokenizer=tokenizer)
        got[p]["rescored"] = rescored
        read.clear()
        got[p]["tokens"] = token_influence(load_run(run), 2, model, tokenizer, seed=1).contributions
        assert read == groups, read
    for how in ("unit", "none", "relatif"):
        a, b = got[1][how], got[3][how]
        for key in ("rows", "projected_norm", "norm"):
            np.testing.assert_array_equal(getattr(a.rows, key), getattr(b.rows, key))
        np.testing.assert_array_equal(a.loss, b.loss)
        np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
        assert a.direction_sum.keys() == b.direction_sum.keys()
        assert all(torch.equal(a.direction_sum[k], b.direction_sum[k]) for k in a.direction_sum)
    for p in (1, 3):  # relatif weighs each pair 1, as none does (mean_seed_direction); unit does not
        assert all(torch.equal(v, got[p]["none"].direction_sum[k]) for k, v in got[p]["relatif"].direction_sum.items())
        assert not all(torch.equal(v, got[p]["none"].direction_sum[k]) for k, v in got[p]["unit"].direction_sum.items())
    np.testing.assert_array_equal(got[1]["tokens"], got[3]["tokens"])
    for name in ("influence.npy", "index_seeds.npz"):
        x, y = (np.load(got[p]["rescored"] / name) for p in (1, 3))
        if name.endswith(".npz"):
            assert all(np.array_equal(x[k], y[k]) for k in x.files)
        else:
            np.testing.assert_array_equal(x, y)
    plain = {
        p: score(
            _cfg(tmp_path, data_files, f"q{p}", module_partitions=p, index_dim=0, **extra),
            model=model,
            tokenizer=tokenizer,
        )
        for p in (1, 3)
    }
    for run in plain.values():
        build_index(run, index_dim=64, model=model, tokenizer=tokenizer)
    np.testing.assert_array_equal(np.load(plain[1] / "index.npy"), np.load(plain[3] / "index.npy"))


def test_a_resumed_run_with_automatic_groups_keeps_the_groups_its_partial_folder_was_made_in():
    from gdig.pipeline.partitions import resumed_groups

    saved = {"settings": {"module_partitions": 4}, "finished": False}
    assert resumed_groups(0, saved, least=1) == 4  # auto: the groups already begun
    assert resumed_groups(0, saved, least=8) == 0  # too few for --shard-factors over 8 processes: the plan chooses
    assert resumed_groups(2, saved, least=1) == 2  # asked for: as asked
    assert resumed_groups(0, None, least=1) == 0 and resumed_groups(0, {"settings": {}}, least=1) == 0
    assert resumed_groups(0, {"settings": {"module_partitions": 1}}, least=1) == 0  # one group: nothing to keep
