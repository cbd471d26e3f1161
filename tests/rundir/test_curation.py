"""The curator's decisions (gdig.rundir.curation, `gdig curate`): bulk include/exclude/reset in one pass, the
undo of the last bulk decision, and the CLI's files and errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gdig.__main__ import main
from gdig.rundir.curation import Overrides, apply_bulk, last_bulk, load_overrides, save_overrides, undo_bulk
from gdig.rundir.layout import LAST_BULK, write_config


def _sets(ov: Overrides) -> tuple[set, set]:
    """The decisions, whatever their order in the file."""
    return set(ov.include), set(ov.exclude)


@pytest.fixture
def run_dir(tmp_path):
    """A finished run of 10 candidates c0..c9 (only what `load_run` reads)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "influence.npy", rng.normal(size=(10, 3)).astype(np.float32))
    np.save(tmp_path / "sketch.npy", rng.normal(size=(10, 4)).astype(np.float32))
    pd.DataFrame({"id": [f"c{i}" for i in range(10)]}).to_parquet(tmp_path / "candidates.parquet")
    pd.DataFrame({"id": ["s0", "s1", "s2"]}).to_parquet(tmp_path / "seeds.parquet")
    write_config(tmp_path, {"finished": True})
    return tmp_path


def test_set_many_changes_only_what_differs_and_returns_the_decisions_before():
    ov = Overrides(["a", "b"], ["c"])
    before = ov.set_many(["b", "c", "d", "d"], "exclude")
    assert before == {"b": "include", "d": None}  # c was already excluded; d named twice counts once
    assert _sets(ov) == ({"a"}, {"c", "b", "d"})
    assert ov.set_many(["a", "b"], None) == {"a": "include", "b": "exclude"}
    assert _sets(ov) == (set(), {"c", "d"})
    with pytest.raises(ValueError, match="decision must be"):
        ov.set_many(["a"], "keep")


def test_undo_puts_back_the_decisions_before_but_keeps_later_hand_decisions(tmp_path):
    save_overrides(tmp_path, Overrides(["a"], ["b"]))
    record = apply_bulk(tmp_path, ["a", "b", "c", "d"], "exclude", source="app")
    assert record.before == {"a": "include", "c": None, "d": None}
    assert _sets(load_overrides(tmp_path)) == (set(), {"b", "a", "c", "d"})
    assert last_bulk(tmp_path).describe() == "excluded 3 candidates (app)"
    ov = load_overrides(tmp_path)
    ov.set("d", "include")  # decided again by hand after the bulk decision: the undo leaves it
    save_overrides(tmp_path, ov)
    assert undo_bulk(tmp_path) == 2
    assert _sets(load_overrides(tmp_path)) == ({"a", "d"}, {"b"})
    assert last_bulk(tmp_path) is None and undo_bulk(tmp_path) == 0


def test_a_bulk_decision_that_changes_nothing_keeps_the_previous_undo(tmp_path):
    apply_bulk(tmp_path, ["a"], "include")
    assert apply_bulk(tmp_path, ["a"], "include").before == {}
    assert last_bulk(tmp_path).before == {"a": None}


def test_a_bulk_of_100000_ids_over_a_million_forced_ids_takes_a_single_pass():
    """Not a timing: the work is linear, so 100,000 ids over 600,000 forced ones all change as asked."""
    ov = Overrides([str(i) for i in range(300_000)], [str(i) for i in range(300_000, 600_000)])
    before = ov.set_many([str(i) for i in range(250_000, 350_000)], "exclude")
    assert len(before) == 50_000 and len(ov.include) == 250_000 and len(ov.exclude) == 350_000


def test_cli_excludes_the_ids_of_a_file_and_undoes_it(run_dir, tmp_path, capsys):
    ids = tmp_path / "bad.txt"
    ids.write_text("c1\n\nc2\n  c3  \n")
    assert main(["curate", str(run_dir), "--exclude-ids", str(ids)]) == 0
    assert "excluded 3 candidates (0 already were)" in capsys.readouterr().err
    assert load_overrides(run_dir).exclude == ["c1", "c2", "c3"]
    exported = tmp_path / "keep.jsonl"  # an exported selection names its ids in 'gdig'
    exported.write_text(json.dumps({"src_text": "x", "gdig": {"id": "c2"}}) + "\n" + json.dumps({"id": "c5"}) + "\n")
    assert main(["curate", str(run_dir), "--include-ids", str(exported)]) == 0
    assert _sets(load_overrides(run_dir)) == ({"c2", "c5"}, {"c1", "c3"})
    assert main(["curate", str(run_dir), "--show"]) == 0
    out = capsys.readouterr().out
    assert "included by hand: 2; excluded by hand: 2 of 10" in out and "included 2 candidates (cli)" in out
    assert main(["curate", str(run_dir), "--undo"]) == 0
    ov = load_overrides(run_dir)
    assert ov.include == [] and sorted(ov.exclude) == ["c1", "c2", "c3"]
    assert main(["curate", str(run_dir), "--undo"]) == 2
    assert "no bulk decision to undo" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("c1\nnope\n", "line 2: id 'nope' is not a candidate of this run"),
        ('c1\n{"src_text": "x"\n', "line 2: not valid JSON"),
        ('{"src_text": "x"}\n', "line 1: a JSON record without"),
        ("\n\n", "names no candidate id"),
    ],
)
def test_cli_refuses_a_bad_ids_file_and_changes_nothing(run_dir, tmp_path, capsys, text, message):
    ids = tmp_path / "ids.txt"
    ids.write_text(text)
    assert main(["curate", str(run_dir), "--exclude-ids", str(ids)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(ids) in err
    assert not (run_dir / "overrides.json").exists() and not (run_dir / LAST_BULK).exists()
    assert main(["curate", str(run_dir), "--exclude-ids", str(tmp_path / "missing.txt")]) == 2
    assert "no file" in capsys.readouterr().err
