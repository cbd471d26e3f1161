"""Run directory behaviour: chunked resume gives identical results, factors are reused, status is kept."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from gdig.cancel import Cancelled
from gdig.config import ScoreConfig
from gdig.engine.influence import Scorer
from gdig.pipeline.run import score
from gdig.rundir.layout import PARTIAL
from gdig.rundir.status import read_status


def _cfg(tmp_path, files, name, **kw):
    cands, seeds = files
    return ScoreConfig(
        model="m", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / name), **({"umap": False} | kw)
    )


def test_killed_run_resumes_from_its_last_chunk_with_identical_results(tmp_path, tokenizer, data_files):
    from gdig.demo.tiny import build_tiny_model

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    full = score(_cfg(tmp_path, data_files, "full", chunk_size=5), model=model, tokenizer=tokenizer)

    def kill_after_two_chunks(state):
        if state["stage"] == "score" and state["done"] >= 12:
            raise KeyboardInterrupt

    cfg = _cfg(tmp_path, data_files, "killed", chunk_size=5)
    with pytest.raises(KeyboardInterrupt):
        score(cfg, model=model, tokenizer=tokenizer, on_progress=kill_after_two_chunks)
    run = tmp_path / "killed"
    chunks = sorted((run / PARTIAL).glob("chunk_*.npz"))
    assert len(chunks) == 2 and not (run / "influence.npy").exists()
    assert read_status(run)["error"] == "cancelled"
    assert not json.loads((run / "config.json").read_text())["finished"]

    seen = []
    score(cfg, resume=True, model=model, tokenizer=tokenizer, on_progress=seen.append)
    first_score = next(s for s in seen if s["stage"] == "score")
    assert first_score["done"] == 10  # two chunks of 5 were kept, at most the third was lost
    assert not any(s["stage"].startswith("fit") for s in seen)  # factors were reused
    for name in ("influence.npy", "sketch.npy"):
        np.testing.assert_array_equal(np.load(run / name), np.load(full / name))
    assert not (run / PARTIAL).exists() and read_status(run)["stage"] == "done"


def test_factors_are_reused_by_a_sibling_run_with_the_same_fingerprint(tmp_path, tokenizer, data_files):
    from gdig.demo.tiny import build_tiny_model

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    score(_cfg(tmp_path, data_files, "a", damping=1e-3), model=model, tokenizer=tokenizer)
    seen = []
    b = score(_cfg(tmp_path, data_files, "b", damping=1e-2), model=model, tokenizer=tokenizer, on_progress=seen.append)
    assert not any(s["stage"].startswith("fit") for s in seen)
    assert json.loads((b / "config.json").read_text())["timings"]["factors_reused"] == 1.0
    seen.clear()
    score(_cfg(tmp_path, data_files, "c", fit_examples=10), model=model, tokenizer=tokenizer, on_progress=seen.append)
    assert any(s["stage"] == "fit_covariance" and s["total"] == 10 for s in seen)  # other fit set: refitted


def test_cancel_file_stops_the_run_and_is_recorded(tmp_path, tokenizer, data_files, llama_dir):
    cfg = _cfg(tmp_path, data_files, "c")
    cfg.model = str(llama_dir)

    def cancel(state):
        if state["stage"] == "seeds":
            (tmp_path / "c" / "cancel").touch()

    with pytest.raises(Cancelled):
        score(cfg, on_progress=cancel)
    assert read_status(tmp_path / "c")["error"] == "cancelled"
    score(cfg, resume=True)  # from a terminal, after the app's Cancel: the old request is not this job's
    assert read_status(tmp_path / "c")["stage"] == "done" and not (tmp_path / "c" / "cancel").exists()


def test_fit_subset_and_token_budget(tmp_path, tokenizer, data_files, llama_dir):
    cfg = _cfg(tmp_path, data_files, "s", fit_examples=8, token_budget=200, hessian="kfac")
    cfg.model = str(llama_dir)
    out = score(cfg)
    conf = json.loads((out / "config.json").read_text())
    assert conf["factors"]["n_examples"] == 8
    assert np.load(out / "influence.npy").shape == (24, 5)


def test_kept_captures_are_scored_in_groups_and_others_alone():
    from gdig.pipeline.stages import kept_groups

    batches = [SimpleNamespace(index=[i]) for i in range(7)]
    kept = {(i,) for i in (0, 1, 2, 4, 5, 6)}
    assert [[b.index[0] for b in g] for g in kept_groups(batches, kept, size=2)] == [[0, 1], [2], [3], [4, 5], [6]]


@pytest.mark.parametrize(
    "settings, kept",
    [
        ({}, True),  # the index: scoring rotates every candidate, so the eigenvalue pass keeps the rotations
        ({"seed_rank": 2}, True),  # low-rank seeds meet the kept rotations turned back
        ({"index_dim": 0, "normalize": "none"}, False),  # scoring rotates nothing: the gradients stay
    ],
)
def test_fit_captures_are_reused_exactly(tmp_path, tokenizer, data_files, monkeypatch, settings, kept):
    """The fit cache changes time only: same factors and scores, two model passes fewer (EK-FAC's second pass
    and scoring reuse the first pass's captures; separate folders, so that factors are not reused from a sibling),
    and where scoring rotates the candidates, the rotations the eigenvalue pass made (Captured.keep_rotation)."""
    from safetensors.numpy import load_file

    from gdig.demo.tiny import build_tiny_model
    from gdig.engine.hooks import Captured

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    calls, rotations = [], []
    model.model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    keep = Captured.keep_rotation

    def counted(cap, name, rot):
        keep(cap, name, rot)
        rotations.extend([name] if cap.rotation(name) is rot else [])

    monkeypatch.setattr(Captured, "keep_rotation", counted)
    together, scored_of = [], Scorer.raw_scores_of
    monkeypatch.setattr(
        Scorer, "raw_scores_of", lambda self, caps, c: together.append(len(caps)) or scored_of(self, caps, c)
    )
    runs, n_forward, n_kept, groups = {}, {}, {}, {}
    for name, mb in (("recompute", 0), ("cached", 64)):
        calls.clear(), rotations.clear(), together.clear()
        cfg = _cfg(tmp_path / name, data_files, "run", fit_cache_mb=mb, batch_size=4, **settings)
        runs[name] = score(cfg, model=model, tokenizer=tokenizer)
        n_forward[name], n_kept[name], groups[name] = len(calls), len(rotations), set(together)
    n_candidates = len(data_files[0].read_text().splitlines())
    assert n_forward["recompute"] - n_forward["cached"] == 2 * -(-n_candidates // 4)  # two passes, batches of 4
    assert n_kept["recompute"] == 0 and (n_kept["cached"] > 0) == kept
    assert groups["recompute"] == {1} and max(groups["cached"]) > 1  # kept captures scored module by module together
    a, b = (load_file(str(runs[n] / "factors.safetensors")) for n in ("recompute", "cached"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    files = ["influence.npy", "sketch.npy"] + (
        ["index.npy", "index_norms.npy"] if settings.get("index_dim") != 0 else []
    )
    for name in files:  # the kept per-example gradients
        np.testing.assert_array_equal(np.load(runs["recompute"] / name), np.load(runs["cached"] / name), name)
    with pytest.raises(ValueError, match="fit-cache-mb"):
        _cfg(tmp_path, data_files, "bad", fit_cache_mb=-1)


@pytest.mark.parametrize(("stage", "cache_mb"), [("fit_covariance", 0), ("fit_eigen", 0), ("fit_covariance", 64)])
def test_cancelled_fit_resumes_where_it_stopped_with_identical_factors(
    tmp_path, tokenizer, data_files, stage, cache_mb
):
    """A fit cancelled mid-pass keeps its partial sums; --resume restores them, skips the batches they cover
    and ends with the same factors and scores bit for bit as an uninterrupted run."""
    from gdig.demo.tiny import build_tiny_model

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    kw = {"batch_size": 4, "fit_cache_mb": cache_mb, "checkpoint_seconds": 3600}
    full = score(_cfg(tmp_path / "full", data_files, "run", **kw), model=model, tokenizer=tokenizer)
    cfg = _cfg(tmp_path / "cut", data_files, "run", **kw)
    run = tmp_path / "cut" / "run"

    def cancel_mid_pass(state):
        if state["stage"] == stage and state["done"] >= 12:
            (run / "cancel").touch()

    with pytest.raises(Cancelled):
        score(cfg, model=model, tokenizer=tokenizer, on_progress=cancel_mid_pass)
    (run / "cancel").unlink()
    assert (run / PARTIAL / f"{stage}.safetensors").exists() and not (run / "factors.safetensors").exists()
    seen = []
    score(cfg, resume=True, model=model, tokenizer=tokenizer, on_progress=seen.append)
    first = next(s for s in seen if s["stage"] == stage)
    assert first["done"] == 12  # continued after the three batches of 4 it had summed
    if stage == "fit_eigen":
        assert next(s for s in seen if s["stage"] == "fit_covariance")["done"] == 24  # the first pass was kept
    for name in ("factors.safetensors", "influence.npy", "sketch.npy"):
        assert (run / name).read_bytes() == (full / name).read_bytes() or name == "factors.safetensors"
    from safetensors.numpy import load_file

    a, b = load_file(str(run / "factors.safetensors")), load_file(str(full / "factors.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad_line", ['{"src_text": "Hallo"', '{"src_text": "Hallo"}'])
def test_a_bad_data_line_is_reported_before_the_model_loads_and_leaves_no_run_folder(
    tmp_path, data_files, llama_dir, monkeypatch, bad_line
):
    """A malformed line or a missing field: the file and line named at once, no model loaded, no folder."""
    import gdig.pipeline.context

    cands, seeds = data_files
    seeds.write_text(seeds.read_text("utf-8") + bad_line + "\n", "utf-8")
    loaded = []
    monkeypatch.setattr(gdig.pipeline.context, "load_model", lambda *a, **k: loaded.append(1))
    cfg = dataclasses.replace(_cfg(tmp_path, data_files, "run"), model=str(llama_dir))
    n_lines = len(seeds.read_text("utf-8").splitlines())
    with pytest.raises(ValueError, match=rf"{seeds.name}:{n_lines}: "):
        score(cfg)
    assert not loaded and not (tmp_path / "run").exists()


def test_ctrl_c_in_the_fit_keeps_its_sums_like_cancel_and_resume_continues_from_them(tmp_path, tokenizer, data_files):
    """The first SIGINT asks the job to stop between batches (gdig.rundir.status.interrupt_cancels, around the
    CLI's score): the fit's partial sums are saved, the request is removed, --resume continues from them."""
    import os
    import signal

    from gdig.demo.tiny import build_tiny_model
    from gdig.rundir.status import interrupt_cancels

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    cfg = _cfg(tmp_path, data_files, "run", batch_size=4, checkpoint_seconds=3600)
    run, sent = tmp_path / "run", []

    def ctrl_c(state):
        if state["stage"] == "fit_covariance" and state["done"] >= 12 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    outside = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)
    try:
        with interrupt_cancels(run), pytest.raises(Cancelled):
            score(cfg, model=model, tokenizer=tokenizer, on_progress=ctrl_c)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
    finally:
        signal.signal(signal.SIGINT, outside)
    assert sent and not (run / "cancel").exists()
    assert (run / PARTIAL / "fit_covariance.safetensors").exists()
    seen = []
    score(cfg, resume=True, model=model, tokenizer=tokenizer, on_progress=seen.append)
    assert next(s for s in seen if s["stage"] == "fit_covariance")["done"] == 12


def test_the_cli_reports_a_stopped_job_without_a_traceback(monkeypatch, capsys, tmp_path, data_files):
    import gdig.pipeline.run
    from gdig.__main__ import main

    def stopped(*a, **k):
        raise Cancelled("cancelled by the user")

    monkeypatch.setattr(gdig.pipeline.run, "score", stopped)
    cands, seeds = data_files
    args = ["score", "--model", "m", "--candidates", str(cands), "--seeds", str(seeds), "--out", str(tmp_path / "r")]
    assert main([*args, "--quiet"]) == 130
    assert "--resume goes on" in capsys.readouterr().err


@pytest.mark.parametrize("lora", [False, True])
def test_a_factor_shared_by_modules_that_read_one_input_changes_no_result(
    tmp_path, tokenizer, data_files, monkeypatch, lora
):
    """gate and up (the LoRA A matrices of q and v) read one input: its A factor is fitted and written once, and
    every result is the same, bit for bit, as with a factor per module."""
    from safetensors import safe_open

    from conftest import lora_model
    from gdig.config import LORA_MODULES
    from gdig.demo.tiny import build_tiny_model
    from gdig.pipeline import stages

    model = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2)
    model, modules = (lora_model(model), LORA_MODULES) if lora else (model, ScoreConfig.modules)
    shared = score(_cfg(tmp_path / "shared", data_files, "run", modules=modules), model=model, tokenizer=tokenizer)
    monkeypatch.setattr(stages, "shared_inputs", lambda *_: {})
    apart = score(_cfg(tmp_path / "apart", data_files, "run", modules=modules), model=model, tokenizer=tokenizer)
    for out in ("influence.npy", "sketch.npy", "index.npy", "index_norms.npy"):
        np.testing.assert_array_equal(np.load(shared / out), np.load(apart / out), out)
    keys = []
    for run in (shared, apart):
        with safe_open(str(run / "factors.safetensors"), framework="pt") as f:
            keys.append(set(f.keys()))
    dropped = keys[1] - keys[0]
    assert keys[0] < keys[1] and len(dropped) == 2 * 2  # q_a and e_a of up (of v's A matrix), in 2 layers
    suffixes = ("up_proj::q_a", "up_proj::e_a", "v_proj.lora_A.default::q_a", "v_proj.lora_A.default::e_a")
    assert all(k.endswith(suffixes) for k in dropped)
