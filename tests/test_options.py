"""One source of defaults and help: the command line, the Python API and the New run page agree, because the
first and the last are built from the settings dataclasses (gdig.options)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gdig.__main__ import main, score_config_from_args
from gdig.config import DataConfig, ScoreConfig
from gdig.options import add_options, from_args, option, specs
from gdig.pipeline.finetuning import FinetuneConfig
from gdig.selection.select import SelectionConfig

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"model": "m", "candidates": "c.jsonl", "seeds": "s.jsonl", "out": "runs/x"}


def parse(command: list[str]) -> argparse.Namespace:
    """The CLI's own parser for one subcommand."""
    import gdig.__main__ as cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    {"score": cli._add_score, "select": cli._add_select, "finetune": cli._add_finetune}[command[0]](sub)
    return parser.parse_args(command)


def test_score_defaults_on_the_command_line_equal_the_api_defaults():
    args = parse(["score", *(f"--{k}={v}" for k, v in REQUIRED.items())])
    assert score_config_from_args(args) == ScoreConfig(**REQUIRED)


def test_finetune_and_select_defaults_on_the_command_line_equal_the_api_defaults():
    args = parse(["finetune", "--model", "m", "--data", "d.jsonl", "--out", "o"])
    assert from_args(FinetuneConfig, args, data_config=from_args(DataConfig, args)) == FinetuneConfig(
        "m", "d.jsonl", "o"
    )
    args = parse(["select", "runs/x", "--out", "sel.jsonl"])
    assert from_args(SelectionConfig, args) == SelectionConfig()


def test_every_setting_has_help_and_the_command_line_shows_it(capsys):
    for cls in (ScoreConfig, DataConfig, FinetuneConfig, SelectionConfig):
        documented = specs(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(f.type) and f.name not in ("data", "data_config"):
                assert f.name in documented and len(documented[f.name].help) >= 10, (cls.__name__, f.name)
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "cosine in the preconditioned metric" in text and "(default: 0.1)" in text and "--no-umap" in text


def test_a_changed_default_changes_the_command_line():
    @dataclass
    class Settings:
        size: int = option(3, "how many")
        name: str | None = option(None, "what")
        fast: bool = option(False, "go fast")

    parser = argparse.ArgumentParser()
    add_options(parser, Settings)
    assert from_args(Settings, parser.parse_args([])) == Settings()
    assert from_args(Settings, parser.parse_args(["--size", "5", "--fast"])) == Settings(5, None, True)

    @dataclass
    class Changed:
        size: int = option(7, "how many")

    parser = argparse.ArgumentParser()
    add_options(parser, Changed)
    assert parser.parse_args([]).size == 7


def test_new_run_form_shows_the_dataclass_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("GDIG_RUNS_DIR", str(tmp_path))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app_pages" / "run.py"), default_timeout=60).run()
    assert not at.exception
    api = ScoreConfig(**REQUIRED)
    form = {w.key.removeprefix("new_"): w for w in [*at.selectbox, *at.number_input, *at.text_input, *at.checkbox]}
    shown = ("hessian", "normalize", "device", "damping_relative", "seed_batch", "batch_size", "sketch_dim")
    for name in (*shown, "checkpoint_seconds", "modules", "trust_remote_code"):
        assert form[name].value == getattr(api, name), name
        assert form[name].help == specs(ScoreConfig)[name].help
    assert form["max_length"].value == DataConfig().max_length
    assert form["fit_examples"].value == 0 and api.fit_examples is None  # 0 stands for none (all candidates)
    assert os.environ["GDIG_RUNS_DIR"] == str(tmp_path)
