"""`gdig evaluate`: the report's figures equal a direct computation, cancel and resume keep the finished fits, bad
input is refused before anything trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
import torch

from conftest import make_pairs, write_jsonl
from gdig.__main__ import main
from gdig.cancel import Cancelled
from gdig.inputs.data import DataError, load_dataset, tokenize_example
from gdig.inputs.model import load_model
from gdig.pipeline import evaluation
from gdig.pipeline.evaluation import FITS, REPORT, EvaluationConfig, evaluate, fit_name, load_result, read_inputs
from gdig.pipeline.evaluation_report import paired_difference, read_report, verdict
from gdig.rundir.status import request_cancel


@pytest.fixture()
def two_selections(tmp_path):
    pairs = make_pairs(16, seed=7)
    a = write_jsonl(tmp_path / "a.jsonl", pairs[:6])
    b = write_jsonl(tmp_path / "b.jsonl", pairs[6:12])
    test = write_jsonl(tmp_path / "test.jsonl", pairs[12:])
    return a, b, test


def _cfg(llama_dir, sels, test, out, **kw) -> EvaluationConfig:
    settings = dict(seeds=2, batch_size=4, max_new_tokens=4, lr=5e-3, device="cpu")
    return EvaluationConfig(
        model=str(llama_dir), selections=[str(s) for s in sels], test=str(test), out=str(out), **settings | kw
    )


def _direct_loss(llama_dir, adapter, test) -> float:
    """Each reference's mean target-token loss by a plain forward, one example at a time, with HF's labels."""
    from peft import PeftModel

    base, tok = load_model(str(llama_dir), "cpu", "float32")
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    losses = []
    for e in load_dataset(test).examples:
        t = tokenize_example(tok, e, 512)
        with torch.no_grad():
            losses.append(float(model(input_ids=torch.tensor([t.input_ids]), labels=torch.tensor([t.labels])).loss))
    return float(np.mean(losses))


def test_report_equals_a_direct_computation(tmp_path, llama_dir, two_selections):
    a, b, test = two_selections
    out = evaluate(_cfg(llama_dir, [a, b], test, tmp_path / "ev"))
    report = read_report(out)
    assert report["names"] == ["a", "b"] and report["sizes"] == [6, 6] and report["seeds"] == [0, 1]
    refs = [e.target for e in load_dataset(test).examples]
    for name in ("a", "b"):
        results = [load_result(out, name, s) for s in (0, 1)]
        for r in results:
            assert r["chrf"] == pytest.approx(sacrebleu.corpus_chrf(r["hypotheses"], [refs]).score)
            assert r["bleu"] == pytest.approx(sacrebleu.corpus_bleu(r["hypotheses"], [refs]).score)
            adapter = out / FITS / fit_name(name, r["seed"]) / "adapter"
            assert r["loss"] == pytest.approx(_direct_loss(llama_dir, adapter, test), rel=1e-4)
        per = report["per_selection"][name]
        assert per["loss"]["mean"] == pytest.approx(np.mean([r["loss"] for r in results]))
        assert per["chrf"]["sd"] == pytest.approx(np.std([r["chrf"] for r in results], ddof=1))
    pair = next(p for p in report["paired"] if p["metric"] == "loss")
    diffs = [load_result(out, "b", s)["loss"] - load_result(out, "a", s)["loss"] for s in (0, 1)]
    assert pair["mean"] == pytest.approx(np.mean(diffs))
    assert (out / "report.md").read_text().count("| a | 6 |") == 1
    assert not list(out.glob(f"{FITS}/*/model")), "the merged weights are deleted, the adapters kept"
    # the two seeds trained different models (data order and LoRA initialisation)
    assert load_result(out, "a", 0)["loss"] != load_result(out, "a", 1)["loss"]


def test_cancel_keeps_finished_fits_and_resume_finishes(tmp_path, llama_dir, two_selections, monkeypatch):
    a, b, test = two_selections
    out = tmp_path / "ev"
    cfg = _cfg(llama_dir, [a, b], test, out, seeds=1)
    original_test = test.read_text()

    def stop_after_first(state):
        if (out / FITS / fit_name("a", 0) / "result.json").exists():
            request_cancel(out)

    with pytest.raises(Cancelled):
        evaluate(cfg, on_progress=stop_after_first)
    first = (out / FITS / fit_name("a", 0) / "result.json").read_text()
    assert not (out / REPORT).exists() and not (out / FITS / fit_name("b", 0) / "result.json").exists()
    assert json.loads((out / "status.json").read_text())["error"] == "cancelled"  # what the app shows
    with pytest.raises(ValueError, match="already holds an evaluation"):
        evaluate(cfg)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(_cfg(llama_dir, [a, b], test, out, seeds=1, lr=1e-2), resume=True)
    test.write_text(original_test + json.dumps(make_pairs(1, seed=5)[0]) + "\n")
    with pytest.raises(ValueError, match="other settings, selections or test set"):
        evaluate(cfg, resume=True)  # the test file changed in place: the finished fit scored the old one
    test.write_text(original_test)
    evaluate(cfg, resume=True)  # the cancel file left by the stopped job is not this job's
    assert (out / FITS / fit_name("a", 0) / "result.json").read_text() == first, "the finished fit was kept"
    assert read_report(out)["fits"][1]["selection"] == "b"
    more = _cfg(llama_dir, [a, b], test, out, seeds=2)  # more seeds later: the finished fits are reused
    evaluate(more, resume=True)
    assert read_report(out)["seeds"] == [0, 1] and len(read_report(out)["fits"]) == 4
    assert (out / FITS / fit_name("a", 0) / "result.json").read_text() == first
    # moved with its inputs, the model reached through a link: the same evaluation, nothing retrained
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in (a, b, test, out):
        f.rename(moved / f.name)
    (tmp_path / "model-link").symlink_to(llama_dir, target_is_directory=True)
    files = [moved / a.name, moved / b.name]
    again = _cfg(tmp_path / "model-link", files, moved / test.name, moved / out.name, seeds=2)
    monkeypatch.setattr(evaluation, "run_fit", lambda *a, **k: pytest.fail("a finished fit was trained again"))
    evaluate(again, resume=True)
    assert (moved / out.name / FITS / fit_name("a", 0) / "result.json").read_text() == first


def test_bad_input_is_refused_before_anything_trains(tmp_path, llama_dir, two_selections):
    a, b, test = two_selections
    out = tmp_path / "ev"
    longer = write_jsonl(tmp_path / "longer.jsonl", make_pairs(8, seed=9))
    with pytest.raises(ValueError, match=r"differ in size \(a 6, longer 8\).*--allow-unequal"):
        read_inputs(_cfg(llama_dir, [a, longer], test, out))
    assert read_inputs(_cfg(llama_dir, [a, longer], test, out, allow_unequal=True)).sizes == [6, 8]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="selection 'empty' set is empty"):
        read_inputs(_cfg(llama_dir, [a, empty], test, out))
    broken = write_jsonl(
        tmp_path / "broken.jsonl", make_pairs(2) + [{"src_text": "x", "src_lang": "en", "trg_lang": "de"}]
    )
    with pytest.raises(DataError, match="broken.jsonl:3: field 'trg_text'"):
        read_inputs(_cfg(llama_dir, [a, b], broken, out))
    with pytest.raises(ValueError, match="at least two"):
        read_inputs(_cfg(llama_dir, [a], test, out))
    assert not out.exists()
    code = main(
        ["evaluate", "--model", str(llama_dir), "--selections", str(a), str(longer), "--test", str(test)]
        + ["--out", str(out), "--quiet"]
    )
    assert code == 2 and not out.exists()


def test_paired_difference_and_verdicts():
    p = paired_difference([50.0, 51.0, 52.0], [52.0, 53.5, 53.5])
    d = np.array([2.0, 2.5, 1.5])
    half = 4.302652729911275 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert p["mean"] == pytest.approx(2.0) and p["sd"] == pytest.approx(0.5) and p["n"] == 3
    assert p["low"] == pytest.approx(2.0 - half) and p["high"] == pytest.approx(2.0 + half)
    assert verdict(p | {"a": "random", "b": "gdig", "metric": "chrf"}).endswith("gdig is better")
    assert verdict(p | {"a": "random", "b": "gdig", "metric": "loss"}).endswith("random is better")
    tie = paired_difference([1.0, 2.0], [2.0, 1.0])
    assert "no difference the 2 seeds can tell" in verdict(tie | {"a": "x", "b": "y", "metric": "chrf"})
    assert paired_difference([1.0], [2.0])["low"] is None


def test_cli_prints_the_report(tmp_path, llama_dir, two_selections, capsys):
    a, b, test = two_selections
    out = tmp_path / "ev"
    args = ["evaluate", "--model", str(llama_dir), "--selections", str(a), str(b), "--names", "rule", "random"]
    args += ["--test", str(test), "--out", str(out), "--seeds", "1", "--batch-size", "4", "--max-new-tokens", "3"]
    assert main(args + ["--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| rule | 6 |" in printed and "| random | 6 |" in printed and "one seed, no interval" in printed
    assert json.loads((out / "evaluation.json").read_text())["names"] == ["rule", "random"]


def test_the_apps_command_reads_back_as_the_same_settings():
    import argparse

    from gdig.cli_evaluate import add_evaluate_command
    from gdig.config import DataConfig
    from gdig.options import from_args
    from gdig.studio.evaluations import evaluate_command, evaluation_config

    data = DataConfig(prompt_template="Translate: {src_text}\n", trg_lang="de", max_length=99)
    cfg = evaluation_config("base", "t.jsonl", "m.gguf", data, seeds=2, allow_unequal=True, lr=0.01)
    cfg.selections, cfg.names, cfg.out = ["a.jsonl", "b.jsonl"], ["a", "b"], "out"
    parser = argparse.ArgumentParser()
    add_evaluate_command(parser.add_subparsers())
    args = parser.parse_args(evaluate_command(cfg)[3:])
    data = from_args(DataConfig, args)  # the app's worker gets the template's line break itself, not typed
    assert from_args(EvaluationConfig, args, selections=args.selections, names=args.names, data_config=data) == cfg
