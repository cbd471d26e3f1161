"""`gdig index`, `gdig rescore` and `gdig query` from the command line: results and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gdig.__main__ import main
from gdig.rundir.index import has_index
from gdig.rundir.results import load_run


@pytest.fixture()
def cli_run(tmp_path, llama_dir, data_files):
    cands, seeds = data_files
    out = tmp_path / "run"
    argv = ["score", "--model", str(llama_dir), "--candidates", str(cands), "--seeds", str(seeds), "--out", str(out)]
    assert main([*argv, "--sketch-dim", "32", "--index-dim", "0", "--quiet", "--no-umap"]) == 0
    return out, seeds


def test_index_rescore_and_query_commands(cli_run, tmp_path, capsys):
    run, seeds = cli_run
    assert not has_index(run)
    assert main(["query", str(run), "--src", "the cat", "--trg", "die Katze"]) == 2
    assert "gdig index" in capsys.readouterr().err
    assert main(["index", str(run), "--index-dim", "128"]) == 0
    assert "Spearman" in capsys.readouterr().err and has_index(run)
    assert main(["rescore", str(run), "--drop", "0", "3", "--out", str(tmp_path / "thin")]) == 0
    thin = load_run(tmp_path / "thin")
    assert np.array_equal(thin.influence, np.asarray(load_run(run).influence)[:, [1, 2, 4]])
    assert main(["rescore", str(run), "--seeds", str(seeds), "--out", str(tmp_path / "again")]) == 0
    again = load_run(tmp_path / "again")
    assert again.influence.shape == (24, 5) and set(again.seeds["scored_from"]) == {"index"}
    assert "scored from the gradient index" in capsys.readouterr().err
    assert (
        main(["query", str(run), "--src", "the cat", "--trg", "die Katze", "--src-lang", "en", "--top", "3", "--json"])
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["helps"]) == len(answer["hurts"]) == 3
    assert answer["helps"][0]["score"] >= answer["helps"][-1]["score"] >= answer["hurts"][-1]["score"]
    assert main(["query", str(run), "--pairs", str(seeds), "--top", "2"]) == 0
    assert capsys.readouterr().out.count("hurts it most") == 5


@pytest.mark.parametrize(
    "argv,message",
    [
        (["rescore", "{run}", "--out", "{tmp}/x"], "give --seeds"),
        (["rescore", "{run}", "--add", "--drop", "0", "--out", "{tmp}/x"], "--add needs --seeds"),
        (["query", "{run}", "--src", "a"], "give --src TEXT and --trg TEXT"),
        (["query", "{tmp}/nowhere", "--src", "a", "--trg", "b"], "no such run folder"),
        (["index", "{run}", "--index-dim", "0"], "no index"),
    ],
)
def test_bad_arguments_are_one_line_errors(cli_run, tmp_path, capsys, argv, message):
    run, _ = cli_run
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdig: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
