"""`gdig compare` and gdig.outputs.compare: overlap, per-cluster and per-kind counts equal a hand count; exports are
found by id or by record; selections of another run or pool are refused."""

from __future__ import annotations

import json

import pytest

from conftest import make_pairs, write_jsonl
from gdig.__main__ import main
from gdig.config import ScoreConfig
from gdig.outputs.compare import compare, current_config, pool_clusters, read_export, resolve, rule_config
from gdig.outputs.export import export_selection, save_into_run
from gdig.pipeline.run import score
from gdig.rundir.curation import CURATION
from gdig.rundir.results import load_run
from gdig.selection.select import SelectionConfig, select_run


def _pool(n: int, seed: int) -> list[dict]:
    recs = make_pairs(n, seed=seed)
    for i, r in enumerate(recs):
        r["id"] = f"p-{i}"
        r["corruption"] = "truncated" if i % 5 == 0 else ("misaligned" if i % 7 == 0 else None)
    return recs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, llama_dir):
    tmp = tmp_path_factory.mktemp("compare")
    pool = write_jsonl(tmp / "pool.jsonl", _pool(36, 21))
    out = []
    for name, seed in (("run", 22), ("other", 23)):  # the same pool, other seeds: another run
        seeds = write_jsonl(tmp / f"seeds-{name}.jsonl", make_pairs(5, seed=seed))
        cfg = ScoreConfig(
            model=str(llama_dir), candidates=str(pool), seeds=str(seeds), out=str(tmp / name), sketch_dim=32
        )
        out.append(score(cfg))
    return out


def test_overlap_clusters_and_kinds_equal_a_hand_count(runs):
    run = load_run(runs[0])
    sels = resolve(run, ["default", "random", "paper"], budget=12)
    assert [s.name for s in sels] == ["default", "random", "paper"] and len(sels[1].rows) == 12
    assert set(sels[1].rows) == set(select_run(run, rule_config("random", 12)).indices)
    result = compare(run, sels, clusters=4)
    a, b, c = (set(s.rows.tolist()) for s in sels)
    assert result.regions["only default"] == len(a - b - c)
    assert result.regions["default & random"] == len((a & b) - c)
    assert result.regions["default & random & paper"] == len(a & b & c)
    assert sum(result.regions.values()) == len(a | b | c)
    labels = pool_clusters(run, 4)
    for k in range(4):
        assert result.per_cluster.loc[k, "random"] == sum(labels[i] == k for i in b)
        assert result.per_cluster.loc[k, "pool"] == int((labels == k).sum())
    kinds = run.candidates["corruption"].fillna("clean").tolist()
    assert result.per_kind.loc["truncated", "default"] == sum(kinds[i] == "truncated" for i in a)
    assert result.per_kind["pool"].to_dict() == {"clean": 24, "misaligned": 4, "truncated": 8}
    only = result.only("random")
    assert set(only.tolist()) == b - a - c
    mean = result.distributions.loc[("mean influence", "paper"), "mean"]
    assert mean == pytest.approx(run.mean_influence[sorted(c)].mean(), rel=1e-6)


def test_exports_are_read_by_id_or_by_record(runs, tmp_path):
    run = load_run(runs[0])
    cfg = SelectionConfig(budget=9, clusters=3)
    sel = select_run(run, cfg)
    save_into_run(run, sel, cfg, "mine")
    plain, _ = export_selection(run, sel, cfg, tmp_path / "plain.jsonl", metadata=False)
    by_name, by_file = resolve(run, ["mine", str(plain)])
    assert by_name.rows.tolist() == by_file.rows.tolist() == sorted(sel.indices.tolist())
    assert by_name.source == "export mine.jsonl"


def test_selections_of_another_run_or_pool_are_refused(runs, tmp_path):
    run, other = load_run(runs[0]), load_run(runs[1])
    cfg = SelectionConfig(budget=6, clusters=2)
    theirs, _ = export_selection(other, select_run(other, cfg), cfg, tmp_path / "theirs.jsonl")
    with pytest.raises(ValueError, match="exported from another run"):
        read_export(run, theirs)
    ours, _ = export_selection(run, select_run(run, cfg), cfg, tmp_path / "ours.jsonl")
    lines = ours.read_text().splitlines()
    changed = json.loads(lines[1]) | {"src_text": "a pair of another pool with a colliding id"}
    (tmp_path / "copied.jsonl").write_text("\n".join([lines[0], json.dumps(changed)]) + "\n")  # no manifest
    with pytest.raises(ValueError, match="copied.jsonl line 2: not a pair of run's pool"):
        read_export(run, tmp_path / "copied.jsonl")
    foreign = write_jsonl(tmp_path / "foreign.jsonl", _pool(3, 99))
    with pytest.raises(ValueError, match="foreign.jsonl line 1: not a pair of run's pool"):
        read_export(run, foreign)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty selection"):
        read_export(run, tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="two or three"):
        resolve(run, ["default"])
    with pytest.raises(ValueError, match="random selection needs a budget"):
        resolve(run, ["random", "default"])
    with pytest.raises(FileNotFoundError, match="no selection file nonsense"):
        resolve(run, ["default", "nonsense"])


def test_the_current_rule_reads_the_saved_settings(runs):
    path = runs[0]
    saved = {"rule": "fraction", "tau": 0.5, "combine": "influence", "budget": 7, "clusters": 2, "x": 1}
    (path / CURATION).write_text(json.dumps(saved))
    try:
        cfg = current_config(path)
        assert (cfg.rule, cfg.tau, cfg.combine, cfg.budget) == ("fraction", 0.5, "influence", 7)
        current, _ = resolve(load_run(path), ["current", "default"])
        assert len(current.rows) == 7, "the current rule keeps its own budget"
        assert set(current.rows) == set(select_run(load_run(path), cfg).indices)
        current, _ = resolve(load_run(path), ["current", "default"], budget=5)
        assert len(current.rows) == 5
    finally:
        (path / CURATION).unlink()


def test_cli_json_equals_the_api_and_text_lists_the_parts(runs, capsys):
    run = load_run(runs[0])
    assert main(["compare", str(runs[0]), "default", "length-ratio", "--budget", "10", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = compare(run, resolve(run, ["default", "length-ratio"], 10))
    assert printed["regions"] == expected.regions and printed["sizes"] == {"default": 10, "length-ratio": 10}
    ids = run.candidates["id"].astype(str).to_numpy()
    assert printed["only"]["length-ratio"] == ids[expected.only("length-ratio")].tolist()
    assert main(["compare", str(runs[0]), "default", "random", "--rows", "2"]) == 0
    text = capsys.readouterr().out
    assert "Overlap: only default" in text and "Per kind:" in text and "Only in random:" in text
    assert main(["compare", str(runs[0]), "default", "random", "--budget", "-5"]) == 2
    assert "--budget -5" in capsys.readouterr().err
