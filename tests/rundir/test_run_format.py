"""The run directory's format: a run written today says its version, and a run written before the version existed
(tests/data/run-format1: a small run and two exports made by main at f98f927) opens through the one upgrade
function, with its settings typed, and exports byte for byte as it did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gdig.config import ScoreConfig
from gdig.outputs.export import selection_lines
from gdig.rundir.format import FORMAT, NewerFormatError, upgrade
from gdig.rundir.layout import CONFIG, read_config
from gdig.rundir.results import load_run
from gdig.selection.select import SelectionConfig, select_run

FORMAT1 = Path(__file__).parents[1] / "data" / "run-format1"
EXPORTS = {  # the selection settings each committed export was made with
    "export-default.jsonl": SelectionConfig(clusters=3, budget=20),
    "export-rank.jsonl": SelectionConfig(
        clusters=2, budget=15, combine="rank-average", min_combined=0.3, dedupe="exact"
    ),
}


def test_upgrade_renames_the_keys_that_meant_two_things_and_leaves_the_record_alone():
    old = {"settings": {"damping": None, "seed_rank": None}, "damping": {"m": 0.5}, "seed_rank": 4}
    new = upgrade(old)
    assert new == {"settings": old["settings"], "module_damping": {"m": 0.5}, "seed_rank_kept": 4, "format": FORMAT}
    assert "damping" in old and "format" not in old  # the caller's record (and the file) unchanged
    assert upgrade(new) == new  # the current format passes through
    with pytest.raises(NewerFormatError, match=f"format {FORMAT + 1} by a newer gdig"):
        upgrade({"format": FORMAT + 1})


def test_a_run_of_format_1_opens_with_typed_settings_and_the_upgraded_record(tmp_path):
    run_dir = shutil.copytree(FORMAT1, tmp_path / "run")
    on_disk = json.loads((run_dir / CONFIG).read_text())
    assert "format" not in on_disk and isinstance(on_disk["damping"], dict)  # really the old format
    run = load_run(run_dir)
    assert run.config["format"] == FORMAT and run.config["module_damping"] == on_disk["damping"]
    assert "damping" not in run.config and run.config["seed_rank_kept"] == on_disk["seed_rank"]
    assert read_config(run_dir) == run.config
    assert isinstance(run.settings, ScoreConfig) and run.settings.hessian == "kfac" and run.settings.sketch_dim == 16
    assert run.settings.data.prompt_template == on_disk["settings"]["data"]["prompt_template"]
    assert json.loads((run_dir / CONFIG).read_text()) == on_disk  # opening it wrote nothing


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_a_run_of_format_1_exports_byte_for_byte_as_it_did(name):
    run = load_run(FORMAT1)
    got = "".join(selection_lines(run, select_run(run, EXPORTS[name]), metadata=True))
    assert got == (FORMAT1 / name).read_text()
    assert len(got.splitlines()) == EXPORTS[name].budget


def test_a_run_written_now_carries_the_format_and_no_ambiguous_key(tmp_path, llama_dir, data_files):
    from gdig.pipeline.run import score

    cands, seeds = data_files
    out = tmp_path / "run"
    score(ScoreConfig(model=str(llama_dir), candidates=str(cands), seeds=str(seeds), out=str(out), umap=False))
    record = json.loads((out / CONFIG).read_text())
    assert record["format"] == FORMAT and {"damping", "seed_rank"}.isdisjoint(record)
    assert set(record["module_damping"]) == {m["name"] for m in record["modules"]}
    assert record["settings"]["damping"] is None  # the setting keeps its own name and meaning
