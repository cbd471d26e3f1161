"""Export round-trips the input records exactly; manifest checksum; the select CLI; overrides persist."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_pairs, write_jsonl
from gdig.__main__ import main
from gdig.config import ScoreConfig
from gdig.outputs.export import META_FIELD, export_selection, save_into_run, verify_export
from gdig.pipeline.run import score
from gdig.rundir.curation import Overrides, load_overrides, save_overrides
from gdig.rundir.results import RunError, load_run
from gdig.selection.select import SelectionConfig, select_run
from gdig.selection.signals import weakest_rank


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tokenizer, llama_dir):
    tmp = tmp_path_factory.mktemp("exp")
    recs = make_pairs(30, seed=7)
    for i, r in enumerate(recs):  # odd fields that must survive unchanged
        r["id"] = f"ex-{i}"
        r["note"] = {"nested": [i, None, "ü"], "flag": i % 2 == 0}
    cands = write_jsonl(tmp / "c.jsonl", recs)
    seeds = write_jsonl(tmp / "s.jsonl", make_pairs(4, seed=8))
    cfg = ScoreConfig(
        model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(tmp / "run"), sketch_dim=64, umap=False
    )
    return score(cfg), recs


def test_exported_jsonl_round_trips_the_input_records(finished_run, tmp_path):
    run_dir, recs = finished_run
    run = load_run(run_dir)
    cfg = SelectionConfig(rule="fraction", tau=0.0, clusters=3, budget=12)
    sel = select_run(run, cfg)
    out, man = export_selection(run, sel, cfg, tmp_path / "sel.jsonl", metadata=False)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12
    by_id = {r["id"]: r for r in recs}
    for line in lines:
        rec = json.loads(line)
        assert rec == by_id[rec["id"]]  # every field, nested ones too, unchanged
    assert verify_export(out)
    manifest = json.loads(man.read_text())
    assert manifest["counts"]["selected"] == 12 and sum(manifest["counts"]["per_cluster"].values()) == 12
    assert manifest["selection"]["clusters"] == 3 and manifest["run_fingerprints"]["model"]


def test_metadata_field_and_checksum_detects_tampering(finished_run, tmp_path):
    run = load_run(finished_run[0])
    cfg = SelectionConfig(rule="fraction", tau=0.0, clusters=2, budget=5)
    out, _ = save_into_run(run, select_run(run, cfg), cfg, "first")
    assert out == run.path / "selections" / "first.jsonl"
    rec = json.loads(out.read_text().splitlines()[0])
    signals = {"loss", "length_ratio", "language_score", "src_lang_detected", "trg_lang_detected"}
    assert set(rec[META_FIELD]) == {"id", "mean_influence", "frac_helped", "cluster"} | signals
    assert rec[META_FIELD]["trg_lang_detected"] in ("de", "") and 0 <= rec[META_FIELD]["language_score"] <= 1
    out.write_text(out.read_text().replace("ex-", "EX-"))
    assert not verify_export(out)
    with pytest.raises(ValueError, match="selection name"):
        save_into_run(run, select_run(run, cfg), cfg, "../escape")


def test_overrides_persist_and_the_cli_applies_them(finished_run, tmp_path, capsys):
    run_dir = finished_run[0]
    ov = Overrides()
    ov.set("ex-3", "include")
    ov.set("ex-4", "exclude")
    ov.set("ex-5", "include")
    ov.set("ex-5", None)
    save_overrides(run_dir, ov)
    assert load_overrides(run_dir) == Overrides(["ex-3"], ["ex-4"])
    out = tmp_path / "cli.jsonl"
    assert main(["select", str(run_dir), "--out", str(out), "--tau", "0", "--clusters", "2", "--budget", "6"]) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 6 and "ex-3" in ids and "ex-4" not in ids
    assert main(["select", str(run_dir), "--out", str(tmp_path / "x.jsonl"), "--clusters", "50"]) == 2
    assert "clusters is more than" in capsys.readouterr().err
    save_overrides(run_dir, Overrides())


def test_missing_run_file_is_a_clear_error(finished_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(finished_run[0], broken)
    (broken / "influence.npy").unlink()
    with pytest.raises(RunError, match="missing influence.npy; the run has not finished"):
        load_run(broken)
    assert main(["select", str(broken), "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "missing influence.npy" in capsys.readouterr().err
    assert not (tmp_path / "y.jsonl").exists()
    np.save(broken / "influence.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(RunError, match="do not agree"):
        load_run(broken)


def test_select_defaults_keep_something_and_an_empty_rule_says_why(finished_run, tmp_path, capsys):
    """`gdig select RUN` with no rule flags keeps the candidates that help on average and sit in no signal's
    bottom tenth (never an empty file with exit 0); a rule that keeps nothing exits non-zero, says why, and
    writes nothing."""
    run_dir = finished_run[0]
    run = load_run(run_dir)
    out = tmp_path / "default.jsonl"
    assert main(["select", str(run_dir), "--out", str(out), "--clusters", "2"]) == 0
    kept = (run.mean_influence >= 0) & (weakest_rank(list(run.signals.values())) >= 0.1)
    assert len(out.read_text().splitlines()) == int(kept.sum()) > 0
    assert int(kept.sum()) < int((run.mean_influence >= 0).sum())  # the signals' floor dropped some
    empty = tmp_path / "empty.jsonl"
    assert main(["select", str(run_dir), "--out", str(empty), "--min-mean", "1e9"]) == 2
    err = capsys.readouterr().err
    assert "nothing selected: no candidate has mean influence >= 1e+09" in err and "lower --min-mean" in err
    assert not empty.exists() and not empty.with_suffix(".json").exists()
    assert main(["select", str(run_dir), "--out", str(empty), "--min-mean=-1e9", "--min-weakest", "1"]) == 2
    assert "no candidate the rule keeps passes the signals' thresholds" in capsys.readouterr().err
    assert not empty.exists()


def test_budget_zero_means_every_kept_candidate_and_nan_is_refused(finished_run, tmp_path, capsys):
    run_dir = finished_run[0]
    all_kept, zero = tmp_path / "all.jsonl", tmp_path / "zero.jsonl"
    every = ["--tau", "0", "--combine", "influence", "--clusters", "2"]
    assert main(["select", str(run_dir), "--out", str(all_kept), *every]) == 0
    assert main(["select", str(run_dir), "--out", str(zero), *every, "--budget", "0"]) == 0
    assert len(zero.read_text().splitlines()) == len(all_kept.read_text().splitlines()) == 30
    assert main(["select", str(run_dir), "--out", str(tmp_path / "n.jsonl"), "--min-mean", "nan"]) == 2
    assert "must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "n.jsonl").exists()
