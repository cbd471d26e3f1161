"""Adequacy signals: the conditional information against plain forward passes, the reverse prompt, and the
records that cannot have a signal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_pairs, write_jsonl
from gdig.config import DEFAULT_PROMPT
from gdig.engine.adequacy import adequacy_signals, conditional_information, dual_xent, token_losses, variants
from gdig.inputs.data import build_example, load_dataset, tokenize_example
from gdig.selection.signal_table import BY_NAME


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("adequacy") / "c.jsonl", make_pairs(9, seed=5))
    return load_dataset(path).examples


def _plain_loss(model, tokenizer, example) -> float:
    tok = tokenize_example(tokenizer, example, 512)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tok.input_ids]), labels=torch.tensor([tok.labels]))
    return float(out.loss)


def test_conditional_information_is_the_difference_of_two_plain_forward_passes(model, tokenizer, examples):
    signals, reasons = adequacy_signals(model, tokenizer, examples, DEFAULT_PROMPT, max_length=512, batch_size=4)
    v = variants(examples, DEFAULT_PROMPT)
    for i, e in enumerate(examples):
        expected = _plain_loss(model, tokenizer, v.no_source[i]) - _plain_loss(model, tokenizer, e)
        assert signals["conditional_information"][i] == pytest.approx(expected, abs=1e-5)
        h_f, h_b = _plain_loss(model, tokenizer, e), _plain_loss(model, tokenizer, v.reverse[i])
        assert signals["dual_xent"][i] == pytest.approx(-(abs(h_f - h_b) + (h_f + h_b) / 2), abs=1e-5)
    assert reasons == {}
    assert np.ptp(signals["conditional_information"]) > 0  # the examples differ: the test could fail


def test_token_losses_do_not_depend_on_the_batch_size(model, tokenizer, examples):
    one = token_losses(model, tokenizer, examples, 512, batch_size=1)
    many = token_losses(model, tokenizer, examples, 512, batch_size=5)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_reverse_prompt_asks_for_the_records_source_language():
    rec = {"src_text": "Guten Morgen", "trg_text": "Good morning", "src_lang": "de", "trg_lang": "en"}
    e = build_example("x.jsonl", 1, rec)
    v = variants([e], DEFAULT_PROMPT)
    assert v.reverse[0].prompt == DEFAULT_PROMPT.format(src_text="Good morning", trg_lang="German", src_lang="English")
    assert v.reverse[0].target == "Guten Morgen"
    assert v.no_source[0].prompt == DEFAULT_PROMPT.format(src_text="", trg_lang="English", src_lang="German")
    assert v.no_source[0].target == "Good morning"
    plain = build_example("x.jsonl", 1, {"src_text": "Guten Morgen", "trg_text": "Good morning"}, trg_lang="en")
    assert variants([plain], DEFAULT_PROMPT, src_lang="de").reverse[0].prompt == v.reverse[0].prompt


def test_records_without_a_source_or_its_language_get_nan_and_a_reason(model, tokenizer):
    unknown = build_example("x.jsonl", 1, {"src_text": "a b", "trg_text": "c d"}, trg_lang="de")
    instruction = build_example("x.jsonl", 2, {"instruction": "Say hello", "input": "", "output": "hallo"})
    signals, reasons = adequacy_signals(model, tokenizer, [unknown, instruction], DEFAULT_PROMPT, max_length=64)
    assert math.isfinite(signals["conditional_information"][0]) and math.isnan(signals["dual_xent"][0])
    assert math.isnan(signals["conditional_information"][1]) and math.isnan(signals["dual_xent"][1])
    assert reasons == {
        "no source language for the reverse prompt (give src_lang or --src-lang)": 1,
        "instruction records have no separate source": 1,
    }


def test_a_truncated_target_is_compared_on_the_tokens_both_prompts_kept():
    assert conditional_information(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])) == pytest.approx(1.5)
    assert math.isnan(conditional_information(np.array([], np.float32), np.array([1.0])))
    assert math.isnan(dual_xent(None, np.array([1.0])))


def test_a_run_asked_for_them_stores_them_and_the_rule_reads_them(tmp_path, tokenizer, data_files, model):
    from gdig.config import ScoreConfig
    from gdig.pipeline.run import job_plan, score
    from gdig.rundir.results import load_run
    from gdig.selection.select import SelectionConfig, apply_rule

    cands, seeds = data_files
    cfg = ScoreConfig(model="m", candidates=str(cands), seeds=str(seeds), out=str(tmp_path / "r"), umap=False)
    plain = load_run(score(cfg, model=model, tokenizer=tokenizer))
    assert "conditional_information" not in plain.candidates and "adequacy" not in plain.signals
    asked = ScoreConfig(**(cfg.to_dict() | {"out": str(tmp_path / "a"), "adequacy": True}))
    run = load_run(score(asked, model=model, tokenizer=tokenizer))
    expected, _ = adequacy_signals(model, tokenizer, load_dataset(cands).examples, DEFAULT_PROMPT, max_length=256)
    for column in ("conditional_information", "dual_xent"):
        np.testing.assert_allclose(run.candidates[column], expected[column], atol=1e-5)
    np.testing.assert_allclose(run.signals["adequacy"], expected["conditional_information"], atol=1e-5)
    assert set(run.signals) == {"length", "language", "loss", "adequacy", "dual"} <= set(BY_NAME)
    np.testing.assert_allclose(plain.influence, run.influence)  # the scores do not move
    assert run.config["adequacy_missing"] == {} and "adequacy" in run.config["timings"]
    assert "adequacy" in job_plan(asked, 24, 5) and "adequacy" not in job_plan(cfg, 24, 5)
    weakest = SelectionConfig(min_weakest=0.2)
    kept_without, _ = apply_rule(plain.frac_helped, plain.mean_influence, plain.id_index, weakest, plain.signals)
    kept_off, _ = apply_rule(run.frac_helped, run.mean_influence, run.id_index, weakest, run.signals)
    assert (kept_off == kept_without).all()  # stored, but out of the rule unless asked (measured not to help)
    asked_rule = SelectionConfig(min_weakest=0.2, adequacy=True)
    kept_with, _ = apply_rule(run.frac_helped, run.mean_influence, run.id_index, asked_rule, run.signals)
    worst = np.argsort(run.signals["adequacy"])[:4]  # the bottom fifth of the adequacy signal is dropped
    assert not kept_with[worst].any() and kept_without.sum() > kept_with.sum()
    assert run.rule_ranks("mean", True).shape == (6, 24) and run.rule_ranks("mean").shape == (4, 24)


def test_the_cli_says_which_candidates_have_no_adequacy_signal(tmp_path, llama_dir, capsys):
    from gdig.__main__ import main
    from gdig.rundir.results import load_run

    pairs = make_pairs(10, seed=7)
    for p in pairs[:3]:
        del p["src_lang"]  # and no --src-lang: no reverse prompt for these
    cands = write_jsonl(tmp_path / "c.jsonl", pairs)
    seeds = write_jsonl(tmp_path / "s.jsonl", make_pairs(3, seed=8))
    argv = ["score", "--model", str(llama_dir), "--candidates", str(cands), "--seeds", str(seeds)]
    assert main([*argv, "--out", str(tmp_path / "r"), "--no-umap", "--adequacy"]) in (0, None)
    err = capsys.readouterr().err
    assert "gdig: note: 3 candidate(s) without adequacy signals: no source language for the reverse prompt" in err
    run = load_run(tmp_path / "r")
    assert np.isnan(run.candidates["dual_xent"][:3]).all() and np.isfinite(run.candidates["dual_xent"][3:]).all()
    assert np.isfinite(run.candidates["conditional_information"]).all()
