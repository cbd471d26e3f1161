"""New seed sets and queries from the index (gdig.rescore, gdig.pipeline.query): exact where nothing is projected, kept
columns copied exactly, bad input refused with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_pairs
from gdig.atomic import write_jsonl
from gdig.config import ScoreConfig
from gdig.inputs.data import load_dataset
from gdig.inputs.readers import DataError
from gdig.pipeline.index_run import PairError, RunModel
from gdig.pipeline.query import answer_table, ask, pair_example
from gdig.pipeline.rescoring import SeedEdit, read_seed_file, rescore
from gdig.pipeline.run import score
from gdig.rundir.index import NoIndexError, load_index
from gdig.rundir.results import load_run
from gdig.rundir.seeds import load_mean_direction

EXACT = {"index_dim": 1 << 20, "index_dtype": "float32"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model, tokenizer):
    """A run with seeds A (index without projection), an exact run with seeds B, and one with A and B."""
    tmp = tmp_path_factory.mktemp("rescore")
    cands = write_jsonl(tmp / "cands.jsonl", make_pairs(30, seed=2))
    seeds_a = write_jsonl(tmp / "a.jsonl", [r | {"id": f"a{i}"} for i, r in enumerate(make_pairs(4, seed=3))])
    seeds_b = write_jsonl(tmp / "b.jsonl", [r | {"id": f"b{i}"} for i, r in enumerate(make_pairs(3, seed=4))])
    both = write_jsonl(
        tmp / "ab.jsonl", [json.loads(x) for f in (seeds_a, seeds_b) for x in f.read_text().splitlines()]
    )
    out = {}
    for name, seeds in (("a", seeds_a), ("b", seeds_b), ("ab", both)):
        cfg = ScoreConfig(
            model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(tmp / name), umap=False, **EXACT
        )
        out[name] = score(cfg, model=model, tokenizer=tokenizer)
    return tmp, out, {"a": seeds_a, "b": seeds_b}


def test_replacing_the_seeds_from_the_index_equals_an_exact_run(runs, model, tokenizer):
    tmp, out, files = runs
    parent = load_run(out["a"])
    new = rescore(
        out["a"],
        tmp / "r1",
        SeedEdit(add=read_seed_file(parent, files["b"]), replace=True),
        model=model,
        tokenizer=tokenizer,
    )
    got, want = load_run(new), load_run(out["b"])
    np.testing.assert_allclose(got.influence, want.influence, rtol=1e-4, atol=1e-6)
    assert got.seeds["id"].tolist() == ["b0", "b1", "b2"] and set(got.seeds["scored_from"]) == {"index"}
    assert got.config["scored_from_index"]["index_columns"] == 3 and got.config["n_seeds"] == 3
    np.testing.assert_allclose(got.seeds["loss"], want.seeds["loss"], rtol=1e-5)
    _same_direction(got, want)
    assert np.array_equal(got.sketch, load_run(out["a"]).sketch)  # the pool's files are the parent's


def test_adding_and_dropping_seeds(runs, model, tokenizer):
    tmp, out, files = runs
    parent = load_run(out["ab"])
    b = load_run(out["b"])
    edit = SeedEdit(add=read_seed_file(parent, files["b"]), drop=["b0", "b1", "b2"])
    # drop B's exact columns, then add them back from the index: the matrix comes back
    dropped = rescore(out["ab"], tmp / "r2", SeedEdit(drop=["b0", "b1", "b2"]), model=model, tokenizer=tokenizer)
    got = load_run(dropped)
    assert np.array_equal(got.influence, np.asarray(parent.influence[:, :4]))  # exact: columns copied
    assert got.seeds["id"].tolist() == ["a0", "a1", "a2", "a3"]
    _same_direction(got, load_run(out["a"]))
    readded = load_run(rescore(dropped, tmp / "r3", SeedEdit(add=edit.add), model=model, tokenizer=tokenizer))
    np.testing.assert_allclose(readded.influence[:, 4:], b.influence, rtol=1e-4, atol=1e-6)
    assert readded.seeds["scored_from"].tolist() == ["exact"] * 4 + ["index"] * 3
    _same_direction(readded, parent)


def _same_direction(got, want):
    """Token explanations of the rescored run use the same mean seed direction as an exact run's."""
    a = load_mean_direction(got.path / "seed_grads.safetensors", "cpu")
    b = load_mean_direction(want.path / "seed_grads.safetensors", "cpu")
    for name, v in b["mean"].items():
        np.testing.assert_allclose(a["mean"][name].numpy(), v.numpy(), rtol=1e-3, atol=1e-6 * float(v.abs().max()))
    np.testing.assert_allclose(a["self_influence"], b["self_influence"], rtol=1e-4)


def test_query_scores_a_pair_as_a_seed_of_an_exact_run(runs, model, tokenizer):
    _, out, files = runs
    run, b = load_run(out["a"]), load_run(out["b"])
    rec = json.loads(files["b"].read_text().splitlines()[1])
    pair = pair_example(run, rec["src_text"], rec["trg_text"], rec["src_lang"], rec["trg_lang"])
    runner = RunModel(run.path, model=model, tokenizer=tokenizer)
    (answer,) = ask(run, load_index(run.path), runner, [pair], top=5)
    np.testing.assert_allclose(answer.scores, b.influence[:, 1], rtol=1e-4, atol=1e-6)
    col = np.asarray(b.influence[:, 1])
    assert list(answer.helps) == list(np.argsort(-col, kind="stable")[:5])
    assert list(answer.hurts) == list(np.argsort(col, kind="stable")[:5])
    table = answer_table(run, answer, "hurts", labels=np.arange(run.n) % 3)
    assert table["score"].is_monotonic_increasing and list(table.columns[:4]) == ["row", "id", "score", "cluster"]


def test_bad_input_is_refused_and_writes_nothing(runs, model, tokenizer, tmp_path):
    tmp, out, files = runs
    parent = load_run(out["a"])
    before = sorted(p.name for p in out["a"].iterdir())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_seed_file(parent, empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src_text": "a", "trg_text": "b", "trg_lang": "de"}\n{"src_text": "x"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed"):
        read_seed_file(parent, bad)
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="unknown schema"):
        read_seed_file(parent, other)
    long = write_jsonl(
        tmp_path / "long.jsonl", [{"src_text": "the cat " * 400, "trg_text": "die Katze", "trg_lang": "de"}]
    )
    with pytest.raises(PairError, match="longer than the run's max length"):
        rescore(out["a"], tmp_path / "x", SeedEdit(add=read_seed_file(parent, long)), model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no seed with id"):
        rescore(out["a"], tmp_path / "y", SeedEdit(drop=["nope"]), model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="reuse ids"):
        rescore(
            out["a"], tmp_path / "z", SeedEdit(add=read_seed_file(parent, files["a"])), model=model, tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="already holds a run"):
        rescore(out["a"], out["b"], SeedEdit(drop=["a0"]), model=model, tokenizer=tokenizer)
    cfg = json.loads((out["b"] / "config.json").read_text())
    noindex = tmp_path / "noindex"
    noindex.mkdir()
    for f in out["b"].iterdir():
        if not f.name.startswith("index"):
            (noindex / f.name).write_bytes(f.read_bytes())
    with pytest.raises(NoIndexError, match="gdig index"):
        rescore(noindex, tmp_path / "w", SeedEdit(drop=["b0"]), model=model, tokenizer=tokenizer)
    assert not any((tmp_path / n).exists() for n in "xyzw")
    assert sorted(p.name for p in out["a"].iterdir()) == before
    assert json.loads((out["b"] / "config.json").read_text()) == cfg
    assert not [p for p in tmp.iterdir() if p.name.endswith(".rescoring")]


def test_a_changed_model_is_refused(runs, tokenizer):
    from gdig.demo.tiny import build_tiny_model
    from gdig.rundir.results import RunError

    _, out, _ = runs
    other = build_tiny_model("llama", tokenizer, hidden=16, ffn=32, heads=2, seed=123)
    with pytest.raises(RunError, match="not the one this run was scored with"):
        RunModel(out["a"], model=other, tokenizer=tokenizer)


def test_seed_file_uses_the_runs_prompt_template(runs):
    _, out, files = runs
    run = load_run(out["a"])
    ds = read_seed_file(run, files["b"])
    assert ds.examples[0].prompt == load_dataset(files["b"]).examples[0].prompt


def test_new_seeds_without_ids_of_their_own_get_fresh_ones(runs, model, tokenizer, tmp_path):
    tmp, out, _ = runs
    plain = write_jsonl(tmp_path / "plain.jsonl", make_pairs(2, seed=9))  # ids 0, 1: the run's seeds have those
    parent = load_run(out["b"])
    got = load_run(
        rescore(out["b"], tmp_path / "r", SeedEdit(add=read_seed_file(parent, plain)), model=model, tokenizer=tokenizer)
    )
    assert got.seeds["id"].tolist() == ["b0", "b1", "b2", "added-1", "added-2"]
    assert got.seeds["src_text"].tolist()[-2:] == [r["src_text"] for r in make_pairs(2, seed=9)]  # their fields too


def test_a_seed_the_run_truncated_can_be_dropped(tmp_path, model, tokenizer):
    cands = write_jsonl(tmp_path / "c.jsonl", make_pairs(12, seed=2))
    long = {
        "src_text": "the cat " * 30,
        "trg_text": "die Katze " * 30,
        "src_lang": "en",
        "trg_lang": "de",
        "id": "long",
    }
    seeds = write_jsonl(
        tmp_path / "s.jsonl", [long, *[r | {"id": f"s{i}"} for i, r in enumerate(make_pairs(3, seed=3))]]
    )
    cfg = ScoreConfig(model="in-memory", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "run"), umap=False)
    cfg.data.max_length = 160  # the long seed is truncated, as scoring allows and reports
    run = score(cfg, model=model, tokenizer=tokenizer)
    assert load_run(run).seeds["truncated"].tolist()[0]
    thin = load_run(rescore(run, tmp_path / "thin", SeedEdit(drop=["long"]), model=model, tokenizer=tokenizer))
    assert thin.seeds["id"].tolist() == ["s0", "s1", "s2"]


def test_an_index_of_another_hash_version_is_refused(runs, model, tokenizer, tmp_path):
    import shutil

    from gdig.rundir.results import RunError

    _, out, files = runs
    copy = tmp_path / "old"
    shutil.copytree(out["a"], copy)
    meta = json.loads((copy / "index.json").read_text())
    meta.pop("projection_version")
    (copy / "index.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="older version"):
        rescore(copy, tmp_path / "x", SeedEdit(drop=["a0"]), model=model, tokenizer=tokenizer)
